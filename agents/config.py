"""The training configuration: frozen dataclasses that mirror the Hydra groups in ``conf/``.

``train.py`` converts the composed ``DictConfig`` once with :func:`TrainConfig.from_dict`; code
below it never sees OmegaConf. A key that is not a field, or a value of the wrong type, stops
the run at start with the key's full name.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from data.config import ConfigError, build, check_path
from data.schema import MARKETS, TIMEFRAMES, iso, parse_time, timeframe_ms
from envs.config import EnvConfig


def config_time(key: str, value: str) -> int:
    """``value`` (an ISO date or time, or epoch milliseconds) as ms UTC; an impossible date such
    as ``2024-04-31`` is a :class:`ConfigError` naming ``key`` and saying why."""
    try:
        ts = parse_time(value)
    except ValueError:
        try:
            datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
            why = ""
        except ValueError as exc:
            why = f" ({exc})"
        raise ConfigError(
            f"{key}={value} is not a date{why}; write an ISO date such as 2024-01-01 or 2024-01-01T12:00"
        ) from None
    if ts is None:
        raise ConfigError(f"{key} is empty; write an ISO date such as 2024-01-01 or 2024-01-01T12:00")
    return ts


@dataclass(frozen=True)
class DataConfig:
    """Which series to train on and how time is split.

    ``train``, ``val`` and ``test`` are ``[start, end)`` ISO ranges; each must begin at least
    ``embargo_bars`` bars after the previous one ends, so features and episodes near a boundary
    never see the next range. The test range is never read by training or model selection.
    For ``exchange=synthetic`` a missing series is generated (``synthetic_seed``,
    ``synthetic_bars``); for real exchanges a missing range is downloaded when ``download``.
    """

    exchange: str = "synthetic"
    market: str = "spot"
    symbol: str = "SYN/USDT"
    timeframe: str = "1m"
    root: str | None = None
    train_start: str = "2024-01-01"
    train_end: str = "2024-03-20"
    val_start: str = "2024-03-21"
    val_end: str = "2024-04-20"
    test_start: str = "2024-04-21"
    test_end: str = "2024-05-18"
    embargo_bars: int = 1440
    download: bool = True
    synthetic_seed: int = 0
    synthetic_bars: int = 200_000

    def __post_init__(self) -> None:
        if self.market not in MARKETS:
            raise ConfigError(
                f"data.market={self.market!r} is not supported; choose one of {', '.join(MARKETS)} "
                "(the env's account is env=perp)"
            )
        if self.timeframe not in TIMEFRAMES:
            raise ConfigError(
                f"data.timeframe={self.timeframe!r} is not supported; choose one of {', '.join(TIMEFRAMES)}"
            )
        if self.embargo_bars < 0:
            raise ConfigError(f"data.embargo_bars={self.embargo_bars} must be a whole number >= 0")
        if self.exchange == "synthetic" and self.synthetic_bars < 2:
            raise ConfigError(
                f"data.synthetic_bars={self.synthetic_bars}: a synthetic market needs at least 2 bars"
            )
        bar = timeframe_ms(self.timeframe)
        names = ("train_start", "train_end", "val_start", "val_end", "test_start", "test_end")
        times = [config_time(f"data.{n}", getattr(self, n)) for n in names]
        for a, b in ((0, 1), (2, 3), (4, 5)):
            if times[a] >= times[b]:
                raise ConfigError(
                    f"data.{names[a]}={getattr(self, names[a])} must be before data.{names[b]}="
                    f"{getattr(self, names[b])}"
                )
        gap = self.embargo_bars * bar
        for end, start, what in ((1, 2, "val_start"), (3, 4, "test_start")):
            if times[start] < times[end] + gap:
                raise ConfigError(
                    f"data.{what}={getattr(self, names[start])} must be at least data.embargo_bars="
                    f"{self.embargo_bars} bars after the previous range's end ({iso(times[end] + gap)})"
                )

    def range(self, split: str) -> tuple[int, int]:
        """``(start_ms, end_ms)`` of ``train``, ``val`` or ``test``."""
        return parse_time(getattr(self, f"{split}_start")), parse_time(getattr(self, f"{split}_end"))


@dataclass(frozen=True)
class AgentConfig:
    """The algorithm and its hyperparameters; ``None`` keeps the library's default."""

    algo: str = "ppo"
    policy: str = "MlpPolicy"
    net_arch: tuple[int, ...] = (64, 64)
    learning_rate: float = 3e-4
    gamma: float = 0.99
    n_steps: int | None = None
    batch_size: int | None = None
    n_epochs: int | None = None
    gae_lambda: float | None = None
    ent_coef: float | None = None
    clip_range: float | None = None
    vf_coef: float | None = None
    max_grad_norm: float | None = None
    buffer_size: int | None = None
    learning_starts: int | None = None
    train_freq: int | None = None
    gradient_steps: int | None = None
    tau: float | None = None
    exploration_fraction: float | None = None

    ALGOS: typing.ClassVar[tuple[str, ...]] = (
        "ppo", "a2c", "dqn", "sac", "td3", "recurrent_ppo", "appo", "impala",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.algo not in self.ALGOS:
            raise ConfigError(
                f"agent.algo={self.algo!r} is not offered; choose one of {', '.join(self.ALGOS)}"
            )
        expected = POLICIES.get(self.algo, "MlpPolicy")
        if self.policy != expected:
            raise ConfigError(
                f"agent.policy={self.policy}: agent={self.algo} trains {expected} on this env's flat "
                f"observations; set agent.policy={expected}"
            )
        for units in self.net_arch:
            if not (isinstance(units, int) and units >= 1):
                raise ConfigError(
                    f"agent.net_arch={list(self.net_arch)}: every layer needs a whole number of units >= 1"
                )
        for name, (ok, rule) in HYPERPARAMETER_RANGES.items():
            value = getattr(self, name)
            if value is not None and not ok(value):
                raise ConfigError(f"agent.{name}={value!r} must {rule}")

    def hyperparameters(self) -> dict[str, Any]:
        """The keyword arguments the algorithm takes, without unset ones."""
        skip = {"algo", "policy", "net_arch"}
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in skip and getattr(self, f.name) is not None
        }


def _finite(low: float, low_open: bool, high: float = math.inf) -> Callable[[float], bool]:
    """A finite number above ``low`` (or at it, unless ``low_open``) and at most ``high``."""

    def ok(v: float) -> bool:
        return math.isfinite(v) and (v > low if low_open else v >= low) and v <= high

    return ok


_WHOLE = (lambda v: v >= 1, "be a whole number >= 1")
_POSITIVE = (_finite(0, True), "be a finite number > 0")
_NON_NEGATIVE = (_finite(0, False), "be a finite number >= 0")
HYPERPARAMETER_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "learning_rate": (_finite(0, True), "be a finite number > 0 (e.g. 0.0003)"),
    "gamma": (_finite(0, True, 1), "lie in (0, 1]"),
    "n_steps": _WHOLE,
    "batch_size": _WHOLE,
    "n_epochs": _WHOLE,
    "gae_lambda": (_finite(0, False, 1), "lie in [0, 1]"),
    "ent_coef": _NON_NEGATIVE,
    "clip_range": _POSITIVE,
    "vf_coef": _NON_NEGATIVE,
    "max_grad_norm": _POSITIVE,
    "buffer_size": _WHOLE,
    "learning_starts": (lambda v: v >= 0, "be a whole number >= 0"),
    "train_freq": _WHOLE,
    "gradient_steps": (lambda v: v >= 1 or v == -1, "be a whole number >= 1, or -1 (one per env-step)"),
    "tau": (_finite(0, True, 1), "lie in (0, 1]"),
    "exploration_fraction": (_finite(0, False, 1), "lie in [0, 1]"),
}
"""What each hyperparameter of :class:`AgentConfig` must be (when set), checked at start."""

POLICIES = {"recurrent_ppo": "MlpLstmPolicy"}
"""The policy class each algorithm trains on the env's flat observations (``MlpPolicy`` otherwise)."""
DISCRETE_ONLY = ("dqn",)
CONTINUOUS_ONLY = ("sac", "td3")
DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
"""The ``device=`` values: a GPU is ``cuda`` for CUDA and ROCm builds of torch alike."""

BACKEND_ALGOS = {
    "sb3": ("ppo", "a2c", "dqn", "sac", "td3", "recurrent_ppo"),
    "rllib": ("ppo", "appo", "impala"),
}


@dataclass(frozen=True)
class TrainerConfig:
    """How long and on what.

    ``backend`` ``sb3`` trains in this process on one batched env of ``n_envs`` accounts.
    ``backend`` ``rllib`` trains with Ray RLlib: ``num_env_runners`` sampling actors (0 samples in
    the driver), each with one batched env of ``num_envs_per_env_runner`` accounts (``null``:
    ``n_envs``), and ``num_learners`` learner actors (0: learn in the driver), each with
    ``num_gpus_per_learner`` GPUs.
    """

    backend: str = "sb3"
    total_timesteps: int = 200_000
    n_envs: int = 16
    eval_every: int = 50_000
    checkpoint_every: int = 100_000
    torch_threads: int = 1
    num_env_runners: int = 0
    num_envs_per_env_runner: int | None = None
    num_learners: int = 0
    num_gpus_per_learner: float = 0.0

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_ALGOS:
            raise ConfigError(f"trainer.backend={self.backend!r}: choose trainer=sb3 or trainer=rllib")
        for name in ("total_timesteps", "n_envs", "eval_every", "checkpoint_every", "torch_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"trainer.{name} must be >= 1")
        for name in ("num_env_runners", "num_learners", "num_gpus_per_learner"):
            if getattr(self, name) < 0:
                raise ConfigError(f"trainer.{name} must be >= 0")
        if self.num_envs_per_env_runner is not None and self.num_envs_per_env_runner < 1:
            raise ConfigError("trainer.num_envs_per_env_runner must be >= 1 (or null for trainer.n_envs)")


@dataclass(frozen=True)
class RayConfig:
    """Where RLlib runs: ``address`` empty starts a local Ray with ``num_cpus`` (``null``: the
    machine's cores); ``auto`` joins the cluster this machine belongs to; ``ray://host:10001``
    joins a remote one."""

    address: str = ""
    num_cpus: int | None = None


@dataclass(frozen=True)
class SearchParam:
    """One dimension of an Optuna search: ``type`` float, int or categorical."""

    type: str = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.type not in ("float", "int", "categorical"):
            raise ConfigError(f"search parameter type={self.type!r}: choose float, int or categorical")
        if self.type == "categorical" and not self.choices:
            raise ConfigError("a categorical search parameter needs choices: [...]")
        if self.type != "categorical" and (self.low is None or self.high is None or self.low >= self.high):
            raise ConfigError(f"a {self.type} search parameter needs low < high")


@dataclass(frozen=True)
class HparamsSearchConfig:
    """An Optuna search over ``params`` (override keys such as ``agent.learning_rate``), each
    trial a full training run scored by ``metric`` of its final validation replay."""

    n_trials: int = 8
    metric: str = "sharpe"
    direction: str = "maximize"
    sampler: str = "tpe"
    seed: int = 0
    storage: str | None = None
    params: dict[str, SearchParam] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise ConfigError("hparams_search.n_trials must be >= 1")
        if self.direction not in ("maximize", "minimize"):
            raise ConfigError("hparams_search.direction must be maximize or minimize")
        if self.sampler not in ("tpe", "random"):
            raise ConfigError("hparams_search.sampler must be tpe or random")
        if not self.params:
            raise ConfigError("hparams_search.params is empty: name at least one key to search")


@dataclass(frozen=True)
class WalkForwardConfig:
    """Rolling folds: fold ``k`` trains on ``train_days`` from ``start`` (default
    ``data.train_start``) + ``k * step_days`` (default ``test_days``), validates on the next
    ``val_days`` and is tested on the ``test_days`` after that, ``data.embargo_bars`` apart."""

    folds: int = 3
    train_days: float = 30.0
    val_days: float = 7.0
    test_days: float = 7.0
    step_days: float | None = None
    start: str | None = None

    def __post_init__(self) -> None:
        if self.folds < 1:
            raise ConfigError("walk_forward.folds must be >= 1")
        for name in ("train_days", "val_days", "test_days"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"walk_forward.{name} must be > 0")
        if self.step_days is not None and self.step_days <= 0:
            raise ConfigError("walk_forward.step_days must be > 0 (or null for walk_forward.test_days)")
        if self.start is not None:
            config_time("walk_forward.start", self.start)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs."""

    data: DataConfig = field(default_factory=DataConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    hparams_search: HparamsSearchConfig | None = None
    walk_forward: WalkForwardConfig | None = None
    experiment_name: str = "default"
    seed: int = 0
    device: str = "auto"
    resume: str | None = None

    def __post_init__(self) -> None:
        if self.hparams_search is not None and self.walk_forward is not None:
            raise ConfigError("+hparams_search and +walk_forward run one at a time; drop one")
        offered = BACKEND_ALGOS[self.trainer.backend]
        algo = self.agent.algo
        if algo not in offered:
            other = next(b for b, algos in BACKEND_ALGOS.items() if algo in algos)
            raise ConfigError(
                f"agent={algo} is not offered by trainer={self.trainer.backend} "
                f"(it offers {', '.join(offered)}); use trainer={other} or another agent"
            )
        if algo in DISCRETE_ONLY and self.env.action_type != "discrete":
            raise ConfigError(f"agent={algo} needs discrete actions: set env.action_type=discrete")
        if algo in CONTINUOUS_ONLY and self.env.action_type != "continuous":
            raise ConfigError(f"agent={algo} needs continuous actions: add env.action_type=continuous")
        if self.seed < 0:
            raise ConfigError(f"seed={self.seed} must be a whole number >= 0")
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(
                f"device={self.device} is not a torch device; use auto, cpu, cuda, cuda:N (a GPU's index) "
                "or mps"
            )
        rllib = self.trainer.backend == "rllib"
        if rllib and self.device.startswith("cuda") and not self.trainer.num_gpus_per_learner:
            raise ConfigError(
                f"device={self.device}: trainer=rllib places learners on GPUs with "
                "trainer.num_gpus_per_learner=1; leave device=auto"
            )
        if self.hparams_search is not None:
            for key in self.hparams_search.params:
                try:
                    check_path(TrainConfig, key)
                except ConfigError as exc:
                    raise ConfigError(f"hparams_search.params: {exc}") from None
        if self.resume is not None:
            self._check_resume()

    def _check_resume(self) -> None:
        """``resume`` names a checkpoint this backend can load: a stable-baselines3 ``.zip`` (the
        suffix may be left off, as stable-baselines3 adds it), or an RLlib checkpoint folder."""
        given, path = self.resume, Path(self.resume)
        example = "runs/<experiment>/<time>/checkpoints/last"
        if self.trainer.backend == "rllib":
            if not path.exists():
                raise ConfigError(f"resume={given} does not exist; give a checkpoint folder like {example}")
            if not (path / "rllib_checkpoint.json").exists():
                raise ConfigError(
                    f"resume={given} is not an RLlib checkpoint (no rllib_checkpoint.json); give a run's "
                    "checkpoints/last (or step_N)"
                )
            return
        if path.is_dir():
            last = path / "checkpoints" / "last.zip"
            if last.is_file():
                raise ConfigError(
                    f"resume={given} is a run folder; continue from its checkpoint: resume={last}"
                )
            raise ConfigError(
                f"resume={given} is a folder; trainer=sb3 continues from a checkpoint ({example}.zip)"
            )
        if not path.exists():
            zipped = path.with_name(path.name + ".zip")
            if path.suffix != ".zip" and zipped.is_file():
                path = zipped
            else:
                nor = f" (nor {zipped})" if path.suffix != ".zip" else ""
                raise ConfigError(f"resume={given} does not exist{nor}; give a checkpoint like {example}.zip")
        if not zipfile.is_zipfile(path):
            raise ConfigError(
                f"resume={given} is not a stable-baselines3 checkpoint (not a zip archive); give a run's "
                "checkpoints/last.zip"
            )
        with zipfile.ZipFile(path) as archive:
            missing = [n for n in ("data", "policy.pth") if n not in archive.namelist()]
        if missing:
            raise ConfigError(
                f"resume={given} is not a stable-baselines3 checkpoint (no {' or '.join(missing)} in the "
                "archive); give a run's checkpoints/last.zip"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        return build(cls, values)
