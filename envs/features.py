"""Observation features: one module for the env (whole history) and the serving loop (a buffer).

The env calls :func:`compute_features` once per contiguous segment of history; the serving loop
calls it on its rolling buffer of the last ``K`` bars and reads the last row. The rules below
make both give the same numbers (tests pin each one).

Contract
--------
- **Causal.** Row ``t`` uses only bars ``0..t``. Changing or dropping any bar after ``t`` leaves
  rows ``0..t`` bit-for-bit unchanged.
- **Finite memory.** Row ``t`` depends only on bars ``t - W .. t`` once ``t >= W``, where
  ``W = warmup(names, norm_window)``. A buffer of ``K >= W + 1`` bars therefore reproduces the
  last row of the whole-history computation (to float32 rounding). Earlier rows are computed
  from partial windows (``min_periods=1``): finite, but they depend on where the history starts,
  so no episode may start there.
- **Normalised with the past only.** Every output has unit-ish scale:

  * unbounded features (``log_return range body volatility atr macd_hist``) become a causal
    rolling z-score over the last ``norm_window`` values up to and including ``t`` (population
    std), clipped to ``[-10, 10]``;
  * ``volume_z`` is the rolling z-score of ``log(1 + volume)`` over 60 bars (volume relative to
    the last hour of 1m bars), clipped to ``[-10, 10]``;
  * ``rsi -> (rsi - 50) / 50``; ``bb_pctb -> 2 (pctb - 0.5)`` clipped to ``[-5, 5]``;
    ``taker_imbalance = 2 taker_buy_base / volume - 1`` (0 where volume is 0 or taker data is
    NaN); time features are sin/cos in ``[-1, 1]``; ``funding_rate`` in basis points
    (``rate * 1e4``) clipped to ``[-10, 10]``, 0 where unknown.
  * Wherever a window's std is 0 (flat data) the output is 0, never NaN or inf.

Features
--------
``c o h l v`` are the bar's close, open, high, low and volume; ``r_t = log(c_t / c_{t-1})``
with ``r_0 = 0``; ``W`` is the warm-up in bars with ``N = norm_window`` (1440 by default).

- ``log_return``: ``r_t``. W = N.
- ``range``: ``(h - l) / c``. W = N - 1.
- ``body``: ``(c - o) / o``. W = N - 1.
- ``volatility``: population std of ``r`` over the last 30 bars. W = N + 29.
- ``volume_z``: z-score of ``log(1 + v)`` over the last 60 bars. W = 59.
- ``taker_imbalance``: ``2 taker_buy_base / v - 1``. W = 0.
- ``rsi``: Cutler's RSI(14), ``100 G / (G + L)`` with ``G`` / ``L`` the sums of the gains /
  losses of the last 14 close-to-close changes; 50 when nothing changed. W = 14.
- ``atr``: ATR(14) / c, ATR the simple mean over 14 bars of the true range
  ``max(h, c_{t-1}) - min(l, c_{t-1})``. W = N + 13.
- ``bb_pctb``: Bollinger %B(20, 2), ``(c - (m - 2 s)) / (4 s)`` with ``m`` and ``s`` the mean
  and population std of the last 20 closes; 0.5 when they are all equal. W = 19.
- ``macd_hist``: MACD(12, 26, 9) histogram / c, with finite-memory EMAs (below). W = N + 242.
- ``momentum_240``, ``momentum_1440``: ``log(c_t / c_{t-k}) / (s sqrt(k))`` with ``s`` the
  population std of ``r`` over the last ``k`` bars: the move over ``k`` bars in units of its own
  noise, clipped to [-10, 10], 0 where ``s`` is 0. Fewer bars at a segment's start. W = k.
- ``time_of_day``: two columns, sin and cos of the bar's open time of day (UTC). W = 0.
- ``day_of_week``: two columns, sin and cos of the bar's open time in the week, Monday 00:00
  UTC = 0. W = 0.
- ``funding_rate``: the caller's per-bar last funding rate known at the bar's close. W = 0.

The warm-up of a set of features is the largest of theirs: 1682 bars for the 8 defaults.

MACD uses exponential moving averages with finite memory: the EMA of span ``s`` keeps the last
``7 s`` weights ``a (1 - a)^k`` (``a = 2 / (s + 1)``) renormalised to sum to 1. The weight it
drops is below 1e-6, so it is the textbook EMA to about six digits, while the histogram becomes
one exact 244-tap causal filter of the closes: finite memory holds exactly rather than up to an
exponentially fading error. Before bar 243 the missing closes are taken equal to the first one
(the usual "seed the EMA with the first value").

Numerics
--------
Everything is computed in float64 and cast to float32 once. Rolling sums use cumulative sums
that restart every window length and are taken about the first value of each block, so their
size is that of the local data: a plain cumsum over a year of BTC prices would lose about five
digits of a 20-bar variance. A window whose values are all equal (counted exactly) has variance
0, and so has one whose variance is below the rounding noise of its block, so a flat stretch
after a move gives 0 and not a z-score of noise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from data.schema import DAY_MS, WEEK_MS, WEEK_ORIGIN_MS
from envs.rolling import rolling_mean_std, rolling_moments, window_sums

NORM_WINDOW = 1440
"""Bars in the rolling z-score of the unbounded features (one day of 1m bars)."""
Z_CLIP = 10.0
PCTB_CLIP = 5.0
FUNDING_CLIP_BPS = 10.0

VOLATILITY_WINDOW = 30
VOLUME_WINDOW = 60
RSI_WINDOW = 14
ATR_WINDOW = 14
BB_WINDOW = 20
BB_STDS = 2.0
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
EMA_MEMORY_SPANS = 7
"""An EMA of span ``s`` keeps its last ``7 s`` weights; the weight dropped is < 1e-6."""


@dataclass(frozen=True)
class FeatureSpec:
    """One named feature: what it measures, what it needs, and how far back it looks.

    ``lookback``: the raw value at bar ``t`` uses bars ``t - lookback .. t``. ``zscore``: the raw
    value is turned into a rolling z-score over ``norm_window`` bars, which looks
    ``norm_window - 1`` values further back; otherwise ``scale`` maps it to about [-1, 1].
    ``raw`` computes the indicator from the bars (see :func:`raw_features`).
    """

    name: str
    doc: str
    lookback: int
    zscore: bool
    columns: tuple[str, ...]
    raw: Callable[[_Series], np.ndarray] = field(repr=False, compare=False)
    scale: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False, compare=False)
    needs_taker_buy: bool = False
    needs_funding: bool = False

    def __post_init__(self) -> None:
        if self.zscore == (self.scale is not None):
            raise ValueError(f"feature {self.name!r} needs exactly one of zscore=True or a scale")

    def warmup(self, norm_window: int = NORM_WINDOW) -> int:
        """Bars before the first row that no longer depends on where the history started."""
        return self.lookback + (norm_window - 1 if self.zscore else 0)


def _zscore(x: np.ndarray, n: int, clip: float = Z_CLIP) -> np.ndarray:
    _, dev, var = rolling_moments(x, n)
    std = np.sqrt(var)
    z = np.divide(dev, std, out=np.zeros_like(dev), where=std > 0)
    return np.clip(z, -clip, clip, out=z)


def _ema_weights(span: int) -> np.ndarray:
    a = 2.0 / (span + 1.0)
    w = a * (1.0 - a) ** np.arange(EMA_MEMORY_SPANS * span)
    return w / w.sum()


def _macd_kernel(fast: int, slow: int, signal: int) -> np.ndarray:
    """The filter ``k`` with ``macd_hist = k * close`` (a causal convolution).

    ``macd = (w_fast - w_slow) * c`` and ``hist = macd - w_signal * macd = (1 - w_signal) * macd``.
    """
    wf, ws = _ema_weights(fast), _ema_weights(slow)
    line = np.zeros(max(len(wf), len(ws)))
    line[: len(wf)] += wf
    line[: len(ws)] -= ws
    one_minus_signal = -_ema_weights(signal)
    one_minus_signal[0] += 1.0
    return np.convolve(line, one_minus_signal)


_MACD_KERNEL = _macd_kernel(MACD_FAST, MACD_SLOW, MACD_SIGNAL)


# --------------------------------------------------------------------------- raw features


class _Series:
    """Validated float64 columns of one contiguous segment, with shared intermediates."""

    def __init__(self, cols: dict[str, np.ndarray], funding_rate: np.ndarray | None) -> None:
        self.ts = cols["ts"]
        self.open = cols["open"]
        self.high = cols["high"]
        self.low = cols["low"]
        self.close = cols["close"]
        self.volume = cols["volume"]
        self.taker_buy_base = cols.get("taker_buy_base")
        self.funding_rate = funding_rate

    @cached_property
    def log_return(self) -> np.ndarray:
        r = np.zeros(len(self.close))
        r[1:] = np.log(self.close[1:] / self.close[:-1])
        return r

    @cached_property
    def prev_close(self) -> np.ndarray:
        """``c_{t-1}``, and ``c_0`` for the first bar (so its change and gap are 0)."""
        p = np.empty(len(self.close))
        p[0] = self.close[0]
        p[1:] = self.close[:-1]
        return p


def _raw_log_return(s: _Series) -> np.ndarray:
    return s.log_return


def _raw_range(s: _Series) -> np.ndarray:
    return (s.high - s.low) / s.close


def _raw_body(s: _Series) -> np.ndarray:
    return (s.close - s.open) / s.open


def _raw_volatility(s: _Series) -> np.ndarray:
    return rolling_mean_std(s.log_return, VOLATILITY_WINDOW)[1]


def _raw_volume_z(s: _Series) -> np.ndarray:
    return _zscore(np.log1p(s.volume), VOLUME_WINDOW, clip=np.inf)


def _momentum(s: _Series, k: int) -> np.ndarray:
    """``log(c_t / c_{t-k}) / (sigma_t * sqrt(k))``: the move over ``k`` bars in units of its
    own noise (a t-statistic of the drift), ``sigma_t`` the std of 1-bar log returns over ``k``
    bars; fewer bars at the start of a segment. Clipped to [-10, 10]."""
    c = np.log(s.close)
    past = np.empty_like(c)
    past[:k] = c[0]
    past[k:] = c[:-k]
    n = np.minimum(np.arange(len(c)), k)
    sigma = rolling_mean_std(s.log_return, k)[1]
    scale = sigma * np.sqrt(np.maximum(n, 1))
    m = np.divide(c - past, scale, out=np.zeros_like(c), where=scale > 0)
    return np.clip(m, -Z_CLIP, Z_CLIP)


def _raw_momentum_240(s: _Series) -> np.ndarray:
    return _momentum(s, 240)


def _raw_momentum_1440(s: _Series) -> np.ndarray:
    return _momentum(s, 1440)


def _raw_taker_imbalance(s: _Series) -> np.ndarray:
    v, buy = s.volume, s.taker_buy_base
    ok = (v > 0) & np.isfinite(buy)
    imb = np.divide(2.0 * np.where(ok, buy, 0.0), v, out=np.ones_like(v), where=ok) - 1.0
    return np.clip(imb, -1.0, 1.0)  # taker buys above volume would be a data error, not a signal


def _raw_rsi(s: _Series) -> np.ndarray:
    change = s.close - s.prev_close
    gains = window_sums(np.maximum(change, 0.0), RSI_WINDOW)
    losses = window_sums(np.maximum(-change, 0.0), RSI_WINDOW)
    total = gains + losses
    return np.divide(100.0 * gains, total, out=np.full_like(total, 50.0), where=total > 0)


def _raw_atr(s: _Series) -> np.ndarray:
    true_range = np.maximum(s.high, s.prev_close) - np.minimum(s.low, s.prev_close)
    count = np.minimum(np.arange(1.0, len(true_range) + 1.0), ATR_WINDOW)
    return window_sums(true_range, ATR_WINDOW) / count / s.close


def _raw_bb_pctb(s: _Series) -> np.ndarray:
    _, dev, var = rolling_moments(s.close, BB_WINDOW)
    band = 2.0 * BB_STDS * np.sqrt(var)  # upper minus lower band
    return np.divide(dev, band, out=np.zeros_like(dev), where=band > 0) + 0.5


def _raw_macd_hist(s: _Series) -> np.ndarray:
    k = len(_MACD_KERNEL)
    padded = np.empty(len(s.close) + k - 1)
    padded[: k - 1] = s.close[0]
    padded[k - 1 :] = s.close
    return np.convolve(padded, _MACD_KERNEL, mode="valid") / s.close


def _cyclic(phase: np.ndarray) -> np.ndarray:
    angle = 2.0 * np.pi * phase
    return np.column_stack([np.sin(angle), np.cos(angle)])


def _raw_time_of_day(s: _Series) -> np.ndarray:
    return _cyclic((s.ts % DAY_MS) / DAY_MS)


def _raw_day_of_week(s: _Series) -> np.ndarray:
    return _cyclic(((s.ts - WEEK_ORIGIN_MS) % WEEK_MS) / WEEK_MS)


def _raw_funding_rate(s: _Series) -> np.ndarray:
    return np.nan_to_num(s.funding_rate, nan=0.0)


def _scale_rsi(x: np.ndarray) -> np.ndarray:
    return (x - 50.0) / 50.0


def _scale_pctb(x: np.ndarray) -> np.ndarray:
    return np.clip(2.0 * (x - 0.5), -PCTB_CLIP, PCTB_CLIP)


def _scale_volume_z(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -Z_CLIP, Z_CLIP)


def _scale_funding(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 1e4, -FUNDING_CLIP_BPS, FUNDING_CLIP_BPS)


def _identity(x: np.ndarray) -> np.ndarray:
    return x


_MACD_LOOKBACK = len(_MACD_KERNEL) - 1

_SPECS = (
    FeatureSpec(
        name="log_return",
        doc="log(c_t / c_{t-1}), 0 on the first bar",
        lookback=1,
        zscore=True,
        columns=("log_return",),
        raw=_raw_log_return,
    ),
    FeatureSpec(
        name="range",
        doc="(high - low) / close",
        lookback=0,
        zscore=True,
        columns=("range",),
        raw=_raw_range,
    ),
    FeatureSpec(
        name="body",
        doc="(close - open) / open",
        lookback=0,
        zscore=True,
        columns=("body",),
        raw=_raw_body,
    ),
    FeatureSpec(
        name="volatility",
        doc=f"population std of log returns over {VOLATILITY_WINDOW} bars",
        lookback=VOLATILITY_WINDOW,
        zscore=True,
        columns=("volatility",),
        raw=_raw_volatility,
    ),
    FeatureSpec(
        name="volume_z",
        doc=f"z-score of log(1 + volume) over {VOLUME_WINDOW} bars",
        lookback=VOLUME_WINDOW - 1,
        zscore=False,
        columns=("volume_z",),
        raw=_raw_volume_z,
        scale=_scale_volume_z,
    ),
    FeatureSpec(
        name="taker_imbalance",
        doc="2 * taker_buy_base / volume - 1, 0 where volume is 0 or taker data unknown",
        lookback=0,
        zscore=False,
        columns=("taker_imbalance",),
        raw=_raw_taker_imbalance,
        scale=_identity,
        needs_taker_buy=True,
    ),
    FeatureSpec(
        name="rsi",
        doc=f"Cutler's RSI({RSI_WINDOW}) from simple sums of gains and losses, as (rsi - 50) / 50",
        lookback=RSI_WINDOW,
        zscore=False,
        columns=("rsi",),
        raw=_raw_rsi,
        scale=_scale_rsi,
    ),
    FeatureSpec(
        name="atr",
        doc=f"ATR({ATR_WINDOW}) / close, ATR the simple mean of the true range",
        lookback=ATR_WINDOW,
        zscore=True,
        columns=("atr",),
        raw=_raw_atr,
    ),
    FeatureSpec(
        name="bb_pctb",
        doc=f"Bollinger %B({BB_WINDOW}, {BB_STDS:g} std) as 2 (pctb - 0.5)",
        lookback=BB_WINDOW - 1,
        zscore=False,
        columns=("bb_pctb",),
        raw=_raw_bb_pctb,
        scale=_scale_pctb,
    ),
    FeatureSpec(
        name="macd_hist",
        doc=f"MACD({MACD_FAST}, {MACD_SLOW}, {MACD_SIGNAL}) histogram / close, finite-memory EMAs",
        lookback=len(_MACD_KERNEL) - 1,
        zscore=True,
        columns=("macd_hist",),
        raw=_raw_macd_hist,
    ),
    FeatureSpec(
        name="momentum_240",
        doc="log(c_t / c_{t-240}) / (std of 1-bar log returns over 240 bars * sqrt(240))",
        lookback=240,
        zscore=False,
        columns=("momentum_240",),
        raw=_raw_momentum_240,
        scale=_identity,
    ),
    FeatureSpec(
        name="momentum_1440",
        doc="log(c_t / c_{t-1440}) / (std of 1-bar log returns over 1440 bars * sqrt(1440))",
        lookback=1440,
        zscore=False,
        columns=("momentum_1440",),
        raw=_raw_momentum_1440,
        scale=_identity,
    ),
    FeatureSpec(
        name="time_of_day",
        doc="sin and cos of the bar's open time of day, UTC",
        lookback=0,
        zscore=False,
        columns=("time_of_day_sin", "time_of_day_cos"),
        raw=_raw_time_of_day,
        scale=_identity,
    ),
    FeatureSpec(
        name="day_of_week",
        doc="sin and cos of the bar's open time in the week, Monday 00:00 UTC = 0",
        lookback=0,
        zscore=False,
        columns=("day_of_week_sin", "day_of_week_cos"),
        raw=_raw_day_of_week,
        scale=_identity,
    ),
    FeatureSpec(
        name="funding_rate",
        doc="last funding rate known at the bar's close, in basis points",
        lookback=0,
        zscore=False,
        columns=("funding_rate",),
        raw=_raw_funding_rate,
        scale=_scale_funding,
        needs_funding=True,
    ),
)
FEATURES: dict[str, FeatureSpec] = {spec.name: spec for spec in _SPECS}
"""Every feature by name, in the order the module docstring lists them."""

DEFAULT_FEATURES: tuple[str, ...] = (
    "log_return",
    "range",
    "body",
    "volatility",
    "volume_z",
    "rsi",
    "bb_pctb",
    "macd_hist",
)

_PRICE_COLUMNS = ("open", "high", "low", "close")
_REQUIRED_COLUMNS = ("ts", *_PRICE_COLUMNS, "volume")


# --------------------------------------------------------------------------- public API


def _known(names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        raise ValueError(f"features must be a list of names, not the string {names!r}; e.g. [{names!r}]")
    names = tuple(names)
    for name in names:
        if name not in FEATURES:
            raise ValueError(f"unknown feature {name!r}; choose from: {', '.join(FEATURES)}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"feature(s) {', '.join(map(repr, dupes))} listed more than once")
    return names


def check_features(names: Sequence[str], *, has_taker_buy: bool, has_funding: bool) -> tuple[str, ...]:
    """The names as a tuple, or a ValueError saying which one is unknown, repeated, or needs data
    the series does not have (``taker_buy_base`` in the bars, or funding for a perpetual)."""
    names = _known(names)
    for name in names:
        spec = FEATURES[name]
        if spec.needs_taker_buy and not has_taker_buy:
            raise ValueError(
                f"feature {name!r} needs taker_buy_base in the bars (Binance archive klines carry it, "
                "ccxt OHLCV does not); drop it or use a series that has it"
            )
        if spec.needs_funding and not has_funding:
            raise ValueError(
                f"feature {name!r} needs funding data (a perpetual futures series with stored funding "
                "rates); drop it for spot markets"
            )
    return names


def columns(names: Sequence[str]) -> list[str]:
    """Output column names, in order: one per feature, two for ``time_of_day`` / ``day_of_week``."""
    return [col for name in _known(names) for col in FEATURES[name].columns]


def _check_norm_window(norm_window: int) -> int:
    if int(norm_window) != norm_window or norm_window < 2:
        raise ValueError(f"norm_window must be an integer >= 2 bars, got {norm_window!r}")
    return int(norm_window)


def warmup(names: Sequence[str], norm_window: int = NORM_WINDOW) -> int:
    """Bars needed before the first row whose value no longer depends on where the history
    started: for ``t >= warmup``, row ``t`` is a function of bars ``t - warmup .. t`` alone."""
    norm_window = _check_norm_window(norm_window)
    return max((FEATURES[n].warmup(norm_window) for n in _known(names)), default=0)


def _series(bars: Mapping[str, np.ndarray], bar_ms: int, funding_rate: np.ndarray | None) -> _Series:
    missing = [c for c in _REQUIRED_COLUMNS if c not in bars]
    if missing:
        raise ValueError(f"bars lack column(s) {missing}; expected {list(_REQUIRED_COLUMNS)}")
    cols = {c: np.ascontiguousarray(bars[c], dtype=np.float64) for c in (*_PRICE_COLUMNS, "volume")}
    cols["ts"] = np.ascontiguousarray(bars["ts"], dtype=np.int64)
    if "taker_buy_base" in bars:
        cols["taker_buy_base"] = np.ascontiguousarray(bars["taker_buy_base"], dtype=np.float64)
    n = len(cols["ts"])
    lengths = {c: len(v) for c, v in cols.items() if len(v) != n}
    if funding_rate is not None:
        funding_rate = np.ascontiguousarray(funding_rate, dtype=np.float64)
        if len(funding_rate) != n:
            lengths["funding_rate"] = len(funding_rate)
    if lengths:
        raise ValueError(f"every column must have one value per bar ({n} ts); got lengths {lengths}")
    for c in _PRICE_COLUMNS:
        bad = ~((cols[c] > 0) & (cols[c] < np.inf))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{c} must be positive and finite; row {i} (ts {cols['ts'][i]}) has {cols[c][i]}"
            )
    bad = ~((cols["volume"] >= 0) & (cols["volume"] < np.inf))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"volume must be >= 0 and finite; row {i} (ts {cols['ts'][i]}) has {cols['volume'][i]}"
        )
    if bar_ms < 0:
        raise ValueError(f"bar_ms must be the bar length in ms (0 for volume/dollar bars), got {bar_ms}")
    if bar_ms > 0 and n > 1:
        step = np.diff(cols["ts"])
        if (step != bar_ms).any():
            i = int(np.argmax(step != bar_ms))
            raise ValueError(
                f"bars must be one contiguous segment of {bar_ms} ms bars, but ts jumps by {step[i]} ms "
                f"after row {i} (ts {cols['ts'][i]}); compute features per segment (Bars.segments)"
            )
    return _Series(cols, funding_rate)


def _table(
    bars: Mapping[str, np.ndarray],
    names: Sequence[str],
    bar_ms: int,
    funding_rate: np.ndarray | None,
    norm_window: int | None,
    dtype: type,
) -> np.ndarray:
    names = check_features(
        names, has_taker_buy="taker_buy_base" in bars, has_funding=funding_rate is not None
    )
    s = _series(bars, bar_ms, funding_rate)
    T = len(s.ts)
    out = np.empty((T, len(columns(names))), dtype=dtype)
    if T == 0:
        return out
    j = 0
    for name in names:
        spec = FEATURES[name]
        x = spec.raw(s)
        if norm_window is not None:
            x = _zscore(x, norm_window) if spec.zscore else spec.scale(x)
        x = x.reshape(T, -1)
        out[:, j : j + x.shape[1]] = x  # the one cast to float32 happens here
        j += x.shape[1]
    return out


def raw_features(
    bars: Mapping[str, np.ndarray],
    names: Sequence[str],
    *,
    bar_ms: int,
    funding_rate: np.ndarray | None = None,
) -> np.ndarray:
    """The indicators before normalisation, ``(T, F)`` float64 in :func:`columns` order.

    RSI in 0..100, %B with 0 and 1 at the bands, ATR and the MACD histogram as fractions of
    close, the funding rate as a rate; for research and for checking against other libraries.
    """
    return _table(bars, names, bar_ms, funding_rate, None, np.float64)


def compute_features(
    bars: Mapping[str, np.ndarray],
    names: Sequence[str],
    *,
    bar_ms: int,
    funding_rate: np.ndarray | None = None,
    norm_window: int = NORM_WINDOW,
) -> np.ndarray:
    """Causal, past-normalised features of one contiguous segment: ``(T, F)`` float32, C order.

    ``bars`` maps ``ts open high low close volume`` (and ``taker_buy_base`` when present) to 1-D
    arrays with one value per bar and no gaps (split at gaps first); ``bar_ms`` is the bar length,
    checked against ``ts`` (0 for volume or dollar bars, whose times are irregular).
    ``funding_rate`` is per bar: the last rate known at that bar's close (already causal).
    Columns follow :func:`columns`; see the module docstring for definitions and warm-ups.
    """
    return _table(bars, names, bar_ms, funding_rate, _check_norm_window(norm_window), np.float32)
