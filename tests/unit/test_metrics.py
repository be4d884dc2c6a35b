"""Metrics against numbers worked out by hand (the arithmetic is written next to each one)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from reports import metrics as m

EQUITY = [100.0, 110.0, 99.0, 121.0]
# simple returns 0.1, -0.1, 2/9; in units of 1/27: 2.7, -2.7, 6 -> mean 2/27,
# deviations 0.7, -4.7, 4 -> sum of squares 38.58 / 27^2, sample variance (ddof=1) 19.29 / 27^2
MEAN = 2 / 27
STD = math.sqrt(19.29) / 27


# --------------------------------------------------------------------------- annualisation


@pytest.mark.parametrize(
    ("timeframe", "expected"),
    [("1m", 525_600), ("5m", 105_120), ("1h", 8_760), ("4h", 2_190), ("1d", 365), ("1w", 365 / 7)],
)
def test_periods_per_year_counts_bars_in_a_365_day_year(timeframe, expected):
    assert m.periods_per_year(timeframe) == pytest.approx(expected, rel=1e-15)
    assert m.DAYS_PER_YEAR == 365


def test_periods_per_year_rejects_unknown_timeframe_and_information_bars():
    with pytest.raises(ValueError, match="choose one of"):
        m.periods_per_year("7m")
    with pytest.raises(ValueError):
        m.periods_per_year("volume-10")


# --------------------------------------------------------------------------- returns


def test_simple_and_log_returns_by_hand():
    np.testing.assert_allclose(m.simple_returns(EQUITY), [0.1, -0.1, 0.2222222222222222], rtol=1e-14)
    np.testing.assert_allclose(
        m.log_returns(EQUITY), [math.log(1.1), math.log(0.9), math.log(121 / 99)], rtol=1e-14
    )


def test_returns_after_ruin_are_minus_one_then_zero():
    np.testing.assert_array_equal(m.simple_returns([100.0, 50.0, 0.0, 0.0]), [-0.5, -1.0, 0.0])
    np.testing.assert_array_equal(m.log_returns([100.0, 50.0, 0.0, 0.0]), [math.log(0.5), -np.inf, 0.0])


def test_equity_must_be_finite_positive_at_start_and_one_dimensional():
    with pytest.raises(ValueError, match="start positive"):
        m.total_return([0.0, 1.0])
    with pytest.raises(ValueError, match="index 1"):
        m.simple_returns([1.0, np.nan, 2.0])
    with pytest.raises(ValueError, match="empty"):
        m.max_drawdown([])
    with pytest.raises(ValueError, match="1-D"):
        m.total_return([[1.0, 2.0]])


# --------------------------------------------------------------------------- equity-curve metrics


def test_equity_metrics_by_hand():
    assert m.total_return(EQUITY) == pytest.approx(0.21, abs=1e-15)  # 121 / 100 - 1
    # 3 periods at 3 per year = 1 year -> 0.21; at 6 per year = half a year -> 1.21^2 - 1
    assert m.cagr(EQUITY, 3) == pytest.approx(0.21, rel=1e-14)
    assert m.cagr(EQUITY, 6) == pytest.approx(0.4641, rel=1e-14)
    assert m.cagr(EQUITY, 365) == pytest.approx(1.21 ** (365 / 3) - 1, rel=1e-12)
    np.testing.assert_allclose(m.drawdown_series(EQUITY), [0.0, 0.0, 0.1, 0.0], atol=1e-15)
    assert m.max_drawdown(EQUITY) == pytest.approx(0.1, abs=1e-15)  # 1 - 99 / 110
    assert m.max_drawdown_duration(EQUITY) == 2  # peak at bar 1, back above at bar 3
    assert m.calmar(EQUITY, 6) == pytest.approx(4.641, rel=1e-13)  # 0.4641 / 0.1


def test_drawdown_duration_runs_to_the_end_when_never_recovered_and_counts_equal_as_recovered():
    assert m.max_drawdown_duration([100.0, 120.0, 90.0, 95.0, 110.0]) == 3  # bar 1 to the end (4)
    assert m.max_drawdown_duration([100.0, 90.0, 100.0, 95.0, 101.0, 100.5]) == 2  # 0->2, 2->4
    assert m.max_drawdown_duration([100.0, 100.0, 101.0]) == 0
    # two drawdowns; the longer one (bar 1 -> bar 5) wins over the deeper one
    assert m.max_drawdown_duration([100.0, 105.0, 104.0, 103.0, 104.0, 106.0, 50.0, 107.0]) == 4


def test_flat_equity_measures_nothing():
    flat = [100.0, 100.0, 100.0, 100.0]
    r = m.simple_returns(flat)
    np.testing.assert_array_equal(r, [0.0, 0.0, 0.0])
    assert m.total_return(flat) == 0.0
    assert m.cagr(flat, 365) == 0.0
    assert m.volatility(r, 365) == 0.0
    assert m.sharpe(r, 365) == 0.0
    assert m.sortino(r, 365) == 0.0
    assert m.max_drawdown(flat) == 0.0
    assert m.max_drawdown_duration(flat) == 0
    assert m.calmar(flat, 365) == 0.0


def test_a_single_observation_is_zero_everywhere():
    one = [100.0]
    r = m.simple_returns(one)
    assert r.size == 0
    assert m.total_return(one) == 0.0
    assert m.cagr(one, 525_600) == 0.0
    assert m.volatility(r, 525_600) == 0.0
    assert m.sharpe(r, 525_600) == 0.0
    assert m.sortino(r, 525_600) == 0.0
    assert m.max_drawdown(one) == 0.0
    assert m.max_drawdown_duration(one) == 0
    assert m.calmar(one, 525_600) == 0.0
    assert m.sharpe([0.01], 365) == 0.0  # one return has no sample standard deviation


def test_ruin_to_zero():
    ruin = [100.0, 50.0, 0.0, 0.0]
    assert m.total_return(ruin) == -1.0
    assert m.cagr(ruin, 365) == -1.0
    assert m.max_drawdown(ruin) == 1.0
    assert m.max_drawdown_duration(ruin) == 3
    assert m.calmar(ruin, 365) == -1.0  # -1 / 1


def test_cagr_overflow_is_inf_not_nan():
    assert m.cagr([100.0, 200.0], 525_600) == math.inf


# --------------------------------------------------------------------------- return-series metrics


def test_volatility_sharpe_sortino_by_hand():
    r = m.simple_returns(EQUITY)
    assert m.volatility(r, 365) == pytest.approx(STD * math.sqrt(365), rel=1e-13)
    # mean / std * sqrt(365) = (2/27) / (sqrt(19.29)/27) * sqrt(365) = 2 * sqrt(365 / 19.29)
    assert m.sharpe(r, 365) == pytest.approx(2 * math.sqrt(365 / 19.29), rel=1e-13)
    assert m.sharpe(r, 365) == pytest.approx(8.69986, rel=1e-5)
    # downside: min(r, 0) = 0, -0.1, 0 -> DD = sqrt(0.01 / 3) = 0.1 / sqrt(3)
    assert m.sortino(r, 365) == pytest.approx(MEAN / (0.1 / math.sqrt(3)) * math.sqrt(365), rel=1e-13)


def test_risk_free_is_an_annual_rate_spread_over_the_periods():
    # rf 3.65 a year over 365 periods = 0.01 per period: excess returns 0.02, 0.0, 0.04
    r = [0.03, 0.01, 0.05]
    assert m.sharpe(r, 365, risk_free=3.65) == pytest.approx(0.02 / 0.02 * math.sqrt(365), rel=1e-12)
    # excess -0.01, 0.01 -> mean 0, DD = sqrt(0.0001 / 2)
    assert m.sortino([0.0, 0.02], 365, risk_free=3.65) == pytest.approx(0.0, abs=1e-12)


def test_sortino_without_downside_is_inf_for_gains_and_zero_for_nothing():
    assert m.sortino([0.01, 0.02], 365) == math.inf
    assert m.sortino([0.0, 0.0], 365) == 0.0
    assert m.sortino([], 365) == 0.0


def test_periods_per_year_must_be_positive():
    with pytest.raises(ValueError, match="periods_per_year"):
        m.sharpe([0.1, 0.2], 0)


# --------------------------------------------------------------------------- trade statistics


def test_trade_statistics_by_hand():
    pnls = [3.0, -1.0, -1.0, 0.0]
    assert m.win_rate(pnls) == 0.25  # one win in four; break-even is not a win
    assert m.profit_factor(pnls) == 1.5  # 3 / |-1 - 1|
    assert m.average_trade(pnls) == 0.25  # 1 / 4


def test_all_losses():
    assert m.win_rate([-1.0, -2.0]) == 0.0
    assert m.profit_factor([-1.0, -2.0]) == 0.0
    assert m.average_trade([-1.0, -2.0]) == -1.5


def test_no_trades_and_no_losses():
    assert m.win_rate([]) == 0.0
    assert m.profit_factor([]) == 0.0
    assert m.average_trade([]) == 0.0
    assert m.profit_factor([2.0, 0.0]) == math.inf
    assert m.profit_factor([0.0, 0.0]) == 0.0


def test_activity_helpers():
    assert m.exposure_time([0.0, 1.0, -0.5, 0.0]) == 0.5
    assert m.exposure_time([]) == 0.0
    assert m.turnover([100.0, -110.0], 107.5) == pytest.approx(210 / 107.5)
    assert m.turnover(210.0, 0.0) == 0.0
    # 1,440 one-minute bars = 1 day
    assert m.trades_per_day(6, 1_440, 525_600) == pytest.approx(6.0, rel=1e-14)
    assert m.trades_per_day(3, 0, 365) == 0.0


# --------------------------------------------------------------------------- round trips

TS = np.arange(8, dtype=np.int64) * 1_000
POSITION = [0.0, 1.0, 2.0, 2.0, 1.0, -1.0, -1.0, 0.0]
PRICE = [np.nan, 100.0, 110.0, np.nan, 120.0, 115.0, np.nan, 105.0]
FEES = [0.0, 0.1, 0.11, 0.0, 0.12, 0.23, 0.0, 0.105]  # 0.1% of |dq| * p


def test_round_trips_with_a_partial_increase_a_partial_decrease_and_a_flip():
    trips = m.round_trips(TS, POSITION, PRICE, FEES)
    assert list(trips.columns) == list(m.ROUND_TRIP_COLUMNS)
    assert len(trips) == 2
    long, short = trips.iloc[0], trips.iloc[1]
    # long: buy 1 @ 100, buy 1 @ 110 -> entry 105; sell 1 @ 120, then 1 @ 115 in the flip ->
    # exit 117.5; fees 0.1 + 0.11 + 0.12 + half of the flip's 0.23 = 0.445;
    # pnl 2 * (117.5 - 105) - 0.445 = 24.555 (cash: -100 - 110 + 120 + 115 = 25)
    assert (long.entry_ts, long.exit_ts, long.side, long.bars_held) == (1_000, 5_000, 1, 4)
    assert long.qty == 2.0
    assert long.entry_price == pytest.approx(105.0)
    assert long.exit_price == pytest.approx(117.5)
    assert long.fees == pytest.approx(0.445)
    assert long.pnl == pytest.approx(24.555)
    # short: sell 1 @ 115 in the flip, buy back @ 105; fees 0.115 + 0.105; pnl 10 - 0.22
    assert (short.entry_ts, short.exit_ts, short.side, short.bars_held) == (5_000, 7_000, -1, 2)
    assert short.qty == 1.0
    assert (short.entry_price, short.exit_price) == (115.0, 105.0)
    assert short.fees == pytest.approx(0.22)
    assert short.pnl == pytest.approx(9.78)
    # the trips account for every cash flow of the trades and every fee
    dq = np.diff(POSITION, prepend=0.0)
    cash = -np.nansum(dq * np.asarray(PRICE)) - sum(FEES)
    assert trips.pnl.sum() == pytest.approx(cash)
    assert trips.entry_ts.dtype == np.int64 and trips.side.dtype == np.int64


def test_a_fee_without_a_fill_goes_to_the_open_trip():
    trips = m.round_trips([0, 1, 2], [1.0, 1.0, 0.0], [100.0, np.nan, 100.0], [0.1, 0.5, 0.1])
    assert trips.fees.tolist() == pytest.approx([0.7])
    assert trips.pnl.tolist() == pytest.approx([-0.7])


def test_an_open_position_at_the_end_is_not_a_round_trip():
    trips = m.round_trips([0, 1, 2], [0.0, 1.0, 1.0], [np.nan, 100.0, np.nan], [0.0, 0.1, 0.0])
    assert trips.empty
    assert list(trips.columns) == list(m.ROUND_TRIP_COLUMNS)
    empty = m.round_trips([], [], [], [])
    assert empty.empty and list(empty.columns) == list(m.ROUND_TRIP_COLUMNS)


def test_round_trips_need_a_price_wherever_the_position_changes():
    with pytest.raises(ValueError, match="bar 1"):
        m.round_trips([0, 1], [0.0, 1.0], [np.nan, np.nan], [0.0, 0.0])
    with pytest.raises(ValueError, match="lengths"):
        m.round_trips([0, 1], [0.0, 1.0, 0.0], [np.nan, 1.0, 1.0], [0.0, 0.0, 0.0])


# --------------------------------------------------------------------------- summary


def test_summary_collects_plain_json_ready_numbers():
    s = m.summary(
        EQUITY,
        [1.0, 1.0, 0.0],
        [25.0, -4.0],
        periods_per_year=365,
        fees=[0.5, 0.25],
        funding=0.1,
        turnover_notional=[100.0, 110.0],
        liquidations=0,
    )
    assert list(s) == [
        "total_return",
        "cagr",
        "volatility",
        "sharpe",
        "sortino",
        "calmar",
        "max_drawdown",
        "max_drawdown_bars",
        "win_rate",
        "profit_factor",
        "trades",
        "average_trade",
        "trades_per_day",
        "turnover",
        "fees",
        "funding",
        "exposure",
        "liquidations",
    ]
    assert all(type(v) in (float, int) for v in s.values())
    json.dumps(s, allow_nan=False)
    assert s["total_return"] == pytest.approx(0.21)
    assert s["sharpe"] == pytest.approx(2 * math.sqrt(365 / 19.29))
    assert s["max_drawdown"] == pytest.approx(0.1)
    assert s["max_drawdown_bars"] == 2 and type(s["max_drawdown_bars"]) is int
    assert s["win_rate"] == 0.5
    assert s["profit_factor"] == 6.25  # 25 / 4
    assert s["trades"] == 2 and type(s["trades"]) is int
    assert s["average_trade"] == 10.5
    assert s["trades_per_day"] == pytest.approx(2 / 3)  # 2 trades over 3 daily bars
    assert s["turnover"] == pytest.approx(210 / 107.5)  # mean equity (100+110+99+121)/4
    assert (s["fees"], s["funding"], s["exposure"]) == (0.75, 0.1, pytest.approx(2 / 3))
    assert s["liquidations"] == 0 and type(s["liquidations"]) is int


def test_summary_of_a_flat_run_without_trades_has_no_nan():
    s = m.summary([100.0], [], [], periods_per_year=525_600)
    assert not any(isinstance(v, float) and math.isnan(v) for v in s.values())
    assert s["trades"] == 0 and s["sharpe"] == 0.0 and s["profit_factor"] == 0.0
    assert isinstance(m.round_trips([], [], [], []), pd.DataFrame)


@pytest.mark.parametrize("ppy", [365 * 1440, 365 * 24, 365])
def test_metrics_agree_with_empyrical_where_the_conventions_are_the_same(ppy):
    # empyrical (Quantopian's, kept as empyrical-reloaded) takes simple returns and an explicit
    # annualization; its max drawdown is negative where ours is a positive fraction
    ep = pytest.importorskip("empyrical")
    rng = np.random.default_rng(ppy)
    r = rng.standard_t(3, size=3_000) * 0.004 + 0.0001
    e = 10_000 * np.cumprod(np.r_[1.0, 1.0 + r])
    returns = pd.Series(m.simple_returns(e))
    assert m.sharpe(returns, ppy) == pytest.approx(ep.sharpe_ratio(returns, annualization=ppy), rel=1e-10)
    assert m.sortino(returns, ppy) == pytest.approx(ep.sortino_ratio(returns, annualization=ppy), rel=1e-10)
    assert m.volatility(returns, ppy) == pytest.approx(ep.annual_volatility(returns, annualization=ppy))
    assert m.max_drawdown(e) == pytest.approx(-ep.max_drawdown(returns), rel=1e-12)
    assert m.cagr(e, ppy) == pytest.approx(ep.annual_return(returns, annualization=ppy), rel=1e-9)
    assert m.calmar(e, ppy) == pytest.approx(ep.calmar_ratio(returns, annualization=ppy), rel=1e-9)
    assert m.total_return(e) == pytest.approx(ep.cum_returns_final(returns), rel=1e-10)
