"""serve.py refuses bad input the same way every time: exit status 2, one line on stderr naming what
was wrong and how to fix it, no traceback, and nothing written or changed (the run folder, the state
store, a foreign file's bytes). Keys and secrets appear in no output, log line or state store.

Each case runs the real ``serve.py`` in a folder of its own (``tests/refusals.py``); the cases that
get as far as the exchange run against the loopback stand-in (real Binance perp bars)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from agents.bundle import bundle_identity
from data.loopback import LoopbackExchange
from serving.replay_exchange import ReplayExchange
from serving.state import StateStore
from tests.refusals import ROOT, assert_refused, refuses, run

NO_KEYS = {"BINANCE_API_KEY": "", "BINANCE_API_SECRET": "", "TELEGRAM_BOT_TOKEN": "", "TELEGRAM_CHAT_ID": ""}
EXCHANGE = ["exchange=binance", "market=futures", "symbol=BTC/USDT"]
# the tables of a klinegym 0.1 state store (schema version 1), before a store was tied to its bundle
OLD_TABLES = ("run", "kv", "decisions", "orders", "fills", "account", "equity", "risk_events", "commands")


@pytest.fixture()
def run_dir(bundle, tmp_path) -> Path:
    """A copy of the session's small perp bundle's run, inside the test's own folder."""
    path = tmp_path / "runs" / "exp" / "2024-01-01_00-00-00"
    shutil.copytree(bundle, path, ignore=shutil.ignore_patterns("tb", "checkpoints"))
    return path


@pytest.fixture(scope="module")
def loopback(market):
    bars, funding = market
    with LoopbackExchange(futures={"BTCUSDT": {"5m": bars}}, funding={"BTCUSDT": funding}) as ex:
        yield ex


def serve(run_dir: Path, *args: str) -> list[str]:
    return ["serve.py", f"run={run_dir}", *args]


# -- keys and values that never reach the exchange ------------------------------------------------

SERVE_KEYS = "did you mean serve.kill_file?"
CONFIG = {
    # keys that are not serve.py's, with + or without
    "mistyped-serve-key-with-plus": (["+serve.kill_fle=KILL"], f"unknown key serve.kill_fle; {SERVE_KEYS}"),
    "mistyped-serve-key": (["serve.kill_fle=KILL"], f"unknown key serve.kill_fle; {SERVE_KEYS}"),
    "mistyped-flatten-on-exit": (["+serve.flatten_on_exti=true"],
                                 "unknown key serve.flatten_on_exti; did you mean serve.flatten_on_exit?"),
    "serve-key-at-the-top": (["+kill_file=KILL"], f"unknown key kill_file; {SERVE_KEYS}"),
    "mistyped-risk-key": (["+risk.max_lev=2"], "unknown key risk.max_lev; did you mean risk.max_leverage?"),
    "mistyped-risk-key-without-plus": (["risk.max_drawdwn=0.1"],
                                       "unknown key risk.max_drawdwn; did you mean risk.max_drawdown?"),
    "a-training-key": (["+data.start=2024-01-01"], "unknown key data.start;"),
    "a-value-as-a-section": (["+serve.poll_seconds.x=1"], "serve.poll_seconds is a value, not a section"),
    "an-env-group": (["env=perp"], "unknown key env;"),
    "a-group-that-is-not": (["agent=ppo"], "unknown key agent;"),
    # intervals and counts
    "poll-zero": (["serve.poll_seconds=0"],
                  "serve.poll_seconds=0.0 is invalid; against a real exchange poll at least every 1 s"),
    "poll-negative": (["serve.poll_seconds=-5"], "serve.poll_seconds=-5.0 is invalid"),
    "poll-not-a-number": (["serve.poll_seconds=abc"], "serve.poll_seconds='abc' must be a number"),
    "poll-zero-on-loopback": (["serve.poll_seconds=0", "api_url=http://127.0.0.1:9"],
                              "against a loopback stand-in poll at least every 0.01 s"),
    "poll-above-an-hour": (["serve.poll_seconds=7200"],
                           "serve.poll_seconds=7200.0 is invalid; give seconds between polls, 0 to 3600"),
    "max-bars-zero": (["serve.max_bars=0"], "serve.max_bars=0 is invalid; give a whole number >= 1"),
    "max-polls-negative": (["serve.max_polls=-1"], "serve.max_polls=-1 is invalid"),
    "max-bars-fraction": (["serve.max_bars=1.5"], "serve.max_bars=1.5 must be a whole number"),
    "request-timeout-zero": (["serve.request_timeout_ms=0"],
                             "serve.request_timeout_ms=0 is invalid; give 100 to 120000 ms"),
    "recv-window-above-binance": (["serve.recv_window_ms=120000"], "give 1 to 60000 ms (Binance's limit)"),
    "metrics-port": (["serve.metrics_port=70000"], "serve.metrics_port=70000 is invalid; give a port"),
    "max-rejections-zero": (["serve.max_rejections=0"], "serve.max_rejections=0 is invalid"),
    # choices, and keys that mean something to a live bot only
    "notify-slack": (["serve.notify=slack"], "serve.notify='slack' is invalid; choose telegram, or null"),
    "limit-band-too-wide": (["serve.limit_band=0.7"], "serve.limit_band=0.7 is invalid"),
    "limit-band-on-paper": (["serve.limit_band=0.002"], "serve.limit_band needs mode=live"),
    "flatten-on-exit-on-paper": (["serve.flatten_on_exit=true"], "serve.flatten_on_exit needs mode=live"),
    "adopt-exchange-on-paper": (["serve.adopt_exchange=true"], "serve.adopt_exchange needs mode=live"),
    "kill-file-folder-missing": (["serve.kill_file=/no/such/folder/KILL"],
                                 "serve.kill_file=/no/such/folder/KILL: its folder does not exist"),
    "empty-kill-file": (["serve.kill_file=''"], "serve.kill_file='' is invalid; give a path"),
    "mode": (["mode=demo"], "mode='demo' is invalid; choose mode=paper or mode=live"),
    "live-unconfirmed": (["mode=live"], "add confirm_live=true to the command to mean it"),
    "confirm-not-a-boolean": (["mode=live", "confirm_live=yes"], "confirm_live='yes' must be a boolean"),
    "live-without-keys": (["mode=live", "confirm_live=true"],
                          "mode=live needs API keys: set BINANCE_API_KEY and BINANCE_API_SECRET"),
    "market-perp": (["market=perp"], "market='perp' is invalid; choose spot or futures"),
    "command": (["command=stop"], "command='stop' is invalid; choose one of status, halt, resume, flatten"),
    "api-url-without-scheme": (["api_url=localhost:8080"],
                               "api_url='localhost:8080' is invalid; give the exchange's base URL"),
    # risk limits
    "negative-leverage": (["risk.max_leverage=-1"],
                          "risk.max_leverage=-1.0 is invalid; it must be a positive number"),
    "daily-loss-as-percent": (["risk.max_daily_loss=5"],
                              "risk.max_daily_loss=5.0 is invalid; it must be a fraction in (0, 1)"),
    "orders-per-minute-fraction": (["risk.max_orders_per_minute=0.5"],
                                   "risk.max_orders_per_minute=0.5 must be a whole number"),
    # the bundle against the market asked
    "synthetic-bundle-without-exchange": ([], "the bundle was trained on the synthetic market"),
    "spot-for-a-perp-bundle": (["exchange=binance", "market=spot", "symbol=BTC/USDT"],
                               "the bundle trades a perpetual account; market=spot has none"),
    "another-timeframe": ([*EXCHANGE, "timeframe=1h"], "timeframe=1h: the policy decides on 5m bars"),
    "mistyped-baseline": (["policy=sma_crosover"],
                          "policy=sma_crosover is neither a bundle folder nor a baseline; did you mean "
                          "sma_crossover?"),
}  # fmt: skip


@pytest.mark.parametrize(("args", "message"), CONFIG.values(), ids=CONFIG.keys())
def test_a_bad_key_or_value_is_refused_in_one_line_before_anything_runs(run_dir, tmp_path, args, message):
    refuses(serve(run_dir, *args), tmp_path, [], message, env=NO_KEYS)


def test_a_run_folder_that_does_not_exist_is_named(tmp_path):
    refuses(["serve.py", "run=runs/exp/nope"], tmp_path, [], "run=runs/exp/nope: no such folder", env=NO_KEYS)


def test_a_baseline_without_a_run_needs_the_series(tmp_path):
    refuses(["serve.py", "policy=sma_crossover", "exchange=binance"], tmp_path, [],
            "policy=sma_crossover without run= needs market=, symbol=, timeframe=", env=NO_KEYS)  # fmt: skip


@pytest.mark.parametrize(
    ("where", "content", "message"),
    [
        ("inside", "KEY=k\nSECRET=s\n", "is inside the project: keep keys outside it"),
        ("outside", None, "cannot be read (FileNotFoundError)"),
        ("outside", "KEY=only-the-key\n", "needs two lines, KEY=... and SECRET=... (its content is not"),
    ],
    ids=["in-the-project", "missing", "no-secret-line"],
)
def test_a_key_file_that_cannot_serve_is_refused_without_showing_its_content(
    run_dir, tmp_path, tmp_path_factory, where, content, message
):
    folder = ROOT / "tests" / "artifacts" if where == "inside" else tmp_path_factory.mktemp("keys")
    folder.mkdir(parents=True, exist_ok=True)
    keys = folder / "binance.keys"
    if content is not None:
        keys.write_text(content)
    try:
        line = refuses(serve(run_dir, "mode=live", "confirm_live=true", f"key_file={keys}"), tmp_path, [],
                       message, env=NO_KEYS)  # fmt: skip
    finally:
        keys.unlink(missing_ok=True)
    assert "only-the-key" not in line


# -- bundles that cannot be read ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "spec.json").write_text((p / "spec.json").read_text()[:200]), "spec.json"),
        (lambda p: (p / "spec.json").write_text(""), "spec.json"),
        (lambda p: (p / "model.zip").write_bytes(b"PK\x03\x04 not a zip"), "model.zip"),
        (lambda p: (p / "spec.json").unlink(), "is not a policy bundle (no spec.json)"),
    ],
    ids=["truncated-spec", "empty-spec", "corrupt-weights", "no-spec"],
)
def test_a_damaged_bundle_is_refused_naming_the_file(run_dir, tmp_path, damage, message):
    damage(run_dir / "policy")
    refuses(serve(run_dir, *EXCHANGE), tmp_path, [], message, env=NO_KEYS)


# -- state stores that are not this bot's --------------------------------------------------------


def started(run_dir: Path, ex, state: Path, *args: str) -> None:
    """One paper decision of the bundle into ``state``: a real store of this run."""
    done = run(serve(run_dir, *EXCHANGE, f"api_url={ex.url}", f"state={state}", "serve.poll_seconds=0.05",
                     "serve.max_bars=1", "serve.max_polls=50", *args), state.parent, env=NO_KEYS)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_foreign_sqlite_file_is_refused_and_left_byte_for_byte(run_dir, loopback, tmp_path):
    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, what TEXT)")
        conn.execute("INSERT INTO orders (what) VALUES ('mine')")
    conn.close()
    args = serve(run_dir, *EXCHANGE, f"api_url={loopback.url}", f"state={foreign}")
    refuses(args, tmp_path, [foreign], f"{foreign} is not a klinegym state store (it holds tables orders)",
            env=NO_KEYS)  # fmt: skip
    refuses(["serve.py", f"state={foreign}", "command=status"], tmp_path, [foreign],
            "is not a klinegym state store", env=NO_KEYS)  # fmt: skip


def test_a_file_that_is_not_sqlite_is_refused_and_left_as_it_was(run_dir, loopback, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database, " * 200)
    refuses(serve(run_dir, *EXCHANGE, f"api_url={loopback.url}", f"state={notes}"), tmp_path, [notes],
            f"{notes} is not a SQLite database", env=NO_KEYS)  # fmt: skip


def test_a_folder_given_as_the_state_store_is_refused(run_dir, loopback, tmp_path):
    refuses(serve(run_dir, *EXCHANGE, f"api_url={loopback.url}", f"state={tmp_path}"), tmp_path, [],
            "it is a folder; give a file path", env=NO_KEYS)  # fmt: skip


def test_a_store_of_an_older_schema_is_refused_untouched(run_dir, loopback, tmp_path):
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:
        for table in OLD_TABLES:
            conn.execute(f"CREATE TABLE {table} (x)")
    conn.close()
    refuses(serve(run_dir, *EXCHANGE, f"api_url={loopback.url}", f"state={old}"), tmp_path, [old],
            "was written by an older klinegym (schema version 1", env=NO_KEYS)  # fmt: skip


def test_a_command_for_a_bot_that_never_ran_creates_nothing(tmp_path):
    refuses(["serve.py", f"state={tmp_path / 'serve' / 'state.db'}", "command=halt"], tmp_path, [],
            "no state store at", env=NO_KEYS)  # fmt: skip


def test_the_store_of_another_run_whose_folder_has_the_same_name_is_refused_naming_both_bundles(
    run_dir, loopback, tmp_path
):
    """The issue's case: runs/otherexp/<same time> is another bundle under the same folder name; its
    start must not continue the first run's paper account."""
    state = tmp_path / "state.db"
    started(run_dir, loopback, state)
    other = tmp_path / "runs" / "otherexp" / run_dir.name
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("serve"))
    spec = other / "policy" / "spec.json"
    spec.write_text(spec.read_text().replace('"seed": 2', '"seed": 3'))  # another training run's spec
    mine, theirs = bundle_identity(run_dir), bundle_identity(other)
    assert mine != theirs
    line = refuses(serve(other, *EXCHANGE, f"api_url={loopback.url}", f"state={state}"), tmp_path, [],
                   f"belongs to bundle {run_dir.resolve() / 'policy'} ({mine})",
                   f"this start serves {other.resolve() / 'policy'} ({theirs}), another bundle",
                   env=NO_KEYS)  # fmt: skip
    assert "use a new state= for it" in line
    assert StateStore(str(state), create=False).run().bundle_id == mine


def test_a_live_start_the_exchange_refuses_leaves_no_state_store_and_no_key_in_any_output(
    run_dir, market, tmp_path
):
    bars, funding = market
    key, secret = "kgtestKEY4f1c9e", "kgtestSECRETd27b80"
    with ReplayExchange(futures={"BTCUSDT": {"5m": bars}}, funding={"BTCUSDT": funding},
                        start_ms=int(bars.ts[1_000]), api_key=key, api_secret=secret) as ex:  # fmt: skip
        wrong = {**NO_KEYS, "BINANCE_API_KEY": key, "BINANCE_API_SECRET": secret[::-1]}
        args = serve(run_dir, "mode=live", "confirm_live=true", *EXCHANGE, f"api_url={ex.url}")
        line = refuses(args, tmp_path, [], "the exchange refuses", env=wrong)
    assert key not in line and secret not in line and secret[::-1] not in line
    assert not (run_dir / "serve").exists()


def test_keys_never_reach_the_log_the_output_or_the_state_store_of_a_live_bot(run_dir, market, tmp_path):
    bars, funding = market
    key, secret = "kgtestKEY0a8d2f", "kgtestSECRET63c1e7"
    env = {**NO_KEYS, "BINANCE_API_KEY": key, "BINANCE_API_SECRET": secret}
    state = tmp_path / "live.db"
    with ReplayExchange(futures={"BTCUSDT": {"5m": bars}}, funding={"BTCUSDT": funding},
                        start_ms=int(bars.ts[1_000]) + 300_001, speed=60.0, api_key=key, api_secret=secret,
                        balances={"USDT": 10_000.0}) as ex:  # fmt: skip
        args = serve(run_dir, "mode=live", "confirm_live=true", *EXCHANGE, f"api_url={ex.url}",
                     f"state={state}", "serve.poll_seconds=0.05", "serve.max_bars=3", "serve.max_polls=400",
                     "hydra/job_logging=json")  # fmt: skip
        done = run(args, tmp_path, env=env)
        status = run(["serve.py", f"state={state}", "command=status"], tmp_path, env=env)
        bad_key = run(args, tmp_path, env={**env, "BINANCE_API_SECRET": "kgtestWRONGSECRET"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert status.returncode == 0, status.stderr[-3000:]
    assert_refused(bad_key, "the exchange refuses")
    text = "".join(p.stdout + p.stderr for p in (done, status, bad_key))
    assert '"event": "decision"' in text
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("live.db*"))
    for secretish in (key, secret, "kgtestWRONGSECRET"):
        assert secretish not in text and secretish.encode() not in stored
