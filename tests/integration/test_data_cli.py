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
