from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data.store import SeriesKey, check
from data.synthetic import SyntheticConfig, generate


def ar1_coefficient(close: np.ndarray) -> float:
    r = np.diff(np.log(close))
    return float(np.dot(r[1:], r[:-1]) / np.dot(r[:-1], r[:-1]))


def test_same_seed_gives_identical_bars_and_another_seed_does_not():
    a, fa = generate(SyntheticConfig(seed=7, bars=5_000))
    b, fb = generate(SyntheticConfig(seed=7, bars=5_000))
    c, _ = generate(SyntheticConfig(seed=8, bars=5_000))
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(fa, fb)
    assert not np.array_equal(a["close"], c["close"])


def test_bars_pass_every_store_validation_rule_on_the_tick_grid():
    bars, funding = generate(SyntheticConfig(seed=1, bars=50_000))
    assert check(bars, SeriesKey.of("synthetic", "spot", "SYN/USDT", "1m")) == []
    assert check(funding, SeriesKey.of("synthetic", "futures", "SYN/USDT", "funding")) == []
    cents = bars[["open", "high", "low", "close"]].to_numpy() * 100
    np.testing.assert_allclose(cents, np.round(cents), atol=1e-6)
    assert (bars["open"].to_numpy()[1:] == bars["close"].to_numpy()[:-1]).all()
    assert np.diff(funding["ts"]).tolist() == [8 * 3600_000] * (len(funding) - 1)


def test_planted_ar1_edge_is_recovered_and_absent_when_switched_off():
    planted, _ = generate(SyntheticConfig(seed=3, bars=200_000, ar1=0.1, trend_strength=0.0))
    none, _ = generate(SyntheticConfig(seed=3, bars=200_000, ar1=0.0, trend_strength=0.0))
    assert ar1_coefficient(planted["close"].to_numpy()) == pytest.approx(0.1, abs=0.02)
    assert ar1_coefficient(none["close"].to_numpy()) == pytest.approx(0.0, abs=0.02)


def test_volatility_clusters_and_tails_are_fat():
    bars, _ = generate(SyntheticConfig(seed=5, bars=200_000, ar1=0.0, trend_strength=0.0))
    r = np.diff(np.log(bars["close"].to_numpy()))
    a = np.abs(r - r.mean())
    assert np.corrcoef(a[1:], a[:-1])[0, 1] > 0.1  # |r| autocorrelated: clustering
    kurtosis = ((r - r.mean()) ** 4).mean() / r.var() ** 2
    assert kurtosis > 6  # a Gaussian has 3


def test_bad_parameters_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="garch_alpha \\+ garch_beta"):
        SyntheticConfig(garch_alpha=0.5, garch_beta=0.6)
    with pytest.raises(ValueError, match="timeframe '2m' is not supported"):
        SyntheticConfig(timeframe="2m")
