"""Prometheus metrics of a running bot (``serve.metrics_port``; off when null).

Served on ``serve.metrics_host`` (default 127.0.0.1) at ``/metrics``, from the bot's own registry:

- ``klinegym_equity``, ``klinegym_position``, ``klinegym_exposure`` (position notional / equity),
  ``klinegym_pnl`` (equity - initial equity), each at the last decision's close;
- ``klinegym_trading_state{state}``: 1 for the current state (ACTIVE, REDUCING, HALTED), 0 else;
- ``klinegym_orders_total{side}``, ``klinegym_risk_events_total{kind,check}`` (denials, clamps,
  halts by reason);
- ``klinegym_decision_seconds``: a histogram of the time from a bar's processing start to its
  order in the store;
- ``klinegym_data_lag_seconds``: the exchange clock minus the last closed bar's close time.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

STATES = ("ACTIVE", "REDUCING", "HALTED")


class Metrics:
    def __init__(self, port: int | None = None, host: str = "127.0.0.1"):
        self.registry = CollectorRegistry()
        r = self.registry
        self.equity = Gauge("klinegym_equity", "Mark-to-market equity, quote currency", registry=r)
        self.position = Gauge("klinegym_position", "Signed base quantity held", registry=r)
        self.exposure = Gauge("klinegym_exposure", "Position notional / equity", registry=r)
        self.pnl = Gauge("klinegym_pnl", "Equity minus the initial equity", registry=r)
        self.state = Gauge("klinegym_trading_state", "1 for the current trading state", ["state"], registry=r)
        self.orders = Counter("klinegym_orders", "Orders written to the store", ["side"], registry=r)
        self.risk = Counter("klinegym_risk_events", "Risk gate events", ["kind", "check"], registry=r)
        self.latency = Histogram(
            "klinegym_decision_seconds", "Closed bar to order in the store, excluding the network",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0), registry=r,
        )  # fmt: skip
        self.lag = Gauge(
            "klinegym_data_lag_seconds", "Exchange clock minus the last closed bar's close", registry=r
        )
        self.server: Any = None
        if port is not None:
            self.server, _ = start_http_server(port, addr=host, registry=r)

    @property
    def port(self) -> int | None:
        return None if self.server is None else int(self.server.server_port)

    def decision(self, *, equity: float, position: float, price: float, initial: float, state: str,
                 order_side: str | None, events: Any) -> None:  # fmt: skip
        self.equity.set(equity)
        self.position.set(position)
        self.exposure.set(position * price / equity if equity > 0 else 0.0)
        self.pnl.set(equity - initial)
        for s in STATES:
            self.state.labels(state=s).set(1.0 if s == state else 0.0)
        if order_side:
            self.orders.labels(side=order_side).inc()
        for e in events:
            self.risk.labels(kind=e.kind, check=e.check).inc()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
