"""Time bars of a longer timeframe from a shorter one (1m -> 5m, 1h -> 1d, 1d -> 1w).

A bucket of ``to`` bars starts where the exchange starts its own bar: ``ts // to_ms * to_ms``,
weekly bars on Monday 00:00 UTC (:func:`data.schema.timeframe_origin`). Within a bucket
``open`` is the first bar's open, ``high`` the maximum, ``low`` the minimum, ``close`` the last
close, and ``volume quote_volume trades taker_buy_base`` are sums (NaN as soon as one
constituent is NaN: a partly unknown sum is unknown).

Gaps: by default a bucket that lacks any of its constituent bars is dropped, so that every bar
written equals the exchange's own bar of that timeframe and a gap stays a gap. With
``partial=True`` such buckets are kept, built from the bars there are. Either way the open times
of the incomplete buckets are reported (:class:`Resampled`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from data.errors import DataError
from data.schema import (
    ALL_BAR_COLUMNS,
    BAR_COLUMNS,
    OPTIONAL_BAR_COLUMNS,
    iso,
    parse_time,
    timeframe_ms,
    timeframe_origin,
)
from data.store import SeriesKey, Store, WriteResult


@dataclass(frozen=True)
class Resampled:
    """The result of :func:`aggregate`.

    ``frame`` holds the bars in the store's schema; ``incomplete`` the open times (int64 ms) of
    buckets that lacked at least one constituent bar. They are *not* in ``frame`` unless
    ``partial`` was true.
    """

    frame: pd.DataFrame
    incomplete: np.ndarray
    partial: bool

    @property
    def dropped(self) -> int:
        """How many incomplete buckets were left out of ``frame``."""
        return 0 if self.partial else len(self.incomplete)


@dataclass(frozen=True)
class ResampleResult(WriteResult):
    """What :func:`resample_series` wrote, plus the incomplete buckets it met."""

    incomplete: int
    dropped: int


def _check_timeframes(from_timeframe: str, to_timeframe: str) -> tuple[int, int, int]:
    from_ms, to_ms = timeframe_ms(from_timeframe), timeframe_ms(to_timeframe)
    origin = timeframe_origin(to_timeframe)
    # the source bars must tile the target buckets exactly, origin included (3d bars, aligned
    # to the epoch, would straddle Monday-based weeks even if the lengths divided)
    if to_ms % from_ms or (origin - timeframe_origin(from_timeframe)) % from_ms:
        raise ValueError(
            f"cannot resample {from_timeframe} bars to {to_timeframe}: {to_timeframe} is not a "
            f"whole multiple of {from_timeframe}"
        )
    return from_ms, to_ms, origin


def aggregate(
    frame: pd.DataFrame, from_timeframe: str, to_timeframe: str, *, partial: bool = False
) -> Resampled:
    """Resample bars and report the incomplete buckets (see the module docstring).

    ``frame`` is in the store's schema (optional columns may be absent, then NaN), sorted by
    ``ts`` with no duplicates, every ``ts`` on a ``from_timeframe`` boundary; anything else is a
    ``ValueError``, because it means the bars are not what ``from_timeframe`` says.
    """
    from_ms, to_ms, origin = _check_timeframes(from_timeframe, to_timeframe)
    missing = [c for c in BAR_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"bars to resample lack columns {missing}")
    ts = frame["ts"].to_numpy(dtype=np.int64)
    if len(ts) == 0:
        empty = {c: np.empty(0, dtype=np.int64 if c == "ts" else np.float64) for c in ALL_BAR_COLUMNS}
        return Resampled(pd.DataFrame(empty), np.empty(0, dtype=np.int64), partial)
    if (np.diff(ts) <= 0).any():
        raise ValueError("bars to resample must be sorted by ts without duplicates")
    off = (ts - timeframe_origin(from_timeframe)) % from_ms
    if off.any():
        bad = int(ts[np.flatnonzero(off)[0]])
        raise ValueError(f"bar at {iso(bad)} is not on a {from_timeframe} boundary")

    bucket = (ts - origin) // to_ms * to_ms + origin
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], len(ts)]
    # ts are unique and aligned, so a bucket holds every constituent iff it holds as many
    complete = (ends - starts) == to_ms // from_ms

    def col(name: str) -> np.ndarray:
        if name not in frame.columns:
            return np.full(len(ts), np.nan)
        return frame[name].to_numpy(dtype=np.float64, na_value=np.nan)

    out = {
        "ts": bucket[starts],
        "open": col("open")[starts],
        "high": np.maximum.reduceat(col("high"), starts),
        "low": np.minimum.reduceat(col("low"), starts),
        "close": col("close")[ends - 1],
    }
    for name in ("volume", *OPTIONAL_BAR_COLUMNS):
        out[name] = np.add.reduceat(col(name), starts)  # NaN propagates through the sum
    result = pd.DataFrame(out)
    if not partial:
        result = result[complete].reset_index(drop=True)
    return Resampled(result, bucket[starts][~complete], partial)


def resample(
    frame: pd.DataFrame, from_timeframe: str, to_timeframe: str, *, partial: bool = False
) -> pd.DataFrame:
    """``frame``'s bars at ``to_timeframe``, in the store's schema.

    Incomplete buckets are dropped unless ``partial``; :func:`aggregate` does the same and also
    says which buckets were incomplete.
    """
    return aggregate(frame, from_timeframe, to_timeframe, partial=partial).frame


def resample_series(
    store: Store,
    key: SeriesKey,
    to_timeframe: str,
    *,
    partial: bool = False,
    start: str | int | None = None,
    end: str | int | None = None,
    on_conflict: str = "error",
) -> ResampleResult:
    """Resample the stored series ``key`` and write the result into the same exchange, market and
    symbol at ``to_timeframe``.

    Only buckets with ``start <= bucket open < end`` are built, and each from all its
    constituents (the read is widened to whole buckets). ``on_conflict`` is passed to
    :meth:`Store.write`: re-running over the same range writes nothing new, but a bucket stored
    with ``partial=True`` that has since been completed differs and needs ``replace``.
    The result counts the incomplete buckets seen and how many were dropped.
    """
    if key.kind != "bars":
        raise ValueError(f"{key} is a {key.kind} series; only time bars can be resampled")
    target = SeriesKey.of(key.exchange, key.market, key.symbol, to_timeframe)
    _, to_ms, origin = _check_timeframes(key.timeframe, to_timeframe)
    lo, hi = parse_time(start), parse_time(end)

    def ceil(t: int) -> int:
        return -((origin - t) // to_ms) * to_ms + origin

    frame = store.read(key, None if lo is None else ceil(lo), None if hi is None else ceil(hi))
    if frame.empty:
        raise DataError(
            f"no bars for {key} in [{iso(lo) if lo is not None else '-inf'}, "
            f"{iso(hi) if hi is not None else '+inf'}) under {store.root}; nothing to resample"
        )
    done = aggregate(frame, key.timeframe, to_timeframe, partial=partial)
    written = store.write(target, done.frame, on_conflict=on_conflict)
    return ResampleResult(written.rows_added, written.partitions, len(done.incomplete), done.dropped)
