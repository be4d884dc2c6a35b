"""Live orders through ccxt for one symbol, and the rules for an outcome the bot cannot see.

:class:`LiveBroker` is the only code that sends, looks up or cancels an order on an exchange. Its
policies, each for a reason:

- **Every order carries a client id** (``newClientOrderId``) derived from the run and the bar,
  and the loop writes the order to the state store under that id *before* :meth:`LiveBroker.send`
  is called. An exchange refuses a second order with the same client id, so a restart that
  repeats a bar can never place a second order for it.
- **An ambiguous outcome is looked up, never resent.** A timeout, a dropped connection, a 5xx or
  a 429 on the order request says nothing about whether the order exists. :meth:`send` then asks
  for the order by its client id (:meth:`lookup`, a read, retried with backoff) and reports what
  the exchange holds. "The exchange does not have it" ends an order as never placed only once
  the request's receive window has passed (Binance drops a request that reaches its matching
  engine later than ``timestamp + recvWindow``): after the bot's own send time, or, for an order
  a killed process may have sent, after this process started. Until then the lookup is repeated
  (:meth:`settle`), and the loop sends nothing new.
  ccxt's own ``maxRetriesOnFailure`` stays 0 so that ccxt never resends an order by itself.
- **A refusal is final.** ``InsufficientFunds``, ``InvalidOrder``, ``AuthenticationError`` and a
  clock the exchange rejects (``-1021``, :class:`ccxt.InvalidNonce`) are not retried; the order
  is ``REJECTED`` with the exchange's message, and :attr:`OrderResult.fatal` tells the loop to halt
  on the ones that the next order would meet again (keys, clock).
- **Reads** (balances, positions, order lookups, trades) go through :func:`data.exchange.read`,
  which retries transient errors with backoff.

Amounts pass through ``amount_to_precision`` at the edge; the risk gate has already rounded them
to the exchange's lot size (the one place where the bot rounds), so this only formats them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ccxt

from data.errors import DownloadError
from data.exchange import read

log = logging.getLogger("serve")

# errors after which the order certainly does not exist on the exchange
REFUSED = (ccxt.InsufficientFunds, ccxt.InvalidOrder, ccxt.BadRequest, ccxt.BadSymbol, ccxt.PermissionDenied)
# errors after which the next order would be refused for the same reason: the bot halts
FATAL = (ccxt.AuthenticationError, ccxt.PermissionDenied, ccxt.InvalidNonce, ccxt.AccountSuspended)
# a request that may or may not have reached the matching engine
AMBIGUOUS = (ccxt.NetworkError, ccxt.ExchangeNotAvailable, ccxt.BadResponse, ccxt.OperationFailed)

CLOCK_HINT = (
    "the exchange rejects this machine's timestamps (-1021, clock skew): synchronise the clock "
    "(chrony or systemd-timesyncd) and start again"
)


class BrokerError(RuntimeError):
    """The exchange cannot be read (after retries) or answered something the bot cannot act on.
    Policy: the loop does not trade on a guess; it stops, or skips the bar's order, and says why."""


def client_tag(run_id: str) -> str:
    """A short, stable prefix of a run's client order ids (Binance allows 36 characters)."""
    return "kg" + hashlib.sha256(run_id.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Trade:
    """One execution of an order: signed base ``qty`` (net of a fee taken in the base asset),
    ``price``, and the ``fee`` in the quote asset."""

    trade_id: str
    ts: int
    qty: float
    price: float
    fee: float


@dataclass
class OrderResult:
    """What the exchange holds for one client id, in the state store's order states."""

    client_id: str
    status: str  # SENT PARTIALLY_FILLED FILLED CANCELED REJECTED UNKNOWN
    exchange_id: str | None = None
    filled: float = 0.0
    error: str | None = None
    fatal: bool = False
    trades: list[Trade] = field(default_factory=list)


@dataclass(frozen=True)
class Snapshot:
    """The account as the exchange reports it, in the env's terms: ``equity = cash + position *
    price``. ``entry`` is the exchange's average entry price (futures) or ``None`` (spot)."""

    cash: float
    position: float
    entry: float | None


_STATUS = {"open": "SENT", "closed": "FILLED", "canceled": "CANCELED", "expired": "CANCELED",
           "rejected": "REJECTED"}  # fmt: skip


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


class LiveBroker:
    """Market orders for one ccxt symbol (``market`` ``spot`` or ``futures``)."""

    def __init__(self, ex: Any, symbol: str, market: str, run_id: str, *, max_retries: int = 3,
                 backoff_s: float = 0.5, recv_window_ms: int = 10_000,
                 limit_band: float | None = None):  # fmt: skip
        self.ex, self.symbol, self.market = ex, symbol, market
        if limit_band is not None and not 0.0 < limit_band < 0.5:
            raise ValueError(
                f"serve.limit_band={limit_band}: give a fraction of the price in (0, 0.5), or null"
            )
        self.limit_band = limit_band
        self.recv_window_ms = int(recv_window_ms)
        ex.options["recvWindow"] = self.recv_window_ms
        self.started_ms = _wall_ms()
        self.sent_ms: dict[str, int] = {}  # wall time each order of this process was sent
        self.tag = client_tag(run_id)
        self.max_retries, self.backoff_s = max_retries, backoff_s
        info = ex.market(symbol)
        self.base, self.quote = info["base"], info["quote"]
        # ccxt must never resend an order on its own: an ambiguous outcome is resolved by lookup
        ex.options["maxRetriesOnFailure"] = 0

    def _read(self, fn: Any, what: str) -> Any:
        try:
            return read(self.ex, fn, what=what, max_retries=self.max_retries, backoff_s=self.backoff_s)
        except DownloadError as exc:
            raise BrokerError(str(exc)) from exc

    def client_id(self, bar_ts: int, kind: str = "") -> str:
        return f"{self.tag}-{kind}{int(bar_ts)}"

    def owns(self, client_id: str | None) -> bool:
        return bool(client_id) and str(client_id).startswith(self.tag + "-")

    # -- set-up -----------------------------------------------------------------------------------

    def setup(self, leverage: float, margin_mode: str) -> None:
        """Futures: the account's margin mode and leverage for the symbol. A mode that is already set
        is fine; anything else refused stops the start."""
        if self.market != "futures":
            return
        try:
            self.ex.set_margin_mode(margin_mode, self.symbol)
        except ccxt.NoChange:
            pass
        except ccxt.BaseError as exc:
            if "-4046" not in str(exc):  # "No need to change margin type."
                raise BrokerError(f"set_margin_mode {margin_mode} {self.symbol}: {_short(exc)}") from exc
        try:
            self.ex.set_leverage(max(1, round(leverage)), self.symbol)
        except ccxt.BaseError as exc:
            raise BrokerError(f"set_leverage {leverage:g} {self.symbol}: {_short(exc)}") from exc

    # -- reads ------------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Cash, position and entry from the exchange (retried reads)."""
        if self.market == "spot":
            bal = self._read(self.ex.fetch_balance, "fetch_balance")
            total = bal.get("total") or {}
            return Snapshot(float(total.get(self.quote) or 0.0), float(total.get(self.base) or 0.0), None)
        bal = self._read(self.ex.fetch_balance, "fetch_balance")
        wallet = float(((bal.get("info") or {}).get("totalWalletBalance")) or (bal.get("total") or {}).get(
            self.quote) or 0.0)  # fmt: skip
        positions = self._read(lambda: self.ex.fetch_positions([self.symbol]), "fetch_positions")
        qty, entry = 0.0, 0.0
        for p in positions or []:
            if p.get("symbol") != self.symbol or not p.get("contracts"):
                continue
            size = float(p["contracts"]) * float(p.get("contractSize") or 1.0)
            qty += size if p.get("side") == "long" else -size
            entry = float(p.get("entryPrice") or 0.0)
        # the env's cash: the wallet less what the open position cost, so that cash + q * mark is the
        # wallet plus the unrealised profit, as the exchange marks it
        return Snapshot(wallet - qty * entry, qty, entry)

    def lookup(self, client_id: str) -> OrderResult | None:
        """The order the exchange holds under ``client_id``, with its trades; ``None`` when the
        exchange says it has no such order. Raises :class:`BrokerError` when it cannot tell."""
        try:
            by_id = {"origClientOrderId": client_id}
            order = read(self.ex, lambda: self.ex.fetch_order(None, self.symbol, by_id),
                         what=f"fetch_order {client_id}", max_retries=self.max_retries,
                         backoff_s=self.backoff_s)  # fmt: skip
        except DownloadError as exc:
            if isinstance(exc.__cause__, ccxt.OrderNotFound):
                return None
            raise BrokerError(str(exc)) from exc
        return self._result(client_id, order)

    def _result(self, client_id: str, order: dict) -> OrderResult:
        status = _STATUS.get(order.get("status") or "", "SENT")
        filled = float(order.get("filled") or 0.0)
        if status == "SENT" and filled > 0:
            status = "PARTIALLY_FILLED"
        trades = self.trades(str(order["id"])) if filled > 0 else []
        return OrderResult(client_id, status, str(order["id"]), filled, trades=trades)

    def trades(self, exchange_id: str) -> list[Trade]:
        """The executions of one order, signed, with fees in the quote asset."""
        rows = self._read(lambda: self.ex.fetch_my_trades(self.symbol, params={"orderId": exchange_id}),
                          f"fetch_my_trades {exchange_id}")  # fmt: skip
        out = []
        for r in rows or []:
            if str(r.get("order")) != exchange_id:
                continue
            qty, price = float(r["amount"]), float(r["price"])
            fee = r.get("fee") or {}
            cost, currency = float(fee.get("cost") or 0.0), fee.get("currency")
            if currency == self.base:  # Binance spot takes a buy's fee in the coin bought
                qty_net, fee_quote = qty - cost, cost * price
            else:
                qty_net, fee_quote = qty, cost
            sign = 1.0 if r["side"] == "buy" else -1.0
            out.append(Trade(str(r["id"]), int(r["timestamp"]), sign * qty_net, price, fee_quote))
        return out

    def open_orders(self) -> list[str]:
        """Client ids of this run's orders that are open on the exchange."""
        orders = self._read(lambda: self.ex.fetch_open_orders(self.symbol), "fetch_open_orders")
        return [o.get("clientOrderId") for o in orders or [] if self.owns(o.get("clientOrderId"))]

    # -- the order --------------------------------------------------------------------------------

    def amount(self, qty: float) -> float:
        """``qty`` as the exchange accepts it (``amount_to_precision``); 0 when it rounds away."""
        try:
            return float(self.ex.amount_to_precision(self.symbol, abs(qty)))
        except ccxt.InvalidOrder:  # below the precision: nothing to send
            return 0.0

    def send(
        self, client_id: str, side: str, qty: float, reduce_only: bool, price: float | None
    ) -> OrderResult:
        """Send one order once: a market order, or with ``limit_band`` and a ``price`` (the decision's
        close) an immediate-or-cancel limit at ``price`` moved ``limit_band`` against the bot, which
        fills now or not at all, never worse than that. The order must be in the state store first."""
        self.sent_ms[client_id] = _wall_ms()
        params: dict[str, Any] = {"newClientOrderId": client_id}
        if reduce_only and self.market == "futures":
            params["reduceOnly"] = True
        kind, limit = "market", None
        if self.limit_band is not None and price is not None:
            kind, params["timeInForce"] = "limit", "IOC"
            worst = price * (1 + self.limit_band) if side == "buy" else price * (1 - self.limit_band)
            limit = float(self.ex.price_to_precision(self.symbol, worst))
        try:
            order = self.ex.create_order(self.symbol, kind, side, qty, limit, params)
        except REFUSED as exc:
            if isinstance(exc, ccxt.InvalidNonce) or "-1021" in str(exc):
                return OrderResult(client_id, "REJECTED", error=f"{CLOCK_HINT} ({_short(exc)})", fatal=True)
            return OrderResult(client_id, "REJECTED", error=_short(exc), fatal=isinstance(exc, FATAL))
        except FATAL as exc:
            hint = (
                CLOCK_HINT if isinstance(exc, ccxt.InvalidNonce) else "check the API key and its permissions"
            )
            return OrderResult(client_id, "REJECTED", error=f"{hint} ({_short(exc)})", fatal=True)
        except AMBIGUOUS as exc:
            log.warning("order %s: %s; looking it up by its client id", client_id, _short(exc))
            return self.settle(client_id, _short(exc))
        except ccxt.BaseError as exc:  # an exchange error ccxt does not classify: it refused the order
            return OrderResult(client_id, "REJECTED", error=_short(exc))
        return self._result(client_id, order)

    def settle(self, client_id: str, why: str) -> OrderResult:
        """The outcome of an order whose answer was lost (or that a killed process may have sent):
        what the exchange holds; ``REJECTED`` when it still holds nothing once the request's receive
        window is over; ``UNKNOWN`` when the exchange cannot be asked (the next bar asks again)."""
        deadline = self.sent_ms.get(client_id, self.started_ms) + self.recv_window_ms + 1_000
        wait = self.backoff_s
        while True:
            try:
                found = self.lookup(client_id)
            except BrokerError as exc:
                return OrderResult(client_id, "UNKNOWN", error=f"{why}; lookup failed: {exc}")
            if found is not None:
                return found
            left = deadline - _wall_ms()
            if left <= 0:
                return OrderResult(client_id, "REJECTED", error=f"{why}; never reached the exchange")
            log.info("order %s is not on the exchange yet; asking again until its receive window ends "
                     "(%.1f s)", client_id, left / 1000)  # fmt: skip
            time.sleep(min(wait, left / 1000))
            wait = min(wait * 2, 2.0)

    def cancel(self, client_id: str) -> None:
        """Cancel an open order (a restart found it open and this bot sends market orders only)."""
        try:
            self.ex.cancel_order(None, self.symbol, {"origClientOrderId": client_id})
        except ccxt.OrderNotFound:
            pass
        except ccxt.BaseError as exc:
            raise BrokerError(f"cancel {client_id}: {_short(exc)}") from exc
