"""Typed loading of stored series into contiguous numpy arrays.

This is the one door through which environments, evaluation and serving read history.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from data.errors import DataError
from data.schema import (
    ALL_BAR_COLUMNS,
    FUNDING,
    OPTIONAL_BAR_COLUMNS,
    TRADES,
    iso,
    parse_bar_spec,
    parse_time,
)
from data.store import SeriesKey, Store
from data.validate import find_gaps, find_segments


@dataclass(frozen=True)
class Bars:
    """Bars of one series over a time range.

    Arrays are contiguous, one entry per bar, sorted by ``ts`` (bar open time, int64 ms UTC).
    ``segments`` is an ``(n, 2)`` int64 array of row ranges ``[start, stop)`` that have no gap
    inside; an environment must not step across a segment boundary as if time were continuous.
    ``extra`` holds ``quote_volume``, ``trades`` and ``taker_buy_base`` (NaN where unknown).
    ``filled`` marks bars inserted by ``fill_gaps`` (all False otherwise).
    """

    key: SeriesKey
    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    segments: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    filled: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def bar_ms(self) -> int | None:
        spec = parse_bar_spec(self.key.timeframe)
        return spec.ms if spec.is_time else None

    def gaps(self) -> np.ndarray:
        """Missing ranges ``[from_ts, to_ts)`` (time bars only)."""
        if self.bar_ms is None:
            return np.empty((0, 2), dtype=np.int64)
        return find_gaps(self.ts, self.bar_ms)

    def to_frame(self) -> pd.DataFrame:
        cols = {
            "ts": self.ts,
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volume": self.volume,
            **self.extra,
        }
        if self.filled is not None:
            cols["filled"] = self.filled
        return pd.DataFrame(cols)


def _fill(arrays: dict[str, np.ndarray], bar_ms: int) -> dict[str, np.ndarray]:
    """Insert flat, zero-volume bars at the previous close into every gap."""
    ts = arrays["ts"]
    full = np.arange(ts[0], ts[-1] + bar_ms, bar_ms, dtype=np.int64)
    pos = ((ts - ts[0]) // bar_ms).astype(np.int64)
    present = np.zeros(len(full), dtype=bool)
    present[pos] = True
    # index of the last real bar at or before each slot: forward fill by running maximum
    last = np.maximum.accumulate(np.where(present, np.arange(len(full)), 0))
    src = np.searchsorted(pos, last)
    close = arrays["close"][src]
    out = {"ts": full}
    for col in ("open", "high", "low", "close"):
        out[col] = np.where(present, arrays[col][src], close)
    out["volume"] = np.where(present, arrays["volume"][src], 0.0)
    for col in OPTIONAL_BAR_COLUMNS:
        out[col] = np.where(present, arrays[col][src], 0.0)
    out["filled"] = ~present
    return out


def load_bars(
    symbol: str,
    timeframe: str = "1m",
    *,
    exchange: str = "binance",
    market: str = "spot",
    start: str | int | None = None,
    end: str | int | None = None,
    root: str | os.PathLike | None = None,
    fill_gaps: bool = False,
) -> Bars:
    """Bars with ``start <= ts < end`` (ISO dates or epoch ms; open ends are allowed).

    Gaps are reported through ``segments`` and :meth:`Bars.gaps`, not filled. With
    ``fill_gaps=True`` each missing bar becomes a flat bar at the previous close with zero
    volume, marked in ``Bars.filled``, and the whole range is one segment.
    """
    key = SeriesKey.of(exchange, market, symbol, timeframe)
    if key.kind != "bars":
        raise ValueError(f"load_bars reads bars; use load_funding / load_trades for {key.kind}")
    store = Store(root)
    lo, hi = parse_time(start), parse_time(end)
    if lo is not None and hi is not None and lo >= hi:
        raise ValueError(f"start {iso(lo)} must be before end {iso(hi)}")
    arrays = store.read_arrays(key, lo, hi, ALL_BAR_COLUMNS)
    if len(arrays["ts"]) == 0:
        raise DataError(
            f"no bars for {key} in [{iso(lo) if lo is not None else '-inf'}, "
            f"{iso(hi) if hi is not None else '+inf'}) under {store.root}. "
            "See what is stored with `python -m data coverage`; fill it with "
            f"`python -m data download exchange={key.exchange} market={key.market} "
            f"symbol={symbol} timeframe={timeframe} start=...` or `python -m data import ...`."
        )
    spec = parse_bar_spec(timeframe)
    filled = None
    if fill_gaps and spec.is_time:
        arrays = _fill(arrays, spec.ms)
        filled = arrays.pop("filled")
    if spec.is_time:
        segments = find_segments(arrays["ts"], spec.ms)
    else:
        segments = np.array([[0, len(arrays["ts"])]], dtype=np.int64)
    return Bars(
        key=key,
        ts=arrays["ts"],
        open=arrays["open"],
        high=arrays["high"],
        low=arrays["low"],
        close=arrays["close"],
        volume=arrays["volume"],
        segments=segments,
        extra={c: arrays[c] for c in OPTIONAL_BAR_COLUMNS},
        filled=filled if filled is not None else np.zeros(len(arrays["ts"]), dtype=bool),
    )


@dataclass(frozen=True)
class Funding:
    """Funding events: ``ts`` (int64 ms), ``rate`` per interval, ``mark_price`` (NaN if unknown)."""

    key: SeriesKey
    ts: np.ndarray
    rate: np.ndarray
    mark_price: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"ts": self.ts, "rate": self.rate, "mark_price": self.mark_price})


def load_funding(
    symbol: str,
    *,
    exchange: str = "binance",
    market: str = "futures",
    start: str | int | None = None,
    end: str | int | None = None,
    root: str | os.PathLike | None = None,
) -> Funding:
    """Funding events with ``start <= ts < end``; empty (not an error) when none are stored."""
    key = SeriesKey.of(exchange, market, symbol, FUNDING)
    a = Store(root).read_arrays(key, parse_time(start), parse_time(end))
    return Funding(key, a["ts"], a["rate"], a["mark_price"])


def load_trades(
    symbol: str,
    *,
    exchange: str = "binance",
    market: str = "spot",
    start: str | int | None = None,
    end: str | int | None = None,
    root: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Trade ticks ``ts price qty is_buyer_maker`` with ``start <= ts < end``."""
    key = SeriesKey.of(exchange, market, symbol, TRADES)
    return Store(root).read(key, parse_time(start), parse_time(end))
