"""`python -m data coverage` and the CLI's argument handling, on real and synthetic data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from data.cli import main
from data.coverage import coverage, format_table
from data.schema import parse_time
from data.store import SeriesKey, Store


def run_cli(*args: str, root) -> subprocess.CompletedProcess:
    env = {**os.environ, "KLINEGYM_DATA": str(root)}
    return subprocess.run(
        [sys.executable, "-m", "data", *args], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.fixture(scope="module")
def real_store(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("real") / "store"
    store = Store(root)
    for market, src_market, symbol, tf in [
        ("spot", "spot", "BTCUSDT", "1m"),
        ("spot", "spot", "BTCUSDT", "5m"),
        ("futures", "futures_um", "ETHUSDT", "1m"),
    ]:
        frame = pd.read_parquet(shared_data / "binance" / src_market / symbol / f"{tf}.parquet")
        store.write(SeriesKey.of("binance", market, symbol, tf), frame)
    funding = pd.read_parquet(shared_data / "binance/futures_um/ETHUSDT/funding.parquet")
    store.write(
        SeriesKey.of("binance", "futures", "ETHUSDT", "funding"),
        funding.rename(columns={"funding_rate": "rate"}),
    )
    return root


def test_coverage_json_lists_first_last_rows_and_every_real_gap(real_store):
    out = run_cli("coverage", "--json", root=real_store)
    assert out.returncode == 0, out.stderr
    by_series = {item["series"]: item for item in json.loads(out.stdout)}
    assert sorted(by_series) == [
        "binance/futures/ETHUSDT/1m",
        "binance/futures/ETHUSDT/funding",
        "binance/spot/BTCUSDT/1m",
        "binance/spot/BTCUSDT/5m",
    ]
    five = by_series["binance/spot/BTCUSDT/5m"]
    assert (five["first_ts"], five["last_ts"], five["rows"]) == (
        parse_time("2023-01-01"),
        parse_time("2025-05-09T23:55"),
        247_376,
    )
    # PROVENANCE.md: 2023-03-24T12:35 -> 14:00 and 2023-12-30T23:55 -> 2024-01-01, 304 bars missing
    assert five["gaps"] == [
        [parse_time("2023-03-24T12:40"), parse_time("2023-03-24T14:00")],
        [parse_time("2023-12-31"), parse_time("2024-01-01")],
    ]
    assert five["missing"] == 304
    one = by_series["binance/spot/BTCUSDT/1m"]
    assert one["rows"] == 196_948 and one["missing"] == 279_692 and len(one["gaps"]) == 1
    eth = by_series["binance/futures/ETHUSDT/1m"]
    assert (eth["rows"], eth["gaps"], eth["first"]) == (66_747, [], "2025-05-04T15:33:00Z")
    funding = by_series["binance/futures/ETHUSDT/funding"]
    assert (funding["rows"], funding["step_ms"], funding["gaps"]) == (2_124, 8 * 3600_000, [])


def test_coverage_table_shows_the_largest_gaps_in_words(real_store):
    text = format_table(coverage(Store(real_store)), str(real_store))
    assert "binance/spot/BTCUSDT/1m" in text
    assert "gap 2025-08-18T18:28:00Z -> 2026-03-01T00:00:00Z  (194.2 d missing)" in text
    assert "gap 2023-03-24T12:40:00Z -> 2023-03-24T14:00:00Z  (80 min missing)" in text


def test_validate_command_passes_real_data(real_store, capsys):
    assert main(["validate", f"root={real_store}"]) == 0
    assert capsys.readouterr().out.count(": ok") == 4


def test_synth_then_coverage_is_the_offline_default_and_is_idempotent(store_root):
    first = run_cli("synth", "bars=3000", root=store_root)
    assert first.returncode == 0, first.stderr
    assert (
        "synthetic/spot/SYNUSDT/1m: 3,000 bars 2024-01-01T00:00:00Z -> 2024-01-03T01:59:00Z" in first.stdout
    )
    again = run_cli("synth", "bars=3000", root=store_root)
    assert "(+0 new)" in again.stdout
    (item,) = json.loads(run_cli("coverage", "--json", root=store_root).stdout)
    assert (item["series"], item["rows"], item["gaps"]) == ("synthetic/spot/SYNUSDT/1m", 3000, [])


def test_coverage_and_validate_of_an_empty_store_say_so_and_how_to_fill_it(store_root, capsys):
    # refusals (unknown keys, bad values, a missing root) are in test_bad_input_data_cli.py
    store_root.mkdir()
    assert main(["coverage", f"root={store_root}"]) == 0
    assert f"no series under {store_root}" in capsys.readouterr().out
    assert main(["validate", f"root={store_root}"]) == 0
    assert capsys.readouterr().out == f"no series under {store_root}; nothing to validate\n"
