"""Market arrays for the replay: prices, causal cost inputs, funding per bar and features.

Everything an env step reads is computed here once, over the whole history, as contiguous
arrays indexed by bar. Values at bar ``t`` use bars ``0..t`` only, and rolling values restart
after every gap, so nothing leaks across time or across a hole in the data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from data.schema import BAR_COLUMNS, HOUR_MS, iso
from data.validate import check_bars, find_segments
from envs import features as feats
from envs.config import EnvConfig
from envs.rolling import rolling_mean_std


@dataclass(frozen=True)
class MarketData:
    """Bars and everything derived from them; see the module docstring for causality."""

    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    half_spread: np.ndarray
    sigma: np.ndarray
    ref_volume: np.ndarray
    funding_per_unit: np.ndarray
    funding_rate: np.ndarray
    features: np.ndarray
    feature_columns: tuple[str, ...]
    segments: np.ndarray
    warmup: int
    bar_ms: int

    def __len__(self) -> int:
        return len(self.ts)


def _bar_ms(ts: np.ndarray) -> int:
    if len(ts) < 2:
        raise ValueError("bars must hold at least 2 rows")
    step = int(np.min(np.diff(ts)))
    if step <= 0:
        raise ValueError("bars must be sorted by ts without duplicates")
    return step


def _funding(
    ts: np.ndarray, close: np.ndarray, bar_ms: int, funding: pd.DataFrame | None, cfg: EnvConfig
) -> tuple[np.ndarray, np.ndarray]:
    """``(funding_per_unit, last_rate)`` per bar.

    An event at time ``T`` belongs to the bar with ``open < T <= open + bar_ms``: it is charged
    at that bar's close on the position held through the bar. ``funding_per_unit`` sums
    ``mark * rate`` of the bar's events (mark = the event's mark price, else the bar's close);
    ``last_rate`` is the latest rate known at each bar's close, for observations.
    """
    n = len(ts)
    per_unit = np.zeros(n)
    last = np.zeros(n)
    if cfg.market != "perp":
        return per_unit, last
    if funding is None or len(funding) == 0:
        interval = int(cfg.funding_interval_hours * HOUR_MS)
        events = (ts + bar_ms) // interval - ts // interval  # multiples of the interval in (open, close]
        per_unit[:] = events * cfg.funding_rate * close
        last[:] = cfg.funding_rate
        return per_unit, last
    rate_col = "rate" if "rate" in funding.columns else "funding_rate"
    if rate_col not in funding.columns or "ts" not in funding.columns:
        raise ValueError(f"funding must have columns ts, rate[, mark_price]; got {list(funding.columns)}")
    fts = funding["ts"].to_numpy(dtype=np.int64)
    rate = funding[rate_col].to_numpy(dtype=np.float64)
    if not np.isfinite(rate).all():
        bad = int(fts[~np.isfinite(rate)][0])
        raise ValueError(f"funding rate at {iso(bad)} is not a finite number")
    if (np.diff(fts) <= 0).any():
        raise ValueError("funding must be sorted by ts without duplicates")
    mark = (
        funding["mark_price"].to_numpy(dtype=np.float64)
        if "mark_price" in funding.columns
        else np.full(len(fts), np.nan)
    )
    j = np.searchsorted(ts, fts, side="left") - 1
    inside = (j >= 0) & (fts <= ts[np.maximum(j, 0)] + bar_ms)
    j, ev_rate, ev_mark = j[inside], rate[inside], mark[inside]
    ev_mark = np.where(np.isfinite(ev_mark), ev_mark, close[j])
    np.add.at(per_unit, j, ev_rate * ev_mark)
    known = np.searchsorted(fts, ts + bar_ms, side="right") - 1
    last = np.where(known >= 0, rate[np.maximum(known, 0)], 0.0)
    return per_unit, last


def prepare(
    bars: pd.DataFrame | Mapping[str, np.ndarray], funding: pd.DataFrame | None, cfg: EnvConfig
) -> MarketData:
    """Check the bars and compute every array the kernel and the observations read.

    ``bars`` is a DataFrame in the store's schema or a mapping of its column names to arrays (the
    serving loop's buffer, which so skips pandas); both take the same path."""
    missing = [c for c in BAR_COLUMNS if c not in bars]
    if missing:
        raise ValueError(f"bars lack columns {missing}; expected {list(BAR_COLUMNS)} (the store's schema)")
    ts = np.asarray(bars["ts"])
    if not np.issubdtype(ts.dtype, np.integer):
        raise ValueError(f"bars.ts must be int64 epoch milliseconds (bar open time), got {ts.dtype}")
    ts = ts.astype(np.int64)
    bar_ms = _bar_ms(ts)
    issues = check_bars(bars, bar_ms)
    if issues:
        raise ValueError(f"bars fail validation ({len(issues)} problem(s)), first: {issues[0]}")
    cols = {c: np.ascontiguousarray(bars[c], dtype=np.float64) for c in BAR_COLUMNS[1:]}
    taker = np.asarray(bars["taker_buy_base"], dtype=np.float64) if "taker_buy_base" in bars else None
    has_taker = taker is not None and not np.isnan(taker).all()
    if has_taker:
        cols["taker_buy_base"] = taker
    names = feats.check_features(
        cfg.features if cfg.features is not None else default_features(cfg),
        has_taker_buy=has_taker,
        has_funding=cfg.market == "perp",
    )
    per_unit, last_rate = _funding(ts, cols["close"], bar_ms, funding, cfg)
    segments = find_segments(ts, bar_ms)

    n = len(ts)
    half_spread = np.empty(n)
    sigma = np.empty(n)
    ref_volume = np.empty(n)
    columns = feats.columns(names)
    table = np.empty((n, len(columns)), dtype=np.float32)
    for a, b in segments:
        part = {k: v[a:b] for k, v in cols.items()}
        part["ts"] = ts[a:b]
        logc = np.log(part["close"])
        r = np.diff(logc, prepend=logc[0])
        sigma[a:b] = rolling_mean_std(r, cfg.vol_window)[1]
        ref_volume[a:b] = rolling_mean_std(part["volume"], cfg.vol_window)[0]
        if cfg.spread == "fixed":
            half_spread[a:b] = cfg.spread_bps / 2e4
        else:
            # Abdi & Ranaldo (2017): s^2 = 4 (c_{t-1} - eta_{t-1}) (c_{t-1} - eta_t), eta the log
            # mid-range; it uses bars t-1 and t only, so the estimate at t is known at t
            eta = (np.log(part["high"]) + np.log(part["low"])) / 2
            s2 = np.zeros(b - a)
            s2[1:] = 4 * (logc[:-1] - eta[:-1]) * (logc[:-1] - eta[1:])
            half_spread[a:b] = np.sqrt(np.maximum(rolling_mean_std(s2, cfg.spread_window)[0], 0.0)) / 2
        table[a:b] = feats.compute_features(
            part, names, bar_ms=bar_ms, funding_rate=last_rate[a:b], norm_window=cfg.norm_window
        )
    warmup = max(feats.warmup(names, cfg.norm_window), cfg.vol_window, cfg.spread_window)
    return MarketData(
        ts=ts,
        open=cols["open"],
        high=cols["high"],
        low=cols["low"],
        close=cols["close"],
        volume=cols["volume"],
        half_spread=half_spread,
        sigma=sigma,
        ref_volume=ref_volume,
        funding_per_unit=per_unit,
        funding_rate=last_rate,
        features=np.ascontiguousarray(table),
        feature_columns=tuple(columns),
        segments=segments,
        warmup=warmup,
        bar_ms=bar_ms,
    )


def default_features(cfg: EnvConfig) -> tuple[str, ...]:
    if cfg.market == "perp":
        return (*feats.DEFAULT_FEATURES, "funding_rate")
    return feats.DEFAULT_FEATURES


@dataclass(frozen=True)
class EpisodeStarts:
    """Valid first decision bars: ``[lo, hi)`` index ranges, one per usable segment, and the
    last bar index each can step to (the end of its segment)."""

    lo: np.ndarray
    hi: np.ndarray
    seg_last: np.ndarray

    @property
    def count(self) -> int:
        return int((self.hi - self.lo).sum())

    def pick(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Start index and segment end for the ``k``-th valid start (k in [0, count))."""
        sizes = self.hi - self.lo
        cum = np.cumsum(sizes)
        seg = np.searchsorted(cum, k, side="right")
        offset = k - (cum[seg] - sizes[seg])
        return self.lo[seg] + offset, self.seg_last[seg]


def episode_starts(market: MarketData, window: int) -> EpisodeStarts:
    """Starts leave ``warmup + window - 1`` bars of history inside the segment, so that every row
    of the first observation's window is warmed up (a function of the bars before it alone, not of
    where the data began), and at least one bar to step into; episodes end at their segment's last
    bar (never across a gap)."""
    need = market.warmup + window - 1
    lo = market.segments[:, 0] + need
    last = market.segments[:, 1] - 1
    hi = last  # a start at the last bar could not step
    ok = hi > lo
    if not ok.any():
        longest = int((market.segments[:, 1] - market.segments[:, 0]).max())
        raise ValueError(
            f"no episode fits: the longest gap-free stretch has {longest} bars, but an episode needs "
            f"{need} bars of history (env.window={window}, feature/cost warm-up {market.warmup} bars: "
            "lower env.norm_window, env.vol_window or env.window, or give more data) and one bar to step"
        )
    return EpisodeStarts(lo[ok], hi[ok], last[ok])


def load_market(
    symbol: str,
    timeframe: str = "1m",
    *,
    exchange: str = "binance",
    market: str = "spot",
    start: str | int | None = None,
    end: str | int | None = None,
    root: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Bars (and, for ``market="perp"``, funding) of a series in the store, as the env takes them.

    ``market`` is the account type: ``perp`` reads the store's ``futures`` market and its funding
    history (``None`` when the store has none, so the env charges ``funding_rate``).
    """
    from data.loader import load_bars, load_funding

    store_market = "futures" if market == "perp" else "spot"
    bars = load_bars(
        symbol, timeframe, exchange=exchange, market=store_market, start=start, end=end, root=root
    )
    if market != "perp":
        return bars.to_frame(), None
    # funding up to the close of the last bar: the env charges events inside each bar
    stop = int(bars.ts[-1]) + (bars.bar_ms or 0) + 1
    funding = load_funding(symbol, exchange=exchange, start=int(bars.ts[0]), end=stop, root=root)
    return bars.to_frame(), (funding.to_frame() if len(funding) else None)
