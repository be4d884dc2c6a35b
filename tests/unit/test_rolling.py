"""The compiled rolling sums give the numbers of the vectorised numpy form they replaced, to the
last bit: features (and so every trained policy's observations) did not move."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from envs.rolling import rolling_mean_std, rolling_moments, window_sums

_EPS = np.finfo(np.float64).eps


def _blocks(x: np.ndarray, n: int) -> np.ndarray:
    nb = -(-len(x) // n)
    xp = np.empty(nb * n)
    xp[: len(x)] = x
    xp[len(x) :] = x[-1]
    return xp.reshape(nb, n)


def _vectorised_window_sums(x: np.ndarray, n: int) -> np.ndarray:
    blocks = np.cumsum(_blocks(x, n), axis=1)
    out = blocks.copy()
    out[1:] += blocks[:-1, -1:] - blocks[:-1]
    return out.ravel()[: len(x)]


def _vectorised_moments(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """envs/rolling.py's rolling_moments as it was before it was compiled: the reference."""
    X = _blocks(x, n)
    nb = X.shape[0]
    ref = X[:, :1].copy()
    dev = X - ref
    s1 = np.cumsum(dev, axis=1)
    s2 = np.square(dev)
    np.cumsum(s2, axis=1, out=s2)
    size = np.abs(dev)
    np.maximum.accumulate(size, axis=1, out=size)
    if nb > 1:
        d = ref[:-1] - ref[1:]
        m_d = np.arange(n - 1.0, -1.0, -1.0) * d
        a1 = s1[:-1, -1:] - s1[:-1]
        a2 = s2[:-1, -1:] - s2[:-1]
        a2 += (2.0 * a1 + m_d) * d
        s2[1:] += a2
        a1 += m_d
        s1[1:] += a1
        np.maximum(size[1:], size[:-1, -1:] + np.abs(d), out=size[1:])
    count = np.arange(1.0, n + 1.0)
    s1[0] /= count
    s1[1:] /= n
    s2[0] /= count
    s2[1:] /= n
    mean_y, var = s1, s2
    var -= np.square(mean_y)
    dev -= mean_y
    size *= size
    size *= 16.0 * n * _EPS
    zero = var <= size
    flat = X.ravel()
    changes = np.empty(flat.size, dtype=np.int64)
    changes[0] = 0
    np.cumsum(flat[1:] != flat[:-1], out=changes[1:])
    first = np.zeros_like(changes)
    first[n - 1 :] = changes[: flat.size - n + 1]
    zero |= (changes == first).reshape(nb, n)
    np.copyto(var, 0.0, where=zero)
    mean_y += ref
    T = len(x)
    return mean_y.ravel()[:T], dev.ravel()[:T], var.ravel()[:T]


def _series() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    out = []
    for T in (1, 2, 13, 14, 20, 239, 1440, 1441, 1714, 3001):
        out.append(rng.normal(size=T))
        out.append(np.round(rng.normal(size=T), 1))  # many exact repeats
        out.append(np.full(T, 3.7))  # flat
        prices = 6e4 + rng.normal(size=T) * 1e-3
        prices[T // 3 : T // 3 + 50] = 6e4  # a flat stretch after a move, at a price's scale
        out.append(prices)
        with_nan = rng.normal(size=T)
        with_nan[::7] = np.nan
        out.append(with_nan)
        with_inf = rng.normal(size=T)
        with_inf[T // 2] = np.inf
        out.append(with_inf)
        out.append(np.maximum(rng.normal(size=T), 0.0))  # RSI's gains: runs of exact zeros
    return out


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return np.array_equal(a, b, equal_nan=True) and np.array_equal(np.signbit(a), np.signbit(b))


@pytest.mark.parametrize("n", [1, 2, 14, 20, 30, 60, 240, 1440])
def test_compiled_rolling_sums_equal_the_vectorised_form_bit_for_bit(n):
    for x in _series():
        with np.errstate(invalid="ignore"):
            want = _vectorised_moments(x, n)
            sums = _vectorised_window_sums(x, n)
        for got, ref in zip(rolling_moments(x, n), want, strict=True):
            assert _same(got, ref), (len(x), n)
        assert _same(window_sums(x, n), sums), (len(x), n)


def test_compiled_rolling_moments_equal_the_vectorised_form_on_real_prices(shared_data):
    bars = pd.read_parquet(shared_data / "binance" / "futures_um" / "BTCUSDT" / "5m.parquet")
    close = bars["close"].to_numpy()[:60_000]
    for x in (close, np.diff(np.log(close)), np.log1p(bars["volume"].to_numpy()[:60_000])):
        for n in (20, 30, 60, 240, 1440):
            for got, ref in zip(rolling_moments(x, n), _vectorised_moments(x, n), strict=True):
                assert _same(got, ref), n
            mean, std = rolling_mean_std(x, n)
            assert _same(mean, _vectorised_moments(x, n)[0]) and _same(
                std, np.sqrt(_vectorised_moments(x, n)[2])
            )
