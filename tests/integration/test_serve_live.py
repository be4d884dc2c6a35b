"""serve.py in live mode end to end: the real ccxt client sends orders to the replay exchange
(a Binance stand-in on 127.0.0.1 that fills them with the env's cost model over real Binance perp
bars). Decisions equal the evaluation replay; every fill the exchange made is in the state store;
restarts, crashes and faults never duplicate an order or lose a fill; disagreements halt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from agents.bundle import read_spec
from serving.app import ServeError, build, command
from serving.broker import BrokerError, client_tag
from serving.config import ServeConfig
from serving.replay_exchange import ReplayExchange
from serving.state import StateStore
from tests.integration.test_serve import BAR, drive, evaluation_replay, values
from tests.integration.test_training import ROOT

START = 1_000  # the first closed bar the bot decides on


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("BINANCE_API_KEY", "replay-key")
    monkeypatch.setenv("BINANCE_API_SECRET", "replay-secret")


def exchange(bundle, market, **kwargs) -> ReplayExchange:
    bars, funding = market
    env = read_spec(bundle)["env"]
    kwargs.setdefault("start_ms", int(bars.ts[START]) + BAR + 1)
    kwargs.setdefault("balances", {"USDT": float(env.get("initial_equity", 10_000.0))})
    return ReplayExchange(futures={"BTCUSDT": {"5m": bars}}, funding={"BTCUSDT": funding}, env=env, **kwargs)


def live(bundle, ex, state, **extra) -> dict:
    serve = {"request_timeout_ms": 1_000, "recv_window_ms": 2_000, **extra.pop("serve", {})}
    return values(bundle, ex.url, state, mode="live", confirm_live=True, serve=serve, **extra)


def start(asked: dict):
    """``build(asked)`` with ccxt's client-side rate limiter off: the stand-in has no limit to keep."""
    server = build(asked)
    server.feed.ex.enableRateLimit = False
    return server


def assert_store_matches_exchange(state, ex) -> None:
    """Every order the exchange took is in the store under its client id (written before it was
    sent), once; every trade is a recorded fill; the recorded fills add up to the exchange's position."""
    store = StateStore(str(state))
    orders = {o["client_id"]: o for o in store.orders()}
    sent = [o["client_id"] for o in ex.orders]
    assert len(sent) == len(set(sent))
    assert set(sent) <= set(orders)
    bars_with_orders = [orders[c]["bar_ts"] for c in sent if "-x" not in c]
    assert len(bars_with_orders) == len(set(bars_with_orders))  # at most one order per bar
    fills = store.fills()
    assert len(fills) == len(ex.trades)
    assert sum(f["qty"] for f in fills) == pytest.approx(ex.position("BTCUSDT")["qty"], abs=1e-9)


def test_live_serving_through_ccxt_decides_as_the_evaluation_replay_and_records_every_fill(
    bundle, market, tmp_path
):
    bars, funding = market
    with exchange(bundle, market) as ex:
        server = start(live(bundle, ex, tmp_path / "state.db"))
        drive(server, ex, int(bars.ts[START]) + BAR + 1, 100)
        env = server.desk.env_kwargs
        assert_store_matches_exchange(tmp_path / "state.db", ex)
    store = StateStore(str(tmp_path / "state.db"))
    decisions = pd.DataFrame(store.decisions())
    curve = pd.DataFrame(store.equity_curve())
    assert len(decisions) == 100 and len(store.fills()) > 0

    actions, rows = evaluation_replay(bundle, bars, funding, env, START)
    np.testing.assert_array_equal(
        decisions["raw_action"].to_numpy()[:99], np.asarray(actions[:99], dtype=float)
    )
    # the exchange fills with the kernel's cost model, so the accounts agree; not to the cent: a live
    # bot sizes an order at the leverage cap with the fill price it expects at this close, and the
    # kernel with the one it got, which the next bar's range may have clipped (one lot, now and then)
    np.testing.assert_allclose(curve["equity"].to_numpy()[:99], rows["equity"].to_numpy()[:99], rtol=1e-4)
    np.testing.assert_allclose(
        curve["position"].to_numpy()[1:99], rows["position"].to_numpy()[1:99], atol=0.0021
    )
    exact = int(np.argmax(curve["position"].to_numpy()[1:99] != rows["position"].to_numpy()[1:99]))
    np.testing.assert_allclose(
        curve["equity"].to_numpy()[:exact], rows["equity"].to_numpy()[:exact], rtol=1e-12
    )
    assert exact >= 5


def test_a_restarted_live_bot_reconciles_and_does_not_trade_the_bars_it_missed(bundle, market, tmp_path):
    bars, _ = market
    now = int(bars.ts[START]) + BAR + 1
    with exchange(bundle, market) as ex:
        first = start(live(bundle, ex, tmp_path / "state.db"))
        drive(first, ex, now, 20)
        position = first.account.position
        del first  # a crash: the state store and the exchange survive
        ex.now_ms = now + 30 * BAR
        second = start(live(bundle, ex, tmp_path / "state.db"))
        assert second.account.position == pytest.approx(position, abs=1e-12)
        drive(second, ex, now + 30 * BAR, 5)
        assert_store_matches_exchange(tmp_path / "state.db", ex)
    ts = [d["bar_ts"] for d in StateStore(str(tmp_path / "state.db")).decisions()]
    assert len(ts) == 25 and ts == sorted(ts)
    assert ts[20] - ts[19] == 11 * BAR  # the ten bars missed while down were not decided after the fact


def test_a_trade_made_outside_the_bot_halts_it_at_start_until_the_operator_adopts_it(
    bundle, market, tmp_path
):
    bars, _ = market
    now = int(bars.ts[START]) + BAR + 1
    with exchange(bundle, market) as ex:
        first = start(live(bundle, ex, tmp_path / "state.db"))
        drive(first, ex, now, 5)
        held = first.account.position
        ex.now_ms = now + 5 * BAR
        manual = first.broker.ex  # someone trades by hand on the same account
        manual.create_order(
            first.broker.symbol, "market", "buy", 0.01, None, {"newClientOrderId": "by-hand-1"}
        )
        with pytest.raises(ServeError, match="the exchange holds a position of"):
            build(live(bundle, ex, tmp_path / "state.db"))
        status = command(ServeConfig(command="status", state=str(tmp_path / "state.db")))
        assert status["state"]["trading_state"] == "HALTED"
        adopted = start(live(bundle, ex, tmp_path / "state.db", serve={"adopt_exchange": True}))
        assert adopted.account.position == pytest.approx(held + 0.01, abs=1e-12)


def test_an_open_order_of_the_run_that_the_store_does_not_know_halts_the_start(bundle, market, tmp_path):
    bars, _ = market
    with exchange(bundle, market) as ex:
        server = start(live(bundle, ex, tmp_path / "state.db"))
        stray = f"{client_tag(server.run_id)}-123"
        low = float(bars.close[START]) * 0.5  # a resting bid far below the market
        server.broker.ex.create_order(
            server.broker.symbol, "limit", "buy", 0.01, low, {"newClientOrderId": stray}
        )
        with pytest.raises(ServeError, match=f"open order\\(s\\) {stray}"):
            build(live(bundle, ex, tmp_path / "state.db"))


@pytest.mark.parametrize("fault", ["timeout", "late", 429, 503, "reset", "partial"])
def test_an_order_fault_never_duplicates_an_order_or_loses_a_fill(bundle, market, tmp_path, fault):
    bars, _ = market
    now = int(bars.ts[START]) + BAR + 1
    with exchange(bundle, market, timeout_sleep_s=1.5) as ex:
        server = start(live(bundle, ex, tmp_path / "state.db"))
        for k in range(12):
            ex.now_ms = now + k * BAR
            if k % 3 == 0:
                ex.inject("order", fault)
            server.poll()
        ex.now_ms = now + 12 * BAR
        server.poll()  # the last ambiguous order is settled at the next bar
        assert_store_matches_exchange(tmp_path / "state.db", ex)
    store = StateStore(str(tmp_path / "state.db"))
    assert store.orders(("NEW", "SENT", "UNKNOWN", "PARTIALLY_FILLED")) == []
    assert store.get("trading_state") == "ACTIVE"


def test_an_exchange_that_refuses_every_order_halts_the_bot_with_its_message(bundle, market, tmp_path):
    bars, _ = market
    now = int(bars.ts[START]) + BAR + 1
    with exchange(bundle, market) as ex:
        server = start(live(bundle, ex, tmp_path / "state.db", risk={"max_orders_per_minute": None}))
        ex.inject("order", *["reject"] * 50)
        with pytest.raises(BrokerError, match="refused 3 orders in a row.*insufficient balance"):
            drive(server, ex, now, 50)
    store = StateStore(str(tmp_path / "state.db"))
    assert store.get("trading_state") == "HALTED"
    assert len([o for o in store.orders() if o["status"] == "REJECTED"]) == 3
    assert ex.orders == [] and store.fills() == []


def test_clock_skew_stops_the_start_with_the_fix_and_halts_on_an_order(bundle, market, tmp_path):
    with exchange(bundle, market, clock_skew_ms=-60_000) as ex, pytest.raises(ServeError, match="clock skew"):
        build(live(bundle, ex, tmp_path / "a.db"))
    bars, _ = market
    now = int(bars.ts[START]) + BAR + 1
    with exchange(bundle, market) as ex:
        server = start(live(bundle, ex, tmp_path / "b.db"))
        ex.inject("order", *[-1021] * 20)
        with pytest.raises(BrokerError, match="clock skew"):
            drive(server, ex, now, 20)
    assert StateStore(str(tmp_path / "b.db")).get("trading_state") == "HALTED"


def test_flatten_on_exit_closes_the_position_with_a_reduce_only_order(bundle, market, tmp_path):
    bars, _ = market
    now = int(bars.ts[START]) + BAR + 1
    with exchange(bundle, market) as ex:
        server = start(live(bundle, ex, tmp_path / "state.db", serve={"flatten_on_exit": True}))
        for k in range(40):
            ex.now_ms = now + k * BAR
            server.poll()
            if server.account.position != 0.0:
                break
        assert server.account.position != 0.0, "the policy never took a position"
        server.stop_event.set()
        server.run()
        assert ex.position("BTCUSDT")["qty"] == 0.0
        assert_store_matches_exchange(tmp_path / "state.db", ex)


@pytest.mark.slow
def test_sigkill_at_random_points_never_duplicates_an_order_or_loses_a_fill(bundle, market, tmp_path):
    """serve.py is killed with SIGKILL at random moments while it trades (the exchange's clock runs at
    600x, a bar every 0.5 s, and answers slowly enough that kills land inside requests), then
    restarted, eight times; a last clean start must reconcile, and the store must hold every order
    the exchange took, once, and every fill."""
    rng = np.random.default_rng(11)
    state = tmp_path / "state.db"
    env = {**os.environ, "BINANCE_API_KEY": "replay-key", "BINANCE_API_SECRET": "replay-secret"}
    with exchange(bundle, market, speed=600.0, latency_s=0.02, max_seconds=600) as ex:
        cmd = [sys.executable, str(ROOT / "serve.py"), f"run={bundle}", "mode=live", "confirm_live=true",
               "exchange=binance", "market=futures", "symbol=BTC/USDT", f"api_url={ex.url}", f"state={state}",
               "serve.poll_seconds=0.05", "serve.request_timeout_ms=2000"]  # fmt: skip
        for _ in range(8):
            seen = len(ex.requests)
            proc = subprocess.Popen(
                cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
            )
            try:
                deadline = time.monotonic() + 90
                # wait for the bot's first order, then let it trade on for a random while
                while not any("newClientOrderId" in q for _, q in ex.requests[seen:]) and proc.poll() is None:
                    assert time.monotonic() < deadline, "the bot never sent an order"
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.0, 3.0))
            finally:
                proc.kill()
                _, err = proc.communicate(timeout=30)
            assert proc.returncode == -signal.SIGKILL, err[-3000:]
        final = subprocess.run([*cmd, "serve.max_bars=1"], cwd=tmp_path, capture_output=True, text=True,
                               timeout=120, env=env)  # fmt: skip
        assert final.returncode == 0, final.stderr[-3000:]
        assert_store_matches_exchange(state, ex)
    # every order request that reached the exchange, taken or refused, was in the store before it was sent
    asked = {q["newClientOrderId"] for _, q in ex.requests if "newClientOrderId" in q}
    assert len(asked) >= 8 and asked <= {o["client_id"] for o in StateStore(str(state)).orders()}


def test_a_baseline_trades_spot_live_and_the_store_agrees_with_the_exchange(shared_data, tmp_path):
    """policy=<baseline> needs no bundle: SMA crossover on real spot BTCUSDT 5m bars, long only, with
    every order through ccxt; the quote cash and the coin held agree with the exchange's balances."""
    bars = pd.read_parquet(shared_data / "binance" / "spot" / "BTCUSDT" / "5m.parquet").iloc[:2_500]
    bars = bars.reset_index(drop=True)
    now = int(bars.ts[2_000]) + BAR + 1
    spot = {"market": "spot"}
    with ReplayExchange(
        spot={"BTCUSDT": {"5m": bars}}, env=spot, start_ms=now, balances={"USDT": 10_000.0}
    ) as ex:
        asked = values(None, ex.url, tmp_path / "state.db", policy="sma_crossover", market="spot",
                       timeframe="5m", mode="live", confirm_live=True, serve={"request_timeout_ms": 1_000})
        server = start(asked)
        drive(server, ex, now, 300)
        usdt, btc = ex.balance("USDT")["total"], ex.balance("BTC")["total"]
    store = StateStore(str(tmp_path / "state.db"))
    fills = store.fills()
    assert len(fills) >= 4  # the crossover traded both ways
    assert sum(f["qty"] for f in fills) == pytest.approx(btc, abs=1e-12)
    assert 10_000.0 - sum(f["qty"] * f["price"] + f["fee"] for f in fills) == pytest.approx(usdt, abs=1e-6)
    assert server.account.position == pytest.approx(btc, abs=1e-12) and server.account.cash == pytest.approx(
        usdt
    )
    assert np.cumsum([f["qty"] for f in fills]).min() >= -1e-12  # long only: never short


@pytest.mark.parametrize(("band", "outcome"), [(0.0002, {"FILLED"}), (0.0001, {"FILLED", "CANCELED"})])
def test_ioc_limit_orders_fill_within_the_band_or_expire_and_the_store_agrees(
    bundle, market, tmp_path, band, outcome
):
    """Spread and slippage cost 1.5 bp: a limit 2 bp from the close always fills here, never worse
    than the limit; one 1 bp away fills only when the bar opens below the last close (buys), else
    expires with nothing filled."""
    bars, _ = market
    now = int(bars.ts[START]) + BAR + 1
    with exchange(bundle, market) as ex:
        server = start(live(bundle, ex, tmp_path / "state.db", serve={"limit_band": band}))
        drive(server, ex, now, 60)
        assert_store_matches_exchange(tmp_path / "state.db", ex)
        sent = ex.orders
    assert sent and all(o["type"] == "LIMIT" and o["time_in_force"] == "IOC" for o in sent)
    closes = dict(zip(bars.ts, bars.close, strict=True))
    store = {o["client_id"]: o for o in StateStore(str(tmp_path / "state.db")).orders()}
    for o in sent:
        limit = closes[store[o["client_id"]]["bar_ts"]] * (1 + band if o["side"] == "BUY" else 1 - band)
        assert o["price"] == pytest.approx(round(limit, 1), abs=1e-9)  # the exchange's 0.1 tick
        if o["filled"]:
            assert (o["avg_price"] <= o["price"]) if o["side"] == "BUY" else (o["avg_price"] >= o["price"])
    assert {store[o["client_id"]]["status"] for o in sent} == outcome
