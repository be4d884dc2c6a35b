"""data.bars: time, volume and dollar bars from trade ticks, by hand and on real Binance trades."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.bars import build_bar_series, build_bars, dollar_bars, time_bars, volume_bars
from data.importer import import_files
from data.loader import load_bars
from data.schema import ALL_BAR_COLUMNS
from data.store import SeriesKey, Store

SHARED = Path(
    os.environ.get("KLINEGYM_SHARED_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data"
)
TRADES_FILE = SHARED / "binance/spot/BTCUSDT/trades-2021-01-08.parquet"

T = 1_704_067_200_000  # 2024-01-01T00:00Z
# ms offset, price, qty, is_buyer_maker; quantities are exact in binary so sums are exact
HAND_TRADES = [
    (100, 10.0, 0.5, False),
    (250, 11.0, 0.25, True),
    (250, 12.0, 0.5, False),  # 1 base unit reached inside ms 250 ...
    (250, 9.0, 0.25, True),  # ... so this trade of the same ms closes the bar too
    (900, 10.5, 1.0, False),
    (1500, 10.0, 0.25, True),
    (2600, 10.25, 0.5, False),
    (2600, 10.0, 0.25, True),
    (4100, 10.0, 0.5, False),  # nothing in [3000, 4000): a gap for 1s bars
]


def trades_of(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["ts", "price", "qty", "is_buyer_maker"])
    return frame.assign(ts=T + frame["ts"].astype(np.int64))


def bars_of(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(ALL_BAR_COLUMNS))
    return frame.astype({"ts": np.int64, "trades": np.float64})


@pytest.fixture
def hand() -> pd.DataFrame:
    return trades_of(HAND_TRADES)


def test_1s_time_bars_by_hand_leave_an_empty_second_as_a_gap(hand):
    expected = bars_of(
        [
            (T, 10.0, 12.0, 9.0, 10.5, 2.5, 26.5, 5, 2.0),
            (T + 1000, 10.0, 10.0, 10.0, 10.0, 0.25, 2.5, 1, 0.0),
            (T + 2000, 10.25, 10.25, 10.0, 10.0, 0.75, 7.625, 2, 0.5),
            (T + 4000, 10.0, 10.0, 10.0, 10.0, 0.5, 5.0, 1, 0.5),
        ]
    )
    pd.testing.assert_frame_equal(time_bars(hand, "1s"), expected, check_exact=True)
    pd.testing.assert_frame_equal(build_bars(hand, "1s"), expected, check_exact=True)


def test_volume_bars_by_hand_close_at_the_end_of_the_crossing_millisecond(hand):
    expected = bars_of(
        [
            (T + 100, 10.0, 12.0, 9.0, 9.0, 1.5, 16.0, 4, 1.0),
            (T + 900, 10.5, 10.5, 10.5, 10.5, 1.0, 10.5, 1, 1.0),
            (T + 1500, 10.0, 10.25, 10.0, 10.0, 1.0, 10.125, 3, 0.5),
        ]
    )
    bars = volume_bars(hand, 1.0)

    pd.testing.assert_frame_equal(bars, expected, check_exact=True)
    pd.testing.assert_frame_equal(build_bars(hand, "volume-1"), expected, check_exact=True)
    # the last trade (0.5 of 1.0) forms no bar; it is what the docstring says is left over
    assert hand.iloc[int(bars["trades"].sum()) :]["ts"].tolist() == [T + 4100]


def test_dollar_bars_by_hand(hand):
    expected = bars_of(
        [
            (T + 100, 10.0, 12.0, 9.0, 9.0, 1.5, 16.0, 4, 1.0),
            (T + 900, 10.5, 10.5, 10.0, 10.0, 1.25, 13.0, 2, 1.0),
            (T + 2600, 10.25, 10.25, 10.0, 10.0, 1.25, 12.625, 3, 1.0),
        ]
    )
    pd.testing.assert_frame_equal(dollar_bars(hand, 12.0), expected, check_exact=True)
    pd.testing.assert_frame_equal(build_bars(hand, "dollar-12"), expected, check_exact=True)


def test_thresholds_crossed_several_times_in_one_millisecond_make_one_bar_not_repeated_ts():
    trades = trades_of(
        [(0, 100.0, 2.0, False), (0, 101.0, 2.0, True), (0, 99.0, 2.0, False), (1, 100.0, 1.0, True)]
    )

    bars = volume_bars(trades, 1.0)

    assert bars["ts"].tolist() == [T, T + 1]
    assert bars["volume"].tolist() == [6.0, 1.0]
    assert bars["trades"].tolist() == [3.0, 1.0]


def test_no_trades_and_too_few_trades_give_no_bars(hand):
    assert len(volume_bars(hand.iloc[:0], 1.0)) == 0
    assert len(volume_bars(hand.iloc[:2], 1.0)) == 0
    assert list(time_bars(hand.iloc[:0], "1m").columns) == list(ALL_BAR_COLUMNS)


def test_bad_input_is_refused(hand):
    with pytest.raises(ValueError, match="sorted by ts"):
        time_bars(hand.iloc[::-1], "1s")
    with pytest.raises(ValueError, match="positive"):
        volume_bars(hand, 0)
    with pytest.raises(ValueError, match="lack columns"):
        time_bars(hand.drop(columns="is_buyer_maker"), "1s")
    with pytest.raises(ValueError, match="bar spec 'tick-100' is not supported"):
        build_bars(hand, "tick-100")


# -- the real Binance trade sample -----------------------------------------------------------


@pytest.fixture(scope="module")
def real() -> pd.DataFrame:
    if not TRADES_FILE.exists():
        pytest.skip(f"shared trade sample not found at {TRADES_FILE}")
    raw = pd.read_parquet(TRADES_FILE)
    return raw.rename(columns={"time": "ts"})[["ts", "price", "qty", "is_buyer_maker"]]


def test_real_1s_bars_agree_with_the_raw_trades(real):
    bars = time_bars(real, "1s")

    assert len(bars) == 47  # 00:00:00 .. 00:00:46, every second traded
    assert bars["trades"].sum() == 2001
    assert bars["open"].iloc[0] == 39432.48 == real["price"].iloc[0]
    assert bars["close"].iloc[-1] == 39491.76 == real["price"].iloc[-1]
    assert bars["volume"].sum() == pytest.approx(87.071596, rel=1e-12)
    taker_qty = real["qty"][~real["is_buyer_maker"]].sum()
    assert bars["taker_buy_base"].sum() == pytest.approx(taker_qty, rel=1e-12)
    # second 3, worked out from the trades themselves
    inside = real[(real["ts"] >= 1_610_064_003_000) & (real["ts"] < 1_610_064_004_000)]
    prices, qty = inside["price"].tolist(), inside["qty"].tolist()
    bar = bars.set_index("ts").loc[1_610_064_003_000]
    ohlc = (bar["open"], bar["high"], bar["low"], bar["close"])
    assert ohlc == (prices[0], max(prices), min(prices), prices[-1])
    assert bar["trades"] == len(inside)
    assert bar["volume"] == pytest.approx(sum(qty), rel=1e-12)
    taker = sum(q for q, maker in zip(qty, inside["is_buyer_maker"], strict=True) if not maker)
    assert bar["taker_buy_base"] == pytest.approx(taker, rel=1e-12)


def test_real_1m_bar_is_the_whole_sample(real):
    bar = time_bars(real, "1m").iloc[0]

    assert bar["ts"] == 1_610_064_000_000
    ohlc = (bar["open"], bar["high"], bar["low"], bar["close"])
    assert ohlc == (39432.48, 39550.0, 39430.3, 39491.76)
    assert bar["quote_volume"] == pytest.approx((real["price"] * real["qty"]).sum(), rel=1e-12)


@pytest.mark.parametrize(("size", "n_bars", "n_trades"), [(1.0, 64, 1978), (5.0, 16, 1961), (10.0, 8, 1957)])
def test_real_volume_bars_reach_their_size_and_account_for_every_trade(real, size, n_bars, n_trades):
    bars = volume_bars(real, size)

    assert (len(bars), int(bars["trades"].sum())) == (n_bars, n_trades)
    assert (bars["volume"] >= size).all()
    used = real.iloc[:n_trades]
    assert bars["volume"].sum() == pytest.approx(used["qty"].sum(), rel=1e-12)
    assert real["qty"].iloc[n_trades:].sum() < size  # the left-over, not emitted
    assert bars["ts"].is_unique and bars["ts"].is_monotonic_increasing
    # a bar never splits a millisecond: each next bar opens after the previous one's last trade
    ends = np.cumsum(bars["trades"].to_numpy(dtype=int))
    assert (real["ts"].to_numpy()[ends[:-1] - 1] < real["ts"].to_numpy()[ends[:-1]]).all()


def test_real_dollar_bars_reach_their_size(real):
    bars = dollar_bars(real, 1_000_000)

    assert (len(bars), int(bars["trades"].sum())) == (3, 1724)
    assert (bars["quote_volume"] >= 1_000_000).all()
    used = real.iloc[:1724]
    assert bars["quote_volume"].sum() == pytest.approx((used["price"] * used["qty"]).sum(), rel=1e-12)
    assert bars["ts"].is_unique


def test_bars_built_from_stored_trades_load_back_through_the_loader(real, tmp_path):
    store = Store(tmp_path / "store")
    trades_key = SeriesKey.of("binance", "spot", "BTC/USDT", "trades")
    import_files(store, trades_key, [TRADES_FILE])

    written = build_bar_series(store, trades_key, "1s")
    build_bar_series(store, trades_key, "volume-5")

    assert written.rows_added == 47
    loaded = load_bars("BTC/USDT", "1s", root=store.root)
    frame = loaded.to_frame()
    assert not frame.pop("filled").any()
    pd.testing.assert_frame_equal(frame, time_bars(real, "1s"), check_exact=True)
    assert loaded.segments.tolist() == [[0, 47]]
    by_volume = load_bars("BTC/USDT", "volume-5", root=store.root)
    assert len(by_volume) == 16 and (by_volume.volume >= 5).all()
    # one window of 1s bars: [00:00:10, 00:00:20) rounded to whole seconds
    window = build_bar_series(
        store,
        trades_key,
        "1s",
        start="2021-01-08T00:00:09.500",
        end="2021-01-08T00:00:19.001",
        on_conflict="error",
    )
    assert window.rows_added == 0  # the same bars are already stored, identical
