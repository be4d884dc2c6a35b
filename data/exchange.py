"""The ccxt client, built once at the edge, and the one place where ccxt errors are translated.

Everything that talks to an exchange goes through :func:`make_exchange` (which client, which
options, which URL) and :func:`call` (which errors are retried and how long to wait). Code
further in sees :class:`~data.errors.DownloadError` only, never a ccxt exception.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import ccxt
import requests

from data.errors import DownloadError
from data.schema import TIMEFRAMES, ccxt_symbol, check_market

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_BACKOFF_S = 1.0
"""First wait before a retry; it doubles on each further attempt."""
RETRY_BACKOFF_CAP_S = 30.0
"""Longest single wait: past this, waiting longer buys nothing that a re-run would not."""

# ccxt's OperationFailed is its "not your fault, try again" branch: NetworkError (RequestTimeout,
# ExchangeNotAvailable, DDoSProtection = HTTP 418/429, RateLimitExceeded, ...) and BadResponse.
# Binance's {"code": -1000/-1001} internal errors also map to plain OperationFailed. Everything
# else (ExchangeError: BadSymbol, BadRequest, AuthenticationError, ...) is permanent.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (ccxt.OperationFailed,)

OFFLINE_HINT = (
    "Without network the store can be filled offline from Binance public-data archives "
    "(data.binance.vision) with `python -m data import path=...`."
)


def rewrite_api_urls(urls: Any, api_url: str) -> Any:
    """``urls`` with the scheme, host and port of every URL replaced by ``api_url``'s.

    Works on ccxt's ``urls['api']``: a string or nested dicts/lists of strings. The path stays,
    after any path ``api_url`` carries itself: with ``api_url='http://127.0.0.1:8080'``,
    ``https://api.binance.com/api/v3`` becomes ``http://127.0.0.1:8080/api/v3``. Pure: the input
    is not modified.
    """
    target = urlsplit(api_url)
    if not target.scheme or not target.netloc:
        raise ValueError(f"api_url {api_url!r} must look like 'http://127.0.0.1:8080'")
    prefix = target.path.rstrip("/")

    def one(value: Any) -> Any:
        if isinstance(value, str):
            parts = urlsplit(value)
            if not parts.scheme or not parts.netloc:
                return value  # not a URL (ccxt keeps a few plain flags among urls)
            return urlunsplit(
                (target.scheme, target.netloc, prefix + parts.path, parts.query, parts.fragment)
            )
        if isinstance(value, Mapping):
            return {k: one(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(one(v) for v in value)
        return value

    return one(urls)


def ccxt_id(exchange: str, market: str) -> str:
    """The ccxt class for an exchange name and market: Binance futures live in ``binanceusdm``."""
    exchange = exchange.strip().lower()
    if exchange == "binance" and check_market(market) == "futures":
        return "binanceusdm"
    return exchange


def make_exchange(
    exchange: str, market: str, *, api_url: str | None = None, timeout_ms: int = 10_000
) -> ccxt.Exchange:
    """A ccxt client for public market data of one market (``spot`` or linear ``futures``).

    ``exchange`` is a ccxt id (``binance``, ``bybit``, ...); ``binance`` with ``futures`` is
    ccxt's ``binanceusdm``. ccxt's own rate limiter is on. ``api_url`` points every API URL at
    another host (a loopback exchange in tests), keeping the paths. No request is sent here.
    """
    check_market(market)
    cid = ccxt_id(exchange, market)
    if cid not in ccxt.exchanges:
        close = difflib.get_close_matches(cid, ccxt.exchanges, n=5)
        offered = close or ccxt.exchanges[:8]
        raise ValueError(
            f"exchange {exchange!r} is not a ccxt exchange; try one of {', '.join(offered)} "
            f"(all {len(ccxt.exchanges)} are in ccxt.exchanges)"
        )
    options: dict[str, Any] = {"defaultType": "swap" if market == "futures" else "spot"}
    if cid in ("binance", "binanceusdm"):
        options.update(
            # fetchCurrencies/fetchMargins would call signed sapi endpoints; without them
            # load_markets costs one exchangeInfo call of the one market we download from
            fetchCurrencies=False,
            fetchMargins=False,
            fetchMarkets={"types": ["linear" if market == "futures" else "spot"]},
        )
    client: ccxt.Exchange = getattr(ccxt, cid)(
        # enableLastJsonResponse lets read() tell a truncated body from an empty answer
        {
            "enableRateLimit": True,
            "enableLastJsonResponse": True,
            "timeout": int(timeout_ms),
            "options": options,
        }
    )
    if api_url:
        client.urls["api"] = rewrite_api_urls(client.urls["api"], api_url)
    return client


def check_timeframe(ex: ccxt.Exchange, timeframe: str) -> None:
    """A :class:`DownloadError` unless the exchange serves ``timeframe`` and the store keeps it."""
    offered = list(ex.timeframes or {})
    if not offered:
        raise DownloadError(f"{ex.id} offers no candles (ccxt has no timeframes for it)")
    if timeframe not in offered:
        raise DownloadError(
            f"timeframe {timeframe!r} is not offered by {ex.id}; choose one of {', '.join(offered)}"
        )
    if timeframe not in TIMEFRAMES:
        usable = [t for t in offered if t in TIMEFRAMES]
        raise DownloadError(
            f"timeframe {timeframe!r} has no fixed length, so the store cannot keep it; "
            f"choose one of {', '.join(usable)}"
        )


def check_symbol(ex: ccxt.Exchange, symbol: str, market: str) -> str:
    """The ccxt symbol of ``symbol`` on ``market`` (``BTC/USDT`` -> ``BTC/USDT:USDT`` for
    futures); a :class:`DownloadError` naming offered symbols if the loaded markets lack it."""
    try:
        wanted = ccxt_symbol(symbol, market)
    except ValueError as exc:
        raise DownloadError(str(exc)) from None
    markets = ex.markets or {}
    if wanted in markets:
        return wanted
    if market == "futures":
        offered = [s for s, m in markets.items() if m.get("swap") and m.get("linear")]
    else:
        offered = [s for s, m in markets.items() if m.get("spot")]
    # a typo (BTC/USTD) has close matches; otherwise show what trades against the same quote
    close = difflib.get_close_matches(wanted, offered, n=5, cutoff=0.75)
    quote = wanted.split("/", 1)[-1]
    shown = close or sorted(offered, key=lambda s: (s.split("/", 1)[-1] != quote, s))[:10]
    raise DownloadError(
        f"symbol {wanted!r} is not offered on {ex.id} {market} ({len(offered)} symbols); "
        f"{'close matches' if close else 'for example'}: {', '.join(shown) or 'none'}"
    )


def _unreachable(exc: BaseException) -> bool:
    """True when the host could not be reached at all (DNS, refused, no route)."""
    seen: BaseException | None = exc
    for _ in range(10):  # a cause chain is short; bound it anyway
        if seen is None:
            return False
        if isinstance(seen, requests.exceptions.ConnectionError) and not isinstance(
            seen, requests.exceptions.ReadTimeout
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def call(
    fn: Callable[[], T],
    *,
    what: str,
    max_retries: int = 5,
    backoff_s: float | None = None,
    on_attempt: Callable[[], None] | None = None,
) -> T:
    """``fn()``, retried on transient ccxt errors; every ccxt error leaves as a DownloadError.

    Policy: only idempotent reads go through here. Transient errors (:data:`TRANSIENT_ERRORS`)
    are retried up to ``max_retries`` times after the first attempt, waiting ``backoff_s``
    (default :data:`RETRY_BACKOFF_S`) doubled on each attempt and capped at
    :data:`RETRY_BACKOFF_CAP_S`. Permanent errors stop at once. ``what`` names the call in the
    message; ``on_attempt`` is called before each attempt (to count requests).
    """
    base = RETRY_BACKOFF_S if backoff_s is None else backoff_s
    last: Exception | None = None
    for attempt in range(max_retries + 1):
        if on_attempt is not None:
            on_attempt()
        try:
            return fn()
        except TRANSIENT_ERRORS as exc:
            last = exc
            if attempt == max_retries:
                break
            wait = min(RETRY_BACKOFF_CAP_S, base * 2**attempt)
            log.warning(
                "%s: %s (%s); retry %d/%d in %.2f s",
                what,
                type(exc).__name__,
                _short(exc),
                attempt + 1,
                max_retries,
                wait,
            )
            time.sleep(wait)
        except ccxt.BaseError as exc:
            raise DownloadError(f"{what} failed: {type(exc).__name__}: {_short(exc)}") from exc
    assert last is not None
    if _unreachable(last):
        raise DownloadError(
            f"{what}: cannot reach the exchange after {max_retries + 1} attempts "
            f"({type(last).__name__}: {_short(last)}). Check the network; a re-run resumes after "
            f"the last stored row. {OFFLINE_HINT}"
        ) from last
    raise DownloadError(
        f"{what} failed {max_retries + 1} times, last with {type(last).__name__}: {_short(last)}. "
        "What was stored so far is kept; a re-run resumes after the last stored row."
    ) from last


def read(
    ex: ccxt.Exchange,
    fn: Callable[[], T],
    *,
    what: str,
    max_retries: int = 5,
    backoff_s: float | None = None,
    on_attempt: Callable[[], None] | None = None,
) -> T:
    """:func:`call` for one ccxt read on ``ex``, where a body that is not JSON counts as a
    transient :class:`ccxt.BadResponse`.

    Why: ccxt 4.5 does not raise on a truncated or garbled JSON body; it hands the text to the
    parser, and ``fetch_ohlcv`` returns ``[]``, ``fetch_time`` ``None``, ``load_markets`` no
    markets, which would read as "no data" or "unknown symbol". Needs a client from
    :func:`make_exchange` (it keeps the last parsed body).
    """

    def attempt() -> T:
        result = fn()
        body = ex.last_http_response
        if ex.last_json_response is None and body:
            raise ccxt.BadResponse(f"{ex.id} answered with a body that is not valid JSON: {body[:80]!r}")
        return result

    return call(attempt, what=what, max_retries=max_retries, backoff_s=backoff_s, on_attempt=on_attempt)


def load_markets(ex: ccxt.Exchange, *, max_retries: int = 5, backoff_s: float | None = None) -> None:
    """``ex.load_markets()`` with retries; each attempt reloads, since ccxt caches even an
    empty answer."""
    read(
        ex,
        lambda: ex.load_markets(reload=True),
        what=f"{ex.id} load_markets",
        max_retries=max_retries,
        backoff_s=backoff_s,
    )


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
