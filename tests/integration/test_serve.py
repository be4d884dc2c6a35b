"""serve.py in paper mode end to end: real Binance perp bars replayed by the loopback exchange in
virtual time, the real ccxt client, the real SQLite state store. Decisions and equity equal the
evaluation replay of the same bundle on the same bars; a restart continues where it stopped;
operator commands and the kill file halt it; bad input stops it at start."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agents.bundle import load_policy
from data.config import ConfigError
from data.loopback import LoopbackExchange
from reports.replay import replay
from serving.app import ServeError, build, command
from serving.config import ServeConfig
from serving.state import StateStore
from tests.integration.test_training import ROOT

BAR = 300_000


def values(run: Path | None, url: str, state: Path, **extra) -> ServeConfig:
    base = {
        "run": None if run is None else str(run), "policy": None, "mode": "paper", "confirm_live": False,
        "exchange": "binance", "market": "futures", "symbol": "BTC/USDT", "api_url": url, "state": str(state),
        "command": None,
        "serve": {"poll_seconds": 0.01, "max_bars": None, "max_polls": None, "kill_file": None},
        "risk": {},
    }  # fmt: skip
    for key, value in extra.items():
        if isinstance(value, dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return ServeConfig.from_dict(base)


def evaluation_replay(bundle, bars, funding, env, start_i: int, bars_after: int = 101):
    """``evaluate.py``'s replay of the bundle from bar ``start_i``: its actions and its ledger."""
    policy = load_policy(bundle)
    actions = []

    def act(obs, info):
        actions.append(policy.act(obs))
        return actions[-1]

    rows = replay(act, bars.iloc[: start_i + bars_after], funding.rename(columns={"funding_rate": "rate"}),
                  env, int(bars.ts[start_i]))  # fmt: skip
    return actions, rows


def drive(server, ex: LoopbackExchange, first_now: int, bars: int) -> None:
    """Advance the exchange clock one bar at a time and poll after each."""
    for k in range(bars):
        ex.now_ms = first_now + k * BAR
        server.poll()


def test_paper_serving_decides_and_fills_exactly_as_the_evaluation_replay(bundle, market, tmp_path):
    bars, funding = market
    start_i = 1_000  # the first closed bar the bot decides on
    with LoopbackExchange(futures={"BTCUSDT": {"5m": bars}}, funding={"BTCUSDT": funding},
                          now_ms=int(bars.ts[start_i]) + BAR + 1) as ex:  # fmt: skip
        server = build(values(bundle, ex.url, tmp_path / "state.db"))
        drive(server, ex, int(bars.ts[start_i]) + BAR + 1, 100)
        env = server.desk.env_kwargs  # the bundle's env with the exchange's lot size and min notional
    assert env["lot_size"] == 0.001 and env["min_notional"] > 0
    store = StateStore(str(tmp_path / "state.db"))
    decisions = pd.DataFrame(store.decisions())
    curve = pd.DataFrame(store.equity_curve())
    assert len(decisions) == 100 and decisions["bar_ts"].iloc[0] == bars.ts[start_i]

    actions, rows = evaluation_replay(bundle, bars, funding, env, start_i)
    np.testing.assert_array_equal(
        decisions["raw_action"].to_numpy()[:99], np.asarray(actions[:99], dtype=float)
    )
    # equity at each decision bar's close: the evaluation ledger's row of that bar
    np.testing.assert_allclose(curve["equity"].to_numpy()[:99], rows["equity"].to_numpy()[:99], rtol=1e-9)
    assert len(store.fills()) > 0


def test_run_holds_the_cycle_collector_off_during_a_decision_and_gives_it_back_after(
    bundle, market, tmp_path
):
    bars, funding = market
    now = int(bars.ts[1_000]) + BAR + 1
    with LoopbackExchange(futures={"BTCUSDT": {"5m": bars}}, funding={"BTCUSDT": funding}, now_ms=now) as ex:
        server = build(values(bundle, ex.url, tmp_path / "state.db", serve={"max_polls": 2}))
        seen = []
        act = server.policy.act

        def watched(obs, info=None):
            seen.append((gc.isenabled(), gc.get_freeze_count() > 0))
            return act(obs, info)

        server.policy.act = watched
        server.run()
    assert seen == [(False, True)]  # one bar decided, with the collector off and the start's objects frozen
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert 0.0 < server.latency < 1.0  # seconds, from the bar read to the order recorded


def test_a_paper_bot_keeps_the_same_books_on_postgresql_as_on_sqlite(bundle, market, tmp_path, postgres_url):
    bars, funding = market
    now = int(bars.ts[1_000]) + BAR + 1
    books = []
    for state in (str(tmp_path / "state.db"), postgres_url):
        with LoopbackExchange(futures={"BTCUSDT": {"5m": bars}}, funding={"BTCUSDT": funding},
                              now_ms=now) as ex:  # fmt: skip
            server = build(values(bundle, ex.url, state))
            drive(server, ex, now, 40)
            server.store.close()
        with StateStore(state) as store:
            books.append(
                (store.decisions(), store.orders(), store.fills(), store.equity_curve(), store.account())
            )
    decisions, orders, fills, _, _ = books[1]
    assert (
        len(decisions) == 40
        and len(fills) > 0
        and {o["status"] for o in orders} <= {"FILLED", "CANCELED", "NEW"}
    )
    assert books[1] == books[0]


def test_a_restarted_paper_bot_continues_at_the_next_bar_without_repeating_a_decision(
    bundle, market, tmp_path
):
    bars, funding = market
    now = int(bars.ts[1_000]) + BAR + 1
    with LoopbackExchange(futures={"BTCUSDT": {"5m": bars}}, funding={"BTCUSDT": funding}, now_ms=now) as ex:
        first = build(values(bundle, ex.url, tmp_path / "state.db"))
        drive(first, ex, now, 30)
        account = first.account
        del first  # a crash: nothing but the state store survives
        ex.now_ms = now + 40 * BAR  # ten bars passed while it was down
        second = build(values(bundle, ex.url, tmp_path / "state.db"))
        assert second.account == account
        second.poll()
    decisions = StateStore(str(tmp_path / "state.db")).decisions()
    ts = [d["bar_ts"] for d in decisions]
    assert len(ts) == len(set(ts)) == 41  # the ten missed bars were decided on after the restart, once each
    assert ts == sorted(ts) and np.all(np.diff(ts) == BAR)


def test_the_kill_file_and_the_halt_command_flatten_and_halt_the_bot(bundle, market, tmp_path):
    bars, funding = market
    now = int(bars.ts[1_000]) + BAR + 1
    kill = tmp_path / "KILL"
    with LoopbackExchange(futures={"BTCUSDT": {"5m": bars}}, funding={"BTCUSDT": funding}, now_ms=now) as ex:
        server = build(values(bundle, ex.url, tmp_path / "state.db", serve={"kill_file": str(kill)}))
        drive(server, ex, now, 20)
        kill.touch()
        drive(server, ex, now + 20 * BAR, 3)
        status = command(ServeConfig(command="status", state=str(tmp_path / "state.db")))
        assert status["state"]["trading_state"] == "HALTED"
        store = StateStore(str(tmp_path / "state.db"))
        assert store.get("trading_state") == "HALTED" and server.account.position == 0.0
        assert any(e["check"] == "kill_switch" for e in store.risk_events())
        kill.unlink()
        command(ServeConfig(command="resume", state=str(tmp_path / "state.db")))
        drive(server, ex, now + 23 * BAR, 2)
        assert store.get("trading_state") == "ACTIVE"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"mode": "live"}, "add confirm_live=true"),
        ({"mode": "live", "confirm_live": True}, "set BINANCE_API_KEY and BINANCE_API_SECRET"),
        ({"mode": "live", "confirm_live": True, "key_file": str(ROOT / "keys.txt")}, "is inside the project"),
        ({"serve": {"flatten_on_exit": True}}, "serve.flatten_on_exit needs mode=live"),
        ({"market": "spot"}, "the bundle trades a perpetual account; market=spot has none"),
        ({"symbol": "NOPE/USDT"}, "NOPE/USDT"),
        ({"exchange": None}, "the bundle was trained on the synthetic market"),
    ],
    ids=["live-unconfirmed", "live-without-keys", "key-file-in-the-repo", "paper-flatten-on-exit",
         "spot-market-for-a-perp-bundle", "unknown-symbol", "synthetic-exchange"],
)  # fmt: skip
def test_a_bot_that_cannot_start_says_why_and_starts_nothing(
    bundle, market, tmp_path, monkeypatch, extra, message
):
    monkeypatch.delenv("BINANCE_API_KEY", raising=False)
    monkeypatch.delenv("BINANCE_API_SECRET", raising=False)
    bars, funding = market
    with (
        LoopbackExchange(futures={"BTCUSDT": {"5m": bars}}, funding={"BTCUSDT": funding}) as ex,
        pytest.raises((ServeError, ConfigError), match=message.replace("(", r"\(")),
    ):
        build(values(bundle, ex.url, tmp_path / "state.db", **extra))


def test_a_state_store_of_another_symbol_is_refused(bundle, market, tmp_path):
    bars, funding = market
    frames = {"BTCUSDT": {"5m": bars}, "ETHUSDT": {"5m": bars}}
    with LoopbackExchange(futures=frames, funding={"BTCUSDT": funding, "ETHUSDT": funding}) as ex:
        build(values(bundle, ex.url, tmp_path / "state.db"))
        with pytest.raises(ServeError, match="state store"):
            build(values(bundle, ex.url, tmp_path / "state.db", symbol="ETH/USDT"))


def test_serve_py_runs_max_bars_logs_json_lines_and_answers_status(bundle, market, tmp_path):
    bars, funding = market
    with LoopbackExchange(futures={"BTCUSDT": {"5m": bars}}, funding={"BTCUSDT": funding}) as ex:
        cmd = [sys.executable, str(ROOT / "serve.py"), f"run={bundle}", "exchange=binance", "market=futures",
               "symbol=BTC/USDT", f"api_url={ex.url}", f"state={tmp_path / 'state.db'}", "serve.max_bars=1",
               "serve.poll_seconds=0.1", "serve.max_polls=20", "hydra/job_logging=json"]  # fmt: skip
        out = subprocess.run(
            cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=dict(os.environ)
        )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "decisions: 1"
    events = [json.loads(line) for line in lines[:-1]]  # every log line is one JSON object
    decision = next(e for e in events if e.get("event") == "decision")
    assert decision["state"] == "ACTIVE" and decision["equity"] == 10_000.0 and decision["level"] == "INFO"
    ask = [sys.executable, str(ROOT / "serve.py"), "command=status", f"state={tmp_path / 'state.db'}"]
    status = subprocess.run(ask, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr[-2000:]
    assert json.loads(status.stdout)["run"]["symbol"] == "BTC/USDT:USDT"  # ccxt's name of the USD-M perp


def test_max_position_notional_when_the_policy_wants_more_then_every_paper_position_stays_under_it(
    bundle, market, tmp_path
):
    bars, funding = market
    now = int(bars.ts[1_000]) + BAR + 1
    limit = 5_000.0  # half the account: the policy's full exposure would be 3x it
    with LoopbackExchange(futures={"BTCUSDT": {"5m": bars}}, funding={"BTCUSDT": funding}, now_ms=now) as ex:
        server = build(values(bundle, ex.url, tmp_path / "state.db", risk={"max_position_notional": limit}))
        drive(server, ex, now, 40)
    store = StateStore(str(tmp_path / "state.db"))
    curve = pd.DataFrame(store.equity_curve()).rename(columns={"ts_ms": "bar_ts"})
    decisions = pd.DataFrame(store.decisions()).merge(curve[["bar_ts", "price"]], on="bar_ts")
    # every target the gate let through, valued at the decision's close, is within the limit
    assert (decisions["clamped_target"].abs() * decisions["price"] <= limit * (1 + 1e-9)).all()
    clamps = [e for e in store.risk_events() if e["check"] == "max_position_notional"]
    assert clamps and all(e["kind"] == "clamp" for e in clamps)
    assert (decisions["target"].abs() > decisions["clamped_target"].abs()).sum() == len(clamps)


def test_the_metrics_endpoint_reports_equity_position_state_and_orders_on_loopback(bundle, market, tmp_path):
    import urllib.request

    bars, funding = market
    now = int(bars.ts[1_000]) + BAR + 1
    with LoopbackExchange(futures={"BTCUSDT": {"5m": bars}}, funding={"BTCUSDT": funding}, now_ms=now) as ex:
        server = build(values(bundle, ex.url, tmp_path / "state.db", serve={"metrics_port": 0}))
        try:
            drive(server, ex, now, 10)
            url = f"http://127.0.0.1:{server.metrics.port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as answer:
                text = answer.read().decode()
        finally:
            server.metrics.close()
    lines = {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and line[0] != "#"
    }
    last = StateStore(str(tmp_path / "state.db")).equity_curve()[-1]
    assert lines["klinegym_equity"] == pytest.approx(last["equity"])
    assert lines["klinegym_position"] == pytest.approx(last["position"])
    assert lines['klinegym_trading_state{state="ACTIVE"}'] == 1.0
    assert lines["klinegym_decision_seconds_count"] == 10
    assert lines["klinegym_data_lag_seconds"] < 1.0  # the bot is on the last closed bar


class _Telegram:
    """A loopback stand-in for Telegram's Bot API: records sendMessage calls."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.messages: list[tuple[str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.messages.append((self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_telegram_gets_fills_and_halts_and_a_missing_token_stops_the_start(
    bundle, market, tmp_path, monkeypatch
):
    bars, funding = market
    now = int(bars.ts[1_000]) + BAR + 1
    telegram = _Telegram()
    kill = tmp_path / "KILL"
    notify = {"notify": "telegram", "telegram_api_url": telegram.url, "kill_file": str(kill)}
    try:
        with LoopbackExchange(
            futures={"BTCUSDT": {"5m": bars}}, funding={"BTCUSDT": funding}, now_ms=now
        ) as ex:
            monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
            with pytest.raises(ServeError, match="needs TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID"):
                build(values(bundle, ex.url, tmp_path / "state.db", serve=notify))
            assert not (tmp_path / "state.db").exists()  # nothing started
            monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123:secret")
            monkeypatch.setenv("TELEGRAM_CHAT_ID", "42")
            server = build(values(bundle, ex.url, tmp_path / "state.db", serve=notify))
            drive(server, ex, now, 15)
            kill.touch()
            drive(server, ex, now + 15 * BAR, 1)
            server.notifier.close()
    finally:
        telegram.close()
    paths = {path for path, _ in telegram.messages}
    texts = [m["text"] for _, m in telegram.messages]
    assert paths == {"/bot123:secret/sendMessage"} and all(m["chat_id"] == "42" for _, m in telegram.messages)
    assert any(" BTC/USDT:USDT at " in t for t in texts)  # fills
    assert any("risk halt kill_switch" in t for t in texts) and any("-> HALTED" in t for t in texts)


def test_sigterm_stops_serve_py_after_the_current_bar_with_everything_saved(bundle, market, tmp_path):
    import signal
    import time

    bars, funding = market
    with LoopbackExchange(futures={"BTCUSDT": {"5m": bars}}, funding={"BTCUSDT": funding}) as ex:
        cmd = [sys.executable, str(ROOT / "serve.py"), f"run={bundle}", "exchange=binance", "market=futures",
               "symbol=BTC/USDT", f"api_url={ex.url}", f"state={tmp_path / 'state.db'}",
               "serve.poll_seconds=0.2"]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (tmp_path / "state.db").exists():
                time.sleep(0.2)
            while time.monotonic() < deadline and not StateStore(str(tmp_path / "state.db")).decisions():
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert out.strip().splitlines()[-1] == "decisions: 1"
    store = StateStore(str(tmp_path / "state.db"))
    assert store.get("last_bar_ts") == store.decisions()[-1]["bar_ts"] and store.get("pending") is not None
