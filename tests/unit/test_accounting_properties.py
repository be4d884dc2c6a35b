"""Invariants of the accounting kernel over random bar paths and random target exposures.

Each example steps one account through :func:`envs.accounting.step_account` bar after bar.
Bars are built from log moves, so prices are positive and ``low <= open, close <= high`` by
construction.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.accounting import SLIP_FIXED, SLIP_SQRT
from tests.unit.test_accounting import step

INITIAL = 10_000.0
PROFILE = settings(max_examples=200, deadline=None)

Bar = tuple[float, float, float, float]


def between(lo: float, hi: float) -> st.SearchStrategy[float]:
    if lo == hi:
        return st.just(lo)
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


@st.composite
def paths(
    draw: st.DrawFn,
    *,
    exposure_lo: float,
    exposure_hi: float = 1.0,
    gap: float = 0.3,
    move: float = 0.2,
    wick: float = 0.2,
    flat: bool = False,
) -> tuple[list[Bar], list[float]]:
    """``n + 1`` bars (the first only supplies the first decision's close) and ``n`` targets.

    Each bar opens ``exp(gap)`` from the previous close, closes ``exp(move)`` from its open and
    reaches ``exp(wick)`` beyond both; ``flat`` keeps every price at the first close.
    """
    c0 = draw(between(1.0, 100_000.0))
    n = draw(st.integers(1, 20))
    bars: list[Bar] = [(c0, c0, c0, c0)] * (n + 1 if flat else 1)
    moves = st.tuples(between(-gap, gap), between(-move, move), between(0.0, wick), between(0.0, wick))
    for g, r, up, down in [] if flat else draw(st.lists(moves, min_size=n, max_size=n)):
        o = bars[-1][3] * math.exp(g)
        c = o * math.exp(r)
        bars.append((o, max(o, c) * math.exp(up), min(o, c) * math.exp(-down), c))
    targets = draw(st.lists(between(exposure_lo, exposure_hi), min_size=n, max_size=n))
    return bars, targets


def run(
    bars: list[Bar], targets: list[float], *, funding: list[float] | None = None, **costs: float
) -> list[dict[str, float]]:
    """Step an account from ``INITIAL`` cash through the path; one row per stepped bar with the
    state it started from (``cash_in``, ``qty_in``) and everything ``step_account`` returned.
    ``costs`` are the keyword arguments of :func:`tests.unit.test_accounting.step`."""
    cash, qty, rows = INITIAL, 0.0, []
    for t, e in enumerate(targets):
        r = step(
            cash, qty, e, bars[t][3], bars[t + 1], funding_per_unit=funding[t] if funding else 0.0, **costs
        )
        rows.append({"cash_in": cash, "qty_in": qty, **r})
        cash, qty = r["cash"], r["qty"]
    return rows


lots = st.sampled_from([0.0, 0.00001, 0.001, 0.1, 1.0])
SLIPPAGE = st.one_of(  # (mode, fixed fraction or impact_k, sigma, volume)
    st.tuples(st.just(SLIP_FIXED), between(0.0, 0.01), st.just(0.0), st.just(0.0)),
    st.tuples(st.just(SLIP_SQRT), between(0.0, 2.0), between(0.0, 0.05), between(0.0, 1_000.0)),
)


@PROFILE
@given(
    path=paths(exposure_lo=-1.0, flat=True),
    leverage=between(1.0, 20.0),
    lot=lots,
    min_notional=between(0.0, 100.0),
    deadband=between(0.0, 0.2),
)
def test_flat_prices_without_costs_keep_equity_constant_whatever_the_targets(
    path, leverage, lot, min_notional, deadband
):
    bars, targets = path
    rows = run(bars, targets, leverage=leverage, lot=lot, min_notional=min_notional, deadband=deadband)
    for row in rows:
        assert row["liquidation_qty"] == 0.0
        assert row["trade_fee"] == 0.0 and row["trade_slippage"] == 0.0
        assert row["equity"] == pytest.approx(INITIAL, rel=1e-12)


@PROFILE
@given(
    path=paths(exposure_lo=-0.9, exposure_hi=0.9, gap=0.0, move=0.05, wick=0.05),
    leverage=between(1.0, 5.0),
    fee=between(0.0, 0.001),
    half_spread=between(0.0, 0.0025),
    slippage=between(0.0, 0.0025),
)
def test_costs_never_raise_equity_above_the_same_path_without_costs(
    path, leverage, fee, half_spread, slippage
):
    """Fee, spread and slippage only take money away.

    The paths are continuous (each bar opens at the previous close), exposures stay within 0.9,
    lots are 0 and moves stay far from liquidation. Then each bar's equity is the previous one times
    the same factor ``1 + e * L * (c - o) / o`` with or without costs, less the costs, and the
    inequality carries over bar by bar. Outside these conditions the comparison is not a money
    rule: a costly account holds a slightly smaller position (the cap leaves room for the fee;
    lots round a smaller equity down), and a smaller long falls less in a crash.
    """
    bars, targets = path
    free = run(bars, targets, leverage=leverage)
    costly = run(
        bars, targets, leverage=leverage, fee=fee, half_spread=half_spread,
        slip_mode=SLIP_FIXED, slip_value=slippage,
    )  # fmt: skip
    for a, b in zip(free, costly, strict=True):
        assert a["liquidation_qty"] == 0.0 and b["liquidation_qty"] == 0.0
        assert b["equity"] <= a["equity"] * (1 + 1e-12)


@PROFILE
@given(
    path=paths(exposure_lo=-1.0),
    leverage=between(1.0, 20.0),
    fee=between(0.0, 0.002),
    half_spread=between(0.0, 0.005),
    slippage=between(0.0, 0.005),
    lot=lots,
)
def test_a_fill_that_adds_exposure_stays_within_leverage_times_equity_after_the_fill(
    path, leverage, fee, half_spread, slippage, lot
):
    """Opening, adding and flipping fills, with gaps and any fixed cost.

    Square-root impact is checked by hand in test_accounting.py
    (``test_sqrt_impact_order_is_shrunk_until_it_fits_the_leverage_cap_at_its_own_price``): its
    price depends on the order size, the cap is reached by shrinking the order round after round,
    and with orders of tens of times a bar's volume 64 rounds can stop ~1e-8 short of it.
    """
    bars, targets = path
    rows = run(
        bars, targets, leverage=leverage, fee=fee, half_spread=half_spread,
        slip_mode=SLIP_FIXED, slip_value=slippage, lot=lot,
    )  # fmt: skip
    for row in rows:
        q0, dq, p = row["qty_in"], row["trade_qty"], row["trade_price"]
        q1 = q0 + dq
        if dq == 0.0 or q1 == 0.0 or (abs(q1) <= abs(q0) and q1 * q0 > 0):
            continue  # no fill, a close, or a reduction
        equity_after_fill = row["cash_in"] + q0 * p - row["trade_fee"]
        assert abs(q1) * p <= leverage * equity_after_fill * (1 + 1e-9)


@PROFILE
@given(
    path=paths(exposure_lo=-1.0),
    mmr=between(0.001, 0.02),
    leverage_share=between(0.05, 0.95),
    fee=between(0.0, 0.002),
    half_spread=between(0.0, 0.01),
    slippage=SLIPPAGE,
    liq_fee=between(0.0, 0.01),
    lot=lots,
    rates=st.lists(between(-0.003, 0.003), min_size=20, max_size=20),
)
def test_perp_equity_never_goes_below_zero_with_isolated_margin(
    path, mmr, leverage_share, fee, half_spread, slippage, liq_fee, lot, rates
):
    """Gaps, wicks and funding of up to 0.3 % a bar, at any leverage the margin rate allows,
    with costs wide enough (and fees above the margin rate) to fill a close past bankruptcy."""
    bars, targets = path
    slip_mode, slip_value, sigma, ref_volume = slippage
    leverage = min(50.0, leverage_share / mmr)
    funding = [rate * bar[3] for rate, bar in zip(rates, bars[1:], strict=False)]
    rows = run(
        bars, targets, leverage=leverage, mmr=mmr, fee=fee, half_spread=half_spread, slip_mode=slip_mode,
        slip_value=slip_value, sigma=sigma, ref_volume=ref_volume, liq_fee=liq_fee, lot=lot, funding=funding,
    )  # fmt: skip
    for row in rows:
        assert row["equity"] >= 0.0
        assert row["cash"] >= 0.0 or row["qty"] > 0.0  # only a long borrows


@PROFILE
@given(
    path=paths(exposure_lo=0.0, gap=1.0, move=1.0, wick=1.5),
    fee=between(0.0, 0.002),
    half_spread=between(0.0, 0.005),
    slippage=SLIPPAGE,
    lot=lots,
    min_notional=between(0.0, 10.0),
)
def test_spot_long_only_cash_never_goes_negative_and_is_never_liquidated(
    path, fee, half_spread, slippage, lot, min_notional
):
    bars, targets = path
    slip_mode, slip_value, sigma, ref_volume = slippage
    rows = run(
        bars, targets, leverage=1.0, fee=fee, half_spread=half_spread, slip_mode=slip_mode,
        slip_value=slip_value, sigma=sigma, ref_volume=ref_volume, lot=lot, min_notional=min_notional,
    )  # fmt: skip
    for row in rows:
        # float rounding of ``cash - q * p * (1 + f)`` when the cap binds exactly is the only slack
        assert row["cash"] >= -1e-12 * max(INITIAL, row["equity"])
        assert row["qty"] >= 0.0
        assert row["liquidation_qty"] == 0.0
