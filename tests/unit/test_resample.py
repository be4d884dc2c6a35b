"""data.resample: longer bars from shorter ones, checked against numbers worked out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.resample import aggregate, resample, resample_series
from data.schema import ALL_BAR_COLUMNS, parse_time
from data.store import SeriesKey, Store

T0 = 1_704_067_200_000  # 2024-01-01T00:00Z, a Monday
MIN = 60_000
NAN = np.nan

# minute: open high low close volume quote_volume trades taker_buy_base (minute 7 is missing)
HAND_1M = [
    (0, 100.0, 102.0, 99.0, 101.0, 1.5, 150.0, 10, 0.5),
    (1, 101.0, 103.0, 100.0, 102.0, 2.0, 204.0, 12, 1.0),
    (2, 102.0, 102.5, 98.0, 99.0, 0.5, 50.0, 3, 0.25),
    (3, 99.0, 100.0, 97.5, 98.0, 3.0, 295.5, 20, 2.0),
    (4, 98.0, 104.0, 97.0, 103.5, 1.0, 101.0, 7, 0.0),
    (5, 103.5, 105.0, 103.0, 104.0, 2.5, 260.0, 15, 1.5),
    (6, 104.0, 104.5, 101.0, 101.5, 4.0, 410.0, 30, 2.0),
    (8, 101.5, 102.0, 100.0, 100.5, 1.0, 101.0, 5, 0.5),
    (9, 100.5, 101.0, 99.5, 100.0, 0.5, 50.0, 4, 0.25),
    (10, 100.0, 100.0, 100.0, 100.0, 0.0, 0.0, 0, 0.0),
    (11, 100.0, 101.0, 99.0, 100.5, 1.0, 100.0, 3, NAN),  # taker volume unknown
    (12, 100.5, 100.5, 100.5, 100.5, 0.5, 50.25, 1, 0.5),
    (13, 100.5, 100.5, 100.5, 100.5, 0.5, 50.25, 1, 0.5),
    (14, 100.5, 100.5, 100.5, 100.5, 0.5, 50.25, 1, 0.5),
]
# worked out from the table above
BAR_0000 = (T0, 100.0, 104.0, 97.0, 103.5, 8.0, 800.5, 52.0, 3.75)
BAR_0005_PARTIAL = (T0 + 5 * MIN, 103.5, 105.0, 99.5, 100.0, 8.0, 821.0, 54.0, 4.25)
BAR_0010 = (T0 + 10 * MIN, 100.0, 101.0, 99.0, 100.5, 2.5, 250.75, 6.0, NAN)


def frame_of(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(ALL_BAR_COLUMNS)).astype({"ts": np.int64, "trades": np.float64})


@pytest.fixture
def hand_1m() -> pd.DataFrame:
    return frame_of([(T0 + m * MIN, *values) for m, *values in HAND_1M])


def test_5m_bars_from_the_hand_table_drop_the_bucket_with_a_missing_minute(hand_1m):
    result = aggregate(hand_1m, "1m", "5m")

    pd.testing.assert_frame_equal(result.frame, frame_of([BAR_0000, BAR_0010]), check_exact=True)
    assert result.incomplete.tolist() == [T0 + 5 * MIN]
    assert result.dropped == 1
    pd.testing.assert_frame_equal(resample(hand_1m, "1m", "5m"), result.frame)


def test_partial_keeps_the_incomplete_bucket_built_from_the_bars_there_are(hand_1m):
    result = aggregate(hand_1m, "1m", "5m", partial=True)

    expected = frame_of([BAR_0000, BAR_0005_PARTIAL, BAR_0010])
    pd.testing.assert_frame_equal(result.frame, expected, check_exact=True)
    assert result.incomplete.tolist() == [T0 + 5 * MIN]
    assert result.dropped == 0


def test_a_sum_with_an_unknown_constituent_is_unknown(hand_1m):
    bar = resample(hand_1m, "1m", "15m", partial=True).iloc[0]

    assert np.isnan(bar["taker_buy_base"])
    assert bar["volume"] == 18.5 and bar["trades"] == 112.0


def test_missing_optional_columns_come_out_as_nan(hand_1m):
    ohlcv = hand_1m[["ts", "open", "high", "low", "close", "volume"]]

    out = resample(ohlcv, "1m", "5m")

    assert list(out.columns) == list(ALL_BAR_COLUMNS)
    assert out["volume"].tolist() == [8.0, 2.5]
    assert out[["quote_volume", "trades", "taker_buy_base"]].isna().all().all()


def test_weekly_bars_open_on_monday_and_partial_weeks_are_dropped():
    # daily bars from Thursday 2024-01-04 to Monday 2024-01-15
    days = [
        (T0 + d * 86_400_000, d + 1.0, d + 2.0, d + 0.5, d + 1.5, 1.0, NAN, NAN, NAN) for d in range(3, 15)
    ]

    result = aggregate(frame_of(days), "1d", "1w")

    assert result.frame["ts"].tolist() == [parse_time("2024-01-08")]
    week = result.frame.iloc[0]
    ohlcv = (week["open"], week["high"], week["low"], week["close"], week["volume"])
    assert ohlcv == (8.0, 15.0, 7.5, 14.5, 7.0)
    assert result.incomplete.tolist() == [parse_time("2024-01-01"), parse_time("2024-01-15")]


@pytest.mark.parametrize(("source", "target"), [("3m", "5m"), ("1h", "1m"), ("3d", "1w")])
def test_target_that_is_not_a_whole_multiple_is_refused_naming_both(hand_1m, source, target):
    with pytest.raises(ValueError, match=f"cannot resample {source} bars to {target}"):
        resample(hand_1m, source, target)


def test_bars_off_the_source_grid_or_out_of_order_are_refused(hand_1m):
    shifted = hand_1m.assign(ts=hand_1m["ts"] + 30_000)
    with pytest.raises(ValueError, match="2024-01-01T00:00:30Z is not on a 1m boundary"):
        resample(shifted, "1m", "5m")
    with pytest.raises(ValueError, match="sorted by ts without duplicates"):
        resample(hand_1m.iloc[::-1], "1m", "5m")


def test_empty_input_gives_empty_bars_in_the_store_schema():
    out = resample(frame_of([]), "1m", "1h")
    assert out.empty and list(out.columns) == list(ALL_BAR_COLUMNS) and out["ts"].dtype == np.int64


def test_resample_series_writes_the_new_timeframe_and_counts_dropped_buckets(hand_1m, tmp_path: Path):
    store = Store(tmp_path / "store")
    key = SeriesKey.of("binance", "spot", "BTC/USDT", "1m")
    store.write(key, hand_1m)

    result = resample_series(store, key, "5m")

    assert (result.rows_added, result.incomplete, result.dropped) == (2, 1, 1)
    target = SeriesKey.of("binance", "spot", "BTCUSDT", "5m")
    pd.testing.assert_frame_equal(store.read(target), frame_of([BAR_0000, BAR_0010]), check_exact=True)

    kept = resample_series(store, key, "5m", partial=True)
    assert (kept.rows_added, kept.dropped) == (1, 0)
    assert store.read(target)["ts"].tolist() == [T0, T0 + 5 * MIN, T0 + 10 * MIN]


def test_resample_series_range_builds_whole_buckets_opening_inside_it(hand_1m, tmp_path: Path):
    store = Store(tmp_path / "store")
    key = SeriesKey.of("binance", "spot", "BTCUSDT", "1m")
    store.write(key, hand_1m)

    # buckets opening in [00:01, 00:11): 00:05 (incomplete) and 00:10, read to its end at 00:15
    result = resample_series(store, key, "5m", start="2024-01-01T00:01", end="2024-01-01T00:11")

    assert (result.rows_added, result.dropped) == (1, 1)
    stored = store.read(SeriesKey.of("binance", "spot", "BTCUSDT", "5m"))
    pd.testing.assert_frame_equal(stored, frame_of([BAR_0010]), check_exact=True)
