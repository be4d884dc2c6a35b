"""Seeded synthetic markets: offline data with the texture of crypto and an optional planted edge.

The log return of bar t is

    r_t = ar1 * r_{t-1} + m_t + s_t * z_t + J_t

- ``z_t`` Student-t (``tail_df`` degrees of freedom) scaled to unit variance: fat tails.
- ``s_t`` GARCH(1,1) volatility: ``s_t^2 = w + garch_alpha * e_{t-1}^2 + garch_beta * s_{t-1}^2``
  with ``e = s z`` and ``w`` set so the long-run variance is the regime's, which gives
  volatility clustering. The regime (``calm`` / ``turbulent``, a two-state Markov chain with
  mean duration ``regime_bars``) multiplies the long-run volatility by ``regime_vol``.
- ``J_t`` jumps: a Bernoulli(``jump_prob``) event of size ``N(0, (jump_sigmas * s)^2)``.
- The planted edges: ``ar1`` is the AR(1) coefficient of returns (a short-horizon, weak edge);
  ``m_t`` is a slow hidden drift, an AR(1) process with persistence ``trend_persistence`` whose
  stationary standard deviation is ``trend_strength`` times the per-bar volatility, so past
  returns over a few hundred bars predict the next ones (momentum). With both zero the market is
  a martingale and no policy beats it after costs.

Bars: open = previous close (a continuous market), high/low reach beyond the body by
half-normal excursions of ``s_t / 2``, prices on a ``tick`` grid, volume log-normal and larger on
big moves. ``quote_volume``, ``trades`` and ``taker_buy_base`` are filled consistently. For
``market='futures'`` funding rates every 8 h are generated too (mark price = that bar's open).
The same config and seed give the same bytes on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from data.schema import HOUR_MS, bars_per_year, parse_time, timeframe_ms


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a synthetic market; every field has a sensible default."""

    seed: int = 0
    start: str = "2024-01-01"
    bars: int = 200_000
    timeframe: str = "1m"
    price0: float = 40_000.0
    tick: float = 0.01
    annual_vol: float = 0.6
    tail_df: float = 5.0
    garch_alpha: float = 0.06
    garch_beta: float = 0.92
    regime_bars: int = 20_000
    regime_vol: tuple[float, float] = (0.8, 1.8)
    jump_prob: float = 5e-4
    jump_sigmas: float = 8.0
    ar1: float = 0.1
    trend_strength: float = 0.1
    trend_persistence: float = 0.999
    volume_mean: float = 20.0
    funding_base: float = 1e-4

    def __post_init__(self) -> None:
        timeframe_ms(self.timeframe)
        parse_time(self.start, "start")
        if self.seed < 0:
            raise ValueError(f"seed must be 0 or more, got {self.seed}")
        if self.bars < 2:
            raise ValueError(f"bars must be at least 2, got {self.bars}")
        for name in ("annual_vol", "price0", "tick", "volume_mean"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.trend_strength >= 0:
            raise ValueError(f"trend_strength must be >= 0 (0 = no drift), got {self.trend_strength}")
        if not 0 <= self.garch_alpha + self.garch_beta < 1:
            raise ValueError("garch_alpha + garch_beta must be in [0, 1) for a stationary variance")
        if not -1 < self.ar1 < 1 or not 0 <= self.trend_persistence < 1:
            raise ValueError("ar1 must be in (-1, 1) and trend_persistence in [0, 1)")
        if self.tail_df <= 2:
            raise ValueError("tail_df must exceed 2 for a finite variance")


def _regimes(rng: np.random.Generator, n: int, mean_bars: int) -> np.ndarray:
    """Two-state Markov chain with geometric durations of mean ``mean_bars``; 0 calm, 1 turbulent."""
    out = np.empty(n, dtype=np.int8)
    i, state = 0, 0
    while i < n:
        length = int(rng.geometric(1.0 / max(mean_bars, 1)))
        out[i : i + length] = state
        i += length
        state = 1 - state
    return out


def generate(cfg: SyntheticConfig = SyntheticConfig()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Bars and funding events for ``cfg``: ``(bars, funding)`` in the store schema."""
    rng = np.random.default_rng(cfg.seed)
    n = cfg.bars
    bar_ms = timeframe_ms(cfg.timeframe)
    start = parse_time(cfg.start)
    start -= start % bar_ms
    sigma = cfg.annual_vol * math.sqrt(1.0 / bars_per_year(bar_ms))

    regime = _regimes(rng, n, cfg.regime_bars)
    long_var = (sigma * np.asarray(cfg.regime_vol)[regime]) ** 2
    t = rng.standard_t(cfg.tail_df, size=n) * math.sqrt((cfg.tail_df - 2) / cfg.tail_df)
    jumps = (rng.random(n) < cfg.jump_prob) * rng.standard_normal(n)
    trend_noise = rng.standard_normal(n)
    wick = np.abs(rng.standard_normal((2, n)))
    vol_noise = rng.standard_normal(n)
    taker = rng.beta(5.0, 5.0, size=n)

    # The recursions are sequential; plain floats keep this loop at ~1 µs per bar.
    a, b = cfg.garch_alpha, cfg.garch_beta
    w = (1.0 - a - b) * long_var
    trend_sd = cfg.trend_strength * sigma * math.sqrt(1.0 - cfg.trend_persistence**2)
    r = np.empty(n)
    s = np.empty(n)
    var, e_prev, r_prev, m = float(long_var[0]), 0.0, 0.0, 0.0
    for i in range(n):
        var = float(w[i]) + a * e_prev * e_prev + b * var
        sd = math.sqrt(var)
        e_prev = sd * float(t[i])
        m = cfg.trend_persistence * m + trend_sd * float(trend_noise[i])
        r_prev = cfg.ar1 * r_prev + m + e_prev + cfg.jump_sigmas * sd * float(jumps[i])
        r[i] = r_prev
        s[i] = sd

    decimals = max(0, -math.floor(math.log10(cfg.tick)))

    def on_tick(x: np.ndarray, how=np.round) -> np.ndarray:
        # the second round removes the binary residue of tick multiples (0.1 * 3 = 0.30000000000000004)
        return np.round(how(x / cfg.tick) * cfg.tick, decimals)

    close = on_tick(cfg.price0 * np.exp(np.cumsum(r)))
    open_ = np.concatenate([on_tick(np.array([cfg.price0])), close[:-1]])
    body_hi, body_lo = np.maximum(open_, close), np.minimum(open_, close)
    high = on_tick(body_hi * np.exp(0.5 * s * wick[0]), np.ceil)
    low = on_tick(body_lo * np.exp(-0.5 * s * wick[1]), np.floor)
    # rounding can cross the body by one ulp; keep the OHLC invariants exact
    high = np.maximum(high, body_hi)
    low = np.maximum(np.minimum(low, body_lo), cfg.tick)

    move = np.abs(r) / np.maximum(s, 1e-12)
    volume = np.round(cfg.volume_mean * np.exp(0.5 * vol_noise - 0.125) * (0.5 + 0.5 * move), 5)
    typical = (high + low + close) / 3.0
    ts = start + bar_ms * np.arange(n, dtype=np.int64)
    bars = pd.DataFrame(
        {
            "ts": ts,
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
            "quote_volume": volume * typical,
            "trades": np.maximum(np.round(volume * 8.0), 1.0),
            "taker_buy_base": np.round(volume * np.clip(taker + 10.0 * r, 0.0, 1.0), 5),
        }
    )

    fund_ms = 8 * HOUR_MS
    first = -(-ts[0] // fund_ms) * fund_ms
    fts = np.arange(first, ts[-1] + 1, fund_ms, dtype=np.int64)
    idx = (fts - ts[0]) // bar_ms
    # premium follows the recent drift: longs pay more after rallies, as on real perps
    past = pd.Series(r).rolling(480, min_periods=1).mean().to_numpy()[idx]
    rate = cfg.funding_base + np.clip(past / max(sigma, 1e-12), -3, 3) * 1e-4
    funding = pd.DataFrame({"ts": fts, "rate": np.round(rate, 8), "mark_price": open_[idx]})
    return bars, funding
