"""Performance metrics: small pure functions over an equity curve, per-bar returns and trades.

Conventions shared by every function here:

- An equity curve ``E_0 .. E_n`` is a 1-D array of account values marked at bar closes, starting
  with the equity *before* the first bar, so it spans ``n = len(equity) - 1`` periods. ``E_0``
  must be positive. Equity may reach 0 (ruin: the kernel floors cash at 0 on a liquidation).
- Per-bar returns are simple returns ``r_t = E_t / E_{t-1} - 1`` unless a function says
  otherwise; there are ``n`` of them.
- Annualisation is always explicit: ``periods_per_year`` is a required argument (crypto trades
  every day of the year, so one-minute bars give ``365 * 24 * 60 = 525,600`` periods), obtained
  from :func:`periods_per_year` for a timeframe.
- No function returns NaN. Where a ratio is undefined its docstring names the value returned
  instead (0 for "nothing to measure"); ``inf`` appears only where stated (:func:`profit_factor`
  with no losing trade, :func:`sortino` with no downside, :func:`cagr` when it overflows).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from data.schema import DAYS_PER_YEAR, bars_per_year, timeframe_ms

ROUND_TRIP_COLUMNS: tuple[str, ...] = (
    "entry_ts",
    "exit_ts",
    "side",
    "qty",
    "entry_price",
    "exit_price",
    "fees",
    "pnl",
    "bars_held",
)


def periods_per_year(timeframe: str) -> float:
    """Number of bars of ``timeframe`` in a 365-day year.

    ``ppy = DAYS_PER_YEAR * 86,400,000 / timeframe_ms(timeframe)``: ``'1m'`` -> 525,600,
    ``'5m'`` -> 105,120, ``'1h'`` -> 8,760, ``'1d'`` -> 365, ``'1w'`` -> 365 / 7.
    Information bars (``volume-10``) have no fixed length and raise ``ValueError``.
    """
    return bars_per_year(timeframe_ms(timeframe))


def _array(values: Any, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        raise ValueError(
            f"{name} has a NaN or infinite value at index {int(np.argmax(bad))}; "
            "pass finite numbers (drop or fill missing bars first)"
        )
    return a


def _equity(equity: Any) -> np.ndarray:
    e = _array(equity, "equity")
    if e.size == 0:
        raise ValueError("equity is empty; pass at least the starting equity")
    if e[0] <= 0.0:
        raise ValueError(f"equity must start positive, got E_0 = {e[0]}")
    return e


def _check_ppy(periods_per_year: float) -> float:
    ppy = float(periods_per_year)
    if not ppy > 0.0 or not math.isfinite(ppy):
        raise ValueError(f"periods_per_year must be a positive number, got {periods_per_year!r}")
    return ppy


# ---------------------------------------------------------------------------------------------
# returns


def simple_returns(equity: Any) -> np.ndarray:
    """Per-bar simple returns ``r_t = E_t / E_{t-1} - 1`` for ``t = 1 .. n`` (``n`` values).

    After ruin there is nothing left to gain or lose: where ``E_{t-1} <= 0`` the return is 0.
    The bar that ruins the account (``E_{t-1} > 0``, ``E_t = 0``) returns -1.
    """
    e = _equity(equity)
    prev, cur = e[:-1], e[1:]
    alive = prev > 0.0
    out = np.zeros(cur.size)
    np.divide(cur, prev, out=out, where=alive)
    out[alive] -= 1.0
    return out


def log_returns(equity: Any) -> np.ndarray:
    """Per-bar log returns ``l_t = ln(E_t / E_{t-1})`` (``n`` values).

    Where ``E_{t-1} <= 0`` the return is 0 (as in :func:`simple_returns`); the bar that ruins the
    account (``E_t <= 0``) returns ``-inf``, the log of losing everything.
    """
    r = simple_returns(equity)
    out = np.full(r.size, -np.inf)
    gross = 1.0 + r
    np.log(gross, out=out, where=gross > 0.0)
    return out


# ---------------------------------------------------------------------------------------------
# equity-curve metrics


def total_return(equity: Any) -> float:
    """``E_n / E_0 - 1``; 0 for a single observation, -1 at ruin (``E_n = 0``)."""
    e = _equity(equity)
    return float(e[-1] / e[0] - 1.0)


def cagr(equity: Any, periods_per_year: float) -> float:
    """Compound annual growth rate ``(E_n / E_0) ** (ppy / n) - 1`` over ``n = len(equity) - 1``
    periods (``n / ppy`` years).

    Edge values: 0 when ``n = 0`` (no time has passed); -1 when ``E_n <= 0`` (ruin: everything
    is lost whatever the horizon); ``inf`` when a short, strongly positive run overflows float64
    once compounded over a year.
    """
    ppy = _check_ppy(periods_per_year)
    e = _equity(equity)
    n = e.size - 1
    if n == 0:
        return 0.0
    if e[-1] <= 0.0:
        return -1.0
    with np.errstate(over="ignore"):
        growth = np.exp(np.log(e[-1] / e[0]) * (ppy / n))
    return float(growth - 1.0)


def drawdown_series(equity: Any) -> np.ndarray:
    """Drawdown at every bar as a positive fraction of the running peak:
    ``dd_t = 1 - E_t / max_{s <= t} E_s`` (0 at a new high, 1 at ruin; ``len(equity)`` values).
    """
    e = _equity(equity)
    peak = np.maximum.accumulate(e)
    return 1.0 - e / peak


def max_drawdown(equity: Any) -> float:
    """Largest peak-to-trough loss as a positive fraction: ``max_t dd_t`` (see
    :func:`drawdown_series`); 0 for a curve that never falls, 1 at ruin."""
    return float(drawdown_series(equity).max())


def max_drawdown_duration(equity: Any) -> int:
    """Longest drawdown in bars: from the bar of a peak to the first later bar whose equity is
    back at or above that peak (the recovery), or to the last bar if it never recovers.

    ``[100, 110, 99, 121]`` peaks at bar 1 and recovers at bar 3: 2 bars. 0 when equity never
    falls below its running peak.
    """
    e = _equity(equity)
    peak = np.maximum.accumulate(e)
    under = e < peak
    if not under.any():
        return 0
    idx = np.arange(e.size)
    # index of the most recent peak (a bar at or above every bar before it)
    peak_idx = np.maximum.accumulate(np.where(under, 0, idx))
    # bar t extends (or ends) the drawdown that began at peak_idx[t - 1] when t or t - 1 is under
    t = idx[1:]
    in_dd = under[1:] | under[:-1]
    return int((t - peak_idx[:-1])[in_dd].max())


def calmar(equity: Any, periods_per_year: float) -> float:
    """Calmar ratio ``cagr / max_drawdown`` over the whole curve; 0 when there is no drawdown
    (the ratio is undefined, and a curve that never falls has nothing to be calm about)."""
    mdd = max_drawdown(equity)
    if mdd <= 0.0:
        return 0.0
    return float(cagr(equity, periods_per_year) / mdd)


# ---------------------------------------------------------------------------------------------
# return-series metrics


def volatility(returns: Any, periods_per_year: float) -> float:
    """Annualised volatility ``std(r, ddof=1) * sqrt(ppy)`` (sample standard deviation, divisor
    ``n - 1``); 0 with fewer than two returns."""
    ppy = _check_ppy(periods_per_year)
    r = _array(returns, "returns")
    if r.size < 2:
        return 0.0
    return float(np.std(r, ddof=1) * math.sqrt(ppy))


def sharpe(returns: Any, periods_per_year: float, risk_free: float = 0.0) -> float:
    """Annualised Sharpe ratio ``mean(x) / std(x, ddof=1) * sqrt(ppy)`` of the excess returns
    ``x_t = r_t - risk_free / ppy``.

    ``risk_free`` is an *annual* rate, spread evenly over the periods (not compounded).
    0 when the standard deviation is 0 (all returns equal, e.g. a flat curve) or with fewer than
    two returns: a ratio with no risk to divide by is reported as no edge.
    """
    ppy = _check_ppy(periods_per_year)
    x = _array(returns, "returns") - risk_free / ppy
    if x.size < 2 or np.ptp(x) == 0.0:
        return 0.0
    return float(x.mean() / np.std(x, ddof=1) * math.sqrt(ppy))


def sortino(returns: Any, periods_per_year: float, risk_free: float = 0.0) -> float:
    """Annualised Sortino ratio ``mean(x) / DD * sqrt(ppy)`` of the excess returns
    ``x_t = r_t - risk_free / ppy`` (``risk_free`` annual, as in :func:`sharpe`).

    Downside deviation with a target of 0 over *all* ``n`` periods (the empyrical convention):
    ``DD = sqrt(mean(min(x_t, 0) ** 2))``. When ``DD = 0`` (no period below the target) the
    ratio is ``inf`` if ``mean(x) > 0`` and 0 otherwise; 0 with no returns.
    """
    ppy = _check_ppy(periods_per_year)
    x = _array(returns, "returns") - risk_free / ppy
    if x.size == 0:
        return 0.0
    mean = float(x.mean())
    dd = math.sqrt(float(np.mean(np.minimum(x, 0.0) ** 2)))
    if dd == 0.0:
        return math.inf if mean > 0.0 else 0.0
    return float(mean / dd * math.sqrt(ppy))


# ---------------------------------------------------------------------------------------------
# trade statistics (round-trip PnLs, net of fees)


def win_rate(pnls: Any) -> float:
    """Fraction of round trips with ``pnl > 0`` (break-even trades are not wins); 0 with no
    trades."""
    p = _array(pnls, "pnls")
    return float((p > 0.0).mean()) if p.size else 0.0


def profit_factor(pnls: Any) -> float:
    """Gross profit over gross loss: ``sum(pnl > 0) / |sum(pnl < 0)|``.

    ``inf`` when there is some profit and no losing trade; 0 with no trades or when there is
    neither profit nor loss.
    """
    p = _array(pnls, "pnls")
    gross_profit = float(p[p > 0.0].sum())
    gross_loss = float(-p[p < 0.0].sum())
    if gross_loss == 0.0:
        return math.inf if gross_profit > 0.0 else 0.0
    return gross_profit / gross_loss


def average_trade(pnls: Any) -> float:
    """Mean round-trip PnL ``sum(pnl) / trades``; 0 with no trades."""
    p = _array(pnls, "pnls")
    return float(p.mean()) if p.size else 0.0


# ---------------------------------------------------------------------------------------------
# activity


def exposure_time(positions: Any) -> float:
    """Fraction of bars holding a position: ``mean(position_t != 0)``; 0 with no bars."""
    q = _array(positions, "positions")
    return float((q != 0.0).mean()) if q.size else 0.0


def turnover(notional_traded: Any, mean_equity: float) -> float:
    """Notional traded over the period in multiples of the average equity:
    ``sum(|notional|) / mean_equity`` (2.0 = twice the book bought and sold in total).
    ``notional_traded`` is a total or per-fill array; 0 when ``mean_equity <= 0``."""
    total = float(np.abs(_array(np.atleast_1d(notional_traded), "notional_traded")).sum())
    if not mean_equity > 0.0:
        return 0.0
    return total / float(mean_equity)


def trades_per_day(n_trades: int, bars: int, periods_per_year: float) -> float:
    """Round trips per day: ``n_trades / (bars * DAYS_PER_YEAR / ppy)``, where
    ``bars * DAYS_PER_YEAR / ppy`` is the span in days; 0 when ``bars = 0``."""
    ppy = _check_ppy(periods_per_year)
    if bars <= 0:
        return 0.0
    return float(n_trades) / (bars * DAYS_PER_YEAR / ppy)


# ---------------------------------------------------------------------------------------------
# round trips


def round_trips(ts: Any, position: Any, price: Any, fees: Any) -> pd.DataFrame:
    """Round trips derived from per-bar position, fill price and fee arrays.

    Inputs, one value per bar: ``position`` is the signed quantity held *after* the bar (the
    position before bar 0 is 0); ``price`` is the fill price of the bar's trade, NaN when the
    bar has none (it must be finite on every bar where the position changes; a liquidation is
    a fill at the liquidation price); ``fees`` is the fee paid on the bar (trading and
    liquidation fees).

    A round trip opens on the bar where the position leaves 0 and closes on the bar where it
    returns to 0 or flips sign. A flip closes one round trip and opens the next on the same bar
    at the same price; that bar's fee is split between them in proportion to the quantity each
    part fills (``|q_prev|`` closed, ``|q_new|`` opened).

    Partial increases and decreases stay inside the round trip (average prices, PnL realised
    only when it closes). With ``side`` = +1 long / -1 short and ``Q`` the total quantity
    added (which equals the total quantity removed, as the trip starts and ends flat):

    - ``qty = Q``; ``entry_price`` = quantity-weighted mean price of the fills that grew the
      position, ``exit_price`` = that of the fills that shrank it;
    - ``fees`` = sum of fees on the trip's bars (a fee on a bar with no change in position is
      charged to the trip open at that bar);
    - ``pnl = side * Q * (exit_price - entry_price) - fees``, which equals the trip's net cash
      flow (``-sum(dq_i * p_i) - fees``): the realised PnL net of fees. Funding and borrowing
      interest are not attributed to trips;
    - ``bars_held`` = exit bar index - entry bar index; ``entry_ts`` / ``exit_ts`` are the
      ``ts`` of those bars.

    A position still open after the last bar is not a round trip and is not returned; close it
    in the replay if it should count. Fees on bars where the account is flat before and after
    belong to no trip and are left out. Returns a DataFrame with :data:`ROUND_TRIP_COLUMNS`
    (one row per trip, in order of exit), empty with those columns when there are none.
    """
    t = np.asarray(ts)
    q = _array(position, "position")
    p = np.asarray(price, dtype=np.float64)
    f = _array(fees, "fees")
    if not (t.ndim == p.ndim == 1 and t.size == q.size == p.size == f.size):
        raise ValueError(
            "ts, position, price and fees must be 1-D arrays of one value per bar, got lengths "
            f"{t.size}, {q.size}, {p.size}, {f.size}"
        )
    prev = np.concatenate(([0.0], q[:-1]))
    changed = q != prev
    missing = changed & ~np.isfinite(p)
    if missing.any():
        i = int(np.argmax(missing))
        raise ValueError(
            f"position changes from {prev[i]} to {q[i]} at bar {i} but its fill price is "
            f"{p[i]}; every bar that trades needs a finite price"
        )

    rows: list[tuple] = []
    side = 0  # side of the open trip, 0 when flat
    entry_i = 0
    add_q = add_notional = cut_q = cut_notional = trip_fees = 0.0

    def close(i: int) -> None:
        entry_price = add_notional / add_q
        exit_price = cut_notional / cut_q
        pnl = side * (cut_notional - add_notional) - trip_fees
        rows.append((t[entry_i], t[i], side, add_q, entry_price, exit_price, trip_fees, pnl, i - entry_i))

    for i in np.flatnonzero(changed | (f != 0.0)):
        q0, q1, px, fee = prev[i], q[i], p[i], f[i]
        if q0 == q1:  # a fee with no fill: charged to the open trip, if any
            trip_fees += fee
            continue
        if q0 != 0.0 and (q1 == 0.0 or (q1 > 0.0) != (q0 > 0.0)):  # closes, maybe flips
            closing_fee = fee if q1 == 0.0 else fee * abs(q0) / (abs(q0) + abs(q1))
            cut_q += abs(q0)
            cut_notional += abs(q0) * px
            trip_fees += closing_fee
            close(i)
            fee -= closing_fee
            q0 = 0.0
            side = 0
        if q0 == 0.0:
            if q1 == 0.0:
                continue
            side = 1 if q1 > 0.0 else -1
            entry_i = i
            add_q, add_notional = abs(q1), abs(q1) * px
            cut_q = cut_notional = 0.0
            trip_fees = fee
            continue
        dq = abs(q1) - abs(q0)  # same side: a partial increase or decrease
        if dq > 0.0:
            add_q += dq
            add_notional += dq * px
        else:
            cut_q -= dq
            cut_notional -= dq * px
        trip_fees += fee

    frame = pd.DataFrame(rows, columns=list(ROUND_TRIP_COLUMNS))
    return frame.astype(
        {
            "entry_ts": t.dtype,
            "exit_ts": t.dtype,
            "side": np.int64,
            "qty": np.float64,
            "entry_price": np.float64,
            "exit_price": np.float64,
            "fees": np.float64,
            "pnl": np.float64,
            "bars_held": np.int64,
        }
    )


# ---------------------------------------------------------------------------------------------
# summary


def summary(
    equity: Any,
    positions: Any,
    pnls: Any,
    *,
    periods_per_year: float,
    fees: Any = 0.0,
    funding: Any = 0.0,
    turnover_notional: Any = 0.0,
    liquidations: int = 0,
) -> dict[str, float]:
    """The headline numbers of one run, as plain Python ``float`` / ``int`` (JSON-ready).

    ``equity`` is the curve starting with the initial equity (``n = len(equity) - 1`` bars),
    ``positions`` the position after each bar, ``pnls`` the round-trip PnLs net of fees (see
    :func:`round_trips`). ``fees``, ``funding`` and ``turnover_notional`` are totals or per-bar
    arrays (summed; ``funding`` signed as paid, so positive is a cost); ``liquidations`` is a
    count.

    Keys: ``total_return cagr volatility sharpe sortino calmar max_drawdown`` (from the simple
    returns of ``equity``), ``max_drawdown_bars`` (:func:`max_drawdown_duration`), ``win_rate
    profit_factor trades average_trade trades_per_day`` (from ``pnls`` over the ``n`` bars),
    ``turnover`` (``turnover_notional / mean(equity)``), ``fees funding`` (totals),
    ``exposure`` (:func:`exposure_time` of ``positions``) and ``liquidations``. No value is
    NaN; the undefined cases take the values their functions document, and ``profit_factor``,
    ``sortino`` and ``cagr`` may be ``inf`` (``json.dumps`` writes ``Infinity``).
    """
    ppy = _check_ppy(periods_per_year)
    e = _equity(equity)
    p = _array(pnls, "pnls")
    r = simple_returns(e)
    n_bars = e.size - 1
    return {
        "total_return": total_return(e),
        "cagr": cagr(e, ppy),
        "volatility": volatility(r, ppy),
        "sharpe": sharpe(r, ppy),
        "sortino": sortino(r, ppy),
        "calmar": calmar(e, ppy),
        "max_drawdown": max_drawdown(e),
        "max_drawdown_bars": max_drawdown_duration(e),
        "win_rate": win_rate(p),
        "profit_factor": profit_factor(p),
        "trades": int(p.size),
        "average_trade": average_trade(p),
        "trades_per_day": trades_per_day(p.size, n_bars, ppy),
        "turnover": turnover(turnover_notional, float(e.mean())),
        "fees": float(_array(np.atleast_1d(fees), "fees").sum()),
        "funding": float(_array(np.atleast_1d(funding), "funding").sum()),
        "exposure": exposure_time(positions),
        "liquidations": int(liquidations),
    }
