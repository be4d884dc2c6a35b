"""The replay exchange's matching engine and accounts: orders filled at the env kernel's prices.

No HTTP here; :mod:`serving.replay_exchange` puts Binance's REST face on it. One
:class:`Book` per (market, symbol) holds the bars and the cost inputs that
:func:`envs.market.prepare` computes for the env, so an order costs what the kernel charges.

Prices and fees. With virtual time inside bar ``u`` (``t = u - 1`` the last closed bar), a market
order of signed quantity ``dq`` fills entirely at
``p = envs.accounting.fill_price(o[u], h[u], l[u], dq, half_spread[t], slip_mode, slip_value,
sigma[t], ref_volume[t])`` (whenever in the bar it arrives, as the kernel fills a decision at the
next open), paying ``taker_fee * |dq| * p``. Fees are charged in the quote asset on both markets,
as the env does; real Binance spot charges a buy's fee in the base asset. A LIMIT IOC order fills
the same way if ``p`` is within its limit, else expires with nothing filled. A LIMIT GTC order
that is marketable fills as IOC; otherwise it rests and fills whole at its limit price, paying
``maker_fee``, when a later bar's ``[low, high]`` reaches the limit (checked once that bar has
closed, bar by bar in order). No order trades before bar 1 or outside a bar (a gap, or past the
data): ``-1013 Market is closed.``

Accounts. Spot: ``free`` / ``locked`` per asset; a resting buy locks ``qty * limit`` plus its
maker fee, a resting sell its quantity. Futures (one-way mode, one wallet per margin asset):
``cash`` moves exactly as the kernel's (``cash -= dq * p + fee``; funding
``cash -= qty * funding_per_unit[u]``), so ``cash + qty * mark`` is the env's equity; Binance's
``walletBalance`` is ``cash + qty * entry`` and ``unrealizedProfit`` is ``qty * (mark - entry)``,
``mark`` the close of the last closed bar. A position's entry is the env's average entry
(``envs.vector.entry_after``). A fill that grows a position past ``leverage * equity`` is refused
(``-2019``); leverage defaults to 20 (``set_leverage``), the margin type is reported only.

Each closed bar ``v`` of a futures book with a position (or resting orders) is settled in the
kernel's order: a gap through the liquidation price at the open (done as soon as ``v`` opens),
resting fills, liquidation against the bar's adverse extreme (from the bar's last fill price if it
traded), funding ``qty * funding_per_unit[v]``, and liquidation at the close if funding reached the
maintenance margin. Liquidation uses :func:`envs.accounting.liquidation_price` and
:func:`~envs.accounting.liquidate` with the env's ``maintenance_margin_rate`` and
``liquidation_fee`` on the margin asset's whole cash: faithful to the env for one symbol per
wallet; with several symbols on one wallet it ignores the other positions. Setting the clock back
does not undo anything already settled.

Refusals are :class:`Rejection` values with Binance's code and message, never exceptions.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from envs.accounting import fill_price, liquidate, liquidation_price
from envs.config import DEFAULT_MAKER_FEE, EnvConfig
from envs.market import MarketData, prepare
from envs.vector import entry_after, slippage_params

DEFAULT_LEVERAGE = 20

ERRORS: dict[int, tuple[int, str]] = {
    -1000: (400, "An unknown error occured while processing the request."),
    -1001: (400, "Internal error; unable to process your request. Please try again."),
    -1003: (429, "Too many requests; please use the websocket for live updates."),
    -1007: (
        408,
        "Timeout waiting for response from backend server. Send status unknown; execution status unknown.",
    ),
    -1013: (400, "Filter failure: LOT_SIZE"),
    -1021: (400, "Timestamp for this request is outside of the recvWindow."),
    -1022: (400, "Signature for this request is not valid."),
    -1102: (400, "A mandatory parameter was not sent, was empty/null, or malformed."),
    -1121: (400, "Invalid symbol."),
    -2010: (400, "Account has insufficient balance for requested action."),
    -2011: (400, "Unknown order sent."),
    -2013: (400, "Order does not exist."),
    -2014: (401, "API-key format invalid."),
    -2015: (401, "Invalid API-key, IP, or permissions for action."),
    -2019: (400, "Margin is insufficient."),
    -2022: (400, "ReduceOnly Order is rejected."),
    -4164: (400, "Order's notional must be no smaller than 100 (unless you choose reduce only)."),
}
"""Binance error codes this exchange answers: HTTP status and Binance's message."""


class Rejection(NamedTuple):
    """A refused request: HTTP status and Binance's ``{"code", "msg"}`` body."""

    status: int
    code: int
    msg: str

    @property
    def body(self) -> dict[str, Any]:
        return {"code": self.code, "msg": self.msg}


def reject(code: int, msg: str | None = None) -> Rejection:
    status, default = ERRORS.get(code, (400, "Rejected."))
    return Rejection(status, code, msg or default)


MARKET_CLOSED = reject(-1013, "Market is closed.")


@dataclass
class Book:
    """One (market, symbol): bars with the env's cost inputs, the exchange's filters, and how far
    virtual time has been settled (``opened`` / ``closed``: the last bar whose open / close has
    been processed)."""

    market: str
    symbol: str
    base: str
    quote: str
    md: MarketData
    cfg: EnvConfig
    filters: dict[str, dict[str, str]]
    opened: int = -1
    closed: int = -1
    last_fill: tuple[int, float] | None = None  # (bar, price) of the latest fill

    def __post_init__(self) -> None:
        self.close_ts = self.md.ts + self.md.bar_ms
        self.slip_mode, self.slip_value = slippage_params(self.cfg)
        self.taker = self.cfg.fee
        self.maker = DEFAULT_MAKER_FEE[self.cfg.market] if self.cfg.maker_fee is None else self.cfg.maker_fee

    def bar_at(self, now: int) -> int | None:
        """Index of the bar that contains ``now``, or None in a gap or outside the data."""
        u = int(np.searchsorted(self.md.ts, now, "right")) - 1
        return u if u >= 0 and now < self.close_ts[u] else None

    def price(self, u: int, dq: float) -> float:
        """The kernel's fill price of ``dq`` in bar ``u`` (``u >= 1``)."""
        m, t = self.md, u - 1
        return float(
            fill_price(
                m.open[u], m.high[u], m.low[u], dq, m.half_spread[t], self.slip_mode, self.slip_value,
                m.sigma[t], m.ref_volume[t],
            )
        )  # fmt: skip

    def mark(self) -> float:
        """Close of the last closed bar (the open of the first bar before any closed)."""
        return float(self.md.close[self.closed]) if self.closed >= 0 else float(self.md.open[0])


def make_book(
    market: str,
    symbol: str,
    base: str,
    quote: str,
    bars: pd.DataFrame,
    funding: pd.DataFrame | None,
    env: dict[str, Any],
    filters: list[dict[str, Any]],
) -> Book:
    """A book with ``prepare``'s arrays for the env config ``env`` on ``market``: ``market`` is set
    to ``perp`` for futures and ``spot`` for spot, keys of the other kind dropped (``max_leverage``
    on spot, ``allow_short`` / ``borrow_rate`` on perps), and features cut to one cheap column
    (matching reads only prices and costs)."""
    kind = "perp" if market == "futures" else "spot"
    drop = {"max_leverage"} if kind == "spot" else {"allow_short", "borrow_rate"}
    kwargs = {k: v for k, v in env.items() if k not in drop}
    cfg = EnvConfig.from_kwargs({**kwargs, "market": kind, "features": ("log_return",)})
    md = prepare(bars, funding if kind == "perp" else None, cfg)
    return Book(market, symbol, base, quote, md, cfg, {f["filterType"]: f for f in filters})


@dataclass
class Position:
    qty: float = 0.0
    entry: float = 0.0
    leverage: int = DEFAULT_LEVERAGE
    margin_type: str = "cross"
    update_time: int = 0


def _dec(text: str | None) -> Decimal | None:
    try:
        d = Decimal(str(text))
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


class Matcher:
    """Orders, fills, balances and positions over a set of books (see the module docstring).

    ``orders`` and ``trades`` are lists of dicts, oldest first; ``income`` lists funding
    payments (``amount`` < 0 when paid). Not thread-safe: the exchange holds a lock around it.
    """

    def __init__(self, books: dict[tuple[str, str], Book], balances: dict[str, float]):
        self.books = books
        self.spot: dict[str, list[float]] = {a: [float(v), 0.0] for a, v in balances.items()}
        self.cash: dict[str, float] = {a: float(v) for a, v in balances.items()}
        self.positions: dict[str, Position] = {s: Position() for (m, s) in books if m == "futures"}
        self.orders: list[dict[str, Any]] = []
        self.trades: list[dict[str, Any]] = []
        self.income: list[dict[str, Any]] = []
        self._ids = itertools.count(1_000_001)
        self._trade_ids = itertools.count(500_001)

    # -- queries ---------------------------------------------------------------------------

    def book(self, market: str, symbol: str) -> Book | None:
        return self.books.get((market, symbol))

    def find(self, market: str, symbol: str, order_id: str | None, client_id: str | None) -> dict | None:
        for o in reversed(self.orders):
            if o["market"] != market or o["symbol"] != symbol:
                continue
            if str(o["id"]) == str(order_id) if order_id is not None else o["client_id"] == client_id:
                return o
        return None

    def open_orders(self, market: str, symbol: str | None = None) -> list[dict]:
        return [
            o
            for o in self.orders
            if o["market"] == market and o["status"] == "NEW" and symbol in (None, o["symbol"])
        ]

    def equity(self, asset: str) -> float:
        """Futures margin balance of ``asset``: cash plus every position at its mark."""
        total = self.cash.get(asset, 0.0)
        for sym, pos in self.positions.items():
            book = self.books[("futures", sym)]
            if book.quote == asset and pos.qty:
                total += pos.qty * book.mark()
        return total

    # -- orders ----------------------------------------------------------------------------

    def place(
        self,
        market: str,
        symbol: str,
        *,
        side: str,
        type_: str,
        quantity: str | None,
        price: str | None,
        time_in_force: str | None,
        client_id: str,
        reduce_only: bool,
        now: int,
        quote_qty: str | None = None,
        partial: bool = False,
    ) -> dict | Rejection:
        """Check and execute a new order; the order dict, or why it was refused. ``partial``
        fills half the quantity (down to the lot step) and expires the rest."""
        book = self.books[(market, symbol)]
        if side not in ("BUY", "SELL"):
            return reject(-1102, f"Invalid side {side!r}.")
        if type_ not in ("MARKET", "LIMIT"):
            return reject(-1116 if type_ else -1102, f"Invalid orderType {type_!r} (MARKET and LIMIT only).")
        if self.find(market, symbol, None, client_id) is not None:
            return reject(-2010, "Duplicate order sent.")
        u = book.bar_at(now)
        if u is None or u < 1:
            return MARKET_CLOSED
        sign = 1.0 if side == "BUY" else -1.0
        limit = None
        if type_ == "LIMIT":
            limit = _dec(price)
            if limit is None or limit <= 0:
                return reject(
                    -1102, "Mandatory parameter 'price' was not sent, was empty/null, or malformed."
                )
            tif = time_in_force or "GTC"
            if tif not in ("GTC", "IOC"):
                return reject(-1115, f"Invalid timeInForce {tif!r} (GTC and IOC only).")
            pf = book.filters.get("PRICE_FILTER")
            if pf and (limit < Decimal(pf["minPrice"]) or limit % Decimal(pf["tickSize"]) != 0):
                return reject(-1013, "Filter failure: PRICE_FILTER")
        else:
            tif = "GTC"
        qty_d = _dec(quantity)
        if qty_d is None and quote_qty is not None and type_ == "MARKET" and market == "spot":
            spend = _dec(quote_qty)
            if spend is None or spend <= 0:
                return reject(-1102, "Param 'quantity' or 'quoteOrderQty' must be sent.")
            step = Decimal(book.filters["LOT_SIZE"]["stepSize"])
            qty_d = (spend / Decimal(repr(book.price(u, sign)))).quantize(step, rounding="ROUND_DOWN")
        if qty_d is None or qty_d <= 0:
            return reject(-1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed.")
        for name in ("LOT_SIZE", "MARKET_LOT_SIZE") if type_ == "MARKET" else ("LOT_SIZE",):
            f = book.filters.get(name)
            if f and (
                qty_d < Decimal(f["minQty"])
                or qty_d > Decimal(f["maxQty"])
                or qty_d % Decimal(f["stepSize"]) != 0
            ):
                return reject(-1013, f"Filter failure: {name}")
        qty = float(qty_d)
        dq = sign * qty
        market_price = book.price(u, dq)
        marketable = limit is None or (
            market_price <= float(limit) if sign > 0 else market_price >= float(limit)
        )
        rests = not marketable and tif == "GTC"
        ref_price = market_price if limit is None else float(limit)
        refused = self._check_filters_and_funds(book, dq, ref_price if not marketable else market_price,
                                                rests, reduce_only)  # fmt: skip
        if refused is not None:
            return refused

        order: dict[str, Any] = {
            "client_id": client_id,
            "id": next(self._ids),
            "symbol": symbol,
            "market": market,
            "side": side,
            "type": type_,
            "time_in_force": tif,
            "qty": qty,
            "price": float(limit) if limit is not None else 0.0,
            "reduce_only": reduce_only,
            "filled": 0.0,
            "cum_quote": 0.0,
            "avg_price": 0.0,
            "fee": 0.0,
            "status": "NEW",
            "time": now,
            "update_time": now,
            "bar": u,
        }
        self.orders.append(order)
        if marketable:
            fill = qty
            if partial:
                step = float(book.filters["LOT_SIZE"]["stepSize"])
                fill = float(Decimal(repr(qty / 2)).quantize(Decimal(str(step)), rounding="ROUND_DOWN"))
            if fill > 0:
                p = book.price(u, sign * fill)
                self._execute(book, order, fill, p, maker=False, bar=u, time=now)
            order["status"] = "FILLED" if fill == qty else "EXPIRED"
        elif rests:
            if market == "spot":
                self._lock_spot(book, order, +1)
        else:
            order["status"] = "EXPIRED"
        return order

    def cancel(self, order: dict, now: int) -> dict | Rejection:
        if order["status"] != "NEW":
            return reject(-2011)
        if order["market"] == "spot":
            self._lock_spot(self.books[("spot", order["symbol"])], order, -1)
        order["status"] = "CANCELED"
        order["update_time"] = now
        return order

    def _check_filters_and_funds(
        self, book: Book, dq: float, price: float, rests: bool, reduce_only: bool
    ) -> Rejection | None:
        qty = abs(dq)
        notional = qty * price
        if book.market == "spot":
            f = book.filters.get("NOTIONAL")
            if f and notional < float(f["minNotional"]):
                return reject(-1013, "Filter failure: NOTIONAL")
            fee = (book.maker if rests else book.taker) * notional
            if dq > 0 and notional + fee > self._free(book.quote) + 1e-9:
                return reject(-2010)
            if dq < 0 and qty > self._free(book.base) + 1e-12:
                return reject(-2010)
            return None
        pos = self.positions[book.symbol]
        q0, q1 = pos.qty, pos.qty + dq
        if reduce_only and (q0 == 0.0 or q0 * dq > 0 or abs(dq) > abs(q0) + 1e-12):
            return reject(-2022)
        f = book.filters.get("MIN_NOTIONAL")
        if f and notional < float(f["notional"]) and not reduce_only:
            limit = f["notional"]
            return reject(
                -4164, f"Order's notional must be no smaller than {limit} (unless you choose reduce only)."
            )
        if abs(q1) > abs(q0) or q0 * q1 < 0:
            fee = (book.maker if rests else book.taker) * notional
            # equity with this position marked at the order's price instead of the last close
            equity = self.equity(book.quote) - q0 * book.mark() + q0 * price - fee
            if abs(q1) * price > pos.leverage * equity:
                return reject(-2019)
        return None

    def _free(self, asset: str) -> float:
        return self.spot.get(asset, [0.0, 0.0])[0]

    def _lock_spot(self, book: Book, order: dict, direction: int) -> None:
        """Move a resting order's reserve from free to locked (``direction`` 1) or back (-1)."""
        if order["side"] == "BUY":
            asset, amount = book.quote, order["qty"] * order["price"] * (1.0 + book.maker)
        else:
            asset, amount = book.base, order["qty"]
        bal = self.spot.setdefault(asset, [0.0, 0.0])
        bal[0] -= direction * amount
        bal[1] += direction * amount

    def _execute(
        self, book: Book, order: dict, qty: float, price: float, *, maker: bool, bar: int, time: int
    ) -> None:
        """Apply one fill of ``qty`` (> 0) of ``order`` at ``price`` to the account."""
        sign = 1.0 if order["side"] == "BUY" else -1.0
        dq = sign * qty
        fee = (book.maker if maker else book.taker) * qty * price
        realized = 0.0
        if book.market == "spot":
            quote = self.spot.setdefault(book.quote, [0.0, 0.0])
            base = self.spot.setdefault(book.base, [0.0, 0.0])
            quote[0] -= dq * price + fee
            base[0] += dq
        else:
            pos = self.positions[book.symbol]
            q0 = pos.qty
            if q0 * dq < 0:
                realized = min(abs(dq), abs(q0)) * (price - pos.entry) * (1.0 if q0 > 0 else -1.0)
            self.cash[book.quote] = self.cash.get(book.quote, 0.0) - (dq * price + fee)
            pos.entry = float(entry_after(pos.entry, q0, dq, price))
            pos.qty = q0 + dq
            if abs(pos.qty) < 1e-12:
                pos.qty, pos.entry = 0.0, 0.0
                # a close beyond the bankruptcy price: the insurance fund takes the rest (kernel)
                self.cash[book.quote] = max(self.cash[book.quote], 0.0)
            pos.update_time = time
        filled = order["filled"] + qty
        order["cum_quote"] += qty * price
        order["avg_price"] = order["cum_quote"] / filled
        order["filled"] = filled
        order["fee"] += fee
        order["update_time"] = time
        self.trades.append(
            {
                "id": next(self._trade_ids),
                "order_id": order["id"],
                "client_id": order["client_id"],
                "symbol": book.symbol,
                "market": book.market,
                "side": order["side"],
                "qty": qty,
                "price": price,
                "fee": fee,
                "fee_asset": book.quote,
                "maker": maker,
                "realized_pnl": realized,
                "time": time,
            }
        )
        book.last_fill = (bar, price)

    # -- time ------------------------------------------------------------------------------

    def advance(self, now: int) -> None:
        """Settle every bar that opened or closed by ``now`` and was not settled yet."""
        for book in self.books.values():
            opened_hi = int(np.searchsorted(book.md.ts, now, "right")) - 1
            closed_hi = int(np.searchsorted(book.close_ts, now, "right")) - 1
            v = book.closed + 1
            while v <= closed_hi and self._busy(book):
                if v > book.opened:
                    self._open_bar(book, v)
                    book.opened = v
                self._close_bar(book, v)
                book.closed = v
                v += 1
            book.closed = max(book.closed, closed_hi)
            if opened_hi > book.opened:
                if self._busy(book):
                    self._open_bar(book, opened_hi)
                book.opened = opened_hi

    def _busy(self, book: Book) -> bool:
        pos = self.positions.get(book.symbol) if book.market == "futures" else None
        if pos is not None and pos.qty != 0.0:
            return True
        return any(o["status"] == "NEW" for o in self.open_orders(book.market, book.symbol))

    def _open_bar(self, book: Book, v: int) -> None:
        if book.market != "futures":
            return
        pos = self.positions[book.symbol]
        o = float(book.md.open[v])
        if pos.qty and self._liquidates(book, pos, o):
            self._liquidate(book, pos, o, v, int(book.md.ts[v]))

    def _close_bar(self, book: Book, v: int) -> None:
        m = book.md
        close_time = int(book.close_ts[v]) - 1
        for order in self.open_orders(book.market, book.symbol):
            if order["bar"] >= v:
                continue
            buy = order["side"] == "BUY"
            if (m.low[v] <= order["price"]) if buy else (m.high[v] >= order["price"]):
                self._fill_resting(book, order, v, close_time)
        if book.market != "futures":
            return
        pos = self.positions[book.symbol]
        if not pos.qty:
            return
        start = book.last_fill[1] if book.last_fill and book.last_fill[0] == v else float(m.open[v])
        adverse = float(m.low[v] if pos.qty > 0 else m.high[v])
        if self._liquidates(book, pos, adverse):
            return self._liquidate(book, pos, None, v, close_time, start=start)
        paid = pos.qty * float(m.funding_per_unit[v])
        if paid:
            self.cash[book.quote] -= paid
            self.income.append(
                {"symbol": book.symbol, "type": "FUNDING_FEE", "amount": -paid, "asset": book.quote,
                 "time": int(book.close_ts[v]), "id": next(self._trade_ids)}
            )  # fmt: skip
        c = float(m.close[v])
        if self._liquidates(book, pos, c):
            self._liquidate(book, pos, c, v, close_time)

    def _fill_resting(self, book: Book, order: dict, v: int, time: int) -> None:
        if book.market == "spot":
            self._lock_spot(book, order, -1)
        elif order["reduce_only"]:
            q0, dq = self.positions[book.symbol].qty, order["qty"] * (1 if order["side"] == "BUY" else -1)
            if q0 == 0.0 or q0 * dq > 0 or abs(dq) > abs(q0):
                order["status"], order["update_time"] = "EXPIRED", time
                return
        self._execute(book, order, order["qty"], order["price"], maker=True, bar=v, time=time)
        order["status"] = "FILLED"

    def _liquidates(self, book: Book, pos: Position, price: float) -> bool:
        p_liq = liquidation_price(self.cash[book.quote], pos.qty, book.cfg.maintenance_margin_rate)
        return bool((pos.qty > 0 and price <= p_liq) or (pos.qty < 0 and price >= p_liq))

    def _liquidate(
        self, book: Book, pos: Position, price: float | None, v: int, time: int, start: float = 0.0
    ) -> None:
        """Close the position as the kernel does; ``price`` None: at the liquidation price, or at
        ``start`` if the bar began beyond it."""
        cash = self.cash[book.quote]
        if price is None:
            p_liq = liquidation_price(cash, pos.qty, book.cfg.maintenance_margin_rate)
            price = min(p_liq, start) if pos.qty > 0 else max(p_liq, start)
        cash, l_qty, l_price, l_fee = liquidate(cash, pos.qty, float(price), book.cfg.liquidation_fee)
        order = {
            "client_id": f"autoclose-{time}",
            "id": next(self._ids),
            "symbol": book.symbol,
            "market": book.market,
            "side": "BUY" if l_qty > 0 else "SELL",
            "type": "MARKET",
            "time_in_force": "IOC",
            "qty": abs(l_qty),
            "price": 0.0,
            "reduce_only": True,
            "filled": abs(l_qty),
            "cum_quote": abs(l_qty) * l_price,
            "avg_price": float(l_price),
            "fee": float(l_fee),
            "status": "FILLED",
            "time": time,
            "update_time": time,
            "bar": v,
        }
        self.orders.append(order)
        self.trades.append(
            {"id": next(self._trade_ids), "order_id": order["id"], "client_id": order["client_id"],
             "symbol": book.symbol, "market": book.market, "side": order["side"], "qty": abs(l_qty),
             "price": float(l_price), "fee": float(l_fee), "fee_asset": book.quote, "maker": False,
             "realized_pnl": -pos.qty * (pos.entry - l_price), "time": time}
        )  # fmt: skip
        self.cash[book.quote] = float(cash)
        pos.qty, pos.entry, pos.update_time = 0.0, 0.0, time
