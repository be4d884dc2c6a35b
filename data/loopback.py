"""A loopback stand-in for Binance's public REST API, for tests and offline manual runs.

It serves given bar and funding tables on ``127.0.0.1`` the way Binance answers the market-data
endpoints ccxt calls (``/api/v3/...`` for spot, ``/fapi/v1/...`` for USD-M futures), so the
real ccxt client runs against it unchanged::

    with LoopbackExchange(spot={"BTCUSDT": {"1m": bars}}, now_ms=...) as ex:
        make_exchange("binance", "spot", api_url=ex.url)

What it mimics, and how to steer it:

- ``now_ms`` (settable) is the exchange clock: ``/time`` answers it, klines stop at it and the
  bar that contains it comes back last as the still-open candle (volume so far only).
- ``inject(endpoint, *faults)`` queues faults for the next requests to an endpoint: an HTTP
  status (``429`` with Binance's body, ``418``, ``500`` ... ``504``, ``400`` = invalid symbol),
  ``"timeout"`` (answers after ``timeout_sleep_s``, longer than a test's client timeout),
  ``"malformed"`` (a truncated JSON body with status 200) or ``"reset"`` (closes the connection
  without an answer).
- ``latency_s`` delays every answer; ``requests`` logs ``(path, params)`` of every request.
- It stops by itself after ``max_seconds``; nothing in it waits without a bound.

A subclass serves more (``serving.replay_exchange`` adds signed endpoints and order matching) by
overriding :meth:`LoopbackExchange.handle`, which sees every method (GET, POST, PUT, DELETE) as a
:class:`Request` with its raw query, body and headers, and :meth:`LoopbackExchange.check_fault`
to accept more fault kinds; the faults the HTTP layer does not act on reach ``handle``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pandas as pd

from data.schema import HOUR_MS, TIMEFRAMES, file_symbol

FaultSpec = int | str

_PREFIX = {"/api/v3/": "spot", "/fapi/v1/": "futures", "/fapi/v2/": "futures", "/fapi/v3/": "futures"}
_QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY")
_MAX_KLINES = {"spot": 1000, "futures": 1500}
_MAX_FUNDING = 1000
_FUNDING_INTERVAL_MS = 8 * HOUR_MS

_ERR_SYMBOL = {"code": -1121, "msg": "Invalid symbol."}
_ERR_INTERVAL = {"code": -1120, "msg": "Invalid interval."}
_ERR_429 = {
    "code": -1003,
    "msg": "Too many requests; current limit of IP(127.0.0.1) is 6000 requests per minute. "
    "Please use WebSocket Streams for live updates to avoid polling the API.",
}
_ERR_418 = {"code": -1003, "msg": "Way too many requests; IP(127.0.0.1) banned until 1700000000000."}
_ERR_500 = {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}
_FAULTS = ("timeout", "malformed", "reset")
_BAR_FIELDS = ("open", "high", "low", "close", "volume", "quote_volume", "trades", "taker_buy_base")


def _num(x: float) -> str:
    """A float as Binance writes numbers: a positional decimal string, here shortest exact."""
    return "0" if not np.isfinite(x) else np.format_float_positional(float(x), trim="-")


def split_symbol(symbol: str) -> tuple[str, str]:
    """``BTCUSDT`` -> ``("BTC", "USDT")`` by the longest known quote asset suffix."""
    for quote in sorted(_QUOTES, key=len, reverse=True):
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    raise ValueError(f"cannot tell base from quote in {symbol!r}; it must end with one of {_QUOTES}")


@dataclass(frozen=True)
class Request:
    """One HTTP request as it arrived: ``params`` merges the query string and a form body (the
    body wins); ``query`` and ``body`` are the raw strings (what a Binance signature covers)."""

    method: str
    path: str
    params: dict[str, str]
    query: str = ""
    body: str = ""
    headers: Mapping[str, str] | None = None

    @property
    def endpoint(self) -> str:
        """The last path segment, the key of :meth:`LoopbackExchange.inject`."""
        return self.path.rsplit("/", 1)[-1]


class _Bars:
    """One bar table as contiguous arrays, for binary search by open time."""

    def __init__(self, frame: pd.DataFrame, bar_ms: int):
        self.bar_ms = bar_ms
        self.ts = frame["ts"].to_numpy(dtype=np.int64)
        nan = np.full(len(self.ts), np.nan)
        self.cols = {
            c: frame[c].to_numpy(dtype=np.float64, na_value=np.nan) if c in frame else nan
            for c in _BAR_FIELDS
        }


class _Funding:
    def __init__(self, frame: pd.DataFrame):
        rate_col = "rate" if "rate" in frame else "funding_rate"
        self.ts = frame["ts"].to_numpy(dtype=np.int64)
        self.rate = frame[rate_col].to_numpy(dtype=np.float64, na_value=np.nan)
        mark = frame["mark_price"] if "mark_price" in frame else pd.Series(np.nan, index=frame.index)
        self.mark = mark.to_numpy(dtype=np.float64, na_value=np.nan)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    exchange: LoopbackExchange


class LoopbackExchange:
    """Binance's public market-data REST API over given tables, on 127.0.0.1 (see module doc).

    ``spot`` / ``futures`` map ``SYMBOL -> {timeframe: bars}``; ``funding`` maps
    ``SYMBOL -> funding table`` (``ts rate mark_price``, or ``funding_rate`` for ``rate``) and
    lists the symbol on futures. Tables use the store's schema. ``now_ms`` defaults to the
    moment every bar given is closed. ``funding_offset_ms`` stamps funding events up to that
    many ms after their time, as Binance does (by row: 0, 1, ..., max, 0, ...).
    """

    def __init__(
        self,
        spot: Mapping[str, Mapping[str, pd.DataFrame]] | None = None,
        futures: Mapping[str, Mapping[str, pd.DataFrame]] | None = None,
        funding: Mapping[str, pd.DataFrame] | None = None,
        *,
        now_ms: int | None = None,
        max_seconds: float = 120.0,
        latency_s: float = 0.0,
        timeout_sleep_s: float = 2.0,
        funding_offset_ms: int = 0,
        port: int = 0,
    ):
        self.bars: dict[tuple[str, str, str], _Bars] = {}
        self.symbols: dict[str, set[str]] = {"spot": set(), "futures": set()}
        for market, tables in (("spot", spot or {}), ("futures", futures or {})):
            for sym, by_tf in tables.items():
                name = file_symbol(sym)
                split_symbol(name)
                self.symbols[market].add(name)
                for tf, frame in by_tf.items():
                    if tf not in TIMEFRAMES:
                        raise ValueError(f"timeframe {tf!r} is not a Binance interval with a fixed length")
                    self.bars[(market, name, tf)] = _Bars(frame, TIMEFRAMES[tf])
        self.funding: dict[str, _Funding] = {}
        for sym, frame in (funding or {}).items():
            name = file_symbol(sym)
            split_symbol(name)
            self.symbols["futures"].add(name)
            self.funding[name] = _Funding(frame)
        if now_ms is None:
            ends = [int(b.ts[-1]) + b.bar_ms for b in self.bars.values() if len(b.ts)]
            ends += [int(f.ts[-1]) + funding_offset_ms + 1 for f in self.funding.values() if len(f.ts)]
            now_ms = max(ends) if ends else int(time.time() * 1000)
        self.now_ms: int = int(now_ms)
        self.max_seconds = float(max_seconds)
        self.latency_s = float(latency_s)
        self.timeout_sleep_s = float(timeout_sleep_s)
        self.funding_offset_ms = int(funding_offset_ms)
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._faults: dict[str, deque[tuple[int, FaultSpec]]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.exchange = self
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    # -- life cycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LoopbackExchange:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="loopback-exchange",
                daemon=True,
            )
            self._thread.start()
            # a forgotten server must not outlive its test by more than max_seconds
            self._timer = threading.Timer(self.max_seconds, self.stop)
            self._timer.daemon = True
            self._timer.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket. Safe to call twice and from any thread."""
        with self._lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stopped (at most ``timeout`` s, or until ``max_seconds`` ran out)."""
        return self._stopped.wait(self.max_seconds if timeout is None else timeout)

    def __enter__(self) -> LoopbackExchange:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- steering --------------------------------------------------------------------------

    def inject(self, endpoint: str, *faults: FaultSpec, after: int = 0) -> None:
        """Queue ``faults`` for the next requests to ``endpoint`` (``klines``, ``fundingRate``,
        ``exchangeInfo``, ``time``, ...; spot and futures alike), after ``after`` good ones."""
        for f in faults:
            self.check_fault(f)
        with self._lock:
            queue = self._faults.setdefault(endpoint, deque())
            skip = after
            for f in faults:
                queue.append((skip, f))
                skip = 0

    def check_fault(self, fault: FaultSpec) -> None:
        """A ValueError unless ``fault`` is a kind this exchange acts on (subclasses add kinds)."""
        if not (isinstance(fault, int) and 400 <= fault <= 599) and fault not in _FAULTS:
            raise ValueError(
                f"fault {fault!r}: use an HTTP status 400-599, 'timeout', 'malformed' or 'reset'"
            )

    def _next_fault(self, endpoint: str) -> FaultSpec | None:
        with self._lock:
            queue = self._faults.get(endpoint)
            if not queue:
                return None
            skip, fault = queue[0]
            if skip > 0:
                queue[0] = (skip - 1, fault)
                return None
            queue.popleft()
            return fault

    def count(self, endpoint: str) -> int:
        """How many requests reached ``endpoint`` (the last path segment), faults included."""
        return sum(1 for path, _ in list(self.requests) if path.rsplit("/", 1)[-1] == endpoint)

    # -- answers ---------------------------------------------------------------------------

    def handle(self, request: Request, fault: FaultSpec | None = None) -> tuple[int, Any]:
        """Status and JSON body for one request. ``fault`` is a queued fault that the HTTP layer
        did not act on itself (none here; a subclass's own kinds). Public data is GET only."""
        if request.method != "GET":
            msg = f"{request.method} {request.path} is not served (loopback exchange)"
            return 405, {"code": -1, "msg": msg}
        return self.answer(request.path, request.params)

    def answer(self, path: str, params: dict[str, str]) -> tuple[int, Any]:
        """Status and JSON body for one request (no faults, no latency)."""
        market = next((m for p, m in _PREFIX.items() if path.startswith(p)), None)
        endpoint = path.rsplit("/", 1)[-1]
        handler = {
            "ping": lambda m, p: (200, {}),
            "time": lambda m, p: (200, {"serverTime": self.now_ms}),
            "exchangeInfo": self._exchange_info,
            "klines": self._klines,
            "fundingRate": self._funding_rate if market == "futures" else None,
            "premiumIndex": self._premium_index if market == "futures" else None,
        }.get(endpoint)
        if market is None or handler is None:
            return 404, {"code": -1, "msg": f"Unknown path {path} (loopback exchange)"}
        return handler(market, params)

    def _exchange_info(self, market: str, params: dict[str, str]) -> tuple[int, Any]:
        symbols = [self._symbol_info(market, s) for s in sorted(self.symbols[market])]
        limits = [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
        ]
        body: dict[str, Any] = {
            "timezone": "UTC",
            "serverTime": self.now_ms,
            "rateLimits": limits,
            "exchangeFilters": [],
            "symbols": symbols,
        }
        if market == "futures":
            quotes = sorted({split_symbol(s)[1] for s in self.symbols[market]})
            body["assets"] = [{"asset": q, "marginAvailable": True, "autoAssetExchange": "0"} for q in quotes]
        return 200, body

    def _symbol_info(self, market: str, symbol: str) -> dict[str, Any]:
        base, quote = split_symbol(symbol)
        if market == "spot":
            return {
                "symbol": symbol,
                "status": "TRADING",
                "baseAsset": base,
                "baseAssetPrecision": 8,
                "quoteAsset": quote,
                "quotePrecision": 8,
                "quoteAssetPrecision": 8,
                "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
                "icebergAllowed": True,
                "ocoAllowed": True,
                "isSpotTradingAllowed": True,
                "isMarginTradingAllowed": True,
                "permissions": ["SPOT"],
                "filters": [
                    {
                        "filterType": "PRICE_FILTER",
                        "minPrice": "0.01",
                        "maxPrice": "1000000",
                        "tickSize": "0.01",
                    },
                    {"filterType": "LOT_SIZE", "minQty": "0.00001", "maxQty": "9000", "stepSize": "0.00001"},
                    {
                        "filterType": "NOTIONAL",
                        "minNotional": "5",
                        "applyMinToMarket": True,
                        "maxNotional": "9000000",
                        "applyMaxToMarket": False,
                        "avgPriceMins": 5,
                    },
                ],
            }
        return {
            "symbol": symbol,
            "pair": symbol,
            "contractType": "PERPETUAL",
            "deliveryDate": 4133404800000,
            "onboardDate": 1569398400000,
            "status": "TRADING",
            "baseAsset": base,
            "quoteAsset": quote,
            "marginAsset": quote,
            "pricePrecision": 2,
            "quantityPrecision": 3,
            "baseAssetPrecision": 8,
            "quotePrecision": 8,
            "underlyingType": "COIN",
            "settlePlan": 0,
            "triggerProtect": "0.0500",
            "liquidationFee": "0.012500",
            "marketTakeBound": "0.05",
            "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET"],
            "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": "0.10", "maxPrice": "4529764", "tickSize": "0.10"},
                {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "1000", "stepSize": "0.001"},
                {"filterType": "MARKET_LOT_SIZE", "minQty": "0.001", "maxQty": "120", "stepSize": "0.001"},
                {"filterType": "MIN_NOTIONAL", "notional": "100"},
            ],
        }

    def _klines(self, market: str, params: dict[str, str]) -> tuple[int, Any]:
        symbol = params.get("symbol", "")
        if symbol not in self.symbols[market]:
            return 400, _ERR_SYMBOL
        interval = params.get("interval", "")
        if interval not in TIMEFRAMES:
            return 400, _ERR_INTERVAL
        limit = min(int(params.get("limit", 500)), _MAX_KLINES[market])
        bars = self.bars.get((market, symbol, interval))
        if bars is None or limit <= 0:
            return 200, []
        now = self.now_ms
        hi = int(np.searchsorted(bars.ts, now, "right"))  # bars that have opened by now
        if "endTime" in params:
            hi = min(hi, int(np.searchsorted(bars.ts, int(params["endTime"]), "right")))
        if "startTime" in params:
            lo = int(np.searchsorted(bars.ts, int(params["startTime"]), "left"))
            hi = min(hi, lo + limit)
        else:
            lo = max(0, hi - limit)
        rows = []
        for i in range(lo, hi):
            ts = int(bars.ts[i])
            v = {c: float(bars.cols[c][i]) for c in _BAR_FIELDS}
            if ts + bars.bar_ms > now:
                self._open_candle(v, (now - ts) / bars.bar_ms)
            tbq = v["taker_buy_base"] * v["close"] if np.isfinite(v["taker_buy_base"]) else np.nan
            rows.append(
                [
                    ts,
                    _num(v["open"]),
                    _num(v["high"]),
                    _num(v["low"]),
                    _num(v["close"]),
                    _num(v["volume"]),
                    ts + bars.bar_ms - 1,
                    _num(v["quote_volume"]),
                    int(v["trades"]) if np.isfinite(v["trades"]) else 0,
                    _num(v["taker_buy_base"]),
                    _num(tbq),
                    "0",
                ]
            )
        return 200, rows

    def _open_candle(self, v: dict[str, float], frac: float) -> None:
        """Turn the still-open bar's values ``v`` into what is known ``frac`` of the way through
        it: here only the volume traded so far (prices come from the data)."""
        for c in ("volume", "quote_volume", "trades", "taker_buy_base"):
            v[c] *= frac

    def _funding_rows(self, symbol: str) -> tuple[np.ndarray, _Funding]:
        f = self.funding[symbol]
        offset = np.arange(len(f.ts), dtype=np.int64) % (self.funding_offset_ms + 1)
        return f.ts + offset, f

    def _funding_rate(self, market: str, params: dict[str, str]) -> tuple[int, Any]:
        symbol = params.get("symbol")
        if symbol is not None and symbol not in self.symbols["futures"]:
            return 400, _ERR_SYMBOL
        limit = min(int(params.get("limit", 100)), _MAX_FUNDING)
        out = []
        for sym in [symbol] if symbol else sorted(self.funding):
            if sym not in self.funding:
                continue
            stamps, f = self._funding_rows(sym)
            hi = int(np.searchsorted(stamps, self.now_ms, "right"))
            if "endTime" in params:
                hi = min(hi, int(np.searchsorted(stamps, int(params["endTime"]), "right")))
            if "startTime" in params:
                lo = int(np.searchsorted(stamps, int(params["startTime"]), "left"))
                hi = min(hi, lo + limit)
            else:
                lo = max(0, hi - limit)
            out += [
                {
                    "symbol": sym,
                    "fundingTime": int(stamps[i]),
                    "fundingRate": _num(f.rate[i]),
                    # Binance leaves markPrice empty on its oldest records
                    "markPrice": _num(f.mark[i]) if np.isfinite(f.mark[i]) else "",
                }
                for i in range(lo, hi)
            ]
        out.sort(key=lambda r: r["fundingTime"])
        return 200, out[:limit] if "startTime" in params else out[-limit:]

    def _premium_index(self, market: str, params: dict[str, str]) -> tuple[int, Any]:
        symbol = params.get("symbol")
        if symbol is not None and symbol not in self.symbols["futures"]:
            return 400, _ERR_SYMBOL
        now = self.now_ms
        out = []
        for sym in [symbol] if symbol else sorted(self.symbols["futures"]):
            mark, rate = np.nan, 0.0
            if sym in self.funding:
                stamps, f = self._funding_rows(sym)
                i = int(np.searchsorted(stamps, now, "right")) - 1
                if i >= 0:
                    mark, rate = f.mark[i], f.rate[i]
            bars = self.bars.get(("futures", sym, "1m")) or next(
                (b for (m, s, _), b in self.bars.items() if m == "futures" and s == sym), None
            )
            if bars is not None:
                j = int(np.searchsorted(bars.ts, now, "right")) - 1
                if j >= 0:
                    mark = bars.cols["close"][j]
            out.append(
                {
                    "symbol": sym,
                    "markPrice": f"{mark:.8f}",
                    "indexPrice": f"{mark:.8f}",
                    "estimatedSettlePrice": f"{mark:.8f}",
                    "lastFundingRate": f"{rate:.8f}",
                    "interestRate": "0.00010000",
                    "nextFundingTime": (now // _FUNDING_INTERVAL_MS + 1) * _FUNDING_INTERVAL_MS,
                    "time": now,
                }
            )
        return 200, out[0] if symbol else out


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: no keep-alive state to reason about

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is LoopbackExchange.requests

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        ex = self.server.exchange
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length > 0 else ""
        params = dict(parse_qsl(parts.query))
        if body and "json" not in (self.headers.get("Content-Type") or ""):
            params.update(parse_qsl(body))
        request = Request(method, parts.path, params, parts.query, body, dict(self.headers.items()))
        with ex._lock:
            ex.requests.append((parts.path, params))
        fault = ex._next_fault(request.endpoint)
        if ex.latency_s > 0:
            ex._stopped.wait(ex.latency_s)
        if fault == "reset":
            self.close_connection = True
            return
        if fault == "timeout":
            ex._stopped.wait(ex.timeout_sleep_s)  # bounded, and cut short by stop()
        if isinstance(fault, int) and fault >= 400:
            if fault == 429:
                self._send(429, json.dumps(_ERR_429), {"Retry-After": "1"})
            elif fault == 418:
                self._send(418, json.dumps(_ERR_418), {"Retry-After": "1"})
            elif fault == 500:
                self._send(500, json.dumps(_ERR_500))
            elif fault >= 500:
                html = f"<html><body><h1>{fault} Server Error</h1></body></html>"
                self._send(fault, html, content_type="text/html")
            else:
                self._send(fault, json.dumps(_ERR_SYMBOL))
            return
        own = fault if fault not in _FAULTS else None
        status, answer = ex.handle(request, own)
        text = json.dumps(answer, separators=(",", ":"))
        if fault == "malformed":
            text = text[: max(1, len(text) // 2)]  # cut mid-body, as a dropped proxy stream would
        self._send(status, text)

    def _send(
        self,
        status: int,
        text: str,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json;charset=UTF-8",
    ) -> None:
        data = text.encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout fault); nothing to answer


def _main(argv: list[str]) -> int:
    """``python -m data.loopback path=F.parquet market=spot symbol=BTCUSDT timeframe=1m ...``"""
    args = {"market": "spot", "symbol": "BTCUSDT", "timeframe": "1m", "port": "0", "max_seconds": "60"}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in {*args, "path", "now", "latency_s"}:
            print(
                f"unknown argument {arg!r}; use path=FILE.parquet market=spot|futures symbol=BTCUSDT "
                "timeframe=1m|funding port=0 max_seconds=60 [now=EPOCH_MS] [latency_s=0]",
                file=sys.stderr,
            )
            return 2
        args[key] = value
    if "path" not in args:
        print("path=FILE.parquet is required", file=sys.stderr)
        return 2
    frame = pd.read_parquet(args["path"])
    market, symbol, tf = args["market"], args["symbol"], args["timeframe"]
    tables: dict[str, Any] = {"spot": None, "futures": None, "funding": None}
    if tf == "funding":
        tables["funding"] = {symbol: frame}
    else:
        tables[market] = {symbol: {tf: frame}}
    ex = LoopbackExchange(
        **tables,
        now_ms=int(args["now"]) if "now" in args else None,
        max_seconds=float(args["max_seconds"]),
        latency_s=float(args.get("latency_s", 0)),
        port=int(args["port"]),
    )
    with ex:
        print(ex.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            ex.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
