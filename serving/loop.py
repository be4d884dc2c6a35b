"""The serving loop: on each newly closed bar, fill, observe, decide, gate, order, record.

For every bar that closed since the last poll, in order (the exchange's clock decides):

1. paper mode: the order decided at the previous close fills at this bar's open through the env's
   kernel (:meth:`serving.account.Desk.fill`), and the account is marked at this bar's close;
2. the observation is built over the rolling buffer with the training env's code;
3. the policy gives an action, which is a target exposure, which is a target position;
4. the risk gate (:mod:`serving.risk`) clamps or denies it; every event is recorded;
5. the order is written to the state store before anything else happens with it.

Each bar's writes (fill, decision, order, account, pending order, trading state) are one
transaction, so a crash at any point resumes at the first bar not yet saved. Operator commands
come through the state store: ``halt`` (flatten, then HALTED until ``resume``), ``resume``, and
``flatten`` (close the position at this bar, then trade on); a kill file halts too. Live trading
through ccxt orders is not in this version: ``mode=live`` is refused at start.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data.schema import iso
from serving.account import Account, Desk
from serving.feed import BarFeed
from serving.metrics import Metrics
from serving.risk import RiskContext, RiskGate, TradingState
from serving.state import StateStore

log = logging.getLogger("serve")
DAY_MS = 86_400_000


@dataclass(frozen=True)
class LoopConfig:
    poll_seconds: float = 5.0
    max_bars: int | None = None  # stop after this many decisions (scripts, tests)
    max_polls: int | None = None  # stop after this many polls (tests)
    kill_file: str | None = None  # when this file exists: flatten and halt
    metrics_port: int | None = None  # Prometheus /metrics on this port (0: any free port)
    metrics_host: str = "127.0.0.1"


class Server:
    """One bot: a policy on one series, a paper account, a risk gate, a state store."""

    def __init__(self, *, run_id: str, policy: Any, desk: Desk, feed: BarFeed, gate: RiskGate,
                 store: StateStore, config: LoopConfig, notifier: Any = None):  # fmt: skip
        self.run_id, self.policy, self.desk, self.feed = run_id, policy, desk, feed
        self.notifier = notifier  # anything with send(text): fills, denials, halts, state changes, errors
        self.gate, self.store, self.config = gate, store, config
        self.stop_event = threading.Event()
        self.decisions = 0
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

    def _state(self) -> TradingState:
        return TradingState(self.store.get("trading_state", TradingState.ACTIVE.value))

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
                self.store.set(
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
        order = self.store.order(client_id) if client_id else None
        # a bar replayed after a crash between the fill and the bar's save: the order is settled already
        if order is not None and order["status"] not in ("FILLED", "CANCELED", "REJECTED"):
            filled = sum(f.qty for f in fills if f.reason == "policy")
            self.store.update_order(client_id, "SENT", bar_ts)
            self.store.update_order(client_id, "FILLED" if filled else "CANCELED", bar_ts, filled=abs(filled))
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

    def process(self, bar_ts: int, kill: bool = False, flatten: bool = False) -> None:
        """Settle, observe, decide, gate and order at the close of ``bar_ts``: one transaction."""
        started = time.perf_counter()
        with self.store.batch():
            self._process(bar_ts, kill, flatten)
        if self.metrics is not None:
            self.metrics.latency.observe(time.perf_counter() - started)

    def _process(self, bar_ts: int, kill: bool, flatten: bool) -> None:
        self._settle(bar_ts)
        idx = self.desk.index(bar_ts)
        close = float(self.desk.env.market.close[idx])
        last_close = float(self.desk.env.market.close[idx - 1]) if idx > 0 else close
        equity = self.account.equity(close)
        if self.account.last_trade_ts is None:
            self.account.last_trade_ts = bar_ts  # as the env's reset: the first decision bar
        day = bar_ts // DAY_MS
        same_day = self.store.get("day") == day
        day_start = (self.store.get("day_start_equity") or equity) if same_day else equity
        peak = max(self.store.get("peak_equity") or equity, equity)

        obs = self.desk.observe(self.account, bar_ts)
        action = self.policy.act(obs, {"price": close, "ts": bar_ts})
        exposure = self.desk.exposure(action)
        desired = self.desk.target_qty(exposure, self.account, close)
        state = self._state()
        self.recent_orders = [t for t in self.recent_orders if t > bar_ts - 60_000]
        recent = tuple(self.recent_orders)
        ctx = RiskContext(
            equity=equity, position=self.account.position, price=close, last_close=last_close, now_ms=bar_ts,
            day_start_equity=day_start, peak_equity=peak, state=state,
            halted_until_ms=self.store.get("halted_until_ms"), recent_orders_ms=recent,
            data_stale=self.feed.stale, kill=kill,
        )  # fmt: skip
        decision = self.gate.check(0.0 if flatten else desired, ctx)
        for e in decision.events:
            self.store.record_risk_event(bar_ts, e.kind, e.check, e.reason)
            log.warning("risk %s %s: %s", e.kind, e.check, e.reason)
            if e.kind in ("deny", "halt", "resume"):
                self._notify(f"risk {e.kind} {e.check}: {e.reason}")
        if decision.state is not state:
            self._notify(f"trading state {state.value} -> {decision.state.value} at {iso(bar_ts)}")
        obs_hash = hashlib.sha256(np.ascontiguousarray(obs).tobytes()).hexdigest()[:16]
        raw = float(np.asarray(action, dtype=float).reshape(-1)[0])
        self.store.record_decision(
            bar_ts, obs_hash, raw, desired, decision.target, [e.__dict__ for e in decision.events]
        )
        client_id = None
        if decision.order != 0.0:
            client_id = f"{self.run_id}-{bar_ts}"
            side = "buy" if decision.order > 0 else "sell"
            reduce_only = abs(decision.target) < abs(self.account.position)
            self.store.create_order(client_id, bar_ts, side, abs(decision.order), reduce_only, close, bar_ts)
            self.recent_orders.append(bar_ts)
        # the kernel fills toward the target exposure at the next open; unclamped it is the policy's
        # own exposure, bit for bit as in training and evaluation
        unclamped = decision.target == desired and not decision.events
        target_exposure = (
            exposure if unclamped else self.desk.exposure_for(decision.target, self.account, close)
        )
        self.pending = {"client_id": client_id, "bar_ts": bar_ts, "exposure": target_exposure}
        self.store.record_equity(bar_ts, equity, self.account.position, self.account.cash, close)
        self.store.set(
            account=self.account.to_dict(), pending=self.pending, last_bar_ts=bar_ts,
            trading_state=decision.state.value, halted_until_ms=decision.halted_until_ms,
            day=day, day_start_equity=day_start, peak_equity=peak,
        )  # fmt: skip
        self.last_bar = bar_ts
        self.decisions += 1
        if self.metrics is not None:
            side = None if client_id is None else ("buy" if decision.order > 0 else "sell")
            self.metrics.decision(equity=equity, position=self.account.position, price=close,
                                  initial=self.desk.cfg.initial_equity, state=decision.state.value,
                                  order_side=side, events=decision.events)  # fmt: skip
        log.info("%s close %.2f equity %.2f position %.6f target %.6f state %s", iso(bar_ts), close, equity,
                 self.account.position, decision.target, decision.state.value)  # fmt: skip

    def _notify(self, text: str) -> None:
        if self.notifier is not None:
            self.notifier.send(f"[{self.run_id}] {text}")

    # -- the loop -------------------------------------------------------------------------------

    def poll(self) -> int:
        """One poll: fetch, then process every new closed bar. Returns the bars processed."""
        self.feed.update()
        if self.metrics is not None and self.feed.now_ms is not None and len(self.feed.bars):
            close_ms = int(self.feed.bars.ts.iloc[-1]) + self.feed.bar
            self.metrics.lag.set(max(self.feed.now_ms - close_ms, 0) / 1000)
        if len(self.feed.bars) < self.desk.need - 1:
            log.warning("waiting for history: %d of %d bars", len(self.feed.bars), self.desk.need - 1)
            return 0
        ts_all = self.feed.bars.ts.to_numpy()
        todo = [int(t) for t in ts_all if self.last_bar is None or t > self.last_bar]
        if self.last_bar is None:
            todo = todo[-1:]  # a new bot starts deciding at the last closed bar
        kill, flatten = self._commands() if todo else (False, False)
        done = 0
        for ts in todo:
            # the buffer as it stood at this bar's close: catching up after a restart decides each
            # missed bar on exactly the bars it would have seen live
            upto = int(np.searchsorted(ts_all, ts, side="right"))
            if upto < self.desk.need - 1:
                log.warning("bar %s: not enough history before it in the buffer; skipped", iso(ts))
                continue
            self.desk.load(self.feed.bars.iloc[upto - self.desk.need + 1 : upto].reset_index(drop=True),
                           self.feed.funding)  # fmt: skip
            self.process(ts, kill=kill, flatten=flatten)
            flatten = False
            done += 1
            if self.config.max_bars is not None and self.decisions >= self.config.max_bars:
                self.stop_event.set()
                break
        return done

    def run(self) -> None:
        polls = 0
        while not self.stop_event.is_set():
            try:
                self.poll()
            except Exception as exc:
                self._notify(f"error, the bot stops: {type(exc).__name__}: {exc}")
                raise
            polls += 1
            if self.config.max_polls is not None and polls >= self.config.max_polls:
                break
            self.stop_event.wait(self.config.poll_seconds)


def _wall_ms() -> int:
    return int(time.time() * 1000)
