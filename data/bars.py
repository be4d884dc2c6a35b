"""Bars built from trade ticks: time bars, volume bars and dollar bars.

The output is in the store's bar schema, so everything that reads bars reads these:
``ts open high low close volume`` plus ``quote_volume`` = sum of ``price * qty``, ``trades`` =
the number of trades, and ``taker_buy_base`` = sum of ``qty`` where the buyer was the taker
(``is_buyer_maker`` false). ``ts`` is the bar's open: the bucket start for time bars, the first
trade's time for volume and dollar bars.

Trades come in the store's trade schema (``ts price qty is_buyer_maker``), sorted by ``ts``,
with the exchange's order kept inside a millisecond.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from data.errors import DataError
from data.schema import (
    ALL_BAR_COLUMNS,
    TRADE_COLUMNS,
    iso,
    parse_bar_spec,
    parse_time,
    timeframe_ms,
    timeframe_origin,
)
from data.store import SeriesKey, Store, WriteResult


def _columns(trades: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    missing = [c for c in TRADE_COLUMNS if c not in trades.columns]
    if missing:
        raise ValueError(f"trades lack columns {missing}; expected {list(TRADE_COLUMNS)}")
    ts = trades["ts"].to_numpy(dtype=np.int64)
    if len(ts) and (np.diff(ts) < 0).any():
        bad = int(ts[1:][np.diff(ts) < 0][0])
        raise ValueError(f"trades must be sorted by ts; the trade at {iso(bad)} is out of order")
    price = trades["price"].to_numpy(dtype=np.float64)
    qty = trades["qty"].to_numpy(dtype=np.float64)
    taker_buy = ~trades["is_buyer_maker"].to_numpy(dtype=bool)
    return ts, price, qty, taker_buy


def _aggregate(
    ts: np.ndarray,
    price: np.ndarray,
    qty: np.ndarray,
    taker_buy: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    bar_ts: np.ndarray,
) -> pd.DataFrame:
    """One bar per ``[starts[i], ends[i])`` row range; the ranges tile a prefix of the trades."""
    if len(starts) == 0:
        return pd.DataFrame(
            {c: np.empty(0, dtype=np.int64 if c == "ts" else np.float64) for c in ALL_BAR_COLUMNS}
        )
    n = ends[-1]
    price, qty, taker_buy = price[:n], qty[:n], taker_buy[:n]
    return pd.DataFrame(
        {
            "ts": bar_ts.astype(np.int64),
            "open": price[starts],
            "high": np.maximum.reduceat(price, starts),
            "low": np.minimum.reduceat(price, starts),
            "close": price[ends - 1],
            "volume": np.add.reduceat(qty, starts),
            "quote_volume": np.add.reduceat(price * qty, starts),
            "trades": (ends - starts).astype(np.float64),
            "taker_buy_base": np.add.reduceat(np.where(taker_buy, qty, 0.0), starts),
        }
    )


def time_bars(trades: pd.DataFrame, timeframe: str) -> pd.DataFrame:
    """Bars of ``timeframe`` (``1s``, ``1m``, ...), opening at the bucket start like the exchange's.

    A bucket without trades has no bar: it is a gap, not a flat bar. The last bar holds the
    trades there are; if the trade record stops inside that bucket, the bar is shorter than the
    exchange's own (cut the trades at a bucket boundary to avoid that).
    """
    bar_ms, origin = timeframe_ms(timeframe), timeframe_origin(timeframe)
    ts, price, qty, taker_buy = _columns(trades)
    bucket = (ts - origin) // bar_ms * bar_ms + origin
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]]) if len(ts) else np.empty(0, np.int64)
    ends = np.r_[starts[1:], len(ts)].astype(np.int64)
    return _aggregate(ts, price, qty, taker_buy, starts, ends, bucket[starts])


def _threshold_bars(trades: pd.DataFrame, size: float, dollars: bool) -> pd.DataFrame:
    if not size > 0:
        raise ValueError(f"bar size must be positive, got {size}")
    ts, price, qty, taker_buy = _columns(trades)
    n = len(ts)
    measure = price * qty if dollars else qty
    cum = np.r_[0.0, np.cumsum(measure)]  # cum[k] = measure of trades [0, k)
    # For a bar starting at trade i: the first k with cum[k] - cum[i] >= size closes it (trades
    # [i, k)), pushed on to the end of trade k-1's millisecond. Computed for every i at once;
    # the float sum cum[i] + size can round below the target, so step on where it did.
    first = np.arange(n)
    k = np.searchsorted(cum, cum[:-1] + size, side="left")
    short = k <= n
    short[short] = cum[k[short]] - cum[first[short]] < size
    while short.any():
        k[short] += 1
        short &= k <= n
        short[short] = cum[k[short]] - cum[first[short]] < size
    # exclusive end of each trade's millisecond: a threshold crossed inside a millisecond closes
    # the bar after that millisecond's last trade, so every bar opens on a new millisecond
    ms_end = np.searchsorted(ts, ts, side="right")
    nxt = np.where(k <= n, ms_end[np.minimum(k, n) - 1], n + 1)
    # following the chain of bar starts is sequential by nature; it costs one step per bar
    hops = nxt.tolist()
    starts: list[int] = []
    i = 0
    while i < n and hops[i] <= n:
        starts.append(i)
        i = hops[i]
    start_arr = np.asarray(starts, dtype=np.int64)
    end_arr = nxt[start_arr] if len(starts) else np.empty(0, dtype=np.int64)
    return _aggregate(ts, price, qty, taker_buy, start_arr, end_arr, ts[start_arr])


def volume_bars(trades: pd.DataFrame, size: float) -> pd.DataFrame:
    """Bars of at least ``size`` base units each.

    A bar opens at a trade (its ``ts`` is that trade's time) and closes once the base volume
    since its open reaches ``size``; if that happens inside a millisecond, the bar also takes the
    rest of that millisecond's trades, so no two bars open in the same millisecond (the store
    needs unique ``ts``, and a millisecond's trades cannot be ordered across bars honestly).
    Every bar's volume is therefore ``>= size``, often a little more.

    The trailing trades that do not reach ``size`` form no bar and are left out; they are
    ``trades.iloc[int(bars["trades"].sum()):]`` (carry them into the next batch to continue).
    Bars depend on where the trades start: the same trades cut from another first trade give
    other bars.
    """
    return _threshold_bars(trades, float(size), dollars=False)


def dollar_bars(trades: pd.DataFrame, size: float) -> pd.DataFrame:
    """Bars of at least ``size`` quote units (``sum(price * qty)``) each; otherwise exactly like
    :func:`volume_bars` (bars open on distinct milliseconds; the last incomplete bar is left out)."""
    return _threshold_bars(trades, float(size), dollars=True)


def build_bars(trades: pd.DataFrame, spec_name: str) -> pd.DataFrame:
    """Bars for a bar spec: a timeframe (``1m``), ``volume-N`` or ``dollar-N``."""
    spec = parse_bar_spec(spec_name)
    if spec.is_time:
        return time_bars(trades, spec_name)
    if spec.kind == "volume":
        return volume_bars(trades, spec.size)
    return dollar_bars(trades, spec.size)


def build_bar_series(
    store: Store,
    trades_key: SeriesKey,
    spec_name: str,
    start: str | int | None = None,
    end: str | int | None = None,
    *,
    on_conflict: str = "error",
) -> WriteResult:
    """Build bars from the stored trades of ``trades_key`` and write them into
    ``SeriesKey.of(exchange, market, symbol, spec_name)``.

    Time bars cover the whole buckets that open in ``[start, end)`` (the trade window is rounded
    up to bucket boundaries at both ends). Volume and dollar bars start at the first trade at or
    after ``start``; build them over the whole range in one go, since bars built from another
    first trade differ (and then conflict with stored ones unless ``on_conflict`` says otherwise).
    """
    if trades_key.kind != "trades":
        raise ValueError(f"{trades_key} is not a trades series")
    target = SeriesKey.of(trades_key.exchange, trades_key.market, trades_key.symbol, spec_name)
    spec = parse_bar_spec(spec_name)
    lo, hi = parse_time(start), parse_time(end)
    if spec.is_time:
        bar_ms, origin = spec.ms, timeframe_origin(spec_name)

        def ceil(t: int) -> int:
            return -((origin - t) // bar_ms) * bar_ms + origin

        lo = None if lo is None else ceil(lo)
        hi = None if hi is None else ceil(hi)
    trades = store.read(trades_key, lo, hi)
    if trades.empty:
        raise DataError(
            f"no trades for {trades_key} in [{iso(lo) if lo is not None else '-inf'}, "
            f"{iso(hi) if hi is not None else '+inf'}) under {store.root}; import them first "
            "(python -m data import path=... timeframe=trades)"
        )
    return store.write(target, build_bars(trades, spec_name), on_conflict=on_conflict)
