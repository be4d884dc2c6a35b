from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.errors import ConflictError, StoreError, ValidationError
from data.store import SeriesKey, Store, resolve_root

KEY = SeriesKey.of("binance", "spot", "BTC/USDT", "1m")
T0 = 1706745600000  # 2024-02-01T00:00:00Z


def bars(n: int, t0: int = T0, step: int = 60_000, price: float = 100.0) -> pd.DataFrame:
    close = price + np.arange(n, dtype=float)
    return pd.DataFrame(
        {
            "ts": t0 + step * np.arange(n, dtype=np.int64),
            "open": close - 0.5,
            "high": close + 1.0,
            "low": close - 1.0,
            "close": close,
            "volume": np.full(n, 2.0),
        }
    )


def test_series_key_accepts_ccxt_symbols_and_stores_file_safe_names(tmp_path):
    assert SeriesKey.of("Binance", "futures", "BTC/USDT:USDT", "5m").path(tmp_path) == (
        tmp_path / "binance" / "futures" / "BTCUSDT" / "5m"
    )
    with pytest.raises(ValueError, match="timeframe '7m' is not supported; choose one of 1s, 1m"):
        SeriesKey.of("binance", "spot", "BTC/USDT", "7m")
    with pytest.raises(ValueError, match="market 'margin' is not supported"):
        SeriesKey.of("binance", "margin", "BTC/USDT", "1m")


def test_root_comes_from_argument_then_environment_then_default(monkeypatch, tmp_path):
    monkeypatch.setenv("KLINEGYM_DATA", str(tmp_path / "env"))
    assert resolve_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_root() == tmp_path / "env"
    monkeypatch.delenv("KLINEGYM_DATA")
    assert str(resolve_root()) == "data/store"


def test_round_trip_keeps_every_value_and_adds_optional_columns_as_nan(store_root):
    store = Store(store_root)
    frame = bars(100)
    result = store.write(KEY, frame)
    assert result.rows_added == 100
    back = store.read(KEY)
    pd.testing.assert_frame_equal(back[list(frame.columns)], frame)
    assert back["quote_volume"].isna().all() and back["ts"].dtype == np.int64


def test_one_file_per_month_and_appending_a_month_rewrites_only_that_month(store_root):
    store = Store(store_root)
    jan = bars(31 * 1440, t0=1704067200000)  # all of January 2024
    store.write(KEY, jan)
    (jan_file,) = store.partitions(KEY)
    assert jan_file.name == "2024-01.parquet"
    before = jan_file.stat().st_mtime_ns
    result = store.write(KEY, bars(10, t0=T0))  # first 10 minutes of February
    assert [p.name for p in result.partitions] == ["2024-02.parquet"]
    assert jan_file.stat().st_mtime_ns == before
    assert store.last_ts(KEY) == T0 + 9 * 60_000
    assert store.first_ts(KEY) == 1704067200000


def test_read_slices_the_half_open_range(store_root):
    store = Store(store_root)
    store.write(KEY, bars(1440 * 3, t0=T0 - 1440 * 60_000))  # straddles Jan/Feb
    got = store.read_arrays(KEY, T0 - 60_000, T0 + 120_000)
    assert got["ts"].tolist() == [T0 - 60_000, T0, T0 + 60_000]
    assert got["close"].flags["C_CONTIGUOUS"]


def test_rewriting_identical_rows_changes_nothing(store_root):
    store = Store(store_root)
    store.write(KEY, bars(50))
    assert store.write(KEY, bars(50)).rows_added == 0


def test_conflicting_rows_are_refused_unless_keep_or_replace(store_root):
    store = Store(store_root)
    store.write(KEY, bars(5))
    other = bars(5)
    other.loc[2, "close"] += 0.25
    with pytest.raises(ConflictError, match="1 row\\(s\\) differ .* first at 2024-02-01T00:02:00Z"):
        store.write(KEY, other)
    store.write(KEY, other, on_conflict="keep")
    assert store.read(KEY)["close"][2] == 102.0
    store.write(KEY, other, on_conflict="replace")
    assert store.read(KEY)["close"][2] == 102.25


def test_optional_columns_missing_in_store_are_filled_from_a_richer_source(store_root):
    store = Store(store_root)
    store.write(KEY, bars(3))
    rich = bars(3).assign(quote_volume=[10.0, 20.0, 30.0], trades=[1, 2, 3], taker_buy_base=1.0)
    store.write(KEY, rich)
    assert store.read(KEY)["quote_volume"].tolist() == [10.0, 20.0, 30.0]


@pytest.mark.parametrize(
    ("defect", "kind"),
    [
        ("duplicate", "duplicate_ts"),
        ("unsorted", "unsorted_ts"),
        ("misaligned", "misaligned_ts"),
        ("nan", "non_finite"),
        ("inf", "non_finite"),
        ("high", "high_below_open_close"),
        ("low", "low_above_open_close"),
        ("volume", "negative_volume"),
    ],
)
def test_validation_refuses_each_planted_defect_and_names_its_timestamp(store_root, defect, kind):
    frame = bars(10)
    bad_ts = int(frame.loc[4, "ts"])
    if defect == "duplicate":
        frame.loc[4, "ts"] = frame.loc[3, "ts"]
        bad_ts = int(frame.loc[3, "ts"])
    elif defect == "unsorted":
        frame.loc[4, "ts"] = frame.loc[2, "ts"] - 60_000
        bad_ts = int(frame.loc[4, "ts"])
    elif defect == "misaligned":
        frame.loc[4, "ts"] += 1_000
        bad_ts = int(frame.loc[4, "ts"])
    elif defect == "nan":
        frame.loc[4, "close"] = np.nan
    elif defect == "inf":
        frame.loc[4, "volume"] = np.inf
    elif defect == "high":
        frame.loc[4, "high"] = frame.loc[4, "close"] - 0.1
    elif defect == "low":
        frame.loc[4, "low"] = frame.loc[4, "open"] + 0.1
    elif defect == "volume":
        frame.loc[4, "volume"] = -1.0
    store = Store(store_root)
    with pytest.raises(ValidationError) as err:
        store.write(KEY, frame)
    assert [(i.ts, i.kind) for i in err.value.issues] == [(bad_ts, kind)]
    assert str(bad_ts) in str(err.value)
    assert not store_root.exists() or not list(store_root.rglob("*.parquet"))


def test_validate_on_demand_finds_a_bad_row_written_behind_the_stores_back(store_root):
    store = Store(store_root)
    store.write(KEY, bars(10))
    (path,) = store.partitions(KEY)
    frame = pd.read_parquet(path)
    frame.loc[7, "low"] = 1e9
    frame.to_parquet(path)
    (issue,) = store.validate(KEY)
    assert (issue.ts, issue.kind) == (T0 + 7 * 60_000, "low_above_open_close")


def test_unwritable_root_is_a_clear_error_that_leaves_nothing(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot write .*choose another root"):
        Store(blocker / "store").write(KEY, bars(5))


def test_a_full_disk_mid_write_keeps_the_previous_partition_intact(store_root):
    """RLIMIT_FSIZE makes writes past 64 KiB fail with EFBIG, as a full disk would."""
    store = Store(store_root)
    store.write(KEY, bars(100))
    before = store.read(KEY)
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        import numpy as np, pandas as pd
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_store import KEY, bars
        from data.errors import StoreError
        from data.store import Store
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        big = bars(20000)
        big["volume"] = np.random.default_rng(0).random(20000)  # incompressible
        try:
            Store({str(store_root)!r}).write(KEY, big, on_conflict="replace")
        except StoreError as exc:
            print("StoreError", exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "StoreError cannot write" in out.stdout, out.stderr
    pd.testing.assert_frame_equal(store.read(KEY), before)
    assert not [p for p in store_root.rglob("*") if p.name.endswith(".tmp")]


def test_funding_and_trades_series_round_trip(store_root):
    store = Store(store_root)
    fkey = SeriesKey.of("binance", "futures", "BTC/USDT", "funding")
    funding = pd.DataFrame(
        {"ts": [T0, T0 + 8 * 3600_000], "rate": [1e-4, -2e-5], "mark_price": [42000.0, np.nan]}
    )
    store.write(fkey, funding)
    pd.testing.assert_frame_equal(store.read(fkey), funding)
    tkey = SeriesKey.of("binance", "spot", "BTC/USDT", "trades")
    trades = pd.DataFrame(
        {
            "ts": [T0, T0, T0 + 5],
            "price": [1.0, 2.0, 3.0],
            "qty": [0.1, 0.2, 0.3],
            "is_buyer_maker": [True, False, True],
        }
    )
    store.write(tkey, trades)
    assert [p.name for p in store.partitions(tkey)] == ["2024-02-01.parquet"]
    pd.testing.assert_frame_equal(store.read(tkey), trades)
    later = trades.assign(ts=trades.ts + 10)
    store.write(tkey, later)
    earlier = trades.assign(ts=trades.ts - 10)
    store.write(tkey, earlier)
    assert store.read(tkey)["ts"].tolist() == [
        T0 - 10,
        T0 - 10,
        T0 - 5,
        T0,
        T0,
        T0 + 5,
        T0 + 10,
        T0 + 10,
        T0 + 15,
    ]
    with pytest.raises(ConflictError, match="trades have no unique key"):
        store.write(tkey, trades)


def test_stale_temp_files_of_dead_processes_are_removed_but_a_live_writers_are_kept(store_root):
    store = Store(store_root)
    store.write(KEY, bars(3))
    folder = KEY.path(store_root)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = folder / f".2024-02.parquet.{int(dead.stdout)}.tmp"
    live = folder / f".2024-02.parquet.{os.getpid()}.tmp"
    stale.write_bytes(b"half a file")
    live.write_bytes(b"being written")
    assert store.remove_stale_temp_files() == 1
    assert not stale.exists() and live.exists()
    assert len(store.read(KEY)) == 3  # readers never saw either
