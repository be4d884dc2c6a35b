"""Deterministic replays through the same kernel as training, and the records they leave.

:func:`replay` runs one policy over one stretch of bars as a single long episode and returns
one row per bar: the env's info after the bar (:data:`envs.vector.INFO_KEYS`) plus the action
decided at the previous close, the target exposure it meant, and the reward. :func:`ledger`,
:func:`fills` and :func:`replay_metrics` turn that into the evaluation's ledger, its fills and its
metrics. Row 0 is the starting state (the decision bar before the first fill).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from data.schema import iso
from envs.replay import MarketReplayEnv
from envs.vector import S_EXPOSURE
from reports import metrics

LEDGER_COLUMNS: tuple[str, ...] = (
    "ts", "open", "high", "low", "close", "action", "target_exposure", "position", "cash", "equity",
    "fee", "funding", "slippage", "reward", "liquidated", "trade_qty", "trade_price", "liquidation_qty",
    "liquidation_price", "liquidation_fee", "borrow", "top_up",
)  # fmt: skip
"""Per bar: the bar (``ts`` its open time), the decision taken at the previous close and filled
at this bar's open (``action``, ``target_exposure``), the state at this bar's close, and this
bar's own charges: ``fee`` (trading and liquidation fees), ``funding`` and ``borrow`` (positive =
paid), ``slippage`` (cost of the fill against the open, in quote), ``top_up`` (loss the
isolated-margin floor passed to the exchange)."""

FILL_COLUMNS: tuple[str, ...] = ("ts", "side", "qty", "price", "fee", "slippage", "reason")


class ReplayError(ValueError):
    """A replay that cannot run over the range asked. Policy: stop, naming the range and the fix."""


def replay(
    act: Callable[[np.ndarray, dict], Any],
    bars: pd.DataFrame,
    funding: pd.DataFrame | None,
    env_kwargs: dict[str, Any],
    start_ts: int,
) -> pd.DataFrame:
    """One deterministic episode from the first valid bar at or after ``start_ts`` to the end of
    its gap-free stretch (``bars`` include the warm-up history before ``start_ts``)."""
    kwargs = {**env_kwargs, "random_start": False, "episode_length": len(bars)}
    env = MarketReplayEnv(bars=bars, funding=funding, **kwargs)
    i = int(np.searchsorted(env.market.ts, start_ts))
    starts = env._vec.starts
    first = next((max(lo, i) for lo, hi in zip(starts.lo, starts.hi, strict=True) if hi > max(lo, i)), None)
    if first is None:
        raise ReplayError(
            f"no replay fits from {iso(start_ts)}: the range is shorter than the features' warm-up "
            "or lies across a gap; start later or load more history"
        )
    obs, info = env.reset(options={"start": int(env.market.ts[first])})
    rows = [{**info, "action": np.nan, "target_exposure": 0.0, "reward": 0.0}]
    done = False
    while not done:
        action = act(obs, info)
        obs, reward, terminated, truncated, info = env.step(action)
        target = float(env._vec.state[0, S_EXPOSURE])
        rows.append({**info, "action": float(np.asarray(action).reshape(-1)[0]), "target_exposure": target,
                     "reward": float(reward)})  # fmt: skip
        done = terminated or truncated
    return pd.DataFrame(rows)


def _fill_prices(rows: pd.DataFrame) -> np.ndarray:
    """Per bar, the price the position changed at (the liquidation's where there was one), else NaN."""
    liq = rows["liquidation_qty"].to_numpy() != 0
    traded = rows["trade_qty"].to_numpy() != 0
    price = np.where(traded, rows["trade_price"].to_numpy(), np.nan)
    return np.where(liq, rows["liquidation_price"].to_numpy(), price)


def round_trips(rows: pd.DataFrame) -> pd.DataFrame:
    """Round trips of a replay (:func:`reports.metrics.round_trips`), liquidations included."""
    fees = rows["fees"].diff().fillna(0.0).to_numpy()
    return metrics.round_trips(rows["ts"].to_numpy(), rows["position"].to_numpy(), _fill_prices(rows), fees)


def replay_metrics(rows: pd.DataFrame, timeframe: str) -> dict[str, float]:
    """The metrics of a replay (see :func:`reports.metrics.summary`)."""
    trips = round_trips(rows)
    return metrics.summary(
        rows["equity"].to_numpy(),
        rows["position"].to_numpy()[1:],
        trips["pnl"].to_numpy() if len(trips) else np.empty(0),
        periods_per_year=metrics.periods_per_year(timeframe),
        fees=float(rows["fees"].iloc[-1]),
        funding=float(rows["funding"].iloc[-1]),
        turnover_notional=float(rows["turnover"].iloc[-1]),
        liquidations=int(rows["liquidated"].sum()),
    )


def ledger(rows: pd.DataFrame, bars: pd.DataFrame) -> pd.DataFrame:
    """The per-bar ledger (:data:`LEDGER_COLUMNS`) of a replay over ``bars``."""
    ohlc = bars.set_index("ts")[["open", "high", "low", "close"]]
    out = pd.DataFrame({"ts": rows["ts"].to_numpy(dtype=np.int64)})
    out = out.join(ohlc, on="ts")
    per_bar = {
        "fee": rows["fees"].diff().fillna(0.0),
        "funding": rows["funding"].diff().fillna(0.0),
        "slippage": rows["slippage"].diff().fillna(0.0),
        "borrow": rows["borrow"].diff().fillna(0.0),
    }
    for col in LEDGER_COLUMNS[5:]:
        out[col] = per_bar[col].to_numpy() if col in per_bar else rows[col].to_numpy()
    out["liquidated"] = out["liquidated"].astype(bool)
    out["ts"] = pd.to_datetime(out["ts"], unit="ms", utc=True)
    return out[list(LEDGER_COLUMNS)]


def fills(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per fill (:data:`FILL_COLUMNS`): the policy's trades and liquidations. ``qty`` is
    unsigned, ``side`` says which way; ``slippage`` is the fill's cost against the bar's open."""
    out = []
    ts = pd.to_datetime(rows["ts"].to_numpy(dtype=np.int64), unit="ms", utc=True)
    slip = rows["slippage"].diff().fillna(0.0).to_numpy()
    for i in np.flatnonzero(rows["trade_qty"].to_numpy() != 0):
        q = float(rows["trade_qty"].iat[i])
        out.append((ts[i], "buy" if q > 0 else "sell", abs(q), float(rows["trade_price"].iat[i]),
                    float(rows["trade_fee"].iat[i]), float(slip[i]), "policy"))  # fmt: skip
    for i in np.flatnonzero(rows["liquidation_qty"].to_numpy() != 0):
        q = float(rows["liquidation_qty"].iat[i])
        out.append((ts[i], "buy" if q > 0 else "sell", abs(q), float(rows["liquidation_price"].iat[i]),
                    float(rows["liquidation_fee"].iat[i]), 0.0, "liquidation"))  # fmt: skip
    frame = pd.DataFrame(out, columns=list(FILL_COLUMNS))
    return frame.sort_values("ts", kind="stable").reset_index(drop=True)
