"""Training with stable-baselines3 on the native batched env, start to finish.

``train(config, run_dir)`` reads (or fills) the store, builds the batched env over the train
range, trains with TensorBoard logging of the trading picture, replays the validation range
every ``trainer.eval_every`` env-steps next to buy-and-hold, keeps periodic and best
checkpoints, and writes the policy bundle. The test range is never read here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agents.algorithms import build_model
from agents.baselines import BuyAndHold
from agents.bundle import env_spec, save_bundle
from agents.config import ConfigError, DataConfig, TrainConfig
from data.errors import DataError, DownloadError
from data.loader import load_bars, load_funding
from data.schema import FUNDING, iso, timeframe_ms
from data.store import SeriesKey, Store
from envs.config import EnvConfig
from envs.features import warmup as feature_warmup
from envs.market import default_features
from envs.replay import MarketReplayEnv
from envs.sb3 import SB3VecEnv
from envs.vector import BatchedMarketReplayEnv
from reports import metrics

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
        bars, funding = generate(
            SyntheticConfig(
                seed=d.synthetic_seed, start=d.train_start, bars=d.synthetic_bars, timeframe=d.timeframe
            )
        )
        if bars.ts.iloc[-1] < end - bar:
            raise ConfigError(
                f"data.synthetic_bars={d.synthetic_bars} ends at {iso(int(bars.ts.iloc[-1]))}, before "
                f"data.test_end={d.test_end}; raise data.synthetic_bars or move the ranges"
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
    """Bars of history a decision needs before the first bar of a range."""
    names = env.features if env.features is not None else default_features(env)
    return max(feature_warmup(names, env.norm_window), env.vol_window, env.spread_window, env.window - 1)


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


# -- replay -------------------------------------------------------------------------------------


def replay(
    act: Callable[[np.ndarray, dict], Any],
    bars: pd.DataFrame,
    funding: pd.DataFrame | None,
    env_kwargs: dict[str, Any],
    start_ts: int,
) -> pd.DataFrame:
    """One deterministic episode from the first valid bar at or after ``start_ts`` to the end of
    its gap-free stretch; one row of env info per bar (the first row is the starting state)."""
    kwargs = {**env_kwargs, "random_start": False, "episode_length": len(bars)}
    env = MarketReplayEnv(bars=bars, funding=funding, **kwargs)
    i = int(np.searchsorted(env.market.ts, start_ts))
    starts = env._vec.starts
    first = next((max(lo, i) for lo, hi in zip(starts.lo, starts.hi, strict=True) if hi > max(lo, i)), None)
    if first is None:
        raise ConfigError(f"no replay fits after {iso(start_ts)}: the range is shorter than the warm-up")
    obs, info = env.reset(options={"start": int(env.market.ts[first])})
    rows = [info]
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(act(obs, info))
        rows.append(info)
        done = terminated or truncated
    return pd.DataFrame(rows)


def replay_metrics(ledger: pd.DataFrame, timeframe: str) -> dict[str, float]:
    """The metrics of a replay ledger (see :func:`reports.metrics.summary`)."""
    fills = np.where(ledger["trade_qty"].to_numpy() != 0, ledger["trade_price"].to_numpy(), np.nan)
    fees = ledger["fees"].diff().fillna(0.0).to_numpy()
    trips = metrics.round_trips(ledger["ts"].to_numpy(), ledger["position"].to_numpy(), fills, fees)
    return metrics.summary(
        ledger["equity"].to_numpy(),
        ledger["position"].to_numpy()[1:],
        trips["pnl"].to_numpy() if len(trips) else np.empty(0),
        periods_per_year=metrics.periods_per_year(timeframe),
        fees=float(ledger["fees"].iloc[-1]),
        funding=float(ledger["funding"].iloc[-1]),
        turnover_notional=float(ledger["turnover"].iloc[-1]),
        liquidations=int(ledger["liquidated"].sum()),
    )


def _action_values(env: EnvConfig) -> tuple[float, ...] | None:
    return env.action_values if env.action_type == "discrete" else None


# -- callbacks ----------------------------------------------------------------------------------


def _callbacks(cfg: TrainConfig, run_dir: Path, val: tuple, env_kwargs: dict[str, Any]):
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback

    ppy = metrics.periods_per_year(cfg.data.timeframe)
    bars_per_day = ppy / 365
    initial = cfg.env.initial_equity

    class TradingMetrics(BaseCallback):
        """Per rollout: the trading picture of the episodes that finished in it."""

        def _on_rollout_start(self) -> None:
            self.finished: list[dict] = []

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", ()):
                if "episode_length" in info:
                    self.finished.append(info)
            return True

        def _on_rollout_end(self) -> None:
            if not getattr(self, "finished", None):
                return
            eps = self.finished
            length = np.array([e["episode_length"] for e in eps], dtype=float)
            std = np.array([e["episode_log_return_std"] for e in eps])
            mean = np.array([e["episode_log_return_mean"] for e in eps])
            sharpe = np.where(std > 0, mean / np.where(std > 0, std, 1) * math.sqrt(ppy), 0.0)
            rec = self.logger.record
            rec("trading/episode_return_pct", float(np.mean([e["equity"] / initial - 1 for e in eps]) * 100))
            rec("trading/sharpe", float(sharpe.mean()))
            rec("trading/max_drawdown_pct", float(np.mean([e["episode_max_drawdown"] for e in eps]) * 100))
            rec("trading/turnover", float(np.mean([e["turnover"] / initial for e in eps])))
            rec("trading/fees_pct", float(np.mean([e["fees"] / initial for e in eps]) * 100))
            rec("trading/funding_pct", float(np.mean([e["funding"] / initial for e in eps]) * 100))
            rec("trading/exposure_time", float(np.mean([e["episode_exposed_bars"] for e in eps] / length)))
            rec(
                "trading/trades_per_day",
                float(np.mean([e["episode_trades"] for e in eps] / length) * bars_per_day),
            )
            rec("trading/liquidation_rate", float(np.mean([e["liquidated"] for e in eps])))
            rec("trading/episodes", len(eps))

    class Validation(BaseCallback):
        """Every ``eval_every`` env-steps: a deterministic replay of the validation range next to
        buy-and-hold on it; the best policy by validation Sharpe is kept."""

        def __init__(self) -> None:
            super().__init__()
            self.next_eval = cfg.trainer.eval_every
            self.best = -math.inf
            bars, funding, start = val
            hold = replay(
                BuyAndHold(_action_values(cfg.env), cfg.env.shorting).act, bars, funding, env_kwargs, start
            )
            self.baseline = replay_metrics(hold, cfg.data.timeframe)
            self.history: list[dict] = []

        def _evaluate(self) -> None:
            bars, funding, start = val
            ledger = replay(
                lambda obs, info: self.model.predict(obs, deterministic=True)[0],
                bars,
                funding,
                env_kwargs,
                start,
            )
            m = replay_metrics(ledger, cfg.data.timeframe)
            for k in ("total_return", "sharpe", "max_drawdown", "trades_per_day", "fees", "exposure"):
                self.logger.record(f"validation/{k}", float(m[k]))
                self.logger.record(f"validation_buy_and_hold/{k}", float(self.baseline[k]))
            self.history.append({"timesteps": self.num_timesteps, **m})
            if m["sharpe"] > self.best:
                self.best = m["sharpe"]
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
    validation = Validation()
    checkpoints = CheckpointCallback(every, str(run_dir / "checkpoints"), name_prefix="step")
    return CallbackList([TradingMetrics(), validation, checkpoints]), validation


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


def train(cfg: TrainConfig, run_dir: Path, config_dict: dict[str, Any]) -> TrainResult:
    """Train per ``cfg`` into ``run_dir``: checkpoints, TensorBoard logs, the policy bundle."""
    import torch

    torch.set_num_threads(cfg.trainer.torch_threads)
    device = pick_device(cfg.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    with_funding = cfg.env.market == "perp" and cfg.data.market == "futures"
    ensure_data(cfg.data, with_funding or (cfg.env.market == "perp" and cfg.data.exchange == "synthetic"))
    env_kwargs = dataclasses.asdict(cfg.env)

    train_bars, train_funding, _ = load_split(cfg.data, cfg.env, "train", with_history=False)
    val = load_split(cfg.data, cfg.env, "val", with_history=True)
    batched = BatchedMarketReplayEnv(
        num_envs=cfg.trainer.n_envs, bars=train_bars, funding=train_funding, copy=True, **env_kwargs
    )
    venv = SB3VecEnv(batched)
    venv.seed(cfg.seed)
    log.info(
        "train: %s bars %s -> %s; %d accounts",
        f"{len(train_bars):,}",
        cfg.data.train_start,
        cfg.data.train_end,
        cfg.trainer.n_envs,
    )

    tb = str(run_dir / "tb")
    if cfg.resume:
        from agents.algorithms import algorithm_class

        model = algorithm_class(cfg.agent.algo).load(cfg.resume, env=venv, device=device, tensorboard_log=tb)
    else:
        model = build_model(cfg.agent, venv, seed=cfg.seed, device=device, tensorboard_log=tb)
    callbacks, validation = _callbacks(cfg, run_dir, val, env_kwargs)
    model.learn(
        total_timesteps=cfg.trainer.total_timesteps,
        callback=callbacks,
        tb_log_name=cfg.agent.algo,
        reset_num_timesteps=not cfg.resume,
        progress_bar=False,
    )
    model.save(run_dir / "checkpoints" / "last.zip")
    spec = {
        **env_spec(batched, timeframe=cfg.data.timeframe, symbol=cfg.data.symbol, exchange=cfg.data.exchange),
        "algo": cfg.agent.algo,
        "backend": "sb3",
        "data_market": cfg.data.market,
        "ranges": {
            s: [getattr(cfg.data, f"{s}_start"), getattr(cfg.data, f"{s}_end")]
            for s in ("train", "val", "test")
        },
        "validation": validation.history[-1] if validation.history else None,
        "validation_buy_and_hold": validation.baseline,
    }
    bundle = save_bundle(run_dir / "policy", model, spec, config_dict)
    (run_dir / "validation.json").write_text(
        json.dumps(
            {"history": validation.history, "buy_and_hold": validation.baseline}, indent=2, default=float
        )
    )
    return TrainResult(bundle, model, validation.history, validation.baseline)
