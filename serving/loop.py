"""The serving loop: on each newly closed bar, fill, observe, decide, gate, order, record.

For every bar that closed since the last poll, in order (the exchange's clock decides):

1. paper mode: the order decided at the previous close fills at this bar's open through the env's
   kernel (:meth:`serving.account.Desk.fill`), and the account is marked at this bar's close.
   Live mode (:mod:`serving.broker`): every order the store has open is looked up on the exchange
   by its client id and its trades recorded; then the exchange's position must equal the one the
   recorded fills give, or the bot halts and stops with both numbers (:meth:`Server.reconcile`);
   the account takes the exchange's cash;
2. the observation is built over the rolling buffer with the training env's code;
3. the policy gives an action, which is a target exposure, which is a target position (live: sized
   by the env's kernel as if filled at this close, :meth:`serving.account.Desk.plan`);
4. the risk gate (:mod:`serving.risk`) clamps or denies it; every event is recorded;
5. the order is written to the state store before anything else happens with it; live, it is sent
   once that write has committed, and the outcome recorded in a second transaction.

Each bar's writes (fill, decision, order, account, pending order, trading state) are one
transaction, so a crash at any point resumes at the first bar not yet saved; a live order written
but not answered is resolved by its client id at the next start. Live mode trades only the latest
closed bar: bars missed while the bot was down are not traded after the fact. Operator commands
come through the state store: ``halt`` (flatten, then HALTED until ``resume``), ``resume``, and
``flatten`` (close the position at this bar, then trade on); a kill file halts too.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from data.schema import iso
from serving.account import Account, Desk
from serving.broker import BrokerError, LiveBroker, OrderResult
from serving.config import LoopConfig
from serving.feed import BarFeed
from serving.metrics import Metrics
from serving.risk import RiskContext, RiskGate, TradingState
from serving.state import OPEN_ORDER_STATES, StateStore

log = logging.getLogger("serve")
DAY_MS = 86_400_000
# the state store's WAL is copied into its file between bars once it is this large (SQLite's own
# automatic checkpoint, inside a commit, runs at about 4 MB); a checkpoint after every bar slowed
# the next bar's commit threefold
WAL_CHECKPOINT_BYTES = 16 << 20


class Server:
    """One bot: a policy on one series, a paper account or a live broker, a risk gate, a state store."""

    def __init__(self, *, run_id: str, policy: Any, desk: Desk, feed: BarFeed, gate: RiskGate,
                 store: StateStore, config: LoopConfig, notifier: Any = None,
                 broker: LiveBroker | None = None):  # fmt: skip
        self.run_id, self.policy, self.desk, self.feed = run_id, policy, desk, feed
        self.broker = broker  # None: paper, the env's kernel fills; else live orders through ccxt
        self.rejections = 0
        self.kv: dict[str, Any] = {}
        self.notifier = notifier  # anything with send(text): fills, denials, halts, state changes, errors
        self.gate, self.store, self.config = gate, store, config
        self.stop_event = threading.Event()
        self.decisions = 0
        self.latency: float | None = None  # seconds, of the last decision (see process)
        self.metrics = (
            Metrics(config.metrics_port, config.metrics_host) if config.metrics_port is not None else None
        )
        saved = store.get("account")
        self.account = Account.from_dict(saved) if saved else Account(cash=desk.cfg.initial_equity)
        self.pending: dict | None = store.get("pending")
        self.last_bar: int | None = store.get("last_bar_ts")
        # send times of the last minute's orders, for the order-rate limit (read once, then kept)
        since = (self.last_bar or 0) - 60_000
        self.recent_orders = [o["created_ms"] for o in store.orders() if o["created_ms"] > since]

    # -- state ----------------------------------------------------------------------------------

    def _get(self, key: str, default: Any = None) -> Any:
        """A trading-state key, from the copy this process keeps of what it wrote (it is the only
        writer of them; operators reach it through commands), read from the store once."""
        if key not in self.kv:
            self.kv[key] = self.store.get(key)
        value = self.kv[key]
        return default if value is None else value

    def _set(self, **values: Any) -> None:
        """Save trading-state keys; only those whose value differs from what this process last wrote
        or read (most keep theirs from bar to bar)."""
        changed = {k: v for k, v in values.items() if k not in self.kv or self.kv[k] != v}
        self.store.set(**changed)
        self.kv.update(changed)

    def _state(self) -> TradingState:
        return TradingState(self._get("trading_state", TradingState.ACTIVE.value))

    def _commands(self) -> tuple[bool, bool]:
        """Apply operator commands; returns (kill, flatten)."""
        kill = bool(self.config.kill_file and Path(self.config.kill_file).exists())
        flatten = False
        for command in self.store.take_commands(_wall_ms()):
            log.info("command: %s", command)
            if command == "halt":
                kill = True
            elif command == "resume":
                # a manual resume also restarts the drawdown and daily-loss references, or the next
                # bar would halt again on the same loss
                self._set(
                    trading_state=TradingState.ACTIVE.value, halted_until_ms=None, peak_equity=None, day=None
                )
            elif command == "flatten":
                flatten = True
        return kill, flatten

    # -- one bar --------------------------------------------------------------------------------

    def _settle(self, bar_ts: int) -> None:
        """Paper: fill the order decided at the previous close on this bar."""
        pending, self.pending = self.pending, None
        if pending is None:
            return
        try:
            self.account, fills = self.desk.fill(self.account, pending["exposure"], pending["bar_ts"])
        except KeyError:  # the decision's bar left the buffer (a long outage): the order never filled
            if pending["client_id"]:
                error = "the next bar is missing"
                self.store.update_order(pending["client_id"], "CANCELED", bar_ts, error=error)
            return
        client_id = pending["client_id"]
        # the order is NEW: the bar that wrote it saved the pending order in the same transaction, and
        # only this bar's transaction, which also saves that it is settled, moves it on
        if client_id:
            filled = sum(f.qty for f in fills if f.reason == "policy")
            self.store.update_order(client_id, "FILLED" if filled else "CANCELED", bar_ts, filled=abs(filled),
                                    via=("SENT",))  # fmt: skip
        for k, f in enumerate(fills):
            # a rebalance the kernel made without a gated order, or a liquidation, gets its own id
            owner = client_id if client_id and f.reason == "policy" else f"{self.run_id}-{f.reason}-{bar_ts}"
            new = self.store.record_fill(owner, f"{bar_ts}-{k}", f.ts, f.qty, f.price, f.fee)
            if new and self.notifier is not None:
                side = "bought" if f.qty > 0 else "sold"
                what = "liquidated: " if f.reason == "liquidation" else ""
                self._notify(
                    f"{what}{side} {abs(f.qty):.6g} {self.feed.symbol} at {f.price:,.2f} (fee {f.fee:,.4f})"
                )

    # -- live: the exchange's account, and orders out ----------------------------------------------

    def _apply(self, result: OrderResult, now_ms: int) -> None:
        """Record what the exchange holds for an order: its state, and every trade not yet recorded
        (each moves the account, by the env's rules)."""
        order = self.store.order(result.client_id)
        if order is not None and order["status"] == "NEW" and result.status in ("PARTIALLY_FILLED", "FILLED"):
            self.store.update_order(result.client_id, "SENT", now_ms, exchange_id=result.exchange_id)
        if order is not None:
            self.store.update_order(result.client_id, result.status, now_ms, exchange_id=result.exchange_id,
                                    filled=result.filled, error=result.error)  # fmt: skip
        for tr in result.trades:
            if self.store.record_fill(result.client_id, tr.trade_id, tr.ts, tr.qty, tr.price, tr.fee):
                log.info("fill %s %.8g at %.2f fee %.4f", result.client_id, tr.qty, tr.price, tr.fee,
                         extra={"event": "fill", "client_id": result.client_id, "trade_id": tr.trade_id,
                                "qty": tr.qty, "price": tr.price, "fee": tr.fee})  # fmt: skip
                bar_open = tr.ts - tr.ts % self.feed.bar
                self.account = self.account.after_fill(bar_open, tr.qty, tr.price, tr.fee)
                side = "bought" if tr.qty > 0 else "sold"
                self._notify(
                    f"{side} {abs(tr.qty):.6g} {self.feed.symbol} at {tr.price:,.2f} (fee {tr.fee:,.4f})"
                )

    def reconcile(self, now_ms: int) -> str | None:
        """Live: settle every order the store has open by asking the exchange for it, then check the
        exchange against the store: no open order of this run that the store does not know, and the
        position its recorded fills give. Returns why they disagree, or None; the account then takes
        the exchange's cash (funding and fees as charged) and, on futures, its entry price."""
        assert self.broker is not None
        for order in self.store.orders(OPEN_ORDER_STATES):
            result = self.broker.settle(order["client_id"], f"order left {order['status']}")
            with self.store.batch():  # its fills and the account they move: together or not at all
                self._apply(result, now_ms)
                self._set(account=self.account.to_dict())
        strangers = []
        for cid in self.broker.open_orders():
            mine = self.store.order(cid)
            if mine is None or mine["status"] not in OPEN_ORDER_STATES:
                strangers.append(cid)
            else:
                self.broker.cancel(cid)  # the bot sends market orders: one still open is stuck
        snap = self.broker.snapshot()
        first = self._get("account") is None
        lot = self.gate.limits.lot_size or 0.0
        if strangers:
            return (
                f"the exchange has open order(s) {', '.join(strangers)} of this run that the state store "
                "does not know: cancel them on the exchange, then start again"
            )
        if first:
            log.info("first start: the exchange holds %.8g %s and %.2f cash; adopting them", snap.position,
                     self.feed.symbol, snap.cash)  # fmt: skip
        elif abs(snap.position - self.account.position) > max(lot / 2, 1e-9 * abs(snap.position), 1e-12):
            if not self.config.adopt_exchange:
                return (
                    f"the exchange holds a position of {snap.position:.8g} {self.feed.symbol}, the state "
                    f"store expects {self.account.position:.8g} from the fills it recorded: a trade outside "
                    "this bot, or a fill it missed. Check the exchange's trade history; to take the "
                    "exchange's position as it is, start once with serve.adopt_exchange=true"
                )
            log.warning("adopting the exchange's position %.8g (the store had %.8g)", snap.position,
                        self.account.position)  # fmt: skip
        entry = snap.entry if snap.entry is not None else self.account.entry
        self.account = dataclasses.replace(
            self.account, cash=snap.cash, position=snap.position, entry=entry if snap.position else 0.0
        )
        return None

    def _halt(self, bar_ts: int, check: str, reason: str) -> None:
        """Record a halt the broker or the reconciliation forces (flattening is the gate's job, and
        a halted bot stops: the operator looks, then ``command=resume``)."""
        with self.store.batch():
            self.store.record_risk_event(bar_ts, "halt", check, reason)
            self._set(trading_state=TradingState.HALTED.value, halted_until_ms=None)
        log.error("HALTED (%s): %s", check, reason, extra={"event": "halt", "check": check, "reason": reason})
        self._notify(f"HALTED ({check}): {reason}")

    def _send(self, order: dict, bar_ts: int) -> None:
        assert self.broker is not None
        result = self.broker.send(order["client_id"], order["side"], order["qty"], order["reduce_only"],
                                  order.get("price"))  # fmt: skip
        with self.store.batch():
            self._apply(result, _wall_ms())
            self._set(account=self.account.to_dict())
        if result.status != "REJECTED":
            self.rejections = 0
            return
        self.rejections += 1
        self.store.record_risk_event(bar_ts, "deny", "exchange", result.error or "rejected")
        fields = {"event": "rejected", "client_id": order["client_id"], "error": result.error}
        log.warning("order %s rejected by the exchange: %s", order["client_id"], result.error, extra=fields)
        self._notify(f"order rejected by the exchange: {result.error}")
        if result.fatal or self.rejections >= self.config.max_rejections:
            why = result.error or "rejected"
            if not result.fatal:
                why = f"the exchange refused {self.rejections} orders in a row, the last with: {why}"
            self._halt(bar_ts, "exchange", why)
            raise BrokerError(f"HALTED: {why}")

    def flatten_now(self) -> None:
        """Live: close the position now with a reduce-only market order (``serve.flatten_on_exit``),
        a market order even where orders are IOC limits: a close must not wait for the price."""
        assert self.broker is not None
        snap = self.broker.snapshot()
        qty = self.broker.amount(snap.position)
        if qty == 0.0:
            return
        now = _wall_ms()
        cid = self.broker.client_id(now, "x")
        side = "sell" if snap.position > 0 else "buy"
        self.store.create_order(cid, self.last_bar or now, side, qty, True, None, now)
        log.info("flatten on exit: %s %.8g %s", side, qty, self.feed.symbol)
        self._send({"client_id": cid, "side": side, "qty": qty, "reduce_only": True}, self.last_bar or now)

    # -- one bar --------------------------------------------------------------------------------

    def process(self, bar_ts: int, started: float | None = None) -> None:
        """Take operator commands, settle, observe, decide, gate and order at the close of
        ``bar_ts``: one transaction, so a command is used up together with the bar it acted on.
        Live: the exchange's account is read and checked first, and the order is sent after the
        transaction that wrote it has committed.

        ``started`` (``time.perf_counter()``, default now) is when the bar was read; ``latency`` is
        the time from it to the order handed on: paper, the bar's commit; live, the moment before
        the order goes out (after reconciliation's reads of the exchange account)."""
        started = time.perf_counter() if started is None else started
        if self.broker is not None:
            disagreement = self.reconcile(bar_ts)
            if disagreement:
                self._halt(bar_ts, "reconcile", disagreement)
                raise BrokerError(f"HALTED: {disagreement}")
        with self.store.batch():
            order, report = self._process(bar_ts)
        self.latency = time.perf_counter() - started
        try:
            if order is not None and self.broker is not None:
                self._send(order, bar_ts)
        finally:  # the decision's log line and metrics once the order is out
            self._report(*report)

    def _process(self, bar_ts: int) -> tuple[dict | None, tuple]:
        kill, flatten = self._commands()
        if self.broker is None:
            self._settle(bar_ts)
        idx = self.desk.index(bar_ts)
        close = float(self.desk.env.market.close[idx])
        last_close = float(self.desk.env.market.close[idx - 1]) if idx > 0 else close
        equity = self.account.equity(close)
        if self.account.last_trade_ts is None:
            self.account.last_trade_ts = bar_ts  # as the env's reset: the first decision bar
        if self.account.position and not self.account.entry:
            self.account.entry = close  # a holding adopted at a live start, of unknown cost: as if bought now
        day = bar_ts // DAY_MS
        same_day = self._get("day") == day
        day_start = self._get("day_start_equity", equity) if same_day else equity
        peak = max(self._get("peak_equity", equity), equity)

        obs = self.desk.observe(self.account, bar_ts)
        action = self.policy.act(obs, {"price": close, "ts": bar_ts})
        exposure = self.desk.exposure(action)
        if self.broker is None:
            desired = self.desk.target_qty(exposure, self.account, close)
        else:  # the exchange fills it, so the kernel's sizing (lots, leverage at the fill price) comes first
            desired = self.desk.plan(self.account, exposure, bar_ts)
        state = self._state()
        self.recent_orders = [t for t in self.recent_orders if t > bar_ts - 60_000]
        recent = tuple(self.recent_orders)
        ctx = RiskContext(
            equity=equity, position=self.account.position, price=close, last_close=last_close, now_ms=bar_ts,
            day_start_equity=day_start, peak_equity=peak, state=state,
            halted_until_ms=self._get("halted_until_ms"), recent_orders_ms=recent,
            data_stale=self.feed.stale, kill=kill,
        )  # fmt: skip
        decision = self.gate.check(0.0 if flatten else desired, ctx)
        for e in decision.events:
            self.store.record_risk_event(bar_ts, e.kind, e.check, e.reason)
            fields = {"event": "risk", "kind": e.kind, "check": e.check, "reason": e.reason}
            log.warning("risk %s %s: %s", e.kind, e.check, e.reason, extra=fields)
            if e.kind in ("deny", "halt", "resume"):
                self._notify(f"risk {e.kind} {e.check}: {e.reason}")
        if decision.state is not state:
            self._notify(f"trading state {state.value} -> {decision.state.value} at {iso(bar_ts)}")
        obs_hash = hashlib.sha256(np.ascontiguousarray(obs).tobytes()).hexdigest()[:16]
        raw = float(np.asarray(action, dtype=float).reshape(-1)[0])
        self.store.record_decision(
            bar_ts, obs_hash, raw, desired, decision.target, [e.__dict__ for e in decision.events]
        )
        client_id, order = None, None
        qty = abs(decision.order) if self.broker is None else self.broker.amount(decision.order)
        unresolved = self.broker is not None and self.store.orders(OPEN_ORDER_STATES)
        if unresolved:
            log.warning(
                "no order at %s: order %s is still unresolved", iso(bar_ts), unresolved[0]["client_id"]
            )
        elif qty != 0.0:
            client_id = f"{self.run_id}-{bar_ts}" if self.broker is None else self.broker.client_id(bar_ts)
            side = "buy" if decision.order > 0 else "sell"
            pos = self.account.position
            reduce_only = decision.target * pos >= 0 and abs(decision.target) < abs(pos)
            if self.store.create_order(client_id, bar_ts, side, qty, reduce_only, close, bar_ts):
                order = {"client_id": client_id, "side": side, "qty": qty, "reduce_only": reduce_only,
                         "price": close}  # fmt: skip
            self.recent_orders.append(bar_ts)
        # the kernel fills toward the target exposure at the next open; unclamped it is the policy's
        # own exposure, bit for bit as in training and evaluation
        unclamped = decision.target == desired and not decision.events
        target_exposure = (
            exposure if unclamped else self.desk.exposure_for(decision.target, self.account, close)
        )
        self.pending = {"client_id": client_id, "bar_ts": bar_ts, "exposure": target_exposure}
        self.store.record_equity(bar_ts, equity, self.account.position, self.account.cash, close)
        self._set(
            account=self.account.to_dict(), pending=self.pending, last_bar_ts=bar_ts,
            trading_state=decision.state.value, halted_until_ms=decision.halted_until_ms,
            day=day, day_start_equity=day_start, peak_equity=peak,
        )  # fmt: skip
        self.last_bar = bar_ts
        self.decisions += 1
        return order, (bar_ts, decision, client_id, equity, close)

    def _report(self, bar_ts: int, decision: Any, client_id: str | None, equity: float, close: float) -> None:
        if self.metrics is not None:
            self.metrics.latency.observe(self.latency)
            side = None if client_id is None else ("buy" if decision.order > 0 else "sell")
            self.metrics.decision(equity=equity, position=self.account.position, price=close,
                                  initial=self.desk.cfg.initial_equity, state=decision.state.value,
                                  order_side=side, events=decision.events)  # fmt: skip
        fields = {"event": "decision", "bar": iso(bar_ts), "close": close, "equity": equity,
                  "position": self.account.position, "target": decision.target, "state": decision.state.value,
                  "order": client_id, "latency_ms": round(self.latency * 1000, 3)}  # fmt: skip
        log.info("%s close %.2f equity %.2f position %.6f target %.6f state %s", fields["bar"], close, equity,
                 self.account.position, decision.target, decision.state.value, extra=fields)  # fmt: skip

    def _notify(self, text: str) -> None:
        if self.notifier is not None:
            self.notifier.send(f"[{self.run_id}] {text}")

    # -- the loop -------------------------------------------------------------------------------

    def poll(self) -> int:
        """One poll: fetch, then process every new closed bar. Returns the bars processed.

        Each bar's decision latency runs from the moment its bar was read from the exchange (for a
        bar caught up after another, from the end of that one) to its order handed on."""
        self.feed.update()
        started = self.feed.read_at
        bars = self.feed.bars
        ts_all = bars["ts"]
        if self.metrics is not None and self.feed.now_ms is not None and len(ts_all):
            close_ms = int(ts_all[-1]) + self.feed.bar
            self.metrics.lag.set(max(self.feed.now_ms - close_ms, 0) / 1000)
        if len(ts_all) < self.desk.need - 1:
            log.warning("waiting for history: %d of %d bars", len(ts_all), self.desk.need - 1)
            return 0
        todo = ts_all if self.last_bar is None else ts_all[ts_all > self.last_bar]
        if self.last_bar is None:
            todo = todo[-1:]  # a new bot starts deciding at the last closed bar
        elif self.broker is not None and len(todo) > 1:
            # live orders can only be sent now: the missed bars are not traded after the fact
            log.warning("live: %d missed bar(s) up to %s are not traded; deciding at %s", len(todo) - 1,
                        iso(int(todo[-2])), iso(int(todo[-1])))  # fmt: skip
            todo = todo[-1:]
        done = 0
        for ts in todo.tolist():
            # the buffer as it stood at this bar's close: catching up after a restart decides each
            # missed bar on exactly the bars it would have seen live
            upto = int(np.searchsorted(ts_all, ts, side="right"))
            if upto < self.desk.need - 1:
                log.warning("bar %s: not enough history before it in the buffer; skipped", iso(ts))
                continue
            lo = upto - self.desk.need + 1
            self.desk.load({c: v[lo:upto] for c, v in bars.items()}, self.feed.funding)
            self.process(ts, started=started)
            self._collect()
            started = time.perf_counter()
            done += 1
            if self.config.max_bars is not None and self.decisions >= self.config.max_bars:
                self.stop_event.set()
                break
        return done

    def _collect(self) -> None:
        """While :meth:`run` holds Python's cycle collector off, collect the young generations after
        each bar's order is out: left automatic, a collection lands inside a decision every few
        bars and costs it 1-3 ms."""
        if not gc.isenabled():
            gc.collect(1)

    def run(self) -> None:
        """Poll until stopped. The objects of the start (modules, policy, compiled code) are frozen
        out of the cycle collector, which runs between bars instead of during them (:meth:`_collect`,
        and a full collection after each poll that processed a bar); so does the state store's WAL
        checkpoint (``StateStore(idle_checkpoints=True)``)."""
        polls = 0
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            while not self.stop_event.is_set():
                if self.poll():
                    gc.collect()
                    self.store.checkpoint(if_over=WAL_CHECKPOINT_BYTES)
                polls += 1
                if self.config.max_polls is not None and polls >= self.config.max_polls:
                    break
                self.stop_event.wait(self.config.poll_seconds)
            if self.broker is not None and self.config.flatten_on_exit and self.stop_event.is_set():
                self.flatten_now()
        except Exception as exc:
            self._notify(f"error, the bot stops: {type(exc).__name__}: {exc}")
            raise
        finally:
            gc.enable()
            gc.unfreeze()


def _wall_ms() -> int:
    return int(time.time() * 1000)
