"""Validation of bar, funding and trade tables, and the gap / segment arithmetic of time bars.

Validation reports; it never repairs. Every problem is an :class:`~data.errors.Issue` that
carries the timestamp of the offending row.

Gaps are half-open ranges of missing bar open times ``[from_ts, to_ts)``: ``from_ts`` is the open
time of the first missing bar and ``to_ts`` the open time of the first bar present after the hole,
so a gap holds ``(to_ts - from_ts) / bar_ms`` missing bars.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from data.errors import Issue

_MAX_PER_KIND = 1000  # enough to show the pattern; a broken file should not print a million lines


def _issues(ts: np.ndarray, mask: np.ndarray, kind: str, detail) -> list[Issue]:
    idx = np.flatnonzero(mask)[:_MAX_PER_KIND]
    return [Issue(int(ts[i]), kind, detail(i)) for i in idx]


def check_timestamps(ts: np.ndarray, bar_ms: int | None = None, origin: int = 0) -> list[Issue]:
    """Duplicated, unsorted and (for time bars of ``bar_ms``) misaligned timestamps."""
    issues: list[Issue] = []
    if len(ts) == 0:
        return issues
    step = np.diff(ts)
    issues += _issues(ts[1:], step == 0, "duplicate_ts", lambda i: "same ts as the row before")
    issues += _issues(ts[1:], step < 0, "unsorted_ts", lambda i: f"earlier than the row before ({ts[i]})")
    if bar_ms is not None:
        off = (ts - origin) % bar_ms
        issues += _issues(ts, off != 0, "misaligned_ts", lambda i: f"not on a {bar_ms} ms bar boundary")
    return issues


def check_bars(
    df: pd.DataFrame | Mapping[str, np.ndarray], bar_ms: int | None = None, origin: int = 0
) -> list[Issue]:
    """Every rule a bar table must satisfy.

    ``df`` is a DataFrame or a mapping of column name to array (the serving loop's buffer).
    ``bar_ms`` is the bar length for time bars (alignment is checked), ``None`` for volume and
    dollar bars, whose open times are irregular.
    """
    ts = np.asarray(df["ts"])
    issues = check_timestamps(ts, bar_ms, origin)
    o, h, lo, c, v = (np.asarray(df[k], dtype=np.float64) for k in ("open", "high", "low", "close", "volume"))
    finite = np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c) & np.isfinite(v)
    issues += _issues(ts, ~finite, "non_finite", lambda i: f"o={o[i]} h={h[i]} l={lo[i]} c={c[i]} v={v[i]}")
    with np.errstate(invalid="ignore"):
        issues += _issues(
            ts,
            finite & (h < np.maximum(o, c)),
            "high_below_open_close",
            lambda i: f"high {h[i]} < max(open {o[i]}, close {c[i]})",
        )
        issues += _issues(
            ts,
            finite & (lo > np.minimum(o, c)),
            "low_above_open_close",
            lambda i: f"low {lo[i]} > min(open {o[i]}, close {c[i]})",
        )
        issues += _issues(
            ts,
            finite & ((o <= 0) | (lo <= 0)),
            "non_positive_price",
            lambda i: f"open {o[i]} low {lo[i]}",
        )
        issues += _issues(ts, finite & (v < 0), "negative_volume", lambda i: f"volume {v[i]}")
    for col in ("quote_volume", "trades", "taker_buy_base"):
        if col in df:
            x = np.asarray(df[col], dtype=np.float64)
            with np.errstate(invalid="ignore"):
                bad = np.isinf(x) | (x < 0)
            issues += _issues(ts, bad, f"bad_{col}", lambda i, x=x, col=col: f"{col} {x[i]}")
    return sorted(issues, key=lambda issue: issue.ts)


def check_funding(df: pd.DataFrame) -> list[Issue]:
    """Funding rows: sorted unique ts, a finite rate, a positive mark price where one is given."""
    ts = df["ts"].to_numpy()
    issues = check_timestamps(ts)
    rate = df["rate"].to_numpy(dtype=np.float64)
    mark = df["mark_price"].to_numpy(dtype=np.float64)
    issues += _issues(ts, ~np.isfinite(rate), "non_finite", lambda i: f"rate {rate[i]}")
    with np.errstate(invalid="ignore"):
        issues += _issues(ts, np.isinf(mark) | (mark <= 0), "bad_mark_price", lambda i: f"mark {mark[i]}")
    return sorted(issues, key=lambda issue: issue.ts)


def check_trades(df: pd.DataFrame) -> list[Issue]:
    """Trade ticks: non-decreasing ts (many trades share a millisecond), finite positive
    price and quantity."""
    ts = df["ts"].to_numpy()
    issues = _issues(
        ts[1:], np.diff(ts) < 0, "unsorted_ts", lambda i: f"earlier than the trade before ({ts[i]})"
    )
    price = df["price"].to_numpy(dtype=np.float64)
    qty = df["qty"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(price) & np.isfinite(qty) & (price > 0) & (qty > 0))
    issues += _issues(ts, bad, "bad_trade", lambda i: f"price {price[i]} qty {qty[i]}")
    return sorted(issues, key=lambda issue: issue.ts)


def find_gaps(ts: np.ndarray, bar_ms: int) -> np.ndarray:
    """Holes in sorted bar open times, as an ``(n, 2)`` int64 array of ``[from_ts, to_ts)``."""
    ts = np.asarray(ts, dtype=np.int64)
    if len(ts) < 2:
        return np.empty((0, 2), dtype=np.int64)
    where = np.flatnonzero(np.diff(ts) > bar_ms)
    return np.stack([ts[where] + bar_ms, ts[where + 1]], axis=1).astype(np.int64)


def find_segments(ts: np.ndarray, bar_ms: int) -> np.ndarray:
    """Contiguous runs of bars as an ``(n, 2)`` int64 array of row ranges ``[start, stop)``."""
    ts = np.asarray(ts, dtype=np.int64)
    if len(ts) == 0:
        return np.empty((0, 2), dtype=np.int64)
    breaks = np.flatnonzero(np.diff(ts) != bar_ms) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(ts)]])
    return np.stack([starts, stops], axis=1).astype(np.int64)
