from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data.errors import DataError
from data.loader import load_bars, load_funding
from data.schema import parse_time
from data.store import SeriesKey, Store

KEY = SeriesKey.of("binance", "spot", "ETH/USDT", "1m")
T0 = 1704067200000  # 2024-01-01T00:00:00Z


@pytest.fixture()
def gappy_store(store_root):
    """Bars at minutes 0-4 and 8-9: a gap of three bars (5, 6, 7)."""
    minutes = np.array([0, 1, 2, 3, 4, 8, 9])
    close = 10.0 + minutes
    frame = pd.DataFrame(
        {
            "ts": T0 + 60_000 * minutes,
            "open": close - 1,
            "high": close + 1,
            "low": close - 2,
            "close": close,
            "volume": minutes + 1.0,
        }
    )
    Store(store_root).write(KEY, frame)
    return store_root


def test_load_returns_contiguous_arrays_segments_and_gaps(gappy_store):
    bars = load_bars("ETH/USDT", "1m", root=gappy_store)
    assert len(bars) == 7
    assert bars.close.tolist() == [10, 11, 12, 13, 14, 18, 19]
    assert bars.segments.tolist() == [[0, 5], [5, 7]]
    assert bars.gaps().tolist() == [[T0 + 5 * 60_000, T0 + 8 * 60_000]]
    assert all(a.flags["C_CONTIGUOUS"] for a in (bars.ts, bars.open, bars.close, bars.volume))
    assert np.isnan(bars.extra["quote_volume"]).all()


def test_load_slices_by_iso_dates_and_ms(gappy_store):
    bars = load_bars("ETH/USDT", "1m", root=gappy_store, start="2024-01-01T00:02", end=T0 + 9 * 60_000)
    assert bars.close.tolist() == [12, 13, 14, 18]
    assert bars.segments.tolist() == [[0, 3], [3, 4]]


def test_fill_gaps_is_explicit_flat_zero_volume_and_marked(gappy_store):
    bars = load_bars("ETH/USDT", "1m", root=gappy_store, fill_gaps=True)
    assert len(bars) == 10
    assert bars.close.tolist() == [10, 11, 12, 13, 14, 14, 14, 14, 18, 19]
    assert bars.high[5:8].tolist() == [14, 14, 14] and bars.volume[5:8].tolist() == [0, 0, 0]
    assert bars.filled.tolist() == [False] * 5 + [True] * 3 + [False] * 2
    assert bars.segments.tolist() == [[0, 10]]
    assert bars.to_frame()["filled"].sum() == 3


def test_empty_range_tells_how_to_fill_the_store(gappy_store):
    with pytest.raises(
        DataError, match="python -m data download exchange=binance market=spot symbol=ETH/USDT"
    ):
        load_bars("ETH/USDT", "1m", root=gappy_store, start="2030-01-01")
    with pytest.raises(ValueError, match="must be before end"):
        load_bars("ETH/USDT", "1m", root=gappy_store, start="2024-02-01", end="2024-01-01")


def test_real_spot_btc_loads_with_its_194_day_gap_as_two_segments(shared_data, store_root):
    frame = pd.read_parquet(shared_data / "binance/spot/BTCUSDT/1m.parquet")
    Store(store_root).write(SeriesKey.of("binance", "spot", "BTC/USDT", "1m"), frame)
    bars = load_bars("BTC/USDT", "1m", root=store_root)
    assert len(bars) == 196_948
    assert bars.segments.tolist() == [[0, 130_708], [130_708, 196_948]]
    # PROVENANCE.md: the gap runs from the bar after 2025-08-18T18:27 to 2026-03-01, 279,692 bars
    (gap,) = bars.gaps().tolist()
    assert gap == [parse_time("2025-08-18T18:28"), parse_time("2026-03-01")]
    assert (gap[1] - gap[0]) // 60_000 == 279_692
    np.testing.assert_array_equal(bars.close, frame["close"].to_numpy())
    np.testing.assert_array_equal(bars.extra["trades"][-3:], frame["trades"].to_numpy(dtype=float)[-3:])


def test_funding_loads_rates_and_mark_prices(shared_data, store_root):
    raw = pd.read_parquet(shared_data / "binance/futures_um/BTCUSDT/funding.parquet")
    frame = raw.rename(columns={"funding_rate": "rate"})
    Store(store_root).write(SeriesKey.of("binance", "futures", "BTC/USDT", "funding"), frame)
    funding = load_funding("BTC/USDT", root=store_root, start="2024-01-01", end="2024-01-02")
    assert funding.ts.tolist() == [1704067200000 + h * 3600_000 for h in (0, 8, 16)]
    np.testing.assert_array_equal(funding.rate, frame.set_index("ts").loc[funding.ts, "rate"].to_numpy())
