"""The risk gate (serving/risk.py): each limit and state transition against numbers worked out by
hand, then a property test that drives the gate with adversarial policies over crashing prices."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.risk import RiskContext, RiskDecision, RiskGate, RiskLimits, TradingState

ACTIVE, REDUCING, HALTED = TradingState.ACTIVE, TradingState.REDUCING, TradingState.HALTED
DAY_MS = 86_400_000
NOW = 1_704_123_000_000  # 2024-01-01T15:30:00Z
MIDNIGHT = 1_704_153_600_000  # 2024-01-02T00:00:00Z, the next UTC midnight after NOW
KINDS = {"clamp", "deny", "halt", "reduce", "resume"}


def ctx(**changes: object) -> RiskContext:
    """A flat 10,000 account at price 100, ACTIVE, at NOW; ``changes`` override fields."""
    base = RiskContext(
        equity=10_000.0,
        position=0.0,
        price=100.0,
        last_close=100.0,
        now_ms=NOW,
        day_start_equity=10_000.0,
        peak_equity=10_000.0,
        state=ACTIVE,
    )
    return dataclasses.replace(base, **changes)


def gate(**limits: object) -> RiskGate:
    return RiskGate(RiskLimits(**limits))


def checks(d: RiskDecision) -> list[tuple[str, str]]:
    return [(e.kind, e.check) for e in d.events]


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    ("field", "value", "accepted"),
    [
        ("max_position_notional", 0.0, "positive number"),
        ("max_leverage", -3.0, "positive number"),
        ("max_order_notional", math.inf, "positive number"),
        ("max_daily_loss", 5.0, r"fraction in \(0, 1\)"),
        ("max_drawdown", 1.0, r"fraction in \(0, 1\)"),
        ("price_band", math.nan, r"fraction in \(0, 1\)"),
        ("max_orders_per_minute", 2.5, "whole number >= 1"),
        ("max_orders_per_minute", 0, "whole number >= 1"),
        ("max_orders_per_minute", True, "whole number >= 1"),
        ("min_notional", -1.0, ">= 0"),
        ("lot_size", math.nan, ">= 0"),
    ],
)
def test_limits_when_a_value_cannot_work_then_raises_naming_the_field(field, value, accepted):
    with pytest.raises(ValueError, match=rf"risk\.{field}={value!r} is invalid; it must be .*{accepted}"):
        RiskLimits(**{field: value})


def test_limits_when_a_field_is_unknown_then_raises():
    with pytest.raises(TypeError, match="max_levrage"):
        RiskLimits(max_levrage=3.0)


def test_no_limits_when_policy_asks_any_finite_target_then_passes_it_unchanged():
    d = gate().check(-12_345.678, ctx(position=3.0))
    assert (d.target, d.order, d.state, d.halted_until_ms, d.events) == (
        -12_345.678,
        -12_348.678,
        ACTIVE,
        None,
        (),
    )


def test_check_when_called_twice_with_the_same_inputs_then_decides_the_same():
    g = gate(max_leverage=2.0, max_order_notional=5_000.0, lot_size=0.01, price_band=0.05)
    c = ctx(position=10.0, price=104.0)
    assert g.check(300.0, c) == g.check(300.0, c)


# --------------------------------------------------------------------------- 1. non-finite


@pytest.mark.parametrize("desired", [math.nan, math.inf, -math.inf])
def test_non_finite_when_policy_returns_nan_or_inf_then_denies_and_holds(desired):
    d = gate(max_leverage=1.0).check(desired, ctx(position=2.0))
    assert (d.target, d.order, d.state) == (2.0, 0.0, ACTIVE)
    assert checks(d) == [("deny", "non_finite")]


@pytest.mark.parametrize("price", [0.0, -5.0, math.nan, math.inf])
def test_non_finite_when_price_is_not_positive_and_finite_then_denies_and_holds(price):
    d = gate().check(5.0, ctx(position=2.0, price=price))
    assert (d.target, d.order) == (2.0, 0.0)
    assert checks(d) == [("deny", "non_finite")]
    assert f"price {price}" in d.events[0].reason


def test_non_finite_when_policy_returns_nan_under_a_kill_then_still_flattens():
    d = gate().check(math.nan, ctx(position=2.0, kill=True))
    assert (d.target, d.order, d.state) == (0.0, -2.0, HALTED)
    assert checks(d) == [("deny", "non_finite"), ("halt", "kill_switch")]


def test_non_finite_when_equity_is_nan_then_denies_and_holds():
    d = gate(max_leverage=3.0).check(1.0, ctx(equity=math.nan))
    assert (d.target, d.order) == (0.0, 0.0)
    assert "equity nan" in d.events[0].reason


# --------------------------------------------------------------------------- 2. resume, 6. halted


def test_halted_when_the_halt_time_has_passed_then_resumes_active_and_trades():
    d = gate().check(1.5, ctx(state=HALTED, halted_until_ms=NOW))
    assert (d.target, d.order, d.state, d.halted_until_ms) == (1.5, 1.5, ACTIVE, None)
    assert checks(d) == [("resume", "halted")]


def test_halted_when_the_halt_time_is_not_reached_then_flattens_and_denies_the_policy():
    d = gate().check(1.5, ctx(position=-0.25, state=HALTED, halted_until_ms=MIDNIGHT))
    assert (d.target, d.order, d.state, d.halted_until_ms) == (0.0, 0.25, HALTED, MIDNIGHT)
    assert checks(d) == [("deny", "halted")]
    assert "until 2024-01-02T00:00:00Z" in d.events[0].reason


def test_halted_when_halt_is_manual_then_a_year_later_still_flattens():
    d = gate().check(1.0, ctx(now_ms=NOW + 365 * DAY_MS, state=HALTED, halted_until_ms=None))
    assert (d.target, d.order, d.state, d.halted_until_ms) == (0.0, 0.0, HALTED, None)


def test_halted_when_flat_and_policy_asks_flat_then_records_nothing():
    d = gate().check(0.0, ctx(state=HALTED))
    assert (d.order, d.events) == (0.0, ())


def test_halted_when_every_other_limit_would_block_the_flatten_then_closes_exactly():
    # 0.123456789 is not a whole number of 0.01 lots, 12.35 notional is under the 1,000 minimum,
    # above the 5 order notional, the price is 50 % off the last close and 3 orders went out this minute
    g = gate(
        lot_size=0.01, min_notional=1_000.0, max_order_notional=5.0, price_band=0.01, max_orders_per_minute=3
    )
    c = ctx(
        position=0.123456789, last_close=200.0, state=HALTED, recent_orders_ms=(NOW - 3, NOW - 2, NOW - 1)
    )
    d = g.check(5.0, c)
    assert (d.target, d.order) == (0.0, -0.123456789)


# --------------------------------------------------------------------------- 3. kill switch


def test_kill_switch_when_engaged_then_halts_until_manual_resume_and_flattens():
    d = gate().check(3.0, ctx(position=-1.25, kill=True))
    assert (d.target, d.order, d.state, d.halted_until_ms) == (0.0, 1.25, HALTED, None)
    assert checks(d) == [("halt", "kill_switch")]
    assert d.events[0].reason == (
        "the kill switch is engaged; HALTED until a manual resume, flattening position -1.25"
    )


def test_kill_switch_when_already_halted_until_midnight_then_extends_to_manual():
    d = gate().check(0.0, ctx(state=HALTED, halted_until_ms=MIDNIGHT, kill=True))
    assert (d.state, d.halted_until_ms) == (HALTED, None)
    assert checks(d) == [("halt", "kill_switch")]


def test_kill_switch_when_still_engaged_while_halted_then_records_no_new_halt():
    d = gate().check(0.0, ctx(state=HALTED, kill=True))
    assert (d.state, d.halted_until_ms, d.events) == (HALTED, None, ())


# --------------------------------------------------------------------------- 4. daily loss


def test_daily_loss_when_equity_is_6pct_below_day_start_then_halts_until_next_utc_midnight():
    d = gate(max_daily_loss=0.05).check(2.0, ctx(equity=9_400.0, position=1.0))
    assert (d.target, d.order, d.state, d.halted_until_ms) == (0.0, -1.0, HALTED, MIDNIGHT)
    assert checks(d) == [("halt", "daily_loss")]
    assert d.events[0].reason == (
        "equity 9,400.00 is 6.00% below the UTC day's start 10,000.00, at or past risk.max_daily_loss=0.05; "
        "HALTED until 2024-01-02T00:00:00Z, flattening position 1"
    )


def test_daily_loss_when_equity_is_exactly_at_the_limit_then_halts():
    # 10,000 * (1 - 0.05) = 9,500 exactly
    d = gate(max_daily_loss=0.05).check(1.0, ctx(equity=9_500.0))
    assert (d.target, d.state, d.halted_until_ms) == (0.0, HALTED, MIDNIGHT)


def test_daily_loss_when_equity_is_a_cent_above_the_limit_then_trades():
    d = gate(max_daily_loss=0.05).check(1.0, ctx(equity=9_500.01))
    assert (d.target, d.order, d.state) == (1.0, 1.0, ACTIVE)


def test_daily_loss_when_breached_at_the_last_ms_of_the_day_then_halts_for_one_ms():
    d = gate(max_daily_loss=0.05).check(0.0, ctx(equity=9_000.0, now_ms=MIDNIGHT - 1))
    assert d.halted_until_ms == MIDNIGHT


def test_daily_loss_when_the_halt_expires_with_a_new_day_start_then_resumes_active():
    g = gate(max_daily_loss=0.05)
    c = ctx(equity=9_000.0, day_start_equity=9_000.0, now_ms=MIDNIGHT, state=HALTED, halted_until_ms=MIDNIGHT)
    d = g.check(1.0, c)
    assert (d.target, d.state, d.halted_until_ms) == (1.0, ACTIVE, None)
    assert checks(d) == [("resume", "halted")]


def test_daily_loss_when_halted_by_drawdown_then_the_halt_stays_manual():
    g = gate(max_daily_loss=0.05, max_drawdown=0.2)
    d = g.check(1.0, ctx(equity=7_000.0, state=HALTED, halted_until_ms=None))
    assert (d.state, d.halted_until_ms) == (HALTED, None)
    assert checks(d) == [("deny", "halted")]


# --------------------------------------------------------------------------- 5. drawdown


def test_drawdown_when_equity_is_20pct_below_peak_then_halts_until_manual_resume():
    # peak 12,500, limit 0.2: halt at or below 12,500 * 0.8 = 10,000
    d = gate(max_drawdown=0.2).check(-4.0, ctx(position=-2.0, peak_equity=12_500.0))
    assert (d.target, d.order, d.state, d.halted_until_ms) == (0.0, 2.0, HALTED, None)
    assert checks(d) == [("halt", "drawdown")]
    assert d.events[0].reason.startswith("equity 10,000.00 is 20.00% below the peak 12,500.00")


def test_drawdown_when_both_daily_loss_and_drawdown_breach_then_the_manual_halt_wins():
    d = gate(max_daily_loss=0.05, max_drawdown=0.2).check(0.0, ctx(equity=7_000.0))
    assert (d.state, d.halted_until_ms) == (HALTED, None)
    assert checks(d) == [("halt", "daily_loss"), ("halt", "drawdown")]


def test_drawdown_when_equity_is_above_the_floor_then_trades():
    d = gate(max_drawdown=0.2).check(1.0, ctx(equity=10_000.01, peak_equity=12_500.0))
    assert (d.target, d.state) == (1.0, ACTIVE)


# --------------------------------------------------------------------------- 7. stale data


def test_stale_data_when_bars_are_stale_then_enters_reducing_and_denies_growth():
    d = gate().check(2.0, ctx(position=1.0, data_stale=True))
    assert (d.target, d.order, d.state) == (1.0, 0.0, REDUCING)
    assert checks(d) == [("reduce", "stale_data"), ("clamp", "reducing")]


def test_reducing_when_policy_asks_to_flip_then_clamps_to_flat():
    d = gate().check(-1.0, ctx(position=1.0, state=REDUCING, data_stale=True))
    assert (d.target, d.order, d.state) == (0.0, -1.0, REDUCING)
    assert checks(d) == [("clamp", "reducing")]


def test_reducing_when_flat_and_policy_asks_for_a_short_then_stays_flat():
    d = gate().check(-1.0, ctx(state=REDUCING, data_stale=True))
    assert (d.target, d.order) == (0.0, 0.0)


def test_reducing_when_policy_shrinks_a_short_then_passes():
    d = gate().check(-0.4, ctx(position=-1.0, state=REDUCING, data_stale=True))
    assert (d.target, d.order, d.events) == (-0.4, 0.6, ())


def test_reducing_when_data_is_fresh_again_then_resumes_active():
    d = gate().check(2.0, ctx(position=1.0, state=REDUCING))
    assert (d.target, d.order, d.state) == (2.0, 1.0, ACTIVE)
    assert checks(d) == [("resume", "stale_data")]


def test_stale_data_when_halted_then_stays_halted():
    d = gate().check(1.0, ctx(position=1.0, state=HALTED, data_stale=True))
    assert (d.target, d.order, d.state) == (0.0, -1.0, HALTED)


# --------------------------------------------------------------------------- 8. position notional


def test_max_position_notional_when_target_is_2_5_btc_at_50k_then_clamps_to_1_btc():
    g = gate(max_position_notional=50_000.0)
    d = g.check(2.5, ctx(equity=100_000.0, price=50_000.0, last_close=50_000.0))
    assert (d.target, d.order) == (1.0, 1.0)
    assert checks(d) == [("clamp", "max_position_notional")]
    assert d.events[0].reason == (
        "target 2.5 = 125,000.00 notional exceeds risk.max_position_notional=50,000; clamped to 1"
    )


def test_max_position_notional_when_short_is_too_large_then_clamps_keeping_the_side():
    d = gate(max_position_notional=5_000.0).check(-80.0, ctx())
    assert (d.target, d.order) == (-50.0, -50.0)


def test_max_position_notional_when_a_rally_carried_the_position_over_then_orders_a_reduction():
    # 60 held at 120 = 7,200 > 6,000 -> 50
    d = gate(max_position_notional=6_000.0).check(60.0, ctx(position=60.0, price=120.0, last_close=100.0))
    assert (d.target, d.order) == (50.0, -10.0)


def test_max_position_notional_when_exactly_at_the_limit_then_passes():
    d = gate(max_position_notional=5_000.0).check(50.0, ctx())
    assert (d.target, d.events) == (50.0, ())


# --------------------------------------------------------------------------- 9. leverage


def test_max_leverage_when_policy_asks_50x_then_clamps_to_the_limit():
    # 25 BTC * 20,000 = 500,000 = 50 x 10,000; 3x allows 30,000 / 20,000 = 1.5
    g = gate(max_leverage=3.0)
    d = g.check(25.0, ctx(price=20_000.0, last_close=20_000.0))
    assert (d.target, d.order) == (1.5, 1.5)
    assert checks(d) == [("clamp", "max_leverage")]
    assert d.events[0].reason == (
        "target 25 = 500,000.00 notional is 50.00x equity 10,000.00, above risk.max_leverage=3; "
        "clamped to 1.5"
    )


def test_max_leverage_when_full_exposure_lands_an_ulp_above_the_limit_then_passes_without_an_event():
    # 10,000 / 19,999 = 0.5000250012500626 BTC, which at 19,999 is 10,000.000000000002: 1x by intent,
    # and the clamp's own room / price is the very same float, so "clamped" would change nothing
    target = 10_000.0 / 19_999.0
    assert target * 19_999.0 > 10_000.0
    d = gate(max_leverage=1.0).check(target, ctx(price=19_999.0, last_close=19_999.0))
    assert (d.target, d.order, d.events) == (target, target, ())


def test_max_leverage_when_equity_is_negative_then_targets_flat():
    d = gate(max_leverage=3.0).check(5.0, ctx(equity=-100.0, position=2.0))
    assert (d.target, d.order) == (0.0, -2.0)
    assert "equity -100.00 is not positive" in d.events[0].reason


def test_max_leverage_when_tighter_than_position_notional_then_the_tighter_wins():
    # position cap 20,000 / 100 = 200; leverage 1 x 10,000 / 100 = 100
    d = gate(max_position_notional=20_000.0, max_leverage=1.0).check(-500.0, ctx())
    assert d.target == -100.0
    assert checks(d) == [("clamp", "max_position_notional"), ("clamp", "max_leverage")]


# --------------------------------------------------------------------------- 10. order notional


def test_max_order_notional_when_flipping_3_btc_then_shrinks_the_order_keeping_its_sign():
    # position 1 -> -2 is an order of -3 = 30,000 at 10,000; 20,000 allows -2
    g = gate(max_order_notional=20_000.0)
    d = g.check(-2.0, ctx(equity=100_000.0, position=1.0, price=10_000.0, last_close=10_000.0))
    assert (d.target, d.order) == (-1.0, -2.0)
    assert checks(d) == [("clamp", "max_order_notional")]


def test_max_order_notional_when_closing_a_large_position_then_closes_a_slice_per_bar():
    g = gate(max_order_notional=20_000.0)
    d = g.check(0.0, ctx(equity=100_000.0, position=5.0, price=10_000.0, last_close=10_000.0))
    assert (d.target, d.order) == (3.0, -2.0)


# --------------------------------------------------------------------------- 11. lot size


def test_lot_size_when_order_is_0_3_with_lot_0_1_then_keeps_three_lots():
    d = gate(lot_size=0.1).check(0.3, ctx())  # 0.3 / 0.1 == 2.9999999999999996
    assert d.order == 3 * 0.1


def test_lot_size_when_order_is_0_37_then_rounds_down_to_three_lots():
    d = gate(lot_size=0.1).check(-0.37, ctx())
    assert d.order == -3 * 0.1


def test_lot_size_when_order_is_under_one_lot_then_denies():
    d = gate(lot_size=0.1).check(1.05, ctx(position=1.0))
    assert (d.target, d.order) == (1.0, 0.0)
    assert checks(d) == [("deny", "lot_size")]


def test_lot_size_when_closing_an_odd_position_then_closes_exactly():
    d = gate(lot_size=0.01).check(0.0, ctx(position=0.123456))
    assert (d.target, d.order) == (0.0, -0.123456)


def test_lot_size_when_a_cap_shrank_the_order_then_rounding_never_passes_the_cap():
    # the cap is 0.9 / 3 = 0.3 = 2.9999999999999996 lots; the 1e-9-lot tolerance would give
    # 3 lots = 0.30000000000000004, over the cap, so it drops to 2 lots
    d = gate(max_position_notional=0.9, lot_size=0.1).check(1.0, ctx(price=3.0, last_close=3.0))
    assert d.order == 0.2


def test_lot_size_when_the_order_cap_shrank_the_order_then_rounding_never_passes_the_cap():
    d = gate(max_order_notional=0.9, lot_size=0.1).check(1.0, ctx(price=3.0, last_close=3.0))
    assert d.order == 0.2


# --------------------------------------------------------------------------- 12. min notional


def test_min_notional_when_order_is_worth_4_under_a_5_minimum_then_denies():
    d = gate(min_notional=5.0).check(1.04, ctx(position=1.0))
    assert (d.target, d.order) == (1.0, 0.0)
    assert checks(d) == [("deny", "min_notional")]
    assert d.events[0].reason.startswith(
        "order 0.04 = 4.00 notional is below the exchange's risk.min_notional=5"
    )


def test_min_notional_when_closing_a_dust_position_then_allows_the_close():
    d = gate(min_notional=5.0, lot_size=0.01).check(0.0, ctx(position=-0.012))
    assert (d.target, d.order, d.events) == (0.0, 0.012, ())


def test_min_notional_when_partly_reducing_a_dust_position_then_denies():
    d = gate(min_notional=5.0).check(0.01, ctx(position=0.03))
    assert d.order == 0.0


def test_min_notional_when_order_is_exactly_the_minimum_then_passes():
    d = gate(min_notional=5.0).check(0.05, ctx())
    assert d.order == 0.05


# --------------------------------------------------------------------------- 13. price band


def test_price_band_when_price_jumps_12pct_then_denies_an_increase():
    d = gate(price_band=0.1).check(2.0, ctx(position=1.0, price=112.0))
    assert (d.target, d.order) == (1.0, 0.0)
    assert checks(d) == [("deny", "price_band")]
    assert "+12.00% from the last close 100" in d.events[0].reason


def test_price_band_when_price_drops_12pct_then_allows_a_reduction():
    d = gate(price_band=0.1).check(0.5, ctx(position=1.0, price=88.0))
    assert (d.target, d.order, d.events) == (0.5, -0.5, ())


def test_price_band_when_policy_flips_on_a_jump_then_cuts_the_order_to_the_close():
    d = gate(price_band=0.1).check(-3.0, ctx(position=2.0, price=80.0))
    assert (d.target, d.order) == (0.0, -2.0)
    assert checks(d) == [("clamp", "price_band")]


def test_price_band_when_price_is_exactly_at_the_band_then_passes():
    d = gate(price_band=0.1).check(1.0, ctx(price=110.0))  # 110 / 100 - 1 = 0.10000000000000009
    assert d.order == 1.0


def test_price_band_when_last_close_is_missing_then_denies_an_increase():
    d = gate(price_band=0.1).check(1.0, ctx(last_close=math.nan))
    assert d.order == 0.0
    assert "last close nan" in d.events[0].reason


# --------------------------------------------------------------------------- 14. orders per minute


def test_orders_per_minute_when_3_orders_went_out_in_the_last_60s_then_denies():
    c = ctx(recent_orders_ms=(NOW - 59_999, NOW - 30_000, NOW))
    d = gate(max_orders_per_minute=3).check(1.0, c)
    assert (d.target, d.order) == (0.0, 0.0)
    assert checks(d) == [("deny", "orders_per_minute")]


def test_orders_per_minute_when_the_oldest_order_is_exactly_60s_old_then_allows():
    c = ctx(recent_orders_ms=(NOW - 60_000, NOW - 30_000, NOW - 1))
    assert gate(max_orders_per_minute=3).check(1.0, c).order == 1.0


def test_orders_per_minute_when_no_order_remains_then_records_nothing():
    c = ctx(position=1.0, recent_orders_ms=(NOW - 2, NOW - 1))
    assert gate(max_orders_per_minute=1).check(1.0, c).events == ()


def test_orders_per_minute_when_halted_then_the_flatten_is_not_rate_limited():
    c = ctx(position=1.0, kill=True, recent_orders_ms=(NOW - 2, NOW - 1))
    assert gate(max_orders_per_minute=1).check(1.0, c).order == -1.0


# --------------------------------------------------------------------------- property


NAN, INF = math.nan, math.inf
REL = 1e-9


def between(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | strategy


def rarely(one_in: int) -> st.SearchStrategy[bool]:
    return st.integers(0, one_in - 1).map(lambda k: k == 0)


LIMITS = st.builds(
    RiskLimits,
    max_position_notional=optional(between(50.0, 1e6)),
    max_leverage=optional(between(0.1, 20.0)),
    max_order_notional=optional(between(20.0, 1e6)),
    max_orders_per_minute=optional(st.integers(1, 4)),
    max_daily_loss=optional(between(0.01, 0.5)),
    max_drawdown=optional(between(0.05, 0.9)),
    price_band=optional(between(0.001, 0.5)),
    min_notional=st.sampled_from([0.0, 5.0, 100.0]) | between(0.0, 1_000.0),
    lot_size=st.sampled_from([0.0, 1e-5, 0.001, 0.1, 1.0]),
)
# what the policy asks for; the named kinds are resolved against the account at each bar
ACTIONS = st.one_of(
    st.tuples(st.just("exposure"), between(-100.0, 100.0)),  # target = x * equity / price
    st.tuples(st.just("raw"), st.sampled_from([NAN, INF, -INF, 0.0, -0.0, 1e300, -1e300, 5e-324])),
    st.tuples(
        st.sampled_from(["position_cap", "leverage_cap", "order_cap", "hold", "flip", "lots", "dust"]),
        st.sampled_from([-1.0, 1.0, -2.0, 2.0, 0.5]),
    ),
)
MOVES = st.one_of(  # log price change per bar: calm, jumps, crashes
    between(-0.01, 0.01), between(-0.01, 0.01), between(-0.3, 0.3), between(-3.0, -0.5), st.just(0.0)
)
GAPS = (
    st.integers(1, 15_000) | st.integers(1, 120_000) | st.integers(3_600_000, 8 * 3_600_000)
)  # ms between decisions
GLITCHES = st.sampled_from([None, "price", "last_close"] + [None] * 17)
STEPS = st.lists(
    st.tuples(GAPS, MOVES, ACTIONS, rarely(6), rarely(25), GLITCHES, rarely(8)), min_size=8, max_size=80
)


def resolve(
    action: tuple[str, float], limits: RiskLimits, position: float, equity: float, price: float
) -> float:
    kind, x = action
    unit = equity / price if equity > 0 else 1.0
    if kind == "exposure":
        return x * unit
    if kind == "raw":
        return x
    if kind == "position_cap":
        return x * (limits.max_position_notional or equity) / price
    if kind == "leverage_cap":
        return x * (limits.max_leverage or 1.0) * equity / price
    if kind == "order_cap":
        return position + x * (limits.max_order_notional or equity) / price
    if kind == "hold":
        return position
    if kind == "flip":
        return -x * position
    if kind == "lots":
        return position + x * 7 * (limits.lot_size or 0.01)
    return position + x * limits.min_notional / price  # dust


def reduces(position: float, target: float) -> bool:
    return abs(target) <= abs(position) and target * position >= 0.0


def assert_decision(
    limits: RiskLimits, desired: float, c: RiskContext, d: RiskDecision, sent: list[int]
) -> None:
    position, price, equity = c.position, c.price, c.equity
    assert d.target == position + d.order
    assert all(e.kind in KINDS and e.reason for e in d.events)
    if d.state is HALTED:  # only the flatten, whatever else the limits say
        assert (d.target, d.order) == (0.0, -position)
        assert d.halted_until_ms is None or d.halted_until_ms > c.now_ms
        return
    assert d.halted_until_ms is None
    assert not c.kill
    if limits.max_daily_loss is not None:
        assert not equity <= c.day_start_equity * (1 - limits.max_daily_loss)
    if limits.max_drawdown is not None:
        assert not equity <= c.peak_equity * (1 - limits.max_drawdown)
    assert (d.state is REDUCING) == c.data_stale
    sane = math.isfinite(desired) and math.isfinite(price) and price > 0 and math.isfinite(equity)
    if not sane or d.order == 0.0:
        assert d.order == 0.0
        return
    assert math.isfinite(d.order)
    shrinks = reduces(position, d.target)
    if d.state is REDUCING:
        assert shrinks
    if limits.max_position_notional is not None and not shrinks:
        assert abs(d.target) * price <= limits.max_position_notional * (1 + REL)
    if limits.max_leverage is not None and not shrinks:
        assert abs(d.target) * price <= limits.max_leverage * max(equity, 0.0) * (1 + REL)
    if limits.max_order_notional is not None:
        assert abs(d.order) * price <= limits.max_order_notional * (1 + REL)
    if d.target != 0.0:  # not a full close
        if limits.lot_size:
            lots = abs(d.order) / limits.lot_size
            assert round(lots) >= 1 and abs(lots - round(lots)) <= 1e-6 * lots
        assert abs(d.order) * price >= limits.min_notional
    if limits.price_band is not None and not shrinks:
        assert abs(price - c.last_close) <= limits.price_band * c.last_close
    if limits.max_orders_per_minute is not None:
        assert sum(c.now_ms - 60_000 < t <= c.now_ms for t in sent) < limits.max_orders_per_minute


@settings(max_examples=300, deadline=None)
@given(
    limits=LIMITS,
    price=between(1.0, 100_000.0),
    initial=between(100.0, 1e6),
    before_midnight=st.integers(0, 3 * 3_600_000),
    steps=STEPS,
)
def test_gate_when_adversarial_policies_trade_crashing_prices_then_no_order_passes_a_limit(
    limits, price, initial, before_midnight, steps
):
    """A simulated account fills every order at the decision's price (equity = cash + position *
    price, perp-style: cash may go negative), with UTC days turning, peak tracking, a kill switch,
    stale bars, glitched prices and operator resumes. Invariants on every decision:

    - HALTED: the order is exactly the flatten, ``order = -position`` (so it never grows
      ``|position|``); a kill, a daily-loss or a drawdown breach always ends in HALTED;
    - no order increases ``|position|`` beyond a limit: after every order the target is within
      ``max_position_notional``, ``max_leverage`` and the price band (1e-9 relative), or the order
      is a pure reduction (same side of 0, ``|target| <= |position|``), the only way out of a
      position that prices or losses carried past a limit; in REDUCING every order is one;
    - outside HALTED: ``|order| * price <= max_order_notional``; an order that is not a full close
      is a whole number of lots and at least ``min_notional``; each order finds fewer than
      ``max_orders_per_minute`` orders in the 60 s before it, so no 60 s window holds more than
      that many besides the HALTED flattens.
    """
    g = RiskGate(limits)
    now = MIDNIGHT - before_midnight
    cash, position, state, until = initial, 0.0, ACTIVE, None
    day, day_start, peak = now // DAY_MS, initial, initial
    sent: list[int] = []
    for gap, move, action, stale, kill, glitch, operator_resumes in steps:
        last_close = price
        now += gap
        price *= math.exp(move)
        equity = cash + position * price
        if now // DAY_MS != day:
            day, day_start = now // DAY_MS, equity
        peak = max(peak, equity)
        if operator_resumes and state is HALTED and until is None:
            state, peak, day_start = ACTIVE, equity, equity
        desired = resolve(action, limits, position, equity, price)
        c = RiskContext(
            equity=equity,
            position=position,
            price=NAN if glitch == "price" else price,
            last_close=0.0 if glitch == "last_close" else last_close,
            now_ms=now,
            day_start_equity=day_start,
            peak_equity=peak,
            state=state,
            halted_until_ms=until,
            recent_orders_ms=tuple(t for t in sent if t > now - 60_000),
            data_stale=stale,
            kill=kill,
        )
        d = g.check(desired, c)
        assert_decision(limits, desired, c, d, sent)
        if d.order != 0.0:
            cash -= d.order * price
            position = d.target
            sent.append(now)
        state, until = d.state, d.halted_until_ms
