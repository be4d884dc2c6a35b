"""Training with stable-baselines3 on the native batched env, start to finish.

``train(config, run_dir)`` reads (or fills) the store, builds the batched env over the train
range, trains with TensorBoard logging of the trading picture, replays the validation range
every ``trainer.eval_every`` env-steps next to buy-and-hold, keeps periodic and best
checkpoints, and writes the policy bundle. The test range is never read here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agents.algorithms import build_model
from agents.baselines import BuyAndHold
from agents.bundle import LOAD_ERRORS, env_spec, save_bundle
from agents.config import ConfigError, DataConfig, TrainConfig
from data.errors import DataError, DownloadError
from data.loader import load_bars, load_funding
from data.schema import FUNDING, iso, timeframe_ms
from data.store import SeriesKey, Store
from envs.config import EnvConfig
from envs.features import warmup as feature_warmup
from envs.market import default_features
from envs.sb3 import SB3VecEnv
from envs.vector import BatchedMarketReplayEnv
from reports import metrics
from reports.replay import ReplayError, replay, replay_metrics

log = logging.getLogger(__name__)


# -- data ---------------------------------------------------------------------------------------


def _fill_command(d: DataConfig, start: int, end: int) -> str:
    return (
        f"python -m data download exchange={d.exchange} market={d.market} symbol={d.symbol} "
        f"timeframe={d.timeframe} start={iso(start)} end={iso(end)}"
    )


def ensure_data(d: DataConfig, with_funding: bool) -> None:
    """Make sure the store covers train..test: generate synthetic data, or download, or stop
    with the exact command that would fill it."""
    from data.download import download_funding, download_ohlcv
    from data.synthetic import SyntheticConfig, generate

    store = Store(d.root)
    key = SeriesKey.of(d.exchange, d.market, d.symbol, d.timeframe)
    start, end = d.range("train")[0], d.range("test")[1]
    bar = timeframe_ms(d.timeframe)
    first, last = store.first_ts(key), store.last_ts(key)
    if first is not None and first <= start and last >= end - bar:
        return
    if d.exchange == "synthetic":
        last_bar = start // bar * bar + (d.synthetic_bars - 1) * bar  # as generate() aligns it
        if last_bar < end - bar:
            raise ConfigError(
                f"data.synthetic_bars={d.synthetic_bars} ends at {iso(last_bar)}, before data.test_end="
                f"{d.test_end}; raise data.synthetic_bars or move the ranges"
            )
        bars, funding = generate(
            SyntheticConfig(
                seed=d.synthetic_seed, start=d.train_start, bars=d.synthetic_bars, timeframe=d.timeframe
            )
        )
        store.write(key, bars, on_conflict="replace")
        if with_funding:
            store.write(SeriesKey.of(d.exchange, d.market, d.symbol, FUNDING), funding, on_conflict="replace")
        return
    if not d.download:
        raise ConfigError(
            f"the store lacks {key} over the data ranges; fill it with: {_fill_command(d, start, end)}"
        )
    try:
        download_ohlcv(store, d.exchange, d.market, d.symbol, d.timeframe, start, end)
        if with_funding:
            download_funding(store, d.exchange, d.market, d.symbol, start, end)
    except DownloadError as exc:
        raise ConfigError(f"{exc}\nfill the store with: {_fill_command(d, start, end)}") from exc


def history_bars(env: EnvConfig) -> int:
    """Bars of history a decision needs before its bar: the features' and costs' warm-up for the
    oldest row of the observation window, plus the window (as :func:`envs.market.episode_starts`)."""
    names = env.features if env.features is not None else default_features(env)
    return max(feature_warmup(names, env.norm_window), env.vol_window, env.spread_window) + env.window - 1


def load_split(
    d: DataConfig, env: EnvConfig, split: str, *, with_history: bool
) -> tuple[pd.DataFrame, pd.DataFrame | None, int]:
    """Bars (and funding) of a split; with history, the warm-up bars before it are included.
    Returns ``(bars, funding, first decision ts)``."""
    start, end = d.range(split)
    lead = history_bars(env) * timeframe_ms(d.timeframe) if with_history else 0
    try:
        bars = load_bars(
            d.symbol,
            d.timeframe,
            exchange=d.exchange,
            market=d.market,
            start=start - lead,
            end=end,
            root=d.root,
        )
    except DataError as exc:
        raise ConfigError(f"data.{split} range is empty: {exc}") from exc
    funding = None
    if env.market == "perp":
        f = load_funding(
            d.symbol, exchange=d.exchange, market=d.market, start=start - lead, end=end + 1, root=d.root
        )
        funding = f.to_frame() if len(f) else None
    return bars.to_frame(), funding, start


# -- validation -------------------------------------------------------------------------------


def _action_values(env: EnvConfig) -> tuple[float, ...] | None:
    return env.action_values if env.action_type == "discrete" else None


# -- callbacks ----------------------------------------------------------------------------------


def episode_scalars(e: dict[str, Any], periods_per_year: float, initial_equity: float) -> dict[str, float]:
    """The trading picture of one finished episode from its last info and ``episode_*`` stats:
    return %, Sharpe (``periods_per_year`` bars a year), max drawdown %, turnover (traded notional
    / initial equity), fees and funding paid as % of initial equity, the fraction of bars in a
    position, fills per day, and 1 if it ended in liquidation."""
    length = max(float(e["episode_length"]), 1.0)
    std, mean = float(e["episode_log_return_std"]), float(e["episode_log_return_mean"])
    return {
        "episode_return_pct": (float(e["equity"]) / initial_equity - 1) * 100,
        "sharpe": mean / std * math.sqrt(periods_per_year) if std > 0 else 0.0,
        "max_drawdown_pct": float(e["episode_max_drawdown"]) * 100,
        "turnover": float(e["turnover"]) / initial_equity,
        "fees_pct": float(e["fees"]) / initial_equity * 100,
        "funding_pct": float(e["funding"]) / initial_equity * 100,
        "exposure_time": float(e["episode_exposed_bars"]) / length,
        "trades_per_day": float(e["episode_trades"]) / length * periods_per_year / 365,
        "liquidation_rate": float(bool(e["liquidated"])),
    }


VALIDATION_SCALARS = ("total_return", "sharpe", "max_drawdown", "trades_per_day", "fees", "exposure")


class Validator:
    """Deterministic replays of the validation range next to buy-and-hold on it (computed once),
    for either backend: :meth:`evaluate` takes the policy's ``act(obs, info)``."""

    def __init__(self, cfg: TrainConfig, val: tuple, env_kwargs: dict[str, Any]):
        self.timeframe = cfg.data.timeframe
        self.val, self.env_kwargs = val, env_kwargs
        self.best = -math.inf
        self.history: list[dict] = []
        hold = BuyAndHold(_action_values(cfg.env), cfg.env.shorting).act
        try:
            self.baseline = replay_metrics(replay(hold, *val[:2], env_kwargs, val[2]), self.timeframe)
        except ReplayError as exc:
            raise ConfigError(f"data.val range: {exc}") from exc

    def evaluate(self, act: Callable[[np.ndarray, dict], Any], timesteps: int) -> tuple[dict, bool]:
        """The replay's metrics (kept in ``history``) and whether they are the best Sharpe yet."""
        bars, funding, start = self.val
        m = replay_metrics(replay(act, bars, funding, self.env_kwargs, start), self.timeframe)
        self.history.append({"timesteps": int(timesteps), **m})
        best = m["sharpe"] > self.best
        self.best = max(self.best, m["sharpe"])
        return m, best

    def scalars(self, m: dict) -> dict[str, float]:
        """TensorBoard scalars of one evaluation: ``validation/*`` and ``validation_buy_and_hold/*``."""
        out = {f"validation/{k}": float(m[k]) for k in VALIDATION_SCALARS}
        out.update({f"validation_buy_and_hold/{k}": float(self.baseline[k]) for k in VALIDATION_SCALARS})
        return out

    def save(self, path: Path) -> None:
        path.write_text(
            json.dumps({"history": self.history, "buy_and_hold": self.baseline}, indent=2, default=float)
        )


def _callbacks(cfg: TrainConfig, run_dir: Path, validator: Validator):
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback

    ppy = metrics.periods_per_year(cfg.data.timeframe)
    initial = cfg.env.initial_equity

    class TradingMetrics(BaseCallback):
        """Per rollout: the trading picture of the episodes that finished in it."""

        def _on_rollout_start(self) -> None:
            self.finished: list[dict] = []

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", ()):
                if "episode_length" in info:
                    self.finished.append(episode_scalars(info, ppy, initial))
            return True

        def _on_rollout_end(self) -> None:
            if not getattr(self, "finished", None):
                return
            for k in self.finished[0]:
                self.logger.record(f"trading/{k}", float(np.mean([e[k] for e in self.finished])))
            self.logger.record("trading/episodes", len(self.finished))

    class Validation(BaseCallback):
        """Every ``eval_every`` env-steps: a deterministic replay of the validation range next to
        buy-and-hold on it; the best policy by validation Sharpe is kept."""

        def __init__(self) -> None:
            super().__init__()
            self.next_eval = cfg.trainer.eval_every

        def _evaluate(self) -> None:
            act = lambda obs, info: self.model.predict(obs, deterministic=True)[0]  # noqa: E731
            m, best = validator.evaluate(act, self.num_timesteps)
            for k, v in validator.scalars(m).items():
                self.logger.record(k, v)
            if best:
                self.model.save(run_dir / "checkpoints" / "best.zip")
            self.logger.dump(self.num_timesteps)

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_eval:
                self.next_eval += cfg.trainer.eval_every
                self._evaluate()
            return True

        def _on_training_end(self) -> None:
            self._evaluate()

    every = max(cfg.trainer.checkpoint_every // cfg.trainer.n_envs, 1)
    checkpoints = CheckpointCallback(every, str(run_dir / "checkpoints"), name_prefix="step")
    return CallbackList([TradingMetrics(), Validation(), checkpoints])


# -- training -----------------------------------------------------------------------------------


def pick_device(device: str) -> str:
    """``auto`` is a GPU when torch sees one (ROCm builds answer through ``torch.cuda`` too)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but torch sees no GPU; use device=cpu or device=auto")
    return device


@dataclasses.dataclass(frozen=True)
class TrainResult:
    bundle: Path
    model: Any
    validation: list[dict]
    buy_and_hold: dict


@dataclasses.dataclass(frozen=True)
class RunData:
    """What both backends train and validate on."""

    train_bars: pd.DataFrame
    train_funding: pd.DataFrame | None
    validator: Validator
    env_kwargs: dict[str, Any]


def prepare_run(cfg: TrainConfig, run_dir: Path) -> RunData:
    """Fill the store if needed, read the train and validation splits, replay buy-and-hold."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with_funding = cfg.env.market == "perp" and cfg.data.market == "futures"
    ensure_data(cfg.data, with_funding or (cfg.env.market == "perp" and cfg.data.exchange == "synthetic"))
    env_kwargs = dataclasses.asdict(cfg.env)
    train_bars, train_funding, _ = load_split(cfg.data, cfg.env, "train", with_history=False)
    val = load_split(cfg.data, cfg.env, "val", with_history=True)
    log.info("train: %s bars %s -> %s", f"{len(train_bars):,}", cfg.data.train_start, cfg.data.train_end)
    with env_refusal(cfg.data, "val"):
        validator = Validator(cfg, val, env_kwargs)
    return RunData(train_bars, train_funding, validator, env_kwargs)


@contextlib.contextmanager
def env_refusal(d: DataConfig, split: str) -> Iterator[None]:
    """An env that cannot be built on the bars of ``split`` (features the series cannot feed, bars
    that fail validation) as a :class:`ConfigError` naming the series."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(
            f"cannot build the env on the data.{split} range of {d.exchange} {d.market} {d.symbol} "
            f"{d.timeframe}: {exc}"
        ) from exc


def bundle_spec(cfg: TrainConfig, env: Any, validator: Validator) -> dict[str, Any]:
    """The spec.json of a run's bundle: the env's part plus algorithm, backend and data ranges."""
    return {
        **env_spec(env, timeframe=cfg.data.timeframe, symbol=cfg.data.symbol, exchange=cfg.data.exchange),
        "algo": cfg.agent.algo,
        "backend": cfg.trainer.backend,
        "data_market": cfg.data.market,
        "ranges": {
            s: [getattr(cfg.data, f"{s}_start"), getattr(cfg.data, f"{s}_end")]
            for s in ("train", "val", "test")
        },
        "validation": validator.history[-1] if validator.history else None,
        "validation_buy_and_hold": validator.baseline,
    }


def load_checkpoint(cfg: TrainConfig, venv: Any, device: str, tensorboard_log: str) -> Any:
    """The stable-baselines3 model of ``cfg.resume`` on ``venv``; one that cannot be loaded (bytes
    damaged, another algorithm, another env's spaces) is a :class:`ConfigError` naming it."""
    from agents.algorithms import algorithm_class

    algo = algorithm_class(cfg.agent.algo)
    try:
        return algo.load(cfg.resume, env=venv, device=device, tensorboard_log=tensorboard_log)
    except (*LOAD_ERRORS, TypeError, AttributeError) as exc:  # damaged, or another algorithm's
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"resume={cfg.resume} cannot be loaded as a {cfg.agent.algo} checkpoint for this env ({why}); "
            "resume with the agent and env the checkpoint was trained with"
        ) from exc


def train(cfg: TrainConfig, run_dir: Path, config_dict: dict[str, Any]) -> TrainResult:
    """Train per ``cfg`` into ``run_dir``: checkpoints, TensorBoard logs, the policy bundle."""
    if cfg.trainer.backend == "rllib":
        from agents.rllib import train_rllib

        return train_rllib(cfg, run_dir, config_dict)
    import torch

    torch.set_num_threads(cfg.trainer.torch_threads)
    device = pick_device(cfg.device)
    data = prepare_run(cfg, run_dir)
    with env_refusal(cfg.data, "train"):
        batched = BatchedMarketReplayEnv(
            num_envs=cfg.trainer.n_envs, bars=data.train_bars, funding=data.train_funding, copy=True,
            **data.env_kwargs,
        )  # fmt: skip
    venv = SB3VecEnv(batched)
    venv.seed(cfg.seed)
    tb = str(run_dir / "tb")
    if cfg.resume:
        model = load_checkpoint(cfg, venv, device, tb)
    else:
        model = build_model(cfg.agent, venv, seed=cfg.seed, device=device, tensorboard_log=tb)
    model.learn(
        total_timesteps=cfg.trainer.total_timesteps,
        callback=_callbacks(cfg, run_dir, data.validator),
        tb_log_name=cfg.agent.algo,
        reset_num_timesteps=not cfg.resume,
        progress_bar=False,
    )
    model.save(run_dir / "checkpoints" / "last.zip")
    bundle = save_bundle(run_dir / "policy", model, bundle_spec(cfg, batched, data.validator), config_dict)
    data.validator.save(run_dir / "validation.json")
    return TrainResult(bundle, model, data.validator.history, data.validator.baseline)
