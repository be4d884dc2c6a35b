"""What `python -m data ...` says when it works: the summary lines of import and download, and
what validate, coverage and the next write do about a write that was killed half way.

Refusals are in test_bad_input_data_cli.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.loopback import LoopbackExchange
from data.schema import iso
from data.store import SeriesKey, Store
from data.synthetic import SyntheticConfig, generate
from tests.refusals import ROOT as PROJECT

pytestmark = pytest.mark.timeout(120)

BTC = SeriesKey.of("binance", "spot", "BTC/USDT", "1m")


def cli(*words: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.run(
        [sys.executable, "-m", "data", *words], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """3,000 one-minute bars from 2024-01-01T00:00Z to 2024-01-03T01:59Z."""
    return generate(SyntheticConfig(seed=1, bars=3_000))[0]


def test_import_summary_when_rows_are_unsorted_and_repeated_then_counts_both(tmp_path, frame):
    rows = frame.iloc[:100][["ts", "open", "high", "low", "close", "volume"]]
    # a concatenation gone wrong: the last 10 rows first, then all 100 again: 10 exact repeats are
    # dropped, and the 90 rows kept after row 99 are each earlier than a row before them
    messy = pd.concat([rows.iloc[90:], rows])
    messy.to_csv(tmp_path / "bars.csv", index=False)
    root = tmp_path / "store"

    out = cli("import", f"path={tmp_path / 'bars.csv'}", f"root={root}", cwd=tmp_path)

    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"binance/spot/BTCUSDT/1m: +100 rows in 1 partition(s) under {root}; read 110 rows from 1 "
        "file(s), sorted 90 out-of-order row(s), dropped 10 exact duplicate row(s)"
    ]
    pd.testing.assert_frame_equal(Store(root).read(BTC)[list(rows.columns)], rows.reset_index(drop=True))


def test_import_summary_when_nothing_needed_fixing_then_says_zero_of_each(tmp_path, frame):
    frame.iloc[:100].to_csv(tmp_path / "bars.csv", index=False)

    out = cli("import", f"path={tmp_path / 'bars.csv'}", f"root={tmp_path / 'store'}", cwd=tmp_path)

    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith(
        "; read 100 rows from 1 file(s), sorted 0 out-of-order row(s), dropped 0 exact duplicate row(s)"
    )


# -- download ------------------------------------------------------------------------------


def test_download_summary_then_a_rerun_with_nothing_new_says_up_to_date(tmp_path, frame):
    root = tmp_path / "store"
    first, last = iso(int(frame.ts.iloc[0])), iso(int(frame.ts.iloc[-1]))
    with LoopbackExchange(spot={"BTCUSDT": {"1m": frame}}, max_seconds=60) as ex:
        words = ["download", f"api_url={ex.url}", "retries=0", "progress=false", f"root={root}"]
        fetched = cli(*words, "start=2024-01-01", "end=2024-01-02", cwd=tmp_path)
        resumed = cli(*words, "start=2024-01-01", cwd=tmp_path)
        again = cli(*words, "start=2024-01-01", cwd=tmp_path)

    assert fetched.returncode == resumed.returncode == again.returncode == 0, again.stderr
    assert fetched.stdout.splitlines() == [
        "binance/spot/BTCUSDT/1m: +1,440 rows 2024-01-01T00:00:00Z -> 2024-01-01T23:59:00Z; "
        "stored 2024-01-01T00:00:00Z -> 2024-01-01T23:59:00Z (2 requests)"
    ]
    assert resumed.stdout.splitlines() == [
        f"binance/spot/BTCUSDT/1m: +1,560 rows 2024-01-02T00:00:00Z -> {last}; "
        f"stored {first} -> {last} (2 requests)"
    ]
    assert again.stdout.splitlines() == [
        f"binance/spot/BTCUSDT/1m: up to date, stored {first} -> {last} (0 requests)"
    ]


# -- a write killed half way ---------------------------------------------------------------


def dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


@pytest.fixture()
def killed(tmp_path, frame) -> tuple[Path, Path]:
    """A store where an import of January and February was killed after January was renamed into
    place: February's temp file is left behind, its writer gone."""
    root = tmp_path / "store"
    Store(root).write(BTC, frame.iloc[:1_000])
    orphan = BTC.path(root) / f".2024-02.parquet.{dead_pid()}.tmp"
    orphan.write_bytes(b"half a partition")
    return root, orphan


def test_validate_when_a_killed_write_left_a_temp_file_then_lists_it_and_exits_1(killed, tmp_path):
    root, orphan = killed

    out = cli("validate", f"root={root}", cwd=tmp_path)

    assert out.returncode == 1, out.stderr
    assert out.stdout.splitlines() == [
        "binance/spot/BTCUSDT/1m: 1 orphan temp file(s)",
        f"  {orphan.name}: left by a write that was killed; every partition is whole, but that write "
        "may be incomplete: re-run it (that removes the file)",
    ]


def test_validate_when_the_orphan_is_a_series_first_partition_then_the_series_is_listed_too(tmp_path, frame):
    root = tmp_path / "store"
    Store(root).write(BTC, frame.iloc[:10])
    eth = SeriesKey.of("binance", "spot", "ETH/USDT", "1m")
    eth.path(root).mkdir(parents=True)
    (eth.path(root) / f".2024-01.parquet.{dead_pid()}.tmp").write_bytes(b"half")

    out = cli("validate", f"root={root}", cwd=tmp_path)

    assert out.returncode == 1
    assert out.stdout.splitlines()[:2] == [
        "binance/spot/BTCUSDT/1m: ok",
        "binance/spot/ETHUSDT/1m: 1 orphan temp file(s)",
    ]


def test_coverage_when_a_killed_write_left_a_temp_file_then_shows_it(killed, tmp_path):
    root, orphan = killed

    table = cli("coverage", f"root={root}", cwd=tmp_path)
    as_json = cli("coverage", "--json", f"root={root}", cwd=tmp_path)

    assert table.returncode == as_json.returncode == 0
    assert table.stdout.splitlines()[-2:] == [
        "1 orphan temp file(s) of killed writes (the partitions are whole, but those writes may be "
        "incomplete: re-run them, which removes the files):",
        f"  binance/spot/BTCUSDT/1m/{orphan.name}",
    ]
    (item,) = json.loads(as_json.stdout)
    assert item["orphan_temp_files"] == [orphan.name]
    assert as_json.stderr.strip() == (
        f"warning: 1 orphan temp file(s) of killed writes under {root}; python -m data validate lists them"
    )


def test_rerun_of_the_import_when_a_temp_file_was_left_then_finishes_and_removes_it(killed, tmp_path, frame):
    root, orphan = killed
    frame.iloc[:3_000].to_csv(tmp_path / "bars.csv", index=False)

    out = cli("import", f"path={tmp_path / 'bars.csv'}", f"root={root}", cwd=tmp_path)

    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith("; removed 1 orphan temp file(s) of a killed write")
    assert not orphan.exists()
    assert len(Store(root).read(BTC)) == 3_000
    assert cli("validate", f"root={root}", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize(
    "command, words, target",
    [
        ("synth", ["bars=100"], SeriesKey.of("synthetic", "spot", "SYN/USDT", "1m")),
        ("resample", ["to=5m"], SeriesKey.of("binance", "spot", "BTC/USDT", "5m")),
        ("bars", ["timeframe=1s"], SeriesKey.of("binance", "spot", "BTC/USDT", "1s")),
    ],
)
def test_other_writes_when_their_series_has_a_temp_file_then_remove_it(
    killed, tmp_path, command, words, target
):
    root, other = killed
    trades = SeriesKey.of("binance", "spot", "BTC/USDT", "trades")
    t0 = 1_704_067_200_000
    Store(root).write(
        trades,
        pd.DataFrame({"ts": t0 + np.arange(5) * 1_000, "price": 100.0, "qty": 1.0, "is_buyer_maker": False}),
    )
    target.path(root).mkdir(parents=True, exist_ok=True)
    orphan = target.path(root) / f".2024-01.parquet.{dead_pid()}.tmp"
    orphan.write_bytes(b"half a partition")

    out = cli(command, *words, f"root={root}", cwd=tmp_path)

    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith("; removed 1 orphan temp file(s) of a killed write")
    assert not orphan.exists()
    # another series' leftover is the trace of another write that may be incomplete: it stays
    assert other.exists()
