from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from envs.features import (
    DEFAULT_FEATURES,
    FEATURES,
    check_features,
    columns,
    compute_features,
    raw_features,
    warmup,
)
from envs.rolling import rolling_mean_std

MINUTE = 60_000
T0 = 1704067200000  # 2024-01-01T00:00:00Z, a Monday
ALL_BUT_FUNDING = tuple(n for n in FEATURES if n != "funding_rate")


def _bars(o, h, lo, c, v=None, **extra) -> dict[str, np.ndarray]:
    c = np.asarray(c, dtype=float)
    out = {
        "ts": T0 + MINUTE * np.arange(len(c)),
        "open": np.asarray(o, dtype=float),
        "high": np.asarray(h, dtype=float),
        "low": np.asarray(lo, dtype=float),
        "close": c,
        "volume": np.ones(len(c)) if v is None else np.asarray(v, dtype=float),
    }
    out.update({k: np.asarray(x, dtype=float) for k, x in extra.items()})
    return out


def _from_closes(c, v=None, **extra) -> dict[str, np.ndarray]:
    c = np.asarray(c, dtype=float)
    o = np.r_[c[0], c[:-1]]
    return _bars(o, np.maximum(o, c) + 0.5, np.minimum(o, c) - 0.5, c, v, **extra)


def _frame_bars(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    cols = ["ts", "open", "high", "low", "close", "volume"]
    if "taker_buy_base" in frame and frame["taker_buy_base"].notna().any():
        cols.append("taker_buy_base")
    return {c: frame[c].to_numpy() for c in cols}


def _slice(bars: dict[str, np.ndarray], a: int, b: int) -> dict[str, np.ndarray]:
    return {k: v[a:b] for k, v in bars.items()}


@pytest.fixture(scope="module")
def spot_taker(shared_data) -> dict[str, np.ndarray]:
    """20,000 contiguous BTCUSDT spot 1m bars from the part that carries taker_buy_base."""
    frame = pd.read_parquet(shared_data / "binance" / "spot" / "BTCUSDT" / "1m.parquet")
    part = frame.iloc[-40_000:-20_000]
    assert (np.diff(part["ts"].to_numpy()) == MINUTE).all() and part["taker_buy_base"].notna().all()
    return _frame_bars(part)


def _funding_per_bar(shared_data, ts: np.ndarray, bar_ms: int) -> np.ndarray:
    """The last funding rate with ts <= the bar's close time, NaN before the first one."""
    f = pd.read_parquet(shared_data / "binance" / "futures_um" / "BTCUSDT" / "funding.parquet")
    i = np.searchsorted(f["ts"].to_numpy(), ts + bar_ms, side="right") - 1
    return np.where(i >= 0, f["funding_rate"].to_numpy()[np.maximum(i, 0)], np.nan)


# --------------------------------------------------------------------------- hand-computed values

# o, h, l, c of four bars; bar 3 gaps up over bar 2's close of 99
TINY = _bars(
    o=[100.0, 101.0, 102.0, 105.0],
    h=[102.0, 103.0, 102.5, 106.0],
    lo=[99.0, 100.0, 98.0, 104.0],
    c=[101.0, 102.0, 99.0, 105.0],
)


def test_log_return_range_and_body_match_hand_computation():
    raw = raw_features(TINY, ["log_return", "range", "body"], bar_ms=MINUTE)
    # log(102/101), log(99/102), log(105/99); the first bar has no previous close
    np.testing.assert_allclose(raw[:, 0], [0.0, 0.009852296443, -0.029852963150, 0.058840500023], rtol=1e-10)
    # (h - l) / c: 3/101, 3/102, 4.5/99, 2/105
    np.testing.assert_allclose(raw[:, 1], [0.029702970297, 0.029411764706, 0.045454545455, 0.019047619048])
    # (c - o) / o: 1/100, 1/101, -3/102, 0/105
    np.testing.assert_allclose(raw[:, 2], [0.01, 0.009900990099, -0.029411764706, 0.0], atol=1e-12)


def test_atr_is_simple_mean_of_true_range_including_gaps_over_close():
    # true ranges: 3 (h-l), 3 (h-l), 4.5 (h-l), 7 (106 - previous close 99: the gap counts)
    # ATR means 3, 3, 3.5, 4.375 divided by closes 101, 102, 99, 105
    atr = raw_features(TINY, ["atr"], bar_ms=MINUTE)[:, 0]
    np.testing.assert_allclose(atr, [3 / 101, 3 / 102, 3.5 / 99, 4.375 / 105], rtol=1e-12)
    assert atr[3] == pytest.approx(0.041666666667)


def test_rsi_sums_gains_and_losses_of_the_last_14_changes():
    # closes change by +1, -3, +6: RSI 100 (only a gain), 100*1/4 = 25, 100*7/10 = 70
    assert raw_features(TINY, ["rsi"], bar_ms=MINUTE)[:, 0].tolist() == pytest.approx([50, 100, 25, 70])
    changes = [5, 1, -1, 2, -1, 1, 1, -2, 3, -1, 1, -1, 2, -1, 1]
    bars = _from_closes(100.0 + np.r_[0, np.cumsum(changes)])
    rsi = raw_features(bars, ["rsi"], bar_ms=MINUTE)[:, 0]
    # bar 14 sees changes 1..14: gains 16, losses 7 -> 1600/23; bar 15 drops the +5: gains 12 -> 1200/19
    assert rsi[14] == pytest.approx(69.565217391304)
    assert rsi[15] == pytest.approx(63.157894736842)
    out = compute_features(bars, ["rsi"], bar_ms=MINUTE)[:, 0]
    assert out[15] == pytest.approx((63.157894736842 - 50) / 50, abs=1e-6)


def test_bollinger_pctb_of_a_steady_climb():
    # closes 1..20: mean 10.5, population std sqrt(33.25) = 5.766281; the last close is 20
    # %B = (20 - (10.5 - 2 * 5.766281)) / (4 * 5.766281) = 0.911877
    bars = _from_closes(np.arange(1.0, 21.0))
    assert raw_features(bars, ["bb_pctb"], bar_ms=MINUTE)[19, 0] == pytest.approx(0.911877235524)
    assert compute_features(bars, ["bb_pctb"], bar_ms=MINUTE)[19, 0] == pytest.approx(
        0.823754471048, abs=1e-6
    )


def test_zscore_uses_only_the_last_norm_window_values():
    # close 100 throughout, ranges 1, 2, 3, 5, 1 -> range feature 0.01, 0.02, 0.03, 0.05, 0.01
    c = np.full(5, 100.0)
    half = np.array([0.5, 1, 1.5, 2.5, 0.5])
    bars = _bars(c, c + half, c - half, c)
    z = compute_features(bars, ["range"], bar_ms=MINUTE, norm_window=3)[:, 0]
    # bar 0: one value -> 0; bar 1: [.01 .02] -> 1; bar 2: [.01 .02 .03] -> sqrt(1.5);
    # bar 3: [.02 .03 .05] -> 5/sqrt(14);
    # bar 4: [.03 .05 .01] -> -0.02 / 0.0163299 = -sqrt(1.5) (the 0.01 of bar 0 has left the window)
    np.testing.assert_allclose(z, [0.0, 1.0, 1.224744871, 1.336306210, -1.224744871], rtol=1e-6)


def test_time_features_taker_imbalance_and_funding_scaling():
    hours = np.array([0, 6, 3 * 24 + 12, 6 * 24 + 18])  # Mon 00:00, Mon 06:00, Thu 12:00, Sun 18:00
    c = np.full(4, 100.0)
    bars = _bars(c, c, c, c, v=[4, 0, 5, 2], taker_buy_base=[3, 0, np.nan, 3])
    bars["ts"] = T0 + 3_600_000 * hours
    funding = np.array([np.nan, 1e-4, 1.5e-3, -3e-4])
    names = ["time_of_day", "day_of_week", "taker_imbalance", "funding_rate"]
    out = compute_features(bars, names, bar_ms=0, funding_rate=funding)  # 0: irregular times allowed
    assert columns(names) == [
        "time_of_day_sin",
        "time_of_day_cos",
        "day_of_week_sin",
        "day_of_week_cos",
        "taker_imbalance",
        "funding_rate",
    ]
    sunday = 2 * math.pi * (6 * 24 + 18) / 168
    expected = [
        [0, 1, 0, 1, 2 * 3 / 4 - 1, 0],  # funding unknown yet -> 0
        [1, 0, math.sin(2 * math.pi * 6 / 168), math.cos(2 * math.pi * 6 / 168), 0, 1],  # no volume -> 0
        [0, -1, 0, -1, 0, 10],  # taker NaN -> 0; 15 bps clipped to 10
        [-1, 0, math.sin(sunday), math.cos(sunday), 1, -3],  # 3 bought of 2 traded is clipped to 1
    ]
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_macd_hist_matches_textbook_emas_after_warmup(spot_taker):
    close = pd.Series(spot_taker["close"])
    macd = close.ewm(span=12, adjust=False).mean() - close.ewm(span=26, adjust=False).mean()
    textbook = ((macd - macd.ewm(span=9, adjust=False).mean()) / close).to_numpy()
    ours = raw_features(spot_taker, ["macd_hist"], bar_ms=MINUTE)[:, 0]
    # the finite-memory EMAs drop < 1e-6 of the weight: 2e-5 of the histogram's spread here
    np.testing.assert_allclose(ours[243:], textbook[243:], rtol=0, atol=1e-4 * textbook[243:].std())


# --------------------------------------------------------------------------- numerics


def test_rolling_std_matches_direct_computation_on_a_year_of_prices(shared_data):
    frame = pd.read_parquet(shared_data / "binance" / "spot" / "BTCUSDT" / "1m.parquet")
    close = frame["close"].to_numpy()
    log_v = np.log1p(frame["volume"].to_numpy())
    r = np.r_[0.0, np.diff(np.log(close))]
    for x, n in ((close, 20), (log_v, 60), (r, 30)):
        mean, std = rolling_mean_std(x, n)
        windows = np.lib.stride_tricks.sliding_window_view(x, n)  # two-pass mean and std per window
        np.testing.assert_allclose(mean[n - 1 :], windows.mean(axis=1), rtol=1e-9)
        direct = windows.std(axis=1)
        np.testing.assert_allclose(std[n - 1 :], direct, rtol=1e-6, atol=1e-9 * np.median(direct))
    # a day-long window, with the partial windows of the first day: pandas is accurate enough here
    # (its online update drifts by up to 12% on the 20-bar price windows above, so not there)
    for x in (close, r):
        mean, std = rolling_mean_std(x, 1440)
        rolling = pd.Series(x).rolling(1440, min_periods=1)
        np.testing.assert_allclose(mean, rolling.mean(), rtol=1e-9)
        np.testing.assert_allclose(std, rolling.std(ddof=0), rtol=1e-6, atol=1e-12)


def test_flat_stretch_after_a_move_has_zero_std_not_rounding_noise():
    x = np.r_[np.linspace(60_000.0, 70_000.0, 50), np.full(100, 65_432.1)]
    _, std = rolling_mean_std(x, 20)
    assert (std[69:] == 0).all() and (std[50:69] > 0).all()


# --------------------------------------------------------------------------- contract


def test_rows_never_depend_on_later_bars(spot_taker):
    bars = _slice(spot_taker, 0, 4000)
    funding = np.repeat([1e-4, -2e-4, 3e-4, 5e-5], 1000)
    names = (*ALL_BUT_FUNDING, "funding_rate")
    full = compute_features(bars, names, bar_ms=MINUTE, funding_rate=funding)
    rng = np.random.default_rng(7)
    for t in (0, 1, 13, 59, 500, 1681, 1682, 2999, 3998):
        head = compute_features(_slice(bars, 0, t + 1), names, bar_ms=MINUTE, funding_rate=funding[: t + 1])
        np.testing.assert_array_equal(head, full[: t + 1])
        changed = {k: v.copy() for k, v in bars.items()}
        tail = slice(t + 1, None)
        k = len(bars["ts"]) - t - 1
        c = changed["close"][tail] * np.exp(rng.normal(0, 0.01, k))
        changed["open"][tail], changed["close"][tail] = c * np.exp(rng.normal(0, 0.005, k)), c
        changed["high"][tail] = np.maximum(changed["open"][tail], c) * 1.01
        changed["low"][tail] = np.minimum(changed["open"][tail], c) * 0.99
        changed["volume"][tail] = rng.exponential(50.0, k)
        changed["taker_buy_base"][tail] = changed["volume"][tail] * rng.uniform(0, 1, k)
        other_funding = funding.copy()
        other_funding[tail] = rng.normal(0, 1e-3, k)
        out = compute_features(changed, names, bar_ms=MINUTE, funding_rate=other_funding)
        np.testing.assert_array_equal(out[: t + 1], full[: t + 1])
        assert not np.array_equal(out[t + 1 :], full[t + 1 :])


def _assert_buffer_parity(bars, names, funding=None, starts=(0, 1, 777, 5_000, 9_999), extra=(0, 1_234)):
    """A buffer of K >= warmup + 1 bars gives, from row warmup on, the whole-history rows."""
    w = warmup(names)
    full = compute_features(bars, names, bar_ms=MINUTE, funding_rate=funding)
    cols = columns(names)
    for s in starts:
        for k in (w + 1 + e for e in extra):
            buf = compute_features(
                _slice(bars, s, s + k),
                names,
                bar_ms=MINUTE,
                funding_rate=None if funding is None else funding[s : s + k],
            )
            for j, col in enumerate(cols):
                np.testing.assert_allclose(
                    buf[w:, j], full[s + w : s + k, j], rtol=1e-5, atol=1e-6, err_msg=f"{col}, buffer at {s}"
                )


def test_rolling_buffer_reproduces_whole_history_for_every_feature(spot_taker):
    assert warmup(ALL_BUT_FUNDING) == 1440 + 242
    _assert_buffer_parity(spot_taker, ALL_BUT_FUNDING)
    # each feature alone too, with its own (shorter) warm-up
    for name in ALL_BUT_FUNDING:
        _assert_buffer_parity(spot_taker, (name,), starts=(3_000, 17_000), extra=(0,))


def test_rolling_buffer_parity_with_funding_on_perp_bars(shared_data):
    frame = pd.read_parquet(shared_data / "binance" / "futures_um" / "BTCUSDT" / "1m.parquet").iloc[:12_000]
    bars = _frame_bars(frame)
    funding = _funding_per_bar(shared_data, bars["ts"], MINUTE)
    _assert_buffer_parity(bars, (*DEFAULT_FEATURES, "funding_rate"), funding, starts=(0, 4_321), extra=(0,))


@pytest.mark.parametrize(
    ("market", "timeframe", "bar_ms"),
    [("spot", "1m", MINUTE), ("futures_um", "1m", MINUTE), ("futures_um", "5m", 5 * MINUTE)],
)
def test_features_are_finite_on_real_history(shared_data, market, timeframe, bar_ms):
    frame = pd.read_parquet(shared_data / "binance" / market / "BTCUSDT" / f"{timeframe}.parquet")
    ts = frame["ts"].to_numpy()
    cuts = np.flatnonzero(np.diff(ts) != bar_ms) + 1
    funding = _funding_per_bar(shared_data, ts, bar_ms) if market == "futures_um" else None
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(ts)], strict=True):
        bars = _frame_bars(frame.iloc[a:b])
        names = [n for n in FEATURES if n != "taker_imbalance" or "taker_buy_base" in bars]
        if funding is None:
            names.remove("funding_rate")
        out = compute_features(
            bars, names, bar_ms=bar_ms, funding_rate=None if funding is None else funding[a:b]
        )
        assert (
            out.dtype == np.float32 and out.flags.c_contiguous and out.shape == (b - a, len(columns(names)))
        )
        assert np.isfinite(out).all()
        assert np.abs(out).max() <= 10
        assert out[warmup(names) :].std(axis=0).min() > 0.25  # unit-ish scale, no dead column


def test_flat_prices_give_zeros_and_short_series_are_finite():
    names = (*FEATURES,)
    flat = _bars(*[np.full(3000, 100.0)] * 4, v=np.full(3000, 5.0), taker_buy_base=np.full(3000, 2.5))
    out = compute_features(flat, names, bar_ms=MINUTE, funding_rate=np.zeros(3000))
    market_cols = [j for j, col in enumerate(columns(names)) if not col.startswith(("time_", "day_"))]
    assert (out[:, market_cols] == 0).all()

    rng = np.random.default_rng(3)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, 3000)))
    v = rng.exponential(1.0, 3000)
    v[500:2500] = 0.0  # a long stretch without trades, and isolated empty bars
    v[::7] = 0.0
    quiet = _from_closes(c, v, taker_buy_base=np.where(v > 0, v / 2, np.nan))
    assert np.isfinite(compute_features(quiet, names, bar_ms=MINUTE, funding_rate=np.zeros(3000))).all()

    for n in (0, 1, 2):
        short = _slice(quiet, 0, n)
        out = compute_features(short, names, bar_ms=MINUTE, funding_rate=np.zeros(n))
        assert out.shape == (n, len(columns(names))) and np.isfinite(out).all()


# --------------------------------------------------------------------------- names and errors


def test_default_set_has_eight_columns_and_documented_warmups():
    assert columns(DEFAULT_FEATURES) == list(DEFAULT_FEATURES) and len(DEFAULT_FEATURES) == 8
    assert warmup(DEFAULT_FEATURES) == 1682  # the MACD filter's 243 bars + 1439 of z-score history
    assert warmup(["range"], norm_window=100) == 99
    assert warmup(["rsi", "bb_pctb", "volume_z"]) == 59
    assert warmup([]) == 0
    assert FEATURES["macd_hist"].warmup(1440) == 1682 and FEATURES["rsi"].warmup() == 14


def test_check_features_names_the_problem():
    assert check_features(["rsi", "atr"], has_taker_buy=False, has_funding=False) == ("rsi", "atr")
    with pytest.raises(
        ValueError, match=r"unknown feature 'rsi14'; choose from: log_return, range,.* funding_rate"
    ):
        check_features(["rsi14"], has_taker_buy=True, has_funding=True)
    with pytest.raises(ValueError, match="'funding_rate' needs funding data"):
        check_features(["rsi", "funding_rate"], has_taker_buy=True, has_funding=False)
    with pytest.raises(ValueError, match="'taker_imbalance' needs taker_buy_base"):
        check_features(["taker_imbalance"], has_taker_buy=False, has_funding=True)
    with pytest.raises(ValueError, match="'rsi' listed more than once"):
        check_features(["rsi", "range", "rsi"], has_taker_buy=True, has_funding=True)
    with pytest.raises(ValueError, match="list of names, not the string 'rsi'"):
        check_features("rsi", has_taker_buy=True, has_funding=True)


def test_compute_features_rejects_gaps_bad_prices_and_missing_data():
    bars = _from_closes([100.0, 101.0, 102.0])
    gappy = dict(bars, ts=bars["ts"] + [0, 0, MINUTE])
    with pytest.raises(ValueError, match="ts jumps by 120000 ms after row 1"):
        compute_features(gappy, ["rsi"], bar_ms=MINUTE)
    with pytest.raises(ValueError, match="close must be positive and finite; row 1"):
        compute_features(dict(bars, close=np.array([100.0, np.nan, 102.0])), ["rsi"], bar_ms=MINUTE)
    with pytest.raises(ValueError, match=r"lack column\(s\) \['volume'\]"):
        compute_features({k: v for k, v in bars.items() if k != "volume"}, ["rsi"], bar_ms=MINUTE)
    with pytest.raises(ValueError, match="'funding_rate': 2"):
        compute_features(bars, ["funding_rate"], bar_ms=MINUTE, funding_rate=np.zeros(2))
    with pytest.raises(ValueError, match="needs taker_buy_base"):
        compute_features(bars, ["taker_imbalance"], bar_ms=MINUTE)
    with pytest.raises(ValueError, match="norm_window must be an integer >= 2"):
        compute_features(bars, ["range"], bar_ms=MINUTE, norm_window=1)


def test_momentum_is_the_move_in_units_of_its_own_noise():
    # closes alternate +1 % / -1 % for 300 bars, then rise 1 % a bar for 240 bars
    steps = np.r_[np.tile([0.01, -0.01], 150), np.full(240, 0.01)]
    closes = 100 * np.exp(np.cumsum(np.r_[0.0, steps]))
    bars = _from_closes(closes, np.ones(len(closes)))
    m = compute_features(bars, ["momentum_240"], bar_ms=MINUTE)[:, 0]
    # at the end: a move of 2.4 in log price over 240 bars whose returns all equal 0.01 (std 0)
    # is flat noise-free drift: the std is 0, so the output is 0 by the flat-window rule
    assert m[-1] == 0.0
    # at bar 299 (end of the alternation) the move over 240 bars is 0
    assert m[299] == pytest.approx(0.0, abs=1e-6)
    # at bar 300+60: 60 rises after 180 alternating bars; std over the last 240 returns by hand
    window = np.r_[steps[120:300], steps[300:360]]
    expected = 0.6 / (window.std() * np.sqrt(240))
    assert m[360] == pytest.approx(expected, rel=1e-5)
