"""Closed bars (and funding) of one series from a ccxt exchange, judged by the exchange's clock.

:class:`BarFeed` keeps a rolling buffer of the last ``need`` closed bars. ``update()`` asks the
exchange for its time (``fetch_time``), fetches every bar that closed since the buffer's last one
(never the still-open candle), backfills a hole between them, and reports the new closed bars in
order. A hole it cannot fill, or an exchange it cannot read, makes the feed ``stale`` (the loop
then only reduces). Reads are retried with backoff (:func:`data.exchange.read`).
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from data.errors import DownloadError
from data.exchange import read
from data.schema import iso, timeframe_ms

log = logging.getLogger(__name__)
PAGE = 1000


class BarFeed:
    def __init__(
        self, ex: Any, symbol: str, timeframe: str, need: int, with_funding: bool, max_retries: int = 3
    ):
        self.ex, self.symbol, self.timeframe = ex, symbol, timeframe
        self.bar = timeframe_ms(timeframe)
        self.need, self.with_funding, self.max_retries = need, with_funding, max_retries
        self.bars = pd.DataFrame(columns=["ts", "open", "high", "low", "close", "volume"])
        self.funding: pd.DataFrame | None = None
        self.stale = False
        self.reason = ""
        self.now_ms: int | None = None  # the exchange clock at the last update

    def now(self) -> int:
        """The exchange's clock, epoch ms."""
        return int(read(self.ex, self.ex.fetch_time, what="fetch_time", max_retries=self.max_retries))

    def last_closed(self, now_ms: int) -> int:
        """Open time of the last bar that has closed at ``now_ms``."""
        return (now_ms // self.bar) * self.bar - self.bar

    def _fetch(self, since: int, last: int) -> pd.DataFrame:
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
        frame = pd.DataFrame(rows, columns=["ts", "open", "high", "low", "close", "volume"])
        frame["ts"] = frame["ts"].astype("int64")
        return frame.drop_duplicates("ts").sort_values("ts").reset_index(drop=True)

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
            have = int(self.bars.ts.iloc[-1]) if len(self.bars) else None
            since = last - (self.need - 1) * self.bar if have is None else have + self.bar
            if have is not None and since > last:
                self.stale = False
                return []
            new = self._fetch(since, last)
            if self.with_funding:
                start = int(self.bars.ts.iloc[0] if len(self.bars) else since)
                fresh = self._fetch_funding(start - 8 * 3_600_000)
                if fresh is not None:
                    self.funding = fresh
        except DownloadError as exc:
            self.stale, self.reason = True, f"cannot read the exchange: {exc}"
            log.warning("%s", self.reason)
            return []
        merged = pd.concat([self.bars, new], ignore_index=True) if len(self.bars) else new
        merged = merged.drop_duplicates("ts").sort_values("ts").astype({"ts": "int64"})
        self.bars = merged.iloc[-self.need :].reset_index(drop=True)
        ts = self.bars.ts.to_numpy()
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
        return [int(t) for t in new.ts if have is None or t > have]
