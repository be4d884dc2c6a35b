from __future__ import annotations

import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable

from serving import state as state_module
from serving.state import ORDER_STATES, RunMeta, StateError, StateStore, store_url

ROOT = Path(__file__).resolve().parents[2]
T0 = 1706745600000  # 2024-02-01T00:00:00Z
META = RunMeta("ppo_btc_BTCUSDT_1m", "runs/ppo_btc/policy", "binance", "spot", "BTC/USDT", "1m", "paper",
               "sha256:0123456789abcdef")  # fmt: skip
# the order life cycle, written out independently of serving.state.TRANSITIONS
LEGAL = {
    "NEW": {"SENT", "REJECTED", "UNKNOWN", "CANCELED"},
    "SENT": {"PARTIALLY_FILLED", "FILLED", "CANCELED", "REJECTED", "UNKNOWN"},
    "PARTIALLY_FILLED": {"PARTIALLY_FILLED", "FILLED", "CANCELED", "UNKNOWN"},
    "UNKNOWN": {"SENT", "PARTIALLY_FILLED", "FILLED", "CANCELED", "REJECTED"},
    "FILLED": set(),
    "CANCELED": set(),
    "REJECTED": set(),
}
REACH = {
    "NEW": [],
    "SENT": ["SENT"],
    "PARTIALLY_FILLED": ["SENT", "PARTIALLY_FILLED"],
    "FILLED": ["SENT", "FILLED"],
    "CANCELED": ["CANCELED"],
    "REJECTED": ["REJECTED"],
    "UNKNOWN": ["UNKNOWN"],
}


@pytest.fixture()
def path(tmp_path: Path) -> str:
    return str(tmp_path / "serve" / "state.db")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path: Path) -> str:
    """A new, empty state store: a SQLite file, and a new PostgreSQL database (``postgres_url``)."""
    if request.param == "sqlite":
        return str(tmp_path / "serve" / "state.db")
    return request.getfixturevalue("postgres_url")


@pytest.fixture()
def store(url: str):
    s = StateStore(url)
    s.open_run(META)
    yield s
    s.close()


def child(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """A separate Python process running ``code`` against this checkout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, env=env,
                            text=True, **kwargs)  # fmt: skip


# -- urls and opening ---------------------------------------------------------------------------


def test_store_url_makes_sqlite_urls_of_paths_and_keeps_urls(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert store_url("runs/x/state.db") == f"sqlite:///{tmp_path}/runs/x/state.db"
    assert store_url("/abs/state.sqlite") == "sqlite:////abs/state.sqlite"
    assert store_url("postgresql://bot@db/klinegym") == "postgresql+psycopg://bot@db/klinegym"
    assert store_url("postgres://bot@db/klinegym") == "postgresql+psycopg://bot@db/klinegym"
    assert store_url("postgresql+psycopg2://bot@db/k") == "postgresql+psycopg2://bot@db/k"
    assert store_url("sqlite:///rel.db") == "sqlite:///rel.db"


def test_a_new_store_creates_its_folder_and_has_no_run(path: str):
    with StateStore(path) as s:
        assert Path(path).is_file()
        assert s.run() is None
        assert s.account() is None
        assert s.get("trading_state", "ACTIVE") == "ACTIVE"


def test_every_sqlite_connection_is_wal_with_normal_sync_and_a_busy_timeout(path: str):
    store = StateStore(path)
    with store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()
        store.close()


def test_garbage_bytes_are_not_a_sqlite_database(tmp_path: Path):
    bad = tmp_path / "state.db"
    bad.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(8192)))
    with pytest.raises(StateError, match="not a SQLite database") as info:
        StateStore(str(bad))
    assert str(bad) in str(info.value) and "move it aside" in str(info.value)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mysql://bot@db/klinegym", "mysql database is not supported"),
        ("nosuchdb://x/y", "nosuchdb database is not supported"),
        ("postgresql+nodriver://bot@db/k", "cannot open state store"),
        ("postgresql://bot:secret@db/k:::", "neither a path nor a database URL|cannot open state store"),
    ],
)
def test_a_bad_url_is_a_state_error_that_hides_the_password(url: str, match: str):
    with pytest.raises(StateError, match=match) as info:
        StateStore(url)
    assert "secret" not in str(info.value)


def test_a_folder_in_place_of_the_file_is_a_state_error(tmp_path: Path):
    with pytest.raises(StateError, match=f"cannot open state store {tmp_path}"):
        StateStore(str(tmp_path))


def test_the_schema_uses_double_precision_and_bigint_on_postgresql():
    ddl = {
        t.name: str(CreateTable(t).compile(dialect=postgresql.dialect()))
        for t in state_module._meta.sorted_tables
    }
    assert "qty DOUBLE PRECISION NOT NULL" in ddl["orders"]
    assert "bar_ts BIGINT NOT NULL" in ddl["orders"]
    assert "id BIGSERIAL" in ddl["commands"]
    assert "events TEXT NOT NULL" in ddl["decisions"]


# -- what is a store of ours --------------------------------------------------------------------


def _tables(url: str) -> set[str]:
    from sqlalchemy import create_engine, inspect

    engine = create_engine(store_url(url))
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def _foreign(url: str) -> None:
    """Another program's table in the database ``url`` names."""
    from sqlalchemy import create_engine

    engine = create_engine(store_url(url))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY, what TEXT)")
        conn.exec_driver_sql("INSERT INTO orders (id, what) VALUES (1, 'mine')")
    engine.dispose()


def test_a_database_with_tables_of_another_program_is_refused_and_left_as_it_was(url: str):
    if "://" not in url:
        Path(url).parent.mkdir(parents=True)
    _foreign(url)
    before = Path(url).read_bytes() if "://" not in url else None
    for create in (True, False):
        with pytest.raises(StateError, match=r"not a klinegym state store \(it holds tables orders\)"):
            StateStore(url, create=create)
    assert _tables(url) == {"orders"}
    if before is not None:
        assert Path(url).read_bytes() == before
        assert sorted(p.name for p in Path(url).parent.iterdir()) == ["state.db"]  # no -wal, no -shm


def test_a_new_store_records_its_schema_version_and_one_of_another_version_is_refused(url: str):
    with StateStore(url) as s:
        assert s.created
    with StateStore(url) as s:
        assert not s.created
        later = state_module.SCHEMA_VERSION + 1
        with s._engine.begin() as conn:  # as a later klinegym would have left it
            conn.execute(state_module.store_table.update().values(schema_version=later))
    with pytest.raises(StateError, match=f"has schema version {later}, written by a newer klinegym: upgrade"):
        StateStore(url)


def test_a_store_of_klinegym_0_1_is_refused_as_an_older_schema(tmp_path: Path):
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:
        for table in ("run", "kv", "decisions", "orders", "fills", "account", "equity", "risk_events"):
            conn.execute(f"CREATE TABLE {table} (x)")
        conn.execute("CREATE TABLE commands (x)")
    conn.close()
    with pytest.raises(StateError, match=r"written by an older klinegym \(schema version 1, before a store"):
        StateStore(str(old))


def test_without_create_an_empty_database_or_a_missing_file_is_refused_and_nothing_is_made(url: str):
    with pytest.raises(StateError, match="no state store at"):
        StateStore(url, create=False)
    if "://" in url:
        assert _tables(url) == set()
    else:
        assert not Path(url).parent.exists()


def test_discard_removes_a_store_this_start_made_with_the_folders_it_made_and_nothing_else(
    url: str, tmp_path: Path
):
    made = StateStore(url)
    made.open_run(META)
    made.discard()
    if "://" in url:
        assert _tables(url) == set()
    else:
        assert not (tmp_path / "serve").exists() and tmp_path.exists()
    with StateStore(url) as again:
        again.open_run(META)
    with StateStore(url) as kept, pytest.raises(StateError, match="not created by this start; it is kept"):
        kept.discard()
    assert StateStore(url).run() == META


def test_a_store_of_another_bundle_is_refused_naming_both_identities(store: StateStore):
    other = RunMeta(**{**META.__dict__, "bundle": "runs/other/policy", "bundle_id": "sha256:fedcba98"})
    with pytest.raises(StateError) as info:
        store.open_run(other)
    assert (
        f"state store {store.where} belongs to bundle runs/ppo_btc/policy (sha256:0123456789abcdef) of run "
        "ppo_btc_BTCUSDT_1m (BTC/USDT 1m on binance spot); this start serves runs/other/policy "
        "(sha256:fedcba98), another bundle: use a new state= for it" in str(info.value)
    )
    assert store.run() == META
    moved = RunMeta(**{**META.__dict__, "bundle": "elsewhere/policy"})  # the same bundle, moved
    store.open_run(moved)
    assert store.run() == moved


# -- the run ------------------------------------------------------------------------------------


def test_the_first_open_records_the_run_and_a_reopen_of_the_same_run_is_accepted(url: str):
    with StateStore(url) as s:
        s.open_run(META)
    with StateStore(url) as s:
        s.open_run(META)
        assert s.run() == META


def test_another_runs_store_is_refused_naming_both_runs(store: StateStore, url: str):
    other = RunMeta("sac_eth_ETHUSDT_5m", "b", "binance", "spot", "ETH/USDT", "5m", "paper", META.bundle_id)
    with pytest.raises(StateError) as info:
        store.open_run(other)
    message = str(info.value)
    assert f"state store {store.where} belongs to run ppo_btc_BTCUSDT_1m (BTC/USDT 1m" in message
    assert "use a new state= for run sac_eth_ETHUSDT_5m" in message
    assert store.run() == META


def test_the_same_run_on_a_different_symbol_is_refused_naming_the_field(store: StateStore):
    moved = RunMeta(META.run_id, META.bundle, "binance", "spot", "ETH/USDT", "1m", "paper", META.bundle_id)
    with pytest.raises(StateError, match=r"symbol=ETH/USDT \(recorded BTC/USDT\)") as info:
        store.open_run(moved)
    assert "ppo_btc_BTCUSDT_1m" in str(info.value) and "timeframe" not in str(info.value)
    moved = RunMeta(META.run_id, META.bundle, "okx", "futures", "BTC/USDT", "1m", "paper", META.bundle_id)
    with pytest.raises(
        StateError, match=r"exchange=okx \(recorded binance\), market=futures \(recorded spot\)"
    ):
        store.open_run(moved)


def test_a_paper_store_cannot_go_live_but_a_live_one_stays_live(store: StateStore, tmp_path: Path):
    live = RunMeta(**{**META.__dict__, "mode": "live"})
    with pytest.raises(StateError, match="paper account"):
        store.open_run(live)
    assert store.run().mode == "paper"
    with StateStore(str(tmp_path / "live.db")) as s:
        s.open_run(live)
        s.open_run(RunMeta(**{**live.__dict__, "bundle": "moved/policy"}))
        assert s.run() == RunMeta(**{**live.__dict__, "bundle": "moved/policy"})


# -- persistence --------------------------------------------------------------------------------


def test_an_order_written_before_sending_survives_a_reopen(store: StateStore, url: str):
    assert store.create_order("run-1", T0, "buy", 0.25, False, 42_000.5, T0 + 5)
    store.close()
    with StateStore(url) as again:
        order = again.order("run-1")
        assert order == {
            "client_id": "run-1", "bar_ts": T0, "side": "buy", "qty": 0.25, "reduce_only": False,
            "price_hint": 42_000.5, "status": "NEW", "exchange_id": None, "filled": 0.0, "error": None,
            "created_ms": T0 + 5, "updated_ms": T0 + 5,
        }  # fmt: skip
        assert [o["client_id"] for o in again.orders(("NEW", "SENT"))] == ["run-1"]
        assert again.orders(("FILLED",)) == []


def test_everything_survives_close_and_reopen(store: StateStore, url: str):
    store.set(trading_state="HALTED", halted_until_ms=T0 + 3_600_000, day=19754, peak_equity=10_250.0,
              pending={"client_id": "run-2", "exposure": -0.5}, flag=None)  # fmt: skip
    store.record_decision(T0, "ab12", 0.7, 0.3, 0.25, [{"kind": "clamp", "check": "max_position"}])
    store.create_order("run-2", T0, "sell", 0.1, True, None, T0)
    store.update_order("run-2", "SENT", T0 + 1, exchange_id="ex-9")
    store.record_fill("run-2", "t1", T0 + 60_000, -0.1, 41_990.0, 2.1)
    store.update_order("run-2", "FILLED", T0 + 60_001, filled=0.1)
    store.save_account(
        cash=10_100.5, position=-0.1, entry=41_990.0, last_trade_ts=T0 + 60_000, ts_ms=T0 + 60_000
    )
    store.record_equity(T0, 10_000.0, 0.0, 10_000.0, 42_000.0)
    store.record_equity(T0 + 60_000, 10_001.5, -0.1, 14_200.5, 41_990.0)
    store.record_risk_event(T0, "clamp", "max_position", "0.3 > 0.25")
    store.push_command("halt", T0)
    store.close()

    with StateStore(url) as s:
        assert s.run() == META
        assert s.get("trading_state") == "HALTED"
        assert s.get("halted_until_ms") == T0 + 3_600_000
        assert s.get("pending") == {"client_id": "run-2", "exposure": -0.5}
        assert s.get("flag", "absent") is None  # set to None is not unset
        events = [{"kind": "clamp", "check": "max_position"}]
        assert s.decisions() == [{"bar_ts": T0, "obs_hash": "ab12", "raw_action": 0.7, "target": 0.3,
                                  "clamped_target": 0.25, "events": events}]  # fmt: skip
        order = s.order("run-2")
        assert (order["status"], order["exchange_id"], order["filled"], order["updated_ms"]) == (
            "FILLED", "ex-9", 0.1, T0 + 60_001)  # fmt: skip
        assert s.fills() == [{"client_id": "run-2", "trade_id": "t1", "ts_ms": T0 + 60_000, "qty": -0.1,
                              "price": 41_990.0, "fee": 2.1}]  # fmt: skip
        assert s.account() == {"cash": 10_100.5, "position": -0.1, "entry": 41_990.0,
                               "last_trade_ts": T0 + 60_000, "ts_ms": T0 + 60_000}  # fmt: skip
        assert [p["equity"] for p in s.equity_curve()] == [10_000.0, 10_001.5]
        assert s.risk_events() == [
            {"ts_ms": T0, "kind": "clamp", "check": "max_position", "reason": "0.3 > 0.25"}
        ]
        assert s.take_commands(T0 + 1) == ["halt"]


def test_a_batch_commits_its_writes_together_or_not_at_all(store: StateStore, url: str):
    with store.batch():
        store.create_order("run-1", T0, "buy", 1.0, False, None, T0)
        store.update_order("run-1", "FILLED", T0 + 1, filled=1.0, via=("SENT",))
        store.record_fill("run-1", "t1", T0 + 1, 1.0, 100.0, 0.1)
        store.set(last_bar_ts=T0)
        assert store.order("run-1") is None  # reads see only what was committed
    with pytest.raises(RuntimeError, match="crash"), store.batch():
        store.create_order("run-2", T0 + 1, "sell", 1.0, True, None, T0 + 1)
        store.record_fill("run-2", "t1", T0 + 2, -1.0, 100.0, 0.1)
        store.set(last_bar_ts=T0 + 1)
        raise RuntimeError("crash")
    with store.batch():  # the kept connection is usable after a rollback
        store.record_equity(T0 + 2, 1.0, 0.0, 1.0, 100.0)
    with StateStore(url) as other:
        assert [o["client_id"] for o in other.orders()] == ["run-1"]
        assert [f["client_id"] for f in other.fills()] == ["run-1"]
        assert other.get("last_bar_ts") == T0
        assert [p["ts_ms"] for p in other.equity_curve()] == [T0 + 2]


def test_numpy_scalars_are_stored_as_plain_numbers(store: StateStore):
    np = pytest.importorskip("numpy")
    store.set(peak_equity=np.float64(1.5), day=np.int64(19754), weights=np.array([1.0, 2.0]))
    assert store.get("day") == 19754 and store.get("weights") == [1.0, 2.0]
    assert store.record_decision(np.int64(T0), "h", np.float32(0.5), np.float64(0.25), 0.25, [])
    assert store.decisions()[0]["bar_ts"] == T0


# -- idempotence --------------------------------------------------------------------------------


def test_a_duplicate_order_is_ignored_and_keeps_the_first(store: StateStore):
    assert store.create_order("run-1", T0, "buy", 1.0, False, 100.0, T0) is True
    assert store.create_order("run-1", T0, "sell", 9.0, True, None, T0 + 7) is False
    assert len(store.orders()) == 1
    assert (store.order("run-1")["side"], store.order("run-1")["qty"]) == ("buy", 1.0)


def test_a_duplicate_fill_is_ignored_but_another_trade_of_the_order_is_not(store: StateStore):
    assert store.record_fill("run-1", "t1", T0, 0.4, 100.0, 0.04) is True
    assert store.record_fill("run-1", "t1", T0, 0.4, 100.0, 0.04) is False
    assert store.record_fill("run-1", "t2", T0 + 1, 0.6, 101.0, 0.06) is True
    assert store.record_fill("run-1-liquidation-5", "t1", T0 + 2, -1.0, 90.0, 0.5) is True
    assert [f["qty"] for f in store.fills("run-1")] == [0.4, 0.6]
    assert len(store.fills()) == 3


def test_re_deciding_the_same_bar_is_ignored(store: StateStore):
    assert store.record_decision(T0, "aaaa", 0.5, 1.0, 1.0, []) is True
    assert store.record_decision(T0, "bbbb", -0.5, -1.0, -1.0, [{"kind": "deny"}]) is False
    assert store.record_decision(T0 + 60_000, "cccc", 0.1, 0.2, 0.2, []) is True
    assert [(d["bar_ts"], d["obs_hash"]) for d in store.decisions()] == [(T0, "aaaa"), (T0 + 60_000, "cccc")]


def test_an_equity_point_at_the_same_time_is_replaced(store: StateStore):
    store.record_equity(T0, 100.0, 1.0, 0.0, 100.0)
    store.record_equity(T0, 101.0, 1.0, 0.0, 101.0)
    assert store.equity_curve() == [
        {"ts_ms": T0, "equity": 101.0, "position": 1.0, "cash": 0.0, "price": 101.0}
    ]


def test_saving_the_account_replaces_it(store: StateStore):
    store.save_account(cash=100.0, position=0.0, entry=0.0, last_trade_ts=None, ts_ms=T0)
    store.save_account(cash=50.0, position=0.5, entry=100.0, last_trade_ts=T0 + 1, ts_ms=T0 + 1)
    assert store.account() == {
        "cash": 50.0,
        "position": 0.5,
        "entry": 100.0,
        "last_trade_ts": T0 + 1,
        "ts_ms": T0 + 1,
    }


# -- the order life cycle -----------------------------------------------------------------------


def test_order_transitions_follow_the_table_exactly(store: StateStore):
    n = 0
    for old in ORDER_STATES:
        for new in ORDER_STATES:
            n += 1
            cid = f"run-{n}"
            store.create_order(cid, T0 + n, "buy", 1.0, False, 100.0, T0)
            for step in REACH[old]:
                store.update_order(cid, step, T0 + 1)
            assert store.order(cid)["status"] == old
            # a new exchange id makes even a same-state update a real one
            if new in LEGAL[old]:
                store.update_order(cid, new, T0 + 2, exchange_id=f"ex-{n}")
                assert (store.order(cid)["status"], store.order(cid)["updated_ms"]) == (new, T0 + 2)
            else:
                with pytest.raises(
                    StateError, match=f"order {cid}: {old} -> {new} is not a legal transition"
                ):
                    store.update_order(cid, new, T0 + 2, exchange_id=f"ex-{n}")
                assert store.order(cid)["status"] == old
    assert n == 49


def test_an_update_via_a_state_checks_both_moves_and_skips_the_one_already_made(store: StateStore):
    store.create_order("run-1", T0, "buy", 1.0, False, None, T0)
    store.update_order("run-1", "FILLED", T0 + 1, filled=1.0, via=("SENT",))  # NEW -> SENT -> FILLED
    assert (store.order("run-1")["status"], store.order("run-1")["filled"]) == ("FILLED", 1.0)
    store.update_order("run-1", "FILLED", T0 + 2, filled=1.0, via=("SENT",))  # a replay: a no-op
    assert store.order("run-1")["updated_ms"] == T0 + 1
    store.create_order("run-2", T0, "buy", 1.0, False, None, T0)
    store.update_order("run-2", "SENT", T0 + 1)
    store.update_order("run-2", "CANCELED", T0 + 2, filled=0.0, via=("SENT",))  # already SENT
    assert store.order("run-2")["status"] == "CANCELED"
    store.create_order("run-3", T0, "buy", 1.0, False, None, T0)
    store.update_order("run-3", "REJECTED", T0 + 1)
    with pytest.raises(StateError, match="run-3: REJECTED -> SENT is not a legal transition"):
        store.update_order("run-3", "FILLED", T0 + 2, filled=1.0, via=("SENT",))
    assert store.order("run-3")["status"] == "REJECTED"


def test_a_final_order_names_itself_as_final(store: StateStore):
    store.create_order("run-1", T0, "buy", 1.0, False, None, T0)
    store.update_order("run-1", "REJECTED", T0 + 1, error="insufficient balance")
    with pytest.raises(StateError, match="run-1: REJECTED -> SENT .* REJECTED is final"):
        store.update_order("run-1", "SENT", T0 + 2)
    assert store.order("run-1")["error"] == "insufficient balance"


def test_updating_an_order_that_was_never_created_is_a_state_error(store: StateStore):
    with pytest.raises(StateError, match="order ghost is not in state store .*create_order first"):
        store.update_order("ghost", "SENT", T0)
    store.create_order("run-1", T0, "buy", 1.0, False, None, T0)
    with pytest.raises(StateError, match="'DONE' is not one of NEW, SENT"):
        store.update_order("run-1", "DONE", T0)


def test_repeating_an_orders_last_update_is_a_no_op(store: StateStore):
    """A restart that replays the update it made just before dying must not stop the bot."""
    store.create_order("run-1", T0, "buy", 1.0, False, None, T0)
    store.update_order("run-1", "SENT", T0 + 1, exchange_id="ex-1")
    store.update_order("run-1", "SENT", T0 + 5)
    store.update_order("run-1", "SENT", T0 + 5, exchange_id="ex-1")
    store.update_order("run-1", "FILLED", T0 + 6, filled=1.0)
    store.update_order("run-1", "FILLED", T0 + 9, filled=1.0)
    assert (store.order("run-1")["updated_ms"], store.order("run-1")["filled"]) == (T0 + 6, 1.0)
    with pytest.raises(StateError, match="FILLED -> FILLED"):
        store.update_order("run-1", "FILLED", T0 + 9, filled=0.5)


def test_a_partial_fill_can_grow_before_the_order_fills(store: StateStore):
    store.create_order("run-1", T0, "sell", 2.0, True, None, T0)
    for status, filled in [
        ("SENT", None),
        ("PARTIALLY_FILLED", 0.5),
        ("PARTIALLY_FILLED", 1.5),
        ("FILLED", 2.0),
    ]:
        store.update_order("run-1", status, T0 + 1, filled=filled)
    assert (store.order("run-1")["status"], store.order("run-1")["filled"]) == ("FILLED", 2.0)


def test_a_bad_side_is_refused(store: StateStore):
    with pytest.raises(ValueError, match="side='long'"):
        store.create_order("run-1", T0, "long", 1.0, False, None, T0)
    assert store.orders() == []


# -- operator commands ----------------------------------------------------------------------------


def test_an_unknown_command_is_a_state_error(store: StateStore):
    with pytest.raises(StateError, match="'stop' is not one of halt, resume, flatten"):
        store.push_command("stop", T0)


def test_commands_pushed_by_another_store_are_taken_once_in_order(store: StateStore, url: str):
    with StateStore(url) as operator:
        ids = [operator.push_command(c, T0 + i) for i, c in enumerate(["flatten", "halt", "resume"])]
    assert ids == sorted(ids)
    assert store.status()["counts"]["pending_commands"] == 3
    assert store.take_commands(T0 + 10) == ["flatten", "halt", "resume"]
    assert store.take_commands(T0 + 11) == []
    assert store.status()["counts"]["pending_commands"] == 0


def test_commands_pushed_by_another_process_are_taken_once_in_order(store: StateStore, url: str):
    pushed = ["halt", "resume", "flatten"] * 10
    proc = child(
        """
        import sys, time
        from serving.state import StateStore
        s = StateStore(sys.argv[1])
        for i, c in enumerate(sys.argv[2].split(",")):
            s.push_command(c, i)
            time.sleep(0.003)
        """,
        url, ",".join(pushed),
    )  # fmt: skip
    taken: list[str] = []
    deadline = time.monotonic() + 20
    while len(taken) < len(pushed) and time.monotonic() < deadline:
        taken += store.take_commands(T0)
        time.sleep(0.002)
    assert proc.wait(timeout=10) == 0
    assert taken == pushed
    assert store.take_commands(T0) == []


def test_two_processes_taking_commands_never_both_get_one(url: str, tmp_path: Path):
    """The operator pushes while two takers race; each command is taken exactly once."""
    taker = """
        import json, sys, time
        from pathlib import Path
        from serving.state import StateStore
        s, go = StateStore(sys.argv[1]), Path(sys.argv[2])
        while not go.exists():
            time.sleep(0.001)
        taken, deadline = [], time.monotonic() + 20
        while time.monotonic() < deadline:
            done = s.get("pushed_all", False)
            got = s.take_commands(0)
            taken += got
            if done and not got:
                break
        print(json.dumps(taken))
        """
    go = tmp_path / "go"
    with StateStore(url) as s:
        procs = [child(taker, url, str(go), stdout=subprocess.PIPE) for _ in range(2)]
        go.touch()
        pushed = [("halt", "resume", "flatten")[i % 3] for i in range(150)]
        for i, c in enumerate(pushed):
            s.push_command(c, i)
        s.set(pushed_all=True)
        outs = [p.communicate(timeout=30)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0]
        lists = [json.loads(o) for o in outs]
        assert sum(len(x) for x in lists) == len(pushed)
        assert Counter(lists[0]) + Counter(lists[1]) == Counter(pushed)
        assert s.status()["counts"]["pending_commands"] == 0


# -- status -------------------------------------------------------------------------------------


def test_status_shows_run_state_account_open_orders_last_decision_and_counts(store: StateStore, url: str):
    store.set(trading_state="REDUCING", last_bar_ts=T0 + 60_000)
    store.record_decision(T0, "h0", 0.1, 0.1, 0.1, [])
    store.record_decision(T0 + 60_000, "h1", -0.2, -0.2, 0.0, [{"kind": "deny"}])
    for i, status in enumerate(["FILLED", "SENT", "UNKNOWN", "CANCELED", "NEW"]):
        store.create_order(f"run-{i}", T0, "buy", 1.0, False, None, T0 + i)
        for step in {"FILLED": ["SENT", "FILLED"], "SENT": ["SENT"], "UNKNOWN": ["UNKNOWN"],
                     "CANCELED": ["CANCELED"], "NEW": []}[status]:  # fmt: skip
            store.update_order(f"run-{i}", step, T0 + 10)
    store.record_fill("run-0", "t", T0, 1.0, 100.0, 0.1)
    store.save_account(cash=1.0, position=2.0, entry=3.0, last_trade_ts=None, ts_ms=T0)
    store.record_equity(T0, 7.0, 2.0, 1.0, 3.0)
    store.record_equity(T0 + 60_000, 8.0, 2.0, 1.0, 3.5)
    store.push_command("halt", T0)

    with StateStore(url) as reader:
        status = reader.status()
    json.dumps(status)  # what `serve.py command=status` prints
    assert status["store"] == store.where  # the path, or the URL with its password hidden
    assert status["run"] == META.__dict__
    assert status["state"] == {"last_bar_ts": T0 + 60_000, "trading_state": "REDUCING"}
    assert status["account"]["position"] == 2.0
    assert [o["client_id"] for o in status["open_orders"]] == ["run-1", "run-2", "run-4"]
    assert status["last_decision"]["obs_hash"] == "h1"
    assert status["last_equity"]["equity"] == 8.0
    assert status["counts"] == {"decisions": 2, "orders": 5, "fills": 1, "equity": 2, "risk_events": 0,
                                "pending_commands": 1}  # fmt: skip


# -- crashes --------------------------------------------------------------------------------------

WRITER = """
    import sys, time
    from serving.state import RunMeta, StateStore

    T0, LIMIT = 1706745600000, int(sys.argv[2])
    s = StateStore(sys.argv[1])
    s.open_run(RunMeta("kill", "b", "binance", "spot", "BTC/USDT", "1m", "paper", "sha256:kill"))

    def complete(o):
        # each step is its own transaction, as in the serving loop; replaying them is harmless
        cid, signed = o["client_id"], o["qty"] if o["side"] == "buy" else -o["qty"]
        if o["status"] == "FILLED":
            return
        if o["status"] == "NEW":
            s.update_order(cid, "SENT", o["bar_ts"], exchange_id="x" + cid)
        s.record_fill(cid, "a", o["bar_ts"] + 1, 0.25 * signed, 100.0, 0.01)
        s.update_order(cid, "PARTIALLY_FILLED", o["bar_ts"] + 1, filled=0.25 * o["qty"])
        s.record_fill(cid, "b", o["bar_ts"] + 2, signed - 0.25 * signed, 101.0, 0.03)
        s.update_order(cid, "FILLED", o["bar_ts"] + 2, filled=o["qty"])

    # as the serving loop: resume at the first bar whose step was not saved, and replay it whole
    i = s.get("n", 0)
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (LIMIT == 0 or i < LIMIT):
        bar, cid = T0 + 60_000 * i, f"kill-{i}"
        s.create_order(cid, bar, "buy" if i % 2 == 0 else "sell", 1.0 + 0.125 * (i % 4), False, 100.0, bar)
        complete(s.order(cid))
        s.record_equity(bar, 1000.0 + i, 0.0, 1000.0, 100.0)
        s.set(n=i + 1, last_bar_ts=bar)
        i += 1
    """


def check_integrity(path: str) -> dict[str, int]:
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        raw.close()
    with StateStore(path) as s:
        orders, fills = s.orders(), s.fills()
        # orders are made one at a time: none is missing, and only the newest may be unfinished
        assert [o["client_id"] for o in orders] == [f"kill-{i}" for i in range(len(orders))]
        assert all(o["status"] == "FILLED" for o in orders[:-1])
        assert {f["client_id"] for f in fills} <= {o["client_id"] for o in orders}
        for o in orders:
            own = [f["qty"] for f in fills if f["client_id"] == o["client_id"]]
            signed = o["qty"] if o["side"] == "buy" else -o["qty"]
            if o["status"] == "FILLED":
                assert sum(own) == pytest.approx(signed)
                assert o["filled"] == o["qty"]
            assert len(own) <= 2
        n = s.get("n", 0)
        assert n in (len(orders), len(orders) - 1)
        assert len(s.equity_curve()) in (n, n + 1)
        return {"orders": len(orders), "fills": len(fills), "n": n}


def test_sigkill_mid_write_never_leaves_half_a_record_and_the_next_start_completes_it(path: str):
    rng = random.Random(20240201)
    before = {"orders": 0, "fills": 0, "n": 0}
    for _ in range(5):
        proc = child(WRITER, path, "0", stdout=subprocess.PIPE)
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 20)
            assert ready and proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.02, 0.25))
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=10) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            proc.stdout.close()
        after = check_integrity(path)
        assert all(after[k] >= before[k] for k in before)
        before = after
    assert before["n"] > 0, "the writer never finished an order before being killed"
    # a clean start completes what the last kill interrupted and goes on
    proc = child(WRITER, path, str(before["orders"] + 2), stdout=subprocess.DEVNULL)
    assert proc.wait(timeout=30) == 0
    final = check_integrity(path)
    with StateStore(path) as s:
        assert final["orders"] == final["n"] == before["orders"] + 2
        assert {o["status"] for o in s.orders()} == {"FILLED"}


def test_idle_checkpoints_leave_the_wal_alone_until_checkpoint_empties_it_into_the_file(tmp_path: Path):
    path = tmp_path / "state.db"
    store = StateStore(str(path), idle_checkpoints=True)
    for k in range(600):  # about 1,200 WAL frames: SQLite's automatic checkpoint would run at 1,000
        store.record_equity(T0 + k, 100.0 + k, 0.0, 100.0, 1.0)
    frames = (os.path.getsize(f"{path}-wal") - 32) // (4096 + 24)
    assert frames > 1_000
    before = os.path.getsize(path)
    store.checkpoint(if_over=64 << 20)  # the WAL is smaller: nothing happens
    assert os.path.getsize(path) == before
    store.checkpoint()
    assert os.path.getsize(path) > before  # the rows are in the database file now
    assert os.path.getsize(f"{path}-wal") == 0
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT count(*) FROM equity").fetchone() == (600,)
    store.close()
