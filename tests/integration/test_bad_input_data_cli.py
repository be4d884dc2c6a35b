"""`python -m data ...` refuses bad input: exit 2, one line on stderr naming what was wrong and how
to put it right, no traceback, and nothing written or changed (the store, the files to import).

Each case is a mistake a user could type. Downloads run against the loopback exchange
(``api_url=``) with ``retries=0``, so nothing here reaches the network.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from data.loopback import LoopbackExchange
from data.schema import iso
from data.store import SeriesKey, Store
from data.synthetic import SyntheticConfig, generate
from tests.refusals import refuses

pytestmark = pytest.mark.timeout(120)

SYN = SeriesKey.of("synthetic", "spot", "SYN/USDT", "1m")
BTC = SeriesKey.of("binance", "spot", "BTC/USDT", "1m")
SYN_ARGS = ("exchange=synthetic", "symbol=SYN/USDT")


def data(*words: str) -> list[str]:
    return ["-m", "data", *words]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """3,000 one-minute bars from 2024-01-01T00:00Z to 2024-01-03T01:59Z."""
    return generate(SyntheticConfig(seed=1, bars=3_000))[0]


@pytest.fixture(scope="module")
def template(frame, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("template") / "store"
    Store(root).write(SYN, frame)
    return root


@pytest.fixture()
def root(template, tmp_path) -> Path:
    """A store holding synthetic/spot/SYNUSDT/1m, private to the test."""
    return Path(shutil.copytree(template, tmp_path / "store"))


@pytest.fixture(scope="module")
def exchange(frame):
    """The loopback Binance serving the same bars as binance spot BTCUSDT 1m; its clock stands at
    the close of the last bar."""
    with LoopbackExchange(spot={"BTCUSDT": {"1m": frame}}, max_seconds=300) as ex:
        yield ex


def plain_csv(path: Path, rows: pd.DataFrame) -> Path:
    rows[["ts", "open", "high", "low", "close", "volume"]].to_csv(path, index=False)
    return path


def archive_csv(path: Path, rows: pd.DataFrame, bar_ms: int) -> Path:
    """Rows in Binance's headerless 12-column kline archive layout."""
    lines = [
        f"{r.ts},{r.open},{r.high},{r.low},{r.close},{r.volume},{r.ts + bar_ms - 1},"
        f"{r.quote_volume},{int(r.trades)},{r.taker_buy_base},0,0"
        for r in rows.itertuples(index=False)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- the command line itself ---------------------------------------------------------------


def test_unknown_key_when_misspelt_then_one_line_names_it_and_the_closest_key(root, tmp_path):
    line = refuses(
        data("synth", "bras=100", f"root={root}"),
        tmp_path,
        [],
        "unknown key bras; did you mean bars? python -m data synth accepts: symbol, market, root",
    )
    assert "usage" not in line


def test_unknown_key_when_added_with_plus_then_refused_the_same_way(root, tmp_path):
    refuses(data("synth", "+bras=100", f"root={root}"), tmp_path, [], "unknown key bras; did you mean bars?")


def test_unknown_key_of_download_when_misspelt_then_names_the_right_one(root, tmp_path, exchange):
    refuses(
        data("download", f"api_ulr={exchange.url}", f"root={root}"),
        tmp_path,
        [],
        "unknown key api_ulr; did you mean api_url?",
    )


def test_unknown_command_when_misspelt_then_one_line_with_the_closest_command(tmp_path):
    refuses(
        data("dowload", "start=2024-01-01"), tmp_path, [], "unknown command 'dowload'; did you mean download?"
    )


def test_no_command_then_one_line_listing_the_commands(tmp_path):
    refuses(data(), tmp_path, [], "give a command: download, import, coverage, validate")


def test_word_without_equals_then_asks_for_key_value(root, tmp_path, exchange):
    refuses(
        data("download", "BTC/USDT", f"api_url={exchange.url}", f"root={root}"),
        tmp_path,
        [],
        "expected key=value, got 'BTC/USDT'",
    )


def test_key_given_twice_then_refused_instead_of_the_last_one_winning(root, tmp_path):
    refuses(data("synth", "bars=100", "bars=200", f"root={root}"), tmp_path, [], "bars= is given twice")


def test_whole_number_key_when_given_words_then_says_a_whole_number_is_needed(root, tmp_path):
    refuses(data("synth", "bars=ten", f"root={root}"), tmp_path, [], "bars='ten' is not a whole number")


def test_boolean_key_when_given_maybe_then_asks_for_true_or_false(root, tmp_path, exchange):
    refuses(
        data("download", "progress=maybe", f"api_url={exchange.url}", f"root={root}"),
        tmp_path,
        [],
        "progress='maybe' is not true or false",
    )


def test_missing_required_path_then_one_line_without_the_usage_block(root, tmp_path):
    line = refuses(data("import", f"root={root}"), tmp_path, [], "give the files to import with path=FILE")
    assert "accepts" not in line


# -- values --------------------------------------------------------------------------------


def test_timeframe_7m_then_lists_the_timeframes(root, tmp_path):
    refuses(
        data("synth", "timeframe=7m", f"root={root}"),
        tmp_path,
        [],
        "timeframe '7m' is not supported; choose one of 1s, 1m, 3m, 5m",
    )


def test_impossible_date_then_says_why_it_is_not_a_date(root, tmp_path):
    refuses(
        data("synth", "start=2024-04-31", f"root={root}"),
        tmp_path,
        [],
        "start='2024-04-31' is not a valid date (day is out of range for month)",
    )


def test_impossible_date_of_download_then_refused_before_any_request(root, tmp_path, exchange):
    asked = len(exchange.requests)
    refuses(
        data("download", "start=2024-02-30", f"api_url={exchange.url}", f"root={root}"),
        tmp_path,
        [],
        "start='2024-02-30' is not a valid date (day is out of range for month)",
    )
    assert len(exchange.requests) == asked


def test_end_before_start_then_names_both(root, tmp_path, exchange):
    refuses(
        data("download", "start=2024-02-01", "end=2024-01-01", f"api_url={exchange.url}", f"root={root}"),
        tmp_path,
        [],
        "start 2024-02-01T00:00:00Z must be before end 2024-01-01T00:00:00Z",
    )


@pytest.mark.parametrize("bars", ["0", "-5"])
def test_synth_with_fewer_than_two_bars_then_refused(root, tmp_path, bars):
    refuses(
        data("synth", f"bars={bars}", f"root={root}"), tmp_path, [], f"bars must be at least 2, got {bars}"
    )


def test_synth_with_zero_volatility_then_refused(root, tmp_path):
    refuses(data("synth", "annual_vol=0", f"root={root}"), tmp_path, [], "annual_vol must be > 0, got 0.0")


def test_market_perp_then_lists_the_markets(root, tmp_path):
    refuses(
        data("synth", "market=perp", f"root={root}"),
        tmp_path,
        [],
        "market 'perp' is not supported; choose one of spot, futures",
    )


def test_on_conflict_overwrite_then_lists_the_choices(root, tmp_path):
    refuses(
        data("synth", "on_conflict=overwrite", f"root={root}"),
        tmp_path,
        [],
        "on_conflict='overwrite' is not one of error, keep, replace",
    )


def test_coverage_with_a_negative_gap_count_then_refused(root, tmp_path):
    refuses(data("coverage", "largest=-1", f"root={root}"), tmp_path, [], "largest=-1 must be 0 or more")


def test_synth_with_a_negative_seed_then_names_the_key(root, tmp_path):
    refuses(data("synth", "seed=-1", f"root={root}"), tmp_path, [], "seed must be 0 or more, got -1")


# -- the store root ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["validate", "coverage"])
def test_missing_root_given_explicitly_then_refused_and_not_created(tmp_path, command):
    missing = tmp_path / "no-such-store"
    refuses(data(command, f"root={missing}"), tmp_path, [], f"store root {missing} (root=) does not exist")
    assert not missing.exists()


def test_missing_root_from_the_environment_then_names_klinegym_data(tmp_path):
    missing = tmp_path / "moved-away"
    refuses(
        data("validate"),
        tmp_path,
        [],
        f"store root {missing} ($KLINEGYM_DATA) does not exist",
        env={"KLINEGYM_DATA": str(missing)},
    )


@pytest.mark.parametrize("command", ["validate", "synth"])
def test_root_that_is_a_file_then_refused_and_the_file_unchanged(tmp_path, command):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a store\n")
    refuses(
        data(command, f"root={notes}"),
        tmp_path,
        [notes],
        f"store root {notes} (root=) is a file, not a folder",
    )


def test_validate_a_series_that_is_not_stored_then_refused_naming_what_is(root, tmp_path):
    refuses(
        data("validate", "series=synthetic/spot/SYNUSDT/5m", f"root={root}"),
        tmp_path,
        [],
        f"no series synthetic/spot/SYNUSDT/5m under {root}; did you mean synthetic/spot/SYNUSDT/1m?",
    )


def test_validate_a_series_without_its_four_parts_then_shows_the_form(root, tmp_path):
    refuses(
        data("validate", "series=BTCUSDT", f"root={root}"),
        tmp_path,
        [],
        "series must be exchange/market/SYMBOL/timeframe as coverage lists them",
    )


# -- resample and bars ---------------------------------------------------------------------

RESAMPLE_AND_BARS = {
    "resample-to-a-shorter-timeframe-then-refused": (["resample", *SYN_ARGS, "timeframe=5m", "to=1m"],
        ["cannot resample 5m bars to 1m: 1m is not a whole multiple of 5m"]),
    "resample-to-its-own-timeframe-then-refused": (["resample", *SYN_ARGS, "to=1m"],
        ["to=1m is the series' own timeframe; give a longer one"]),
    "resample-to-7m-then-lists-the-timeframes": (["resample", *SYN_ARGS, "to=7m"],
        ["timeframe '7m' is not supported"]),
    "resample-a-series-that-is-not-stored": (
        ["resample", "exchange=synthetic", "symbol=ETH/USDT", "to=5m"],
        ["no bars for synthetic/spot/ETHUSDT/1m in [-inf, +inf)"]),
    "resample-with-end-before-start": (
        ["resample", *SYN_ARGS, "to=5m", "start=2024-01-02", "end=2024-01-01"],
        ["start 2024-01-02T00:00:00Z must be before end 2024-01-01T00:00:00Z"]),
    "bars-without-trades-then-says-to-import-them": (["bars", *SYN_ARGS],
        ["no trades for synthetic/spot/SYNUSDT/trades", "timeframe=trades"]),
    "bars-of-volume-zero-then-refused": (["bars", *SYN_ARGS, "timeframe=volume-0"],
        ["bar spec 'volume-0' is not supported"]),
    "resample-of-volume-bars": (
        ["resample", *SYN_ARGS, "timeframe=volume-10", "to=1h"],
        ["resample builds time bars from time bars; timeframe=volume-10 is not a time bar"]),
}  # fmt: skip


@pytest.mark.parametrize(("words", "fragments"), RESAMPLE_AND_BARS.values(), ids=RESAMPLE_AND_BARS.keys())
def test_resample_or_bars_that_cannot_be_built_then_refused(root, tmp_path, words, fragments):
    refuses(data(*words, f"root={root}"), tmp_path, [], *fragments)


# -- import --------------------------------------------------------------------------------


def test_import_of_a_missing_file_then_names_it(root, tmp_path):
    refuses(
        data("import", f"path={tmp_path / 'BTCUSDT-1m-2024-01.zip'}", f"root={root}"),
        tmp_path,
        [],
        "BTCUSDT-1m-2024-01.zip does not exist",
    )


def test_import_of_a_glob_matching_nothing_then_says_so(root, tmp_path):
    refuses(
        data("import", f"path={tmp_path}/*.zip", f"root={root}"),
        tmp_path,
        [],
        "*.zip matches no importable files",
    )


def test_import_of_a_text_file_then_names_the_extensions(root, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    refuses(
        data("import", f"path={notes}", f"root={root}"),
        tmp_path,
        [notes],
        "unknown extension '.txt'; importable files end in .zip, .csv, .parquet, .feather",
    )


def test_import_of_a_csv_that_is_not_klines_then_names_the_columns(root, tmp_path):
    other = tmp_path / "prices.csv"
    other.write_text("name,price\nbtc,1\n")
    refuses(
        data("import", f"path={other}", f"root={root}"),
        tmp_path,
        [other],
        "columns ['name', 'price'] do not fit a bars series",
    )


def test_import_of_5m_archive_into_the_1m_series_then_names_the_right_series(root, tmp_path, frame):
    five = frame.iloc[::5].reset_index(drop=True)
    path = archive_csv(tmp_path / "klines.csv", five, 300_000)
    refuses(
        data("import", f"path={path}", f"root={root}"),
        tmp_path,
        [path],
        "its bars last 5m (close_time - open_time), but the series is binance/spot/BTCUSDT/1m",
    )


def test_import_with_two_rows_at_one_time_but_other_prices_then_one_line_with_the_time(root, tmp_path, frame):
    rows = frame.iloc[:10].copy()
    clash = rows.iloc[[4]].copy()
    clash["volume"] += 1.0
    path = plain_csv(tmp_path / "bars.csv", pd.concat([rows, clash]))
    refuses(
        data("import", f"path={path}", f"root={root}"),
        tmp_path,
        [path],
        "the files disagree on 1 bar(s)",
        f"{iso(int(rows.ts.iloc[4]))}",
        "conflicting_duplicate",
    )


def test_import_of_a_row_with_high_below_low_then_one_line_with_its_time(root, tmp_path, frame):
    rows = frame.iloc[:10].copy()
    rows.loc[3, "high"] = rows.loc[3, "low"] - 1.0
    path = plain_csv(tmp_path / "bars.csv", rows)
    refuses(
        data("import", f"path={path}", f"root={root}"),
        tmp_path,
        [path],
        "refusing to import into binance/spot/BTCUSDT/1m: 1 problem(s):",
        f"{iso(int(rows.ts.iloc[3]))}",
        "high_below_open_close",
    )


def test_import_that_disagrees_with_stored_bars_then_needs_replace_and_the_store_is_unchanged(
    root, tmp_path, frame
):
    Store(root).write(BTC, frame.iloc[:100])
    rows = frame.iloc[:10].copy()
    rows.loc[2, "volume"] += 1.0
    path = plain_csv(tmp_path / "bars.csv", rows)
    refuses(
        data("import", f"path={path}", f"root={root}"),
        tmp_path,
        [path],
        "1 row(s) differ from the stored ones",
        "Re-run with on_conflict=replace",
    )


def test_import_with_on_conflict_overwrite_then_refused_before_reading(root, tmp_path, frame):
    path = plain_csv(tmp_path / "bars.csv", frame.iloc[:10])
    refuses(
        data("import", f"path={path}", "on_conflict=overwrite", f"root={root}"),
        tmp_path,
        [path],
        "on_conflict='overwrite' is not one of error, keep, replace",
    )


def test_import_of_funding_on_spot_then_refused_as_conflicting(root, tmp_path):
    path = tmp_path / "funding.csv"
    path.write_text("fundingTime,fundingRate\n1701388800000,0.0001\n")
    refuses(
        data("import", f"path={path}", "timeframe=funding", "market=spot", f"root={root}"),
        tmp_path,
        [path],
        "timeframe=funding needs market=futures",
    )


# -- download ------------------------------------------------------------------------------


def download(exchange: LoopbackExchange, root: Path, *words: str) -> list[str]:
    return data("download", f"api_url={exchange.url}", "retries=0", "progress=false", f"root={root}", *words)


def test_download_starting_after_the_latest_closed_bar_then_names_that_bar(tmp_path, exchange, frame):
    root = tmp_path / "store"
    last = iso(int(frame.ts.iloc[-1]))
    refuses(
        download(exchange, root, "start=2024-01-05"),
        tmp_path,
        [],
        f"start 2024-01-05T00:00:00Z is after the latest closed 1m bar of binance BTC/USDT ({last})",
    )
    assert not root.exists()


def test_download_of_a_range_before_the_exchanges_first_bar_then_says_nothing_was_there(tmp_path, exchange):
    root = tmp_path / "store"
    refuses(
        download(exchange, root, "start=2023-12-01", "end=2023-12-02"),
        tmp_path,
        [],
        "binance has no 1m bars of BTC/USDT in [2023-12-01T00:00:00Z, 2023-12-02T00:00:00Z); nothing stored",
    )
    assert not root.exists()


DOWNLOAD = {
    "of-funding-on-spot-then-refused-as-conflicting": (["market=spot", "funding=true", "start=2024-01-01"],
        "funding=true needs market=futures"),
    "with-a-page-of-zero-bars-then-refused": (["limit=0", "start=2024-01-01"],
        "limit=0 must be 1 or more"),
    "of-the-synthetic-exchange-then-points-to-synth": (["exchange=synthetic", "start=2024-01-01"],
        "exchange=synthetic has no API; write a synthetic market with python -m data synth"),
    "of-an-unknown-exchange-then-names-the-closest": (["exchange=binanse", "start=2024-01-01"],
        "exchange 'binanse' is not a ccxt exchange; try one of binance"),
    "of-funding-as-a-timeframe-then-says-how-funding-comes": (["timeframe=funding", "start=2024-01-01"],
        "timeframe=funding is not a candle timeframe; funding rates come with market=futures"),
    "of-a-symbol-the-exchange-lacks-then-names-what-it-offers": (["symbol=ETH/USDT", "start=2024-01-01"],
        "symbol 'ETH/USDT' is not offered on binance spot (1 symbols); close matches: BTC/USDT"),
}  # fmt: skip


@pytest.mark.parametrize(("words", "message"), DOWNLOAD.values(), ids=DOWNLOAD.keys())
def test_download_of_what_cannot_be_downloaded_then_refused(tmp_path, exchange, words, message):
    refuses(download(exchange, tmp_path / "store", *words), tmp_path, [], message)



def test_download_with_negative_retries_then_refused_without_a_traceback(tmp_path, exchange):
    words = download(exchange, tmp_path / "store", "start=2024-01-01")
    words[words.index("retries=0")] = "retries=-1"
    refuses(words, tmp_path, [], "retries=-1 must be 0 or more")







def test_download_with_an_api_url_without_scheme_then_shows_the_form(tmp_path, exchange):
    words = download(exchange, tmp_path / "store", "start=2024-01-01")
    words[words.index(f"api_url={exchange.url}")] = "api_url=127.0.0.1:9"
    refuses(words, tmp_path, [], "api_url '127.0.0.1:9' must look like 'http://127.0.0.1:8080'")


def test_refused_import_when_a_killed_write_left_a_temp_file_then_the_temp_file_stays(root, tmp_path):
    # a refusal changes nothing, not even the leftovers of another write (the rerun removes them)
    orphan = SYN.path(root) / ".2024-02.parquet.999999999.tmp"
    orphan.write_bytes(b"half a partition")
    refuses(
        data("import", f"path={tmp_path / 'missing.csv'}", f"root={root}"), tmp_path, [], "does not exist"
    )
    assert orphan.exists()


def test_download_of_a_symbol_without_its_slash_then_shows_the_ccxt_form(tmp_path, exchange):
    asked = len(exchange.requests)
    refuses(
        download(exchange, tmp_path / "store", "symbol=BTCUSDT", "start=2024-01-01"),
        tmp_path,
        [],
        "symbol 'BTCUSDT' must be given in ccxt form with a slash, e.g. 'BTC/USDT'",
    )
    assert len(exchange.requests) == asked


def test_download_with_an_empty_start_then_asks_for_the_first_bar(tmp_path, exchange):
    refuses(
        download(exchange, tmp_path / "store", "start="), tmp_path, [], "start= is empty; give the first bar"
    )
