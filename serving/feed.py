"""Closed bars (and funding) of one series from a ccxt exchange, judged by the exchange's clock.

:class:`BarFeed` keeps a rolling buffer of the last ``need`` closed bars. ``update()`` asks the
exchange for its time (``fetch_time``), fetches every bar that closed since the buffer's last one
(never the still-open candle), backfills a hole between them, and reports the new closed bars in
order. A hole it cannot fill, or an exchange it cannot read, makes the feed ``stale`` (the loop
then only reduces). Reads are retried with backoff (:func:`data.exchange.read`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from data.errors import DownloadError
from data.exchange import read
from data.schema import iso, timeframe_ms

log = logging.getLogger(__name__)
PAGE = 1000
COLUMNS = ("ts", "open", "high", "low", "close", "volume")


def _empty() -> dict[str, np.ndarray]:
    return {c: np.empty(0, dtype=np.int64 if c == "ts" else np.float64) for c in COLUMNS}


class BarFeed:
    def __init__(
        self, ex: Any, symbol: str, timeframe: str, need: int, with_funding: bool, max_retries: int = 3
    ):
        self.ex, self.symbol, self.timeframe = ex, symbol, timeframe
        self.bar = timeframe_ms(timeframe)
        self.need, self.with_funding, self.max_retries = need, with_funding, max_retries
        # the buffer as columns (ts int64, the rest float64), oldest first: the loop slices it per bar
        self.bars: dict[str, np.ndarray] = _empty()
        self.funding: pd.DataFrame | None = None
        self.stale = False
        self.reason = ""
        self.now_ms: int | None = None  # the exchange clock at the last update
        self.read_at = 0.0  # time.perf_counter() when the last update's last read returned

    def __len__(self) -> int:
        return len(self.bars["ts"])

    def now(self) -> int:
        """The exchange's clock, epoch ms."""
        return int(read(self.ex, self.ex.fetch_time, what="fetch_time", max_retries=self.max_retries))

    def last_closed(self, now_ms: int) -> int:
        """Open time of the last bar that has closed at ``now_ms``."""
        return (now_ms // self.bar) * self.bar - self.bar

    def _fetch(self, since: int, last: int) -> dict[str, np.ndarray]:
        rows: list[list[float]] = []
        cursor = since
        while cursor <= last:
            page = read(
                self.ex,
                lambda c=cursor: self.ex.fetch_ohlcv(self.symbol, self.timeframe, since=c, limit=PAGE),
                what=f"fetch_ohlcv {self.symbol} {self.timeframe}",
                max_retries=self.max_retries,
            )
            page = [r for r in page or [] if cursor <= r[0] <= last]
            if not page:
                break
            rows.extend(page)
            cursor = int(page[-1][0]) + self.bar
        if not rows:
            return _empty()
        table = np.array([r[:6] for r in rows], dtype=np.float64)
        cols = {c: table[:, i] for i, c in enumerate(COLUMNS)}
        cols["ts"] = cols["ts"].astype(np.int64)
        return cols

    def _fetch_funding(self, since: int) -> pd.DataFrame | None:
        page = read(
            self.ex,
            lambda: self.ex.fetch_funding_rate_history(self.symbol, since=since, limit=PAGE),
            what=f"fetch_funding_rate_history {self.symbol}",
            max_retries=self.max_retries,
        )
        rows = [
            (
                int(r["timestamp"]),
                float(r["fundingRate"]),
                float((r.get("info") or {}).get("markPrice") or 0.0),
            )
            for r in page or []
        ]
        if not rows:
            return None
        return pd.DataFrame(rows, columns=["ts", "rate", "mark_price"]).drop_duplicates("ts")

    def update(self) -> list[int]:
        """Fetch what closed since the last call; the open times of the new closed bars, oldest
        first. On a read failure or a hole that cannot be filled: ``stale`` with a ``reason``."""
        try:
            now = self.now_ms = self.now()
            last = self.last_closed(now)
            have = int(self.bars["ts"][-1]) if len(self) else None
            since = last - (self.need - 1) * self.bar if have is None else have + self.bar
            if have is not None and since > last:
                self.stale = False
                return []
            new = self._fetch(since, last)
            if self.with_funding:
                start = int(self.bars["ts"][0] if len(self) else since)
                fresh = self._fetch_funding(start - 8 * 3_600_000)
                if fresh is not None:
                    self.funding = fresh
        except DownloadError as exc:
            self.stale, self.reason = True, f"cannot read the exchange: {exc}"
            log.warning("%s", self.reason)
            return []
        finally:
            self.read_at = time.perf_counter()
        both = {c: np.concatenate([self.bars[c], new[c]]) for c in COLUMNS}
        ts = both["ts"]
        if not (ts[1:] > ts[:-1]).all():  # (the usual case, new bars after the buffer's, needs nothing)
            # sorted by open time, one row per bar (a bar the buffer holds keeps its values)
            _, first = np.unique(ts, return_index=True)
            both = {c: v[first] for c, v in both.items()}
        self.bars = {c: v[-self.need :] for c, v in both.items()}
        ts = self.bars["ts"]
        holes = (ts[1:] - ts[:-1]) != self.bar
        if len(ts) and int(ts[-1]) != last:
            self.stale, self.reason = (
                True,
                f"the last closed bar {iso(last)} is missing (the exchange has up to {iso(int(ts[-1]))})",
            )
        elif holes.any():
            self.stale, self.reason = (
                True,
                f"a hole in the bars after {iso(int(ts[:-1][holes][-1]))} the exchange did not fill",
            )
        else:
            self.stale, self.reason = False, ""
        return [int(t) for t in new["ts"] if have is None or t > have]
