"""The training configuration: frozen dataclasses that mirror the Hydra groups in ``conf/``.

``train.py`` converts the composed ``DictConfig`` once with :func:`TrainConfig.from_dict`; code
below it never sees OmegaConf. A key that is not a field, or a value of the wrong type, stops
the run at start with the key's full name.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from data.config import ConfigError, build
from data.schema import iso, parse_time, timeframe_ms
from envs.config import EnvConfig


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
        bar = timeframe_ms(self.timeframe)
        names = ("train_start", "train_end", "val_start", "val_end", "test_start", "test_end")
        times = [parse_time(getattr(self, n)) for n in names]
        for a, b, name in ((0, 1, "train"), (2, 3, "val"), (4, 5, "test")):
            if times[a] >= times[b]:
                raise ConfigError(f"data.{name}_start must be before data.{name}_end")
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

    def hyperparameters(self) -> dict[str, Any]:
        """The keyword arguments the algorithm takes, without unset ones."""
        skip = {"algo", "policy", "net_arch"}
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in skip and getattr(self, f.name) is not None
        }


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
        if self.agent.algo not in offered:
            other = next(b for b, algos in BACKEND_ALGOS.items() if self.agent.algo in algos)
            raise ConfigError(
                f"agent={self.agent.algo} is not offered by trainer={self.trainer.backend} "
                f"(it offers {', '.join(offered)}); use trainer={other} or another agent"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        return build(cls, values)
