"""Download klines and funding rates through ccxt into the store.

Both downloads follow the same rules:

- **Resume.** Only what the store lacks at its ends is fetched: after the last stored row (a
  re-run refetches nothing) and, when ``start`` lies before the first stored row, the part
  before it. Holes in the middle are the exchange's own gaps and are left alone.
- **Closed bars only.** The exchange clock (``fetch_time``, read once at the start) decides: a
  bar is stored when ``ts + bar_ms <= server_now``. The still-open candle Binance returns last
  is never stored.
- **Bounded paging.** ``since`` advances by at least one bar per page; an empty page is stepped
  over (``limit`` bars) only while the exchange has data later, so gaps neither loop forever
  nor end the download early.
- **Chunked, crash-safe writes.** Rows are written at each month boundary (one write per
  partition), every :data:`FLUSH_ROWS` rows, at the end, and on the way out of an error or
  Ctrl-C. A killed process loses at most the unwritten buffer; the store stays valid.
- **Retries.** Transient errors are retried with exponential backoff by
  :func:`data.exchange.call`; permanent ones stop at once with a :class:`DownloadError`.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import ccxt
import numpy as np
import pandas as pd
from tqdm import tqdm

from data.errors import DataError, DownloadError
from data.exchange import check_symbol, check_timeframe, load_markets, make_exchange, read
from data.schema import FUNDING, HOUR_MS, iso, parse_time, timeframe_ms, timeframe_origin
from data.store import SeriesKey, Store

log = logging.getLogger(__name__)

T = TypeVar("T")

FLUSH_ROWS = 50_000
"""Write the buffer once it holds this many rows even inside one month (sub-minute bars)."""

# ccxt 4.5.90's binance.fetch_ohlcv clamps `limit` to 1000 for every market (futures included,
# though Binance serves 1500 there), so 1000 is the largest page that arrives whole. At
# Binance's weights 1000 bars cost 5 and 1500 cost 10, so 1000 is the cheaper page anyway.
_OHLCV_LIMIT = {"binance": 1000, "binanceusdm": 1000}
_FUNDING_LIMIT = {"binance": 1000, "binanceusdm": 1000}
_DEFAULT_LIMIT = 1000
_DEFAULT_FUNDING_LIMIT = 100  # ccxt's usual page for exchanges we know nothing about


@dataclass(frozen=True)
class DownloadResult:
    """What one download did: rows new to the store, the first and last ``ts`` received
    (``None`` if nothing was), and the data requests sent (pages, retries and the look at the
    latest row after an empty page; not the markets and clock calls)."""

    key: SeriesKey
    rows_added: int
    first_ts: int | None
    last_ts: int | None
    requests: int


class _Writer:
    """Buffers rows and writes them at month boundaries, every FLUSH_ROWS rows and at the end."""

    def __init__(self, store: Store, key: SeriesKey, columns: tuple[str, ...], on_conflict: str):
        self.store, self.key, self.columns, self.on_conflict = store, key, columns, on_conflict
        self.rows: list[tuple[float, ...]] = []
        self.rows_added = 0
        self.first_ts: int | None = None
        self.last_ts: int | None = None

    @staticmethod
    def _month(ts: int) -> np.datetime64:
        return np.datetime64(int(ts), "ms").astype("datetime64[M]")

    def add(self, rows: list[tuple[float, ...]]) -> None:
        if not rows:
            return
        if self.first_ts is None:
            self.first_ts = int(rows[0][0])
        self.last_ts = int(rows[-1][0])
        self.rows += rows
        if len(self.rows) >= FLUSH_ROWS:
            self.flush()
            return
        latest = self._month(int(self.rows[-1][0]))
        if self._month(int(self.rows[0][0])) != latest:
            # earlier months are complete (we move forward in time): write each once, now
            cut = next(i for i, r in enumerate(self.rows) if self._month(int(r[0])) == latest)
            self._write(cut)

    def flush(self) -> None:
        self._write(len(self.rows))

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # rows fetched before an error or Ctrl-C are kept, so the re-run resumes after them
        if exc_type is None:
            self.flush()
        else:
            self.flush_quietly()

    def flush_quietly(self) -> None:
        """Flush on the way out of an error: the original error is what the user must see."""
        try:
            self.flush()
        except (DataError, OSError) as exc:
            log.error("could not save the last %d downloaded rows of %s: %s", len(self.rows), self.key, exc)

    def _write(self, n: int) -> None:
        if n <= 0:
            return
        frame = pd.DataFrame(self.rows[:n], columns=list(self.columns))
        frame["ts"] = frame["ts"].astype(np.int64)
        result = self.store.write(self.key, frame, on_conflict=self.on_conflict)
        # rows leave the buffer only once written, so a retry of the flush writes them again
        del self.rows[:n]
        self.rows_added += result.rows_added


def _ranges(store: Store, key: SeriesKey, start: int, stop: int, step: int) -> list[tuple[int, int]]:
    """The parts of ``[start, stop)`` missing at the ends of what is stored, ``step`` being
    the distance from the last stored row to the next one to fetch."""
    last = store.last_ts(key)
    if last is None or last < start:
        ranges = [(start, stop)]
    else:
        first = store.first_ts(key)
        ranges = [(start, min(first, stop))] if first is not None and first > start else []
        ranges.append((max(start, last + step), stop))
    return [(a, b) for a, b in ranges if a < b]


class _Session:
    """One ccxt client for one download: markets, symbol, the exchange clock, and every read
    through the one retry policy (:func:`data.exchange.read`), counting page requests."""

    def __init__(
        self,
        exchange: str,
        market: str,
        *,
        api_url: str | None,
        timeout_ms: int,
        max_retries: int,
        backoff_s: float | None,
    ):
        self.ex = make_exchange(exchange, market, api_url=api_url, timeout_ms=timeout_ms)
        self.market = market
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.requests = 0

    def _count(self) -> None:
        self.requests += 1

    def read(self, fn: Callable[[], T], what: str, *, page: bool = True) -> T:
        return read(
            self.ex,
            fn,
            what=f"{self.ex.id} {what}",
            max_retries=self.max_retries,
            backoff_s=self.backoff_s,
            on_attempt=self._count if page else None,
        )

    def open(self, symbol: str) -> tuple[str, int]:
        """Load markets, check the symbol, read the clock: ``(ccxt symbol, server now ms)``."""
        load_markets(self.ex, max_retries=self.max_retries, backoff_s=self.backoff_s)
        sym = check_symbol(self.ex, symbol, self.market)
        return sym, self._server_now()

    def _server_now(self) -> int:
        ex = self.ex
        if not ex.has.get("fetchTime"):
            warnings.warn(
                f"{ex.id} has no fetchTime; judging which candle is still open by the local clock "
                "(a skewed clock could store an open candle or drop a closed one)",
                RuntimeWarning,
                stacklevel=4,
            )
            return ex.milliseconds()
        now = self.read(ex.fetch_time, "fetch_time", page=False)
        if not isinstance(now, int) or now <= 0:
            raise DownloadError(f"{ex.id} fetch_time answered {now!r}, not a time in ms")
        return now

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.ex.close()  # the HTTP session; ccxt would otherwise wait for garbage collection


def _bad_page(ex: ccxt.Exchange, what: str, detail: str) -> ccxt.BadResponse:
    return ccxt.BadResponse(f"{ex.id} {what}: unusable page ({detail})")


def _ohlcv_rows(ex: ccxt.Exchange, page: object) -> list[tuple[float, ...]]:
    """ccxt candles as ``(ts, o, h, l, c, v)`` tuples; garbage is a (transient) BadResponse."""
    if not isinstance(page, list):
        raise _bad_page(ex, "fetch_ohlcv", f"got {type(page).__name__}")
    rows = []
    for candle in page:
        if not isinstance(candle, (list, tuple)) or len(candle) < 6 or not isinstance(candle[0], int):
            raise _bad_page(ex, "fetch_ohlcv", f"candle {candle!r}")
        rows.append((candle[0], *(math.nan if x is None else float(x) for x in candle[1:6])))
    return rows


def download_ohlcv(
    store: Store,
    exchange: str,
    market: str,
    symbol: str,
    timeframe: str,
    start: int | str,
    end: int | str | None = None,
    *,
    api_url: str | None = None,
    progress: bool = True,
    max_retries: int = 5,
    timeout_ms: int = 10_000,
    limit: int | None = None,
    on_conflict: str = "error",
    backoff_s: float | None = None,
) -> DownloadResult:
    """Fetch closed candles with ``start <= ts < end`` (int ms UTC or ISO; ``end=None`` means
    up to now) into ``SeriesKey.of(exchange, market, symbol, timeframe)``.

    ``symbol`` is in ccxt form (``BTC/USDT``; the futures form is derived). ``limit`` is the
    page size (default: the largest the exchange serves through ccxt). ``backoff_s`` is the
    first retry wait (default :data:`data.exchange.RETRY_BACKOFF_S`). See the module doc for
    resume, open-candle, paging and flush rules. Raises :class:`DownloadError` on anything the
    exchange side refuses; store errors (conflicts, validation) pass through as they are.
    """
    start_ms, end_ms = parse_time(start), parse_time(end)
    if start_ms is None:
        raise ValueError("start is required (ISO date or epoch ms)")
    with _Session(
        exchange, market, api_url=api_url, timeout_ms=timeout_ms, max_retries=max_retries, backoff_s=backoff_s
    ) as session:
        ex = session.ex
        check_timeframe(ex, timeframe)
        key = SeriesKey.of(exchange, market, symbol, timeframe)
        bar_ms = timeframe_ms(timeframe)
        max_limit = _OHLCV_LIMIT.get(ex.id) or _feature_limit(ex, market) or _DEFAULT_LIMIT
        page = min(limit, max_limit) if limit else max_limit
        if page <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        sym, server_now = session.open(symbol)
        # ts + bar_ms <= server_now  <=>  ts < server_now - bar_ms + 1
        closed = server_now - bar_ms + 1
        origin = timeframe_origin(timeframe)
        latest_closed = (closed - 1 - origin) // bar_ms * bar_ms + origin
        if start_ms > latest_closed:
            raise DownloadError(
                f"start {iso(start_ms)} is after the latest closed {timeframe} bar of {exchange} {symbol} "
                f"({iso(latest_closed)}); choose start= on or before it"
            )
        stop = closed if end_ms is None else min(end_ms, closed)
        ranges = _ranges(store, key, start_ms, stop, bar_ms)
        latest_seen: int | None = None
        total = sum(-(-(b - a) // bar_ms) for a, b in ranges)
        with (
            _Writer(store, key, ("ts", "open", "high", "low", "close", "volume"), on_conflict) as writer,
            tqdm(total=total, unit="bar", unit_scale=True, desc=str(key), disable=not progress) as bar,
        ):
            for lo, hi in ranges:
                since, latest = lo, None
                while since < hi:
                    rows = session.read(
                        lambda s=since: _ohlcv_rows(ex, ex.fetch_ohlcv(sym, timeframe, since=s, limit=page)),
                        f"fetch_ohlcv {sym} {timeframe} since {iso(since)}",
                    )
                    if rows:
                        nxt = max(int(rows[-1][0]) + bar_ms, since + bar_ms)
                        writer.add([r for r in rows if since <= r[0] < hi])
                    else:
                        # empty page: a hole in the exchange's history, or the end of it
                        if latest is None:
                            probe = session.read(
                                lambda: _ohlcv_rows(ex, ex.fetch_ohlcv(sym, timeframe, limit=1)),
                                f"fetch_ohlcv {sym} {timeframe} latest",
                            )
                            latest = latest_seen = int(probe[-1][0]) if probe else -1
                        if latest < since:
                            break
                        nxt = since + page * bar_ms
                    bar.update(max(0, (min(nxt, hi) - since) // bar_ms))
                    since = nxt
    if ranges and writer.first_ts is None and not len(store.read_arrays(key, start_ms, stop, ["ts"])["ts"]):
        # asked for something and nothing is there: say why instead of "+0 rows"
        if latest_seen is not None and latest_seen < start_ms:
            has = f"is {iso(latest_seen)}" if latest_seen >= 0 else "does not exist"
            raise DownloadError(
                f"start {iso(start_ms)} is after the latest {timeframe} bar {exchange} has for {symbol}, "
                f"which {has}; choose start= on or before it"
            )
        raise DownloadError(
            f"{exchange} has no {timeframe} bars of {symbol} in [{iso(start_ms)}, {iso(stop)}); nothing "
            "stored. The symbol may have been listed later: choose a later start= or end="
        )
    return DownloadResult(key, writer.rows_added, writer.first_ts, writer.last_ts, session.requests)


def _feature_limit(ex: ccxt.Exchange, market: str) -> int | None:
    """The page size ccxt's ``features`` table gives for fetchOHLCV on this market type."""
    feats = (ex.features or {}).get("swap" if market == "futures" else "spot") or {}
    if market == "futures":
        feats = feats.get("linear") or {}
    value = (feats.get("fetchOHLCV") or {}).get("limit")
    return int(value) if value else None


def _round_to_second(ts: int) -> int:
    return (int(ts) + 500) // 1000 * 1000


def _mark_price(info: object) -> float:
    """Binance's ``markPrice`` of a funding event; NaN where missing or empty (old records)."""
    value = info.get("markPrice") if isinstance(info, dict) else None
    try:
        return float(value) if value not in (None, "") else math.nan
    except (TypeError, ValueError):
        return math.nan


def _funding_rows(ex: ccxt.Exchange, page: object) -> list[tuple[int, float, float]]:
    """``(raw ts, rate, mark_price)`` per event; garbage is a (transient) BadResponse."""
    if not isinstance(page, list):
        raise _bad_page(ex, "fetch_funding_rate_history", f"got {type(page).__name__}")
    rows = []
    for item in page:
        ts = item.get("timestamp") if isinstance(item, dict) else None
        if not isinstance(ts, int):
            raise _bad_page(ex, "fetch_funding_rate_history", f"event {item!r}")
        rate = item.get("fundingRate")
        rows.append((ts, math.nan if rate is None else float(rate), _mark_price(item.get("info"))))
    return rows


def download_funding(
    store: Store,
    exchange: str,
    market: str,
    symbol: str,
    start: int | str,
    end: int | str | None = None,
    *,
    api_url: str | None = None,
    progress: bool = True,
    max_retries: int = 5,
    timeout_ms: int = 10_000,
    backoff_s: float | None = None,
) -> DownloadResult:
    """Fetch funding events with ``start <= ts < end`` of a perpetual into
    ``SeriesKey.of(exchange, "futures", symbol, "funding")`` as ``ts rate mark_price``.

    Binance stamps ``fundingTime`` a few ms after the hour; ``ts`` is rounded to the nearest
    second. ``mark_price`` comes from the event's ``markPrice`` where the exchange gives one,
    else NaN. Resumes like :func:`download_ohlcv`; ``market`` must be ``futures``.
    """
    if market != "futures":
        raise ValueError(
            f"funding rates exist only for perpetual futures; use market=futures, not {market!r}"
        )
    start_ms, end_ms = parse_time(start), parse_time(end)
    if start_ms is None:
        raise ValueError("start is required (ISO date or epoch ms)")
    with _Session(
        exchange, market, api_url=api_url, timeout_ms=timeout_ms, max_retries=max_retries, backoff_s=backoff_s
    ) as session:
        ex = session.ex
        if not ex.has.get("fetchFundingRateHistory"):
            raise DownloadError(f"{ex.id} has no funding rate history in ccxt (fetchFundingRateHistory)")
        key = SeriesKey.of(exchange, market, symbol, FUNDING)
        page = _FUNDING_LIMIT.get(ex.id, _DEFAULT_FUNDING_LIMIT)
        sym, server_now = session.open(symbol)
        if start_ms > server_now:
            raise DownloadError(
                f"start {iso(start_ms)} is after the exchange's clock ({iso(server_now)}); no funding "
                "event can be that late yet: choose an earlier start="
            )
        stop = server_now + 1 if end_ms is None else min(end_ms, server_now + 1)
        # stored ts are whole seconds, so the next event is at least one second later
        ranges = _ranges(store, key, start_ms, stop, 1000)
        total = sum(-(-(b - a) // (8 * HOUR_MS)) for a, b in ranges)
        with (
            _Writer(store, key, ("ts", "rate", "mark_price"), "error") as writer,
            tqdm(total=total, unit="event", desc=str(key), disable=not progress) as bar,
        ):
            for lo, hi in ranges:
                # an event stamped up to 500 ms before `lo` still rounds into the range
                since, latest = max(lo - 500, 0), None
                while since < hi:
                    raw = session.read(
                        lambda s=since: _funding_rows(
                            ex, ex.fetch_funding_rate_history(sym, since=s, limit=page)
                        ),
                        f"fetch_funding_rate_history {sym} since {iso(since)}",
                    )
                    if raw:
                        nxt = max(int(raw[-1][0]) + 1, since + 1)
                        rows = [(_round_to_second(t), r, m) for t, r, m in raw]
                        rows = [r for r in rows if lo <= r[0] < hi]
                        writer.add(rows)
                        bar.update(len(rows))
                    else:
                        if latest is None:
                            probe = session.read(
                                lambda: _funding_rows(ex, ex.fetch_funding_rate_history(sym, limit=1)),
                                f"fetch_funding_rate_history {sym} latest",
                            )
                            latest = int(probe[-1][0]) if probe else -1
                        if latest < since:
                            break
                        # funding comes at least hourly, so `page` events span at least `page` hours
                        nxt = since + page * HOUR_MS
                    since = nxt
    return DownloadResult(key, writer.rows_added, writer.first_ts, writer.last_ts, session.requests)
