"""`python -m serving.replay_exchange ...` refuses bad input: exit 2, one line on stderr naming what
was wrong and how to put it right, no traceback, nothing written or changed, and never the value of
``api_key`` or ``api_secret``.

The replayed bars are a small synthetic market in a store under the test's folder; no server is
left running (a refused command never binds its port, and the one that runs stops after 1 s).
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pandas as pd
import pytest

from data.store import SeriesKey, Store
from data.synthetic import SyntheticConfig, generate
from tests.refusals import refuses, run

pytestmark = pytest.mark.timeout(120)

SECRET = "s3cr3t-Hunter2"
SPOT = ("exchange=synthetic", "market=spot", "symbol=SYN/USDT", "timeframe=1m")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """600 one-minute bars from 2024-01-01T00:00Z to 2024-01-01T09:59Z."""
    return generate(SyntheticConfig(seed=2, bars=600))[0]


@pytest.fixture(scope="module")
def template(frame, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("template") / "store"
    Store(root).write(SeriesKey.of("synthetic", "spot", "SYN/USDT", "1m"), frame)
    return root


@pytest.fixture()
def store(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "store"))


def replay(*words: str) -> list[str]:
    return ["-m", "serving.replay_exchange", *words, "max_seconds=1"]


def test_a_good_command_line_serves_and_stops_by_itself(store, tmp_path):
    # the control: the same store and keys as the refusals below, accepted
    out = run(replay(*SPOT, f"store={store}", "speed=100"), tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("http://127.0.0.1:")


# -- keys ----------------------------------------------------------------------------------


def test_unknown_key_when_misspelt_then_names_it_and_never_echoes_the_secret(store, tmp_path):
    line = refuses(
        replay(*SPOT, f"store={store}", f"api_secrt={SECRET}"),
        tmp_path,
        [],
        "unknown key api_secrt; did you mean api_secret? python -m serving.replay_exchange accepts:",
    )
    assert SECRET not in line


def test_unknown_key_when_added_with_plus_then_refused_the_same_way(store, tmp_path):
    line = refuses(
        replay(*SPOT, f"store={store}", f"+api_kye={SECRET}"),
        tmp_path,
        [],
        "unknown key api_kye; did you mean api_key?",
    )
    assert SECRET not in line


def test_a_secret_given_without_its_key_then_the_word_is_not_echoed(store, tmp_path):
    line = refuses(
        replay(*SPOT, f"store={store}", SECRET), tmp_path, [], "expected key=value, got argument 6"
    )
    assert SECRET not in line


def test_an_empty_api_secret_then_refused_without_showing_anything(store, tmp_path):
    refuses(
        replay(*SPOT, f"store={store}", "api_secret="),
        tmp_path,
        [],
        "api_secret= is empty; give the secret the bot will sign with",
    )


def test_a_key_given_twice_then_refused(store, tmp_path):
    refuses(replay(*SPOT, f"store={store}", "speed=10", "speed=100"), tmp_path, [], "speed= is given twice")


# -- numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_a_port_outside_0_to_65535_then_refused(store, tmp_path, port):
    refuses(
        replay(*SPOT, f"store={store}", f"port={port}"),
        tmp_path,
        [],
        f"port={port} must be in 0..65535 (0: any free port)",
    )


def test_a_port_in_use_then_names_it(store, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refuses(
            replay(*SPOT, f"store={store}", f"port={port}"),
            tmp_path,
            [],
            f"port {port} on 127.0.0.1 is in use; choose another or port=0",
        )


@pytest.mark.parametrize("speed", ["0", "-1"])
def test_a_speed_that_does_not_move_forward_then_refused(store, tmp_path, speed):
    refuses(
        replay(*SPOT, f"store={store}", f"speed={speed}"),
        tmp_path,
        [],
        f"speed={float(speed)} must be > 0 (virtual ms per wall ms; 1 = real time)",
    )


def test_a_balance_that_is_not_a_number_then_says_so(store, tmp_path):
    refuses(replay(*SPOT, f"store={store}", "balance=lots"), tmp_path, [], "balance='lots' is not a number")


def test_a_zero_balance_then_refused(store, tmp_path):
    refuses(replay(*SPOT, f"store={store}", "balance=0"), tmp_path, [], "balance=0.0 must be > 0")


def test_a_zero_lifetime_then_refused(store, tmp_path):
    words = [w for w in replay(*SPOT, f"store={store}") if w != "max_seconds=1"]
    refuses([*words, "max_seconds=0"], tmp_path, [], "max_seconds=0.0 must be > 0")


# -- the series ----------------------------------------------------------------------------


def test_market_perp_then_lists_the_markets(store, tmp_path):
    refuses(
        replay("market=perp", f"store={store}"),
        tmp_path,
        [],
        "market 'perp' is not supported; choose one of spot, futures",
    )


def test_timeframe_7m_then_lists_the_timeframes(store, tmp_path):
    refuses(
        replay(*SPOT[:3], "timeframe=7m", f"store={store}"),
        tmp_path,
        [],
        "timeframe '7m' is not supported; choose one of 1s, 1m",
    )


def test_a_store_that_does_not_exist_then_refused_and_not_created(tmp_path):
    missing = tmp_path / "no-store"
    refuses(replay(*SPOT, f"store={missing}"), tmp_path, [], f"store={missing} does not exist")
    assert not missing.exists()


def test_a_series_that_is_not_stored_then_says_how_to_fill_it(store, tmp_path):
    refuses(
        replay(*SPOT[:3], "timeframe=5m", f"store={store}"),
        tmp_path,
        [],
        "no bars for synthetic/spot/SYNUSDT/5m",
        "python -m data download",
    )


def test_an_impossible_start_date_then_says_why(store, tmp_path):
    refuses(
        replay(*SPOT, f"store={store}", "start=2024-04-31"),
        tmp_path,
        [],
        "start='2024-04-31' is not a valid date (day is out of range for month)",
    )


def test_a_start_after_the_last_bar_then_names_the_bars_there_are(store, tmp_path):
    refuses(
        replay(*SPOT, f"store={store}", "start=2030-01-01"),
        tmp_path,
        [],
        "start 2030-01-01T00:00:00Z is after the last bar (2024-01-01T09:59:00Z); choose a start "
        "from 2024-01-01T00:00:00Z to 2024-01-01T09:59:00Z",
    )


def test_an_end_before_the_start_then_names_both(store, tmp_path):
    refuses(
        replay(*SPOT, f"store={store}", "start=2024-01-01T05:00", "end=2024-01-01T04:00"),
        tmp_path,
        [],
        "start 2024-01-01T05:00:00Z must be before end 2024-01-01T04:00:00Z",
    )


def test_a_symbol_without_a_known_quote_then_refused(store, tmp_path):
    refuses(
        replay(*SPOT[:2], "symbol=FOO/BAR", "timeframe=1m", f"store={store}"),
        tmp_path,
        [],
        "cannot tell base from quote in 'FOOBAR'",
    )


# -- files ---------------------------------------------------------------------------------


def test_a_bars_file_that_does_not_exist_then_names_it(tmp_path):
    missing = tmp_path / "bars.parquet"
    refuses(replay(*SPOT, f"path={missing}"), tmp_path, [], f"path={missing} does not exist")


def test_a_bars_file_that_is_not_parquet_then_says_so(tmp_path):
    notes = tmp_path / "bars.csv"
    notes.write_text("ts,open\n1,2\n")
    refuses(replay(*SPOT, f"path={notes}"), tmp_path, [notes], f"path={notes} is not a Parquet file")


def test_a_parquet_file_without_bar_columns_then_names_the_missing_ones(tmp_path):
    path = tmp_path / "prices.parquet"
    pd.DataFrame({"ts": [1_704_067_200_000], "price": [1.0]}).to_parquet(path)
    refuses(
        replay(*SPOT, f"path={path}"),
        tmp_path,
        [path],
        f"path={path} lacks the bar column(s) open, high, low, close, volume",
    )


def test_a_parquet_file_with_bad_rows_then_names_the_first(frame, tmp_path):
    bad = frame.iloc[:100].copy()
    bad.loc[10, "high"] = bad.loc[10, "low"] - 1.0
    path = tmp_path / "bars.parquet"
    bad.to_parquet(path)
    refuses(
        replay(*SPOT, f"path={path}"),
        tmp_path,
        [path],
        f"path={path}: 1 bad row(s), first 2024-01-01T00:10:00Z",
        "high_below_open_close",
    )


def test_store_and_path_together_then_refused_as_conflicting(store, frame, tmp_path):
    path = tmp_path / "bars.parquet"
    frame.to_parquet(path)
    refuses(
        replay(*SPOT, f"store={store}", f"path={path}"), tmp_path, [path], "give store= or path=, not both"
    )


def test_funding_without_path_then_says_where_funding_comes_from(store, tmp_path):
    refuses(
        replay(*SPOT[:1], "market=futures", "symbol=SYN/USDT", f"store={store}", "funding=f.parquet"),
        tmp_path,
        [],
        "funding= goes with path=",
    )


def test_an_env_that_does_not_exist_then_names_the_groups(store, tmp_path):
    refuses(
        replay(*SPOT, f"store={store}", "env=perpetual"),
        tmp_path,
        [],
        "env='perpetual': no file",
        "use a conf/env group name (perp, spot) or a YAML path",
    )


def test_an_env_file_with_an_unknown_key_then_names_it(store, tmp_path):
    env = tmp_path / "costs.yaml"
    env.write_text("fee_rat: 0.001\n")
    refuses(replay(*SPOT, f"store={store}", f"env={env}"), tmp_path, [env], "fee_rat")


def test_an_env_file_that_is_not_a_yaml_mapping_then_says_so(store, tmp_path):
    env = tmp_path / "costs.yaml"
    env.write_text("just some words\n")
    refuses(
        replay(*SPOT, f"store={store}", f"env={env}"),
        tmp_path,
        [env],
        f"env={env}: {env} is not a YAML mapping",
    )
