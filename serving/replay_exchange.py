"""A Binance REST stand-in that trades: signed account and order endpoints over replayed bars.

:class:`ReplayExchange` extends :class:`data.loopback.LoopbackExchange` (public market data,
faults, bounded lifetime, request log) with Binance's private endpoints, answered in Binance's
shapes so that the real ccxt client runs against it unchanged, and with the matching engine of
:mod:`serving.replay_matching` (the env kernel's fill prices, fees, funding and liquidation; its
docstring has the rules)::

    with ReplayExchange(futures={"BTCUSDT": {"5m": bars}}, funding={"BTCUSDT": rates},
                        start_ms=..., env={"spread_bps": 2}) as ex:
        client = make_exchange("binance", "futures", api_url=ex.url)
        client.apiKey, client.secret = "replay-key", "replay-secret"

Clock. ``now_ms`` is the virtual time: the bar that contains it is the one orders fill in, and
klines stop at it, the still-open candle showing its open price only (no high, low, close or
volume from the future). ``speed`` > 0 advances it by ``speed`` virtual ms per wall ms, never past
the close of the last bar; assigning ``ex.now_ms`` moves it (and restarts the advance from
there). ``/time`` answers the virtual time, so a bot must not sync its signing clock from it:
signatures are checked against the real wall clock (plus ``clock_skew_ms``).

Authentication, as Binance: header ``X-MBX-APIKEY`` (else 401 ``-2015``), ``signature`` = HMAC-SHA256
hex of the query string followed by the form body without the signature (else ``-1022``), and
``timestamp`` within ``recvWindow`` (the request's, default ``recv_window_ms``, at most 60000) of
the wall clock and not more than 1000 ms ahead of it (else ``-1021``).

Endpoints (spot ``/api/v3``, USD-M futures ``/fapi``), besides the loopback's public ones:

- both: ``order`` (POST MARKET / LIMIT GTC / LIMIT IOC, GET, DELETE by ``orderId`` or
  ``origClientOrderId``), ``openOrders`` (GET; spot DELETE = cancel all), ``ticker/24hr``
  (``lastPrice`` = the open of the bar containing now; statistics over closed bars);
- spot: ``account``, ``myTrades``;
- futures: ``/fapi/v3/account`` and ``/fapi/v2/account``, ``/fapi/v3/positionRisk`` and
  ``/fapi/v2/positionRisk`` (both carry ``leverage`` and ``marginType``, which real v3 omits, so
  ccxt fills a position's leverage and margin mode), ``userTrades``, ``income`` (funding),
  ``leverageBracket`` (one bracket at the env's maintenance margin rate), ``leverage``,
  ``marginType``, ``positionSide/dual`` (one-way mode only), ``allOpenOrders`` (DELETE),
  ``premiumIndex`` (mark = the close of the last closed bar).

Faults (``inject(endpoint, ...)``, the endpoint being the last path segment, e.g. ``order``):
the loopback's kinds (HTTP statuses, ``"timeout"``, ``"reset"``, ``"malformed"``) and
``"partial"`` (an order fills half its quantity, down to the lot step, and EXPIRES),
``"late"`` (the request is processed, then the answer stalls ``timeout_sleep_s``: the client times
out although the order exists), ``"reject"`` (400 ``-2010`` insufficient balance, nothing done)
and a negative Binance code such as ``-1021`` (400 with that code and Binance's message, nothing
done). An ``"order"`` fault hits the next request to the order path, whatever its method.

Left out: hedge mode, STOP / TAKE_PROFIT / LIMIT_MAKER / FOK orders, quote-quantity limit orders,
the spot base-asset fee on buys, rate limits, listen keys and websockets.

CLI (serves until ``max_seconds`` or Ctrl-C, on 127.0.0.1 only)::

    python -m serving.replay_exchange exchange=binance market=futures symbol=BTC/USDT \\
        timeframe=5m start=2025-03-01 [end=...] speed=100 balance=10000 port=0 max_seconds=3600 \\
        [env=perp] [store=DIR]

reads the project's store (``store=`` another root), or ``path=BARS.parquet [funding=FUNDING.parquet]``.
Virtual time starts at ``start`` and runs at ``speed`` (default 1: real time); the bars before it
are history the bot can fetch. The cost model is ``conf/env/perp.yaml`` on futures and
``spot.yaml`` on spot unless ``env=`` names another group, a YAML file, or a run folder (the
bundle's own env: ``env=runs/<...>``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.commandline import UsageError, arg, parse, time_range, usage
from data.errors import DataError
from data.loopback import FaultSpec, LoopbackExchange, Request, _num, split_symbol
from data.schema import BAR_COLUMNS, TIMEFRAMES, file_symbol, iso, parse_time, timeframe_ms
from data.store import SeriesKey, resolve_root
from data.validate import check_bars
from envs.accounting import liquidation_price
from envs.market import load_market
from serving.replay_matching import ERRORS, Book, Matcher, Rejection, make_book, reject

Answer = tuple[int, Any]

_OWN_FAULTS = ("partial", "late", "reject")
_DAY_MS = 86_400_000
_MAX_RECV_WINDOW = 60_000
_ACCOUNT_POSITION_KEYS = (
    "symbol", "positionSide", "positionAmt", "unrealizedProfit", "isolatedMargin", "notional",
    "isolatedWallet", "initialMargin", "maintMargin", "updateTime",
)  # fmt: skip


class ReplayExchange(LoopbackExchange):
    """Binance's public and private REST API over replayed bars (see the module docstring).

    ``spot`` / ``futures`` / ``funding`` as for :class:`~data.loopback.LoopbackExchange`; each
    symbol trades on its smallest timeframe given. ``env`` holds :class:`envs.config.EnvConfig`
    keyword arguments for the cost model (fees, spread, slippage, maintenance margin,
    liquidation fee). ``balances`` seeds both the spot account and the futures wallets
    (default 10,000 USDT).
    """

    def __init__(
        self,
        spot: Mapping[str, Mapping[str, pd.DataFrame]] | None = None,
        futures: Mapping[str, Mapping[str, pd.DataFrame]] | None = None,
        funding: Mapping[str, pd.DataFrame] | None = None,
        *,
        env: Mapping[str, Any] | None = None,
        start_ms: int | None = None,
        speed: float = 0.0,
        balances: Mapping[str, float] | None = None,
        api_key: str = "replay-key",
        api_secret: str = "replay-secret",
        recv_window_ms: int = 10_000,
        clock_skew_ms: int = 0,
        max_seconds: float = 120.0,
        latency_s: float = 0.0,
        timeout_sleep_s: float = 2.0,
        funding_offset_ms: int = 0,
        port: int = 0,
    ):
        if not (np.isfinite(speed) and speed >= 0):
            raise ValueError(f"speed={speed!r} must be a number >= 0 (virtual ms per wall ms; 0 = frozen)")
        self.speed = float(speed)
        self._clock_at = 0
        self._clock_t0 = time.monotonic()
        self._end_ms: int | None = None
        super().__init__(
            spot,
            futures,
            funding,
            now_ms=start_ms,
            max_seconds=max_seconds,
            latency_s=latency_s,
            timeout_sleep_s=timeout_sleep_s,
            funding_offset_ms=funding_offset_ms,
            port=port,
        )
        self.api_key = api_key
        self.api_secret = api_secret
        self.recv_window_ms = int(recv_window_ms)
        self.clock_skew_ms = int(clock_skew_ms)
        self._engine_lock = threading.RLock()
        books: dict[tuple[str, str], Book] = {}
        rates = {file_symbol(s): f for s, f in (funding or {}).items()}
        for market, tables in (("spot", spot or {}), ("futures", futures or {})):
            for sym, by_tf in tables.items():
                name = file_symbol(sym)
                if not by_tf:
                    continue
                tf = min(by_tf, key=lambda k: TIMEFRAMES[k])
                filters = self._symbol_info(market, name)["filters"]
                base, quote = split_symbol(name)
                books[(market, name)] = make_book(
                    market, name, base, quote, by_tf[tf], rates.get(name), dict(env or {}), filters
                )
        if not books:
            raise ValueError(
                "give bars for at least one symbol: spot= or futures= {SYMBOL: {timeframe: bars}}"
            )
        self._end_ms = max(int(b.close_ts[-1]) for b in books.values())
        self.matcher = Matcher(books, dict(balances) if balances is not None else {"USDT": 10_000.0})
        self._routes: dict[tuple[str, str], tuple[Callable[[str, dict, FaultSpec | None], Answer], bool]] = {}
        for prefix in ("/api/v3/", "/fapi/v1/"):
            for method, name, fn, signed in (
                ("POST", "order", self._new_order, True),
                ("GET", "order", self._query_order, True),
                ("DELETE", "order", self._cancel_order, True),
                ("GET", "openOrders", self._open_orders, True),
                ("GET", "ticker/24hr", self._ticker, False),
            ):
                self._routes[(method, prefix + name)] = (fn, signed)
        for method, path, fn in (
            ("GET", "/api/v3/account", self._spot_account),
            ("GET", "/api/v3/myTrades", self._my_trades),
            ("DELETE", "/api/v3/openOrders", self._cancel_all),
            ("GET", "/fapi/v3/account", self._futures_account),
            ("GET", "/fapi/v2/account", self._futures_account),
            ("GET", "/fapi/v3/positionRisk", self._position_risk),
            ("GET", "/fapi/v2/positionRisk", self._position_risk),
            ("GET", "/fapi/v1/userTrades", self._my_trades),
            ("GET", "/fapi/v1/income", self._income),
            ("GET", "/fapi/v1/leverageBracket", self._leverage_bracket),
            ("POST", "/fapi/v1/leverage", self._set_leverage),
            ("POST", "/fapi/v1/marginType", self._set_margin_type),
            ("GET", "/fapi/v1/positionSide/dual", self._position_mode),
            ("POST", "/fapi/v1/positionSide/dual", self._position_mode),
            ("DELETE", "/fapi/v1/allOpenOrders", self._cancel_all),
        ):
            self._routes[(method, path)] = (fn, True)

    # -- clock -----------------------------------------------------------------------------

    @property
    def now_ms(self) -> int:
        """Virtual time (ms); with ``speed`` > 0 it runs, never past the close of the last bar."""
        if self.speed <= 0:
            return self._clock_at
        now = self._clock_at + (time.monotonic() - self._clock_t0) * 1000.0 * self.speed
        end = self._end_ms if self._end_ms is not None else now
        return int(min(now, max(end, self._clock_at)))

    @now_ms.setter
    def now_ms(self, value: int) -> None:
        self._clock_at = int(value)
        self._clock_t0 = time.monotonic()

    def start(self) -> ReplayExchange:
        """Serve; with ``speed`` > 0 the virtual clock starts running from here."""
        if self._thread is None:
            self.now_ms = self._clock_at
        super().start()
        return self

    # -- steering and inspection -----------------------------------------------------------

    def check_fault(self, fault: FaultSpec) -> None:
        if fault in _OWN_FAULTS or (isinstance(fault, int) and fault in ERRORS):
            return
        if isinstance(fault, int) and fault < 0:
            raise ValueError(f"fault {fault!r}: Binance codes answered here are {sorted(ERRORS)}")
        super().check_fault(fault)

    @property
    def orders(self) -> list[dict[str, Any]]:
        """Every order, oldest first: ``client_id id symbol market side type qty filled avg_price
        status time`` (and ``price time_in_force reduce_only cum_quote fee update_time bar``)."""
        return self.matcher.orders

    @property
    def trades(self) -> list[dict[str, Any]]:
        """Every fill, oldest first: ``id order_id client_id symbol market side qty price fee
        fee_asset maker realized_pnl time``."""
        return self.matcher.trades

    def position(self, symbol: str) -> dict[str, float | int | str]:
        """A futures position after settling to now: ``qty`` (signed), ``entry_price``,
        ``mark_price``, ``unrealized_pnl``, ``liquidation_price`` (the kernel's: NaN when flat,
        <= 0 for a long that cash alone keeps from ever being liquidated), ``leverage``,
        ``margin_type``."""
        name = file_symbol(symbol)
        with self._engine_lock:
            self.matcher.advance(self.now_ms)
            pos = self.matcher.positions.get(name)
            if pos is None:
                raise KeyError(
                    f"{symbol!r} is not a futures symbol here; have {sorted(self.matcher.positions)}"
                )
            book = self.matcher.books[("futures", name)]
            mark = book.mark()
            return {
                "qty": pos.qty,
                "entry_price": pos.entry,
                "mark_price": mark,
                "unrealized_pnl": pos.qty * (mark - pos.entry),
                "liquidation_price": float(
                    liquidation_price(
                        self.matcher.cash.get(book.quote, 0.0), pos.qty, book.cfg.maintenance_margin_rate
                    )
                ),
                "leverage": pos.leverage,
                "margin_type": pos.margin_type,
            }

    def balance(self, asset: str, market: str | None = None) -> dict[str, float]:
        """One asset after settling to now. Spot: ``free``, ``locked``, ``total``. Futures:
        ``cash`` (the kernel's), ``wallet`` (Binance's walletBalance = cash + sum qty * entry),
        ``unrealized_pnl`` and ``equity`` (cash + sum qty * mark). ``market`` defaults to spot
        when spot bars were given, else futures."""
        market = market or ("spot" if any(m == "spot" for m, _ in self.matcher.books) else "futures")
        with self._engine_lock:
            self.matcher.advance(self.now_ms)
            if market == "spot":
                free, locked = self.matcher.spot.get(asset, [0.0, 0.0])
                return {"free": free, "locked": locked, "total": free + locked}
            cash = self.matcher.cash.get(asset, 0.0)
            entry_value, upnl = self._position_sums(asset)
            return {
                "cash": cash,
                "wallet": cash + entry_value,
                "unrealized_pnl": upnl,
                "equity": self.matcher.equity(asset),
            }

    def _position_sums(self, asset: str) -> tuple[float, float]:
        """``(sum qty * entry, sum qty * (mark - entry))`` over futures positions margined in ``asset``."""
        entry_value = upnl = 0.0
        for sym, pos in self.matcher.positions.items():
            book = self.matcher.books[("futures", sym)]
            if book.quote == asset:
                entry_value += pos.qty * pos.entry
                upnl += pos.qty * (book.mark() - pos.entry)
        return entry_value, upnl

    # -- dispatch --------------------------------------------------------------------------

    def handle(self, request: Request, fault: FaultSpec | None = None) -> Answer:
        if isinstance(fault, int) and fault < 0:
            return _error(reject(fault))
        if fault == "reject":
            return _error(reject(-2010))
        route = self._routes.get((request.method, request.path))
        if route is None:
            with self._engine_lock:
                self.matcher.advance(self.now_ms)
            answer = super().handle(request)
        else:
            fn, signed = route
            refused = self._authenticate(request) if signed else None
            if refused is not None:
                answer = _error(refused)
            else:
                market = "spot" if request.path.startswith("/api/") else "futures"
                with self._engine_lock:
                    self.matcher.advance(self.now_ms)
                    answer = fn(market, request.params, fault)
        if fault == "late":
            self._stopped.wait(self.timeout_sleep_s)  # bounded, and cut short by stop()
        return answer

    def _authenticate(self, request: Request) -> Rejection | None:
        headers = {k.lower(): v for k, v in (request.headers or {}).items()}
        if headers.get("x-mbx-apikey") != self.api_key:
            return reject(-2015)
        unsigned = "".join(
            "&".join(p for p in part.split("&") if p and not p.startswith("signature="))
            for part in (request.query, request.body)
        )
        expected = hmac.new(self.api_secret.encode(), unsigned.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.params.get("signature", "")):
            return reject(-1022)
        try:
            stamp = int(request.params["timestamp"])
            window = int(request.params.get("recvWindow", self.recv_window_ms))
        except (KeyError, ValueError):
            return reject(
                -1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed."
            )
        if not 0 < window <= _MAX_RECV_WINDOW:
            return reject(-1131, "recvWindow must be less than 60000")
        server = time.time() * 1000.0 + self.clock_skew_ms
        if stamp >= server + 1000 or server - stamp > window:
            return reject(-1021)
        return None

    def _book(self, market: str, params: dict[str, str]) -> Book | Rejection:
        book = self.matcher.book(market, params.get("symbol", ""))
        return book if book is not None else reject(-1121)

    # -- orders ----------------------------------------------------------------------------

    def _new_order(self, market: str, params: dict[str, str], fault: FaultSpec | None) -> Answer:
        book = self._book(market, params)
        if isinstance(book, Rejection):
            return _error(book)
        client_id = params.get("newClientOrderId") or f"replay-{len(self.matcher.orders) + 1}"
        order = self.matcher.place(
            market,
            book.symbol,
            side=params.get("side", ""),
            type_=params.get("type", ""),
            quantity=params.get("quantity"),
            price=params.get("price"),
            time_in_force=params.get("timeInForce"),
            client_id=client_id,
            # a spot order has no reduceOnly on Binance; ccxt passes it through, so it is ignored
            reduce_only=market == "futures" and params.get("reduceOnly", "").lower() == "true",
            now=self.now_ms,
            quote_qty=params.get("quoteOrderQty"),
            partial=fault == "partial",
        )
        if isinstance(order, Rejection):
            return _error(order)
        if market == "spot":
            return 200, self._spot_order(order, full=params.get("newOrderRespType", "FULL") == "FULL")
        return 200, self._futures_order(order)

    def _find(self, market: str, params: dict[str, str], missing: int) -> dict | Rejection:
        book = self._book(market, params)
        if isinstance(book, Rejection):
            return book
        order_id, client_id = params.get("orderId"), params.get("origClientOrderId")
        if order_id is None and client_id is None:
            return reject(
                -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!"
            )
        order = self.matcher.find(market, book.symbol, order_id, client_id)
        return order if order is not None else reject(missing)

    def _query_order(self, market: str, params: dict[str, str], fault: FaultSpec | None) -> Answer:
        order = self._find(market, params, -2013)
        if isinstance(order, Rejection):
            return _error(order)
        return 200, self._order_view(order, query=True)

    def _cancel_order(self, market: str, params: dict[str, str], fault: FaultSpec | None) -> Answer:
        order = self._find(market, params, -2011)
        if isinstance(order, Rejection):
            return _error(order)
        done = self.matcher.cancel(order, self.now_ms)
        if isinstance(done, Rejection):
            return _error(done)
        return 200, self._order_view(done)

    def _cancel_all(self, market: str, params: dict[str, str], fault: FaultSpec | None) -> Answer:
        book = self._book(market, params)
        if isinstance(book, Rejection):
            return _error(book)
        canceled = [
            self.matcher.cancel(o, self.now_ms) for o in self.matcher.open_orders(market, book.symbol)
        ]
        if market == "futures":
            return 200, {"code": 200, "msg": "The operation of cancel all open order is done."}
        return 200, [self._order_view(o) for o in canceled if isinstance(o, dict)]

    def _open_orders(self, market: str, params: dict[str, str], fault: FaultSpec | None) -> Answer:
        symbol = params.get("symbol")
        if symbol is not None and self.matcher.book(market, symbol) is None:
            return _error(reject(-1121))
        return 200, [self._order_view(o, query=True) for o in self.matcher.open_orders(market, symbol)]

    def _order_view(self, order: dict, query: bool = False) -> dict[str, Any]:
        if order["market"] == "spot":
            return self._spot_order(order, full=False, query=query)
        return self._futures_order(order, query=query)

    def _spot_order(self, o: dict, *, full: bool, query: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "symbol": o["symbol"],
            "orderId": o["id"],
            "orderListId": -1,
            "clientOrderId": o["client_id"],
            "price": _num(o["price"]),
            "origQty": _num(o["qty"]),
            "executedQty": _num(o["filled"]),
            "cummulativeQuoteQty": _num(o["cum_quote"]),
            "status": o["status"],
            "timeInForce": o["time_in_force"],
            "type": o["type"],
            "side": o["side"],
            "workingTime": o["time"],
            "selfTradePreventionMode": "EXPIRE_MAKER",
        }
        if query:
            body.update(
                stopPrice="0",
                icebergQty="0",
                time=o["time"],
                updateTime=o["update_time"],
                isWorking=o["status"] == "NEW",
                origQuoteOrderQty="0",
            )
        else:
            body["transactTime"] = o["update_time"]
        if full:
            body["fills"] = [
                {
                    "price": _num(t["price"]),
                    "qty": _num(t["qty"]),
                    "commission": _num(t["fee"]),
                    "commissionAsset": t["fee_asset"],
                    "tradeId": t["id"],
                }
                for t in self.matcher.trades
                if t["order_id"] == o["id"]
            ]
        return body

    def _futures_order(self, o: dict, query: bool = False) -> dict[str, Any]:
        body = {
            "orderId": o["id"],
            "symbol": o["symbol"],
            "status": o["status"],
            "clientOrderId": o["client_id"],
            "price": _num(o["price"]),
            "avgPrice": _num(o["avg_price"]),
            "origQty": _num(o["qty"]),
            "executedQty": _num(o["filled"]),
            "cumQty": _num(o["filled"]),
            "cumQuote": _num(o["cum_quote"]),
            "timeInForce": o["time_in_force"],
            "type": o["type"],
            "reduceOnly": o["reduce_only"],
            "closePosition": False,
            "side": o["side"],
            "positionSide": "BOTH",
            "stopPrice": "0",
            "workingType": "CONTRACT_PRICE",
            "priceProtect": False,
            "origType": o["type"],
            "priceMatch": "NONE",
            "selfTradePreventionMode": "EXPIRE_MAKER",
            "goodTillDate": 0,
            "updateTime": o["update_time"],
        }
        if query:
            body["time"] = o["time"]
        return body

    def _my_trades(self, market: str, params: dict[str, str], fault: FaultSpec | None) -> Answer:
        book = self._book(market, params)
        if isinstance(book, Rejection):
            return _error(book)
        rows = [t for t in self.matcher.trades if t["market"] == market and t["symbol"] == book.symbol]
        if "orderId" in params:
            rows = [t for t in rows if str(t["order_id"]) == params["orderId"]]
        if "fromId" in params:
            rows = [t for t in rows if t["id"] >= int(params["fromId"])]
        if "startTime" in params:
            rows = [t for t in rows if t["time"] >= int(params["startTime"])]
        if "endTime" in params:
            rows = [t for t in rows if t["time"] <= int(params["endTime"])]
        rows = rows[: min(int(params.get("limit", 500)), 1000)]
        out = []
        for t in rows:
            common = {
                "symbol": t["symbol"],
                "id": t["id"],
                "orderId": t["order_id"],
                "price": _num(t["price"]),
                "qty": _num(t["qty"]),
                "quoteQty": _num(t["qty"] * t["price"]),
                "commission": _num(t["fee"]),
                "commissionAsset": t["fee_asset"],
                "time": t["time"],
            }
            if market == "spot":
                extra = {
                    "orderListId": -1,
                    "isBuyer": t["side"] == "BUY",
                    "isMaker": t["maker"],
                    "isBestMatch": True,
                }
            else:
                extra = {
                    "buyer": t["side"] == "BUY",
                    "maker": t["maker"],
                    "side": t["side"],
                    "positionSide": "BOTH",
                    "realizedPnl": _num(t["realized_pnl"]),
                    "marginAsset": t["fee_asset"],
                }
            out.append({**common, **extra})
        return 200, out

    # -- accounts --------------------------------------------------------------------------

    def _spot_account(self, market: str, params: dict[str, str], fault: FaultSpec | None) -> Answer:
        fees = (
            next(b for (m, _), b in self.matcher.books.items() if m == "spot") if self._has("spot") else None
        )
        maker, taker = (fees.maker, fees.taker) if fees else (0.001, 0.001)
        return 200, {
            "makerCommission": round(maker * 1e4),
            "takerCommission": round(taker * 1e4),
            "buyerCommission": 0,
            "sellerCommission": 0,
            "commissionRates": {"maker": _num(maker), "taker": _num(taker), "buyer": "0", "seller": "0"},
            "canTrade": True,
            "canWithdraw": True,
            "canDeposit": True,
            "brokered": False,
            "requireSelfTradePrevention": False,
            "preventSor": False,
            "updateTime": self.now_ms,
            "accountType": "SPOT",
            "balances": [
                {"asset": a, "free": _num(free), "locked": _num(locked)}
                for a, (free, locked) in sorted(self.matcher.spot.items())
            ],
            "permissions": ["SPOT"],
            "uid": 1,
        }

    def _has(self, market: str) -> bool:
        return any(m == market for m, _ in self.matcher.books)

    def _position_row(self, sym: str) -> dict[str, Any]:
        pos = self.matcher.positions[sym]
        book = self.matcher.books[("futures", sym)]
        mark = book.mark()
        upnl = pos.qty * (mark - pos.entry)
        notional = pos.qty * mark
        initial = abs(notional) / pos.leverage
        isolated_wallet = abs(pos.qty) * pos.entry / pos.leverage if pos.margin_type == "isolated" else 0.0
        cash = self.matcher.cash.get(book.quote, 0.0)
        p_liq = liquidation_price(cash, pos.qty, book.cfg.maintenance_margin_rate)
        return {
            "symbol": sym,
            "positionSide": "BOTH",
            "positionAmt": _num(pos.qty),
            "entryPrice": _num(pos.entry),
            "breakEvenPrice": _num(pos.entry),
            "markPrice": _num(mark),
            "unRealizedProfit": _num(upnl),
            "unrealizedProfit": _num(upnl),
            "liquidationPrice": _num(max(p_liq, 0.0)) if np.isfinite(p_liq) else "0",
            "isolatedMargin": _num(isolated_wallet + upnl) if pos.margin_type == "isolated" else "0",
            "isolatedWallet": _num(isolated_wallet),
            "notional": _num(notional),
            "marginAsset": book.quote,
            "initialMargin": _num(initial),
            "maintMargin": _num(abs(notional) * book.cfg.maintenance_margin_rate),
            "positionInitialMargin": _num(initial),
            "openOrderInitialMargin": "0",
            "adl": 0,
            "bidNotional": "0",
            "askNotional": "0",
            "leverage": str(pos.leverage),
            "marginType": pos.margin_type,
            "isolated": pos.margin_type == "isolated",
            "isAutoAddMargin": "false",
            "maxNotionalValue": "1000000000",
            "updateTime": pos.update_time,
        }

    def _futures_account(self, market: str, params: dict[str, str], fault: FaultSpec | None) -> Answer:
        now = self.now_ms
        positions = [self._position_row(s) for s, p in sorted(self.matcher.positions.items()) if p.qty]
        assets = []
        totals = dict.fromkeys(("wallet", "upnl", "initial", "maint"), 0.0)
        for asset, cash in sorted(self.matcher.cash.items()):
            entry_value, upnl = self._position_sums(asset)
            rows = [r for r in positions if r["marginAsset"] == asset]
            initial = sum(float(r["initialMargin"]) for r in rows)
            maint = sum(float(r["maintMargin"]) for r in rows)
            wallet = cash + entry_value
            margin = wallet + upnl
            available = max(margin - initial, 0.0)
            for k, v in (("wallet", wallet), ("upnl", upnl), ("initial", initial), ("maint", maint)):
                totals[k] += v
            assets.append(
                {
                    "asset": asset,
                    "walletBalance": _num(wallet),
                    "unrealizedProfit": _num(upnl),
                    "marginBalance": _num(margin),
                    "maintMargin": _num(maint),
                    "initialMargin": _num(initial),
                    "positionInitialMargin": _num(initial),
                    "openOrderInitialMargin": "0",
                    "crossWalletBalance": _num(wallet),
                    "crossUnPnl": _num(upnl),
                    "availableBalance": _num(available),
                    "maxWithdrawAmount": _num(available),
                    # ccxt skips an asset whose updateTime is 0 (never used)
                    "updateTime": now,
                }
            )
        margin_total = totals["wallet"] + totals["upnl"]
        return 200, {
            "totalInitialMargin": _num(totals["initial"]),
            "totalMaintMargin": _num(totals["maint"]),
            "totalWalletBalance": _num(totals["wallet"]),
            "totalUnrealizedProfit": _num(totals["upnl"]),
            "totalMarginBalance": _num(margin_total),
            "totalPositionInitialMargin": _num(totals["initial"]),
            "totalOpenOrderInitialMargin": "0",
            "totalCrossWalletBalance": _num(totals["wallet"]),
            "totalCrossUnPnl": _num(totals["upnl"]),
            "availableBalance": _num(max(margin_total - totals["initial"], 0.0)),
            "maxWithdrawAmount": _num(max(margin_total - totals["initial"], 0.0)),
            "assets": assets,
            "positions": [{k: r[k] for k in _ACCOUNT_POSITION_KEYS} for r in positions],
        }

    def _position_risk(self, market: str, params: dict[str, str], fault: FaultSpec | None) -> Answer:
        symbol = params.get("symbol")
        if symbol is not None and symbol not in self.matcher.positions:
            return _error(reject(-1121))
        return 200, [self._position_row(s) for s in sorted(self.matcher.positions) if symbol in (None, s)]

    def _income(self, market: str, params: dict[str, str], fault: FaultSpec | None) -> Answer:
        rows = self.matcher.income
        if "symbol" in params:
            rows = [r for r in rows if r["symbol"] == params["symbol"]]
        if params.get("incomeType") not in (None, "FUNDING_FEE"):
            rows = []
        if "startTime" in params:
            rows = [r for r in rows if r["time"] >= int(params["startTime"])]
        if "endTime" in params:
            rows = [r for r in rows if r["time"] <= int(params["endTime"])]
        rows = rows[: min(int(params.get("limit", 100)), 1000)]
        return 200, [
            {"symbol": r["symbol"], "incomeType": r["type"], "income": _num(r["amount"]), "asset": r["asset"],
             "info": "", "time": r["time"], "tranId": r["id"], "tradeId": ""}
            for r in rows
        ]  # fmt: skip

    def _leverage_bracket(self, market: str, params: dict[str, str], fault: FaultSpec | None) -> Answer:
        out = []
        for sym in sorted(self.matcher.positions):
            if params.get("symbol") not in (None, sym):
                continue
            mmr = self.matcher.books[("futures", sym)].cfg.maintenance_margin_rate
            bracket = {"bracket": 1, "initialLeverage": 125, "notionalCap": 1_000_000_000, "notionalFloor": 0,
                       "maintMarginRatio": mmr, "cum": 0.0}  # fmt: skip
            out.append({"symbol": sym, "notionalCoef": 1.0, "brackets": [bracket]})
        return 200, out

    def _set_leverage(self, market: str, params: dict[str, str], fault: FaultSpec | None) -> Answer:
        pos = self.matcher.positions.get(params.get("symbol", ""))
        if pos is None:
            return _error(reject(-1121))
        try:
            leverage = int(params.get("leverage", ""))
        except ValueError:
            leverage = 0
        if not 1 <= leverage <= 125:
            return _error(reject(-4028, f"Leverage {params.get('leverage')} is not valid"))
        pos.leverage = leverage
        return 200, {"leverage": leverage, "maxNotionalValue": "1000000000", "symbol": params["symbol"]}

    def _set_margin_type(self, market: str, params: dict[str, str], fault: FaultSpec | None) -> Answer:
        pos = self.matcher.positions.get(params.get("symbol", ""))
        if pos is None:
            return _error(reject(-1121))
        wanted = {"ISOLATED": "isolated", "CROSSED": "cross"}.get(params.get("marginType", "").upper())
        if wanted is None:
            return _error(reject(-1102, "Param 'marginType' must be ISOLATED or CROSSED."))
        if wanted == pos.margin_type:
            return _error(reject(-4046, "No need to change margin type."))
        if pos.qty or self.matcher.open_orders("futures", params["symbol"]):
            return _error(reject(-4048, "Margin type cannot be changed if there exists position."))
        pos.margin_type = wanted
        return 200, {"code": 200, "msg": "success"}

    def _position_mode(self, market: str, params: dict[str, str], fault: FaultSpec | None) -> Answer:
        if "dualSidePosition" not in params:
            return 200, {"dualSidePosition": False}
        if params["dualSidePosition"].lower() == "false":
            return _error(reject(-4059, "No need to change position side."))
        return _error(reject(-4068, "Hedge mode is not supported by the replay exchange (one-way only)."))

    # -- public data seen from the virtual clock -------------------------------------------

    def _ticker(self, market: str, params: dict[str, str], fault: FaultSpec | None) -> Answer:
        symbol = params.get("symbol")
        if symbol is not None and self.matcher.book(market, symbol) is None:
            return _error(reject(-1121))
        now = self.now_ms
        rows = [
            self._ticker_row(b, now)
            for (m, s), b in sorted(self.matcher.books.items())
            if m == market and symbol in (None, s)
        ]
        return 200, rows[0] if symbol else rows

    def _ticker_row(self, book: Book, now: int) -> dict[str, Any]:
        m = book.md
        u = book.bar_at(now)
        last = float(m.open[u]) if u is not None else book.mark()
        hs = float(m.half_spread[u - 1]) if u is not None and u >= 1 else 0.0
        lo = int(np.searchsorted(m.ts, now - _DAY_MS, "left"))
        hi = book.closed + 1  # closed bars only: the open bar's range is in the future
        lo = min(lo, hi)
        first = float(m.open[lo]) if lo < len(m.ts) else last
        high = max([last, *m.high[lo:hi]]) if hi > lo else last
        low = min([last, *m.low[lo:hi]]) if hi > lo else last
        volume = float(m.volume[lo:hi].sum())
        quote_volume = float((m.volume[lo:hi] * m.close[lo:hi]).sum())
        row = {
            "symbol": book.symbol,
            "priceChange": _num(last - first),
            "priceChangePercent": f"{(last / first - 1) * 100:.3f}" if first else "0",
            "weightedAvgPrice": _num(quote_volume / volume if volume else last),
            "lastPrice": _num(last),
            "lastQty": "0",
            "openPrice": _num(first),
            "highPrice": _num(high),
            "lowPrice": _num(low),
            "volume": _num(volume),
            "quoteVolume": _num(quote_volume),
            "openTime": int(now - _DAY_MS),
            "closeTime": int(now),
            "firstId": 0,
            "lastId": 0,
            "count": 0,
        }
        if book.market == "spot":
            prev = float(m.close[book.closed]) if book.closed >= 0 else last
            row.update(prevClosePrice=_num(prev), bidPrice=_num(last * (1 - hs)), bidQty="1",
                       askPrice=_num(last * (1 + hs)), askQty="1")  # fmt: skip
        return row

    def _open_candle(self, v: dict[str, float], frac: float) -> None:
        # only the open is known inside the bar that orders fill in; the rest would be look-ahead
        v["high"] = v["low"] = v["close"] = v["open"]
        for c in ("volume", "quote_volume", "trades", "taker_buy_base"):
            v[c] = 0.0

    def _premium_index(self, market: str, params: dict[str, str]) -> Answer:
        status, body = super()._premium_index(market, params)
        if status == 200:
            for row in body if isinstance(body, list) else [body]:
                book = self.matcher.book("futures", row["symbol"])
                if book is not None:
                    mark = f"{book.mark():.8f}"  # the last close, not the open bar's
                    row.update(markPrice=mark, indexPrice=mark, estimatedSettlePrice=mark)
        return status, body


def _error(rejection: Rejection) -> Answer:
    return rejection.status, rejection.body


# -- CLI ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayArgs:
    """The command line of ``python -m serving.replay_exchange`` (``key=value`` words, checked when
    built; ``--help`` lists them)."""

    exchange: str = arg("exchange of the stored series (the stand-in answers as Binance)", "binance")
    market: str = arg("spot, or futures (USD-M perpetual)", "futures")
    symbol: str = arg("symbol in ccxt form, e.g. BTC/USDT", "BTC/USDT")
    timeframe: str = arg("bar length of the replayed series", "5m")
    store: str | None = arg(
        "store root to read the series from (default: $KLINEGYM_DATA or ./data/store)", None
    )
    path: str | None = arg("bars from this Parquet file instead of the store", None)
    funding: str | None = arg("funding rates from this Parquet file (with path= on futures)", None)
    start: str | None = arg("virtual time starts here, ISO or epoch ms (default: the first bar)", None)
    end: str | None = arg("bars from here on are left out (exclusive)", None)
    speed: float = arg("virtual ms per wall ms (1 = real time)", 1.0)
    balance: float = arg("starting balance in the quote currency", 10_000.0)
    port: int = arg("port on 127.0.0.1 (0: any free port)", 0)
    max_seconds: float = arg("stop after this many wall seconds", 3600.0)
    env: str | None = arg(
        "cost model: a conf/env group, a YAML file or a run folder (default: perp/spot)", None
    )
    api_key: str = arg("the API key the bot must send", "replay-key", secret=True)
    api_secret: str = arg("the secret the bot must sign with", "replay-secret", secret=True)

    def __post_init__(self) -> None:
        SeriesKey.of(self.exchange, self.market, self.symbol, self.timeframe)
        timeframe_ms(self.timeframe)  # a time bar: the clock steps by it
        split_symbol(file_symbol(self.symbol))  # the balance is in its quote currency
        time_range(self.start, self.end)
        for key in ("speed", "balance", "max_seconds"):
            if not getattr(self, key) > 0:
                hint = " (virtual ms per wall ms; 1 = real time)" if key == "speed" else ""
                raise UsageError(f"{key}={getattr(self, key)} must be > 0{hint}")
        if not 0 <= self.port <= 65_535:
            raise UsageError(f"port={self.port} must be in 0..65535 (0: any free port)")
        if self.store is not None and self.path is not None:
            raise UsageError("give store= or path=, not both: the bars come from a store or from one file")
        if self.funding is not None and self.path is None:
            raise UsageError("funding= goes with path=; from the store, funding comes with the series")
        if self.funding is not None and self.market != "futures":
            raise UsageError("funding= needs market=futures (funding rates exist for perpetual futures only)")
        if not self.api_key:
            raise UsageError("api_key= is empty; give the key the bot will send")
        if not self.api_secret:
            raise UsageError("api_secret= is empty; give the secret the bot will sign with")


def _env_kwargs(name: str | None) -> dict[str, Any]:
    """EnvConfig kwargs from a config group name (conf/env/NAME.yaml), a YAML file, or a training run
    or bundle folder (the costs the policy was trained with)."""
    if not name:
        return {}
    import yaml

    path = Path(name)
    if path.is_dir():
        from agents.bundle import read_spec

        return dict(read_spec(path)["env"])
    if not path.suffix:
        path = Path(__file__).resolve().parents[1] / "conf" / "env" / f"{name}.yaml"
    if not path.exists():
        raise ValueError(
            f"env={name!r}: no file {path}; use a conf/env group name (perp, spot) or a YAML path"
        )
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"env={name}: {path} is not YAML ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(values, dict):
        raise ValueError(f"env={name}: {path} is not a YAML mapping of env keys (fee_rate: 0.0004, ...)")
    return {k: v for k, v in values.items() if k != "defaults"}


def _read_parquet(key: str, name: str) -> pd.DataFrame:
    path = Path(name)
    if not path.is_file():
        raise UsageError(
            f"{key}={name} does not exist" if not path.exists() else f"{key}={name} is not a file"
        )
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's errors are both
        reason = " ".join(str(exc).split())[:120]
        raise UsageError(f"{key}={name} is not a Parquet file ({reason})") from None


def _bars(a: ReplayArgs) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The bars (and funding) to replay, from ``path=`` or the store, checked."""
    end = parse_time(a.end, "end")
    if a.path is None:
        root = resolve_root(a.store)
        if not root.is_dir():
            where = f"store={a.store}" if a.store else f"the store root {root}"
            raise UsageError(f"{where} does not exist" if not root.exists() else f"{where} is not a folder")
        bars, rates = load_market(
            a.symbol, a.timeframe, exchange=a.exchange, market="perp" if a.market == "futures" else "spot",
            end=end, root=root,
        )  # fmt: skip
        return bars, rates
    bars = _read_parquet("path", a.path)
    missing = [c for c in BAR_COLUMNS if c not in bars.columns]
    if missing:
        raise UsageError(f"path={a.path} lacks the bar column(s) {', '.join(missing)}")
    if end is not None:
        bars = bars[bars["ts"] < end].reset_index(drop=True)
    if bars.empty:
        raise UsageError(
            f"path={a.path} has no bars" + (f" before end {iso(end)}" if end is not None else "")
        )
    issues = check_bars(bars, timeframe_ms(a.timeframe))
    if issues:
        raise UsageError(f"path={a.path}: {len(issues)} bad row(s), first {issues[0]}")
    rates = _read_parquet("funding", a.funding) if a.funding is not None else None
    return bars, rates


def _main(argv: list[str]) -> int:
    if any(w in ("-h", "--help") for w in argv):
        print(f"python -m serving.replay_exchange key=value ...\n\n{usage(ReplayArgs)}")
        return 0
    try:
        a = parse(ReplayArgs, argv, "python -m serving.replay_exchange")
        bars, rates = _bars(a)
        first, last = int(bars["ts"].iloc[0]), int(bars["ts"].iloc[-1])
        start = parse_time(a.start, "start")
        if start is not None and not first <= start <= last:
            where = "before the first" if start < first else "after the last"
            edge = first if start < first else last
            raise UsageError(
                f"start {iso(start)} is {where} bar ({iso(edge)}); "
                f"choose a start from {iso(first)} to {iso(last)}"
            )
        name = file_symbol(a.symbol)
        quote = split_symbol(name)[1]
        try:
            ex = ReplayExchange(
                **{a.market: {name: {a.timeframe: bars}}},
                funding={name: rates} if a.market == "futures" and rates is not None else None,
                env=_env_kwargs(a.env or ("perp" if a.market == "futures" else "spot")),
                start_ms=first if start is None else start,
                speed=a.speed,
                balances={quote: a.balance},
                api_key=a.api_key,
                api_secret=a.api_secret,
                max_seconds=a.max_seconds,
                port=a.port,
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"port {a.port} on 127.0.0.1 is in use; choose another or port=0") from None
            raise
    except (ValueError, TypeError, OSError, DataError) as exc:
        # one line, and never a key or secret: no message here is built from their values
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    with ex:
        print(ex.url, flush=True)
        print(f"BINANCE_API_KEY={ex.api_key} BINANCE_API_SECRET={ex.api_secret}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            ex.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
