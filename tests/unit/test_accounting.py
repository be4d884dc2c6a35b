"""The accounting kernel against numbers worked out by hand (docs/accounting.md).

Money is checked to the cent, quantities exactly in lots. Each case calls
:func:`envs.accounting.step_account` for one bar of one account; the array form
:func:`envs.accounting.step_accounts` is checked against it.
"""

from __future__ import annotations

import numpy as np
import pytest

from envs.accounting import (
    OUT_FIELDS,
    SLIP_FIXED,
    SLIP_NONE,
    SLIP_SQRT,
    fill_price,
    liquidation_price,
    lot_round,
    step_account,
    step_accounts,
)

CENT = 0.005
FIELDS = ("cash", "qty", *OUT_FIELDS)
HOLD = 1e9  # a deadband of 1e9 x equity: the account keeps its position whatever the target


def step(
    cash: float,
    qty: float,
    exposure: float,
    c_prev: float,
    bar: tuple[float, float, float, float],
    *,
    half_spread: float = 0.0,
    slip_mode: int = SLIP_NONE,
    slip_value: float = 0.0,
    sigma: float = 0.0,
    ref_volume: float = 0.0,
    fee: float = 0.0,
    leverage: float = 1.0,
    mmr: float = 0.004,
    liq_fee: float = 0.005,
    lot: float = 0.0,
    min_notional: float = 0.0,
    deadband: float = 0.0,
    funding_per_unit: float = 0.0,
    borrow_per_bar: float = 0.0,
) -> dict[str, float]:
    """One bar ``(o, h, l, c)`` through ``step_account``, results by name."""
    o, h, lo, c = bar
    r = step_account(
        float(cash), float(qty), float(exposure), float(c_prev), float(o), float(h), float(lo), float(c),
        float(half_spread), int(slip_mode), float(slip_value), float(sigma), float(ref_volume), float(fee),
        float(leverage), float(mmr), float(liq_fee), float(lot), float(min_notional), float(deadband),
        float(funding_per_unit), float(borrow_per_bar),
    )  # fmt: skip
    return dict(zip(FIELDS, r, strict=True))


def money(x: float) -> object:
    return pytest.approx(x, abs=CENT)


def lots(qty: float, lot: float) -> int:
    """Quantity in lots; a whole number after lot rounding."""
    n = qty / lot
    assert n == pytest.approx(round(n), abs=1e-9), f"{qty} is not a whole number of {lot} lots"
    return round(n)


# -- fills, fees, spread ------------------------------------------------------------------------

SPOT = {"half_spread": 0.0001, "fee": 0.001, "lot": 0.001}  # 2 bp spread, Binance spot taker fee


def test_spot_buy_pays_half_the_spread_above_the_open_and_the_fee_on_the_notional():
    # e = 0.5 of 10,000 at 40,000 -> 0.125 BTC; fill 40,000 * 1.0001 = 40,004
    r = step(10_000, 0, 0.5, 40_000, (40_000, 40_200, 39_900, 40_100), **SPOT)
    assert lots(r["qty"], 0.001) == 125
    assert r["trade_price"] == pytest.approx(40_004.0, abs=1e-9)
    assert r["trade_fee"] == money(5.0005)  # 0.001 * 0.125 * 40,004
    assert r["trade_slippage"] == money(0.5)  # 0.125 * (40,004 - 40,000)
    assert r["cash"] == money(4_994.4995)  # 10,000 - 5,000.5 - 5.0005
    assert r["equity"] == money(10_006.9995)  # 4,994.4995 + 0.125 * 40,100


def test_selling_back_to_flat_realises_the_round_trip_pnl_net_of_both_fees():
    buy = step(10_000, 0, 0.5, 40_000, (40_000, 40_200, 39_900, 40_100), **SPOT)
    sell = step(buy["cash"], buy["qty"], 0.0, 40_100, (41_000, 41_100, 40_900, 41_050), **SPOT)
    assert sell["qty"] == 0.0
    assert sell["trade_qty"] == pytest.approx(-0.125, abs=1e-12)
    assert sell["trade_price"] == pytest.approx(40_995.9, abs=1e-9)  # 41,000 * 0.9999
    assert sell["trade_fee"] == money(5.1245)  # 0.001 * 0.125 * 40,995.9
    # realised: 0.125 * (40,995.9 - 40,004) - 5.0005 - 5.1244875 = 113.8625125
    assert sell["cash"] == money(10_113.8625)
    assert sell["equity"] - 10_000 == money(113.8625)


def test_perp_flip_from_long_to_short_is_one_fill_through_zero():
    # long 0.5 BTC bought at 40,000 with 10,000 equity; e = -0.4 of L = 5 -> -0.5 BTC
    r = step(
        -10_000, 0.5, -0.4, 40_000, (40_000, 40_100, 39_800, 39_900),
        half_spread=0.0001, fee=0.0005, leverage=5, lot=0.001,
    )  # fmt: skip
    assert lots(r["trade_qty"], 0.001) == -1000
    assert lots(r["qty"], 0.001) == -500
    assert r["trade_price"] == pytest.approx(39_996.0, abs=1e-9)
    assert r["trade_fee"] == money(19.998)  # 0.0005 * 1.0 * 39,996: on |dq|, both legs
    assert r["cash"] == money(29_976.002)  # -10,000 + 39,996 - 19.998
    # 10,000 + 0.5 * (39,996 - 40,000) + 0.5 * (39,996 - 39,900) - 19.998
    assert r["equity"] == money(10_026.002)


def test_fee_is_the_rate_times_the_traded_quantity_times_the_fill_price():
    # long 1 BTC (4x); e = 0.2 of L = 5 -> 0.25 BTC: sell 0.75 at 40,000 * 0.9998 = 39,992
    r = step(
        -30_000, 1.0, 0.2, 40_000, (40_000, 40_100, 39_900, 40_000),
        half_spread=0.0001, slip_mode=SLIP_FIXED, slip_value=0.0001, fee=0.0005, leverage=5, lot=0.001,
    )  # fmt: skip
    assert lots(r["trade_qty"], 0.001) == -750
    assert r["trade_fee"] == money(14.997)  # 0.0005 * 0.75 * 39,992, not 1.0 or 0.25 BTC
    assert r["trade_slippage"] == money(6.0)  # 0.75 * 8
    assert r["cash"] == money(-20.997)  # -30,000 + 29,994 - 14.997
    assert r["equity"] == money(9_979.003)  # 10,000 - 6 - 14.997


def test_target_is_rounded_toward_zero_to_the_lot():
    # 0.7 * 2 * 10,000 / 30,000 = 0.4667 BTC -> 0.46, and -0.46 (not -0.47) for a short
    long = step(10_000, 0, 0.7, 30_000, (30_000,) * 4, leverage=2, lot=0.01)
    short = step(10_000, 0, -0.7, 30_000, (30_000,) * 4, leverage=2, lot=0.01)
    assert lots(long["qty"], 0.01) == 46
    assert lots(short["qty"], 0.01) == -46
    # a whole number of lots in exact arithmetic stays whole in floats: 0.3 / 0.1 is 3 lots
    exact = step(10_000, 0, 0.3, 10_000, (10_000,) * 4, lot=0.1)
    assert lots(exact["qty"], 0.1) == 3


def test_trade_below_min_notional_is_skipped_but_a_full_close_below_it_is_allowed():
    kw = {"lot": 0.00001, "min_notional": 10.0}
    # 0.0005 * 10,000 / 40,000 = 0.000125 BTC = 5 USDT < 10: not sent
    opening = step(10_000, 0, 0.0005, 40_000, (40_000,) * 4, **kw)
    assert opening["trade_qty"] == 0.0 and opening["qty"] == 0.0 and opening["cash"] == 10_000
    # reducing 0.0002 -> 0.0001 BTC (4 USDT) is skipped too
    reducing = step(9_992, 0.0002, 0.0004, 40_000, (40_000,) * 4, **kw)
    assert reducing["trade_qty"] == 0.0 and lots(reducing["qty"], 0.00001) == 20
    # closing 0.0002 BTC (8 USDT) is allowed: nobody is left with an unsellable remainder
    closing = step(9_992, 0.0002, 0.0, 40_000, (40_000,) * 4, **kw)
    assert closing["qty"] == 0.0
    assert lots(closing["trade_qty"], 0.00001) == -20
    assert closing["cash"] == money(10_000.0)


def test_rebalance_smaller_than_the_deadband_is_skipped():
    # 0.2 BTC at 40,000 with equity 10,000; deadband 0.05 * 10,000 = 500 USDT
    small = step(2_000, 0.2, 0.84, 40_000, (40_000,) * 4, lot=0.001, deadband=0.05)  # +0.010 BTC = 400
    large = step(2_000, 0.2, 0.86, 40_000, (40_000,) * 4, lot=0.001, deadband=0.05)  # +0.015 BTC = 600
    assert small["trade_qty"] == 0.0 and lots(small["qty"], 0.001) == 200
    assert lots(large["trade_qty"], 0.001) == 15 and lots(large["qty"], 0.001) == 215


def test_fill_is_clamped_to_the_bar_high_and_low_when_costs_would_push_it_outside():
    kw = {"half_spread": 0.001, "slip_mode": SLIP_FIXED, "slip_value": 0.002, "lot": 0.001}
    # 100 * 1.003 = 100.3 > high 100.1; 100 * 0.997 = 99.7 < low 99.95
    buy = step(10_000, 0, 0.5, 100, (100, 100.1, 99.95, 100), **kw)
    sell = step(5_000, 50, 0.0, 100, (100, 100.1, 99.95, 100), **kw)
    assert buy["trade_price"] == pytest.approx(100.1, abs=1e-9)
    assert lots(buy["trade_qty"], 0.001) == 50_000  # 0.5 * 10,000 / 100
    assert buy["trade_slippage"] == money(5.0)  # 50 * 0.1
    assert sell["trade_price"] == pytest.approx(99.95, abs=1e-9)
    assert sell["trade_slippage"] == money(2.5)  # 50 * 0.05
    assert sell["cash"] == money(9_997.5)


def test_sqrt_impact_slippage_is_k_sigma_sqrt_quantity_over_volume():
    # k = 0.5, sigma = 0.02, V = 25, |dq| = 1: s = 0.5 * 0.02 * sqrt(1 / 25) = 0.002
    r = step(
        10_000, 0, 0.01, 100, (100, 101, 99, 100),
        half_spread=0.0001, slip_mode=SLIP_SQRT, slip_value=0.5, sigma=0.02, ref_volume=25, lot=0.001,
    )  # fmt: skip
    assert lots(r["trade_qty"], 0.001) == 1000
    assert r["trade_price"] == pytest.approx(100.21, abs=1e-9)  # 100 * (1 + 0.0001 + 0.002)
    assert r["trade_slippage"] == money(0.21)
    # four times the size, twice the impact: s = 0.5 * 0.02 * sqrt(4 / 25) = 0.004
    assert fill_price(100.0, 101.0, 99.0, 4.0, 0.0001, SLIP_SQRT, 0.5, 0.02, 25.0) == pytest.approx(100.41)
    # no volume known: the order walks the book to the bar's extreme
    assert fill_price(100.0, 101.0, 99.0, -1.0, 0.0001, SLIP_SQRT, 0.5, 0.02, 0.0) == 99.0


# -- funding and borrow -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("qty", "per_unit", "paid"),
    [
        (1.246, 4.021, 5.010166),  # long, positive rate: pays
        (-2.0, 4.021, -8.042),  # short, positive rate: receives
        (1.246, -4.021, -5.010166),  # long, negative rate: receives
        (-2.0, -4.021, 8.042),  # short, negative rate: pays
    ],
)
def test_funding_longs_pay_and_shorts_receive_a_positive_rate_and_the_reverse(qty, per_unit, paid):
    # per unit = mark 40,210 * rate 0.0001 = 4.021 USDT per BTC
    cash = 10_000 - qty * 40_000
    r = step(cash, qty, 0.0, 40_000, (40_000,) * 4, leverage=5, deadband=HOLD, funding_per_unit=per_unit)
    assert r["funding"] == money(paid)
    assert r["cash"] == money(cash - paid)
    assert r["equity"] == money(10_000 - paid)


def test_spot_short_borrow_accrues_every_bar_and_adds_up():
    # short 0.25 BTC at a flat 40,000 (10,000 of value) at 10 % a year on 1h bars
    borrow_per_bar = 0.10 * 3_600_000 / (365 * 24 * 3_600_000)
    cash, qty, charges = 20_000.0, -0.25, []
    for _ in range(24):
        r = step(
            cash, qty, -1.0, 40_000, (40_000,) * 4, lot=0.001, deadband=0.05, borrow_per_bar=borrow_per_bar
        )
        assert r["trade_qty"] == 0.0
        cash, qty = r["cash"], r["qty"]
        charges.append(r["borrow"])
    assert charges == pytest.approx([0.114155251] * 24)  # 10,000 * 0.1 / 8,760 each bar
    assert sum(charges) == money(2.7397)  # a day of interest: 10,000 * 0.1 * 24 / 8,760
    assert cash == money(20_000 - 2.7397)
    assert r["equity"] == money(9_997.2603)


# -- leverage and liquidation -------------------------------------------------------------------


def test_leverage_cap_trims_an_oversized_target_and_keeps_exposure_within_L_times_equity():
    # e = 1 of L = 3 at c_prev 100 asks 300; the open gaps to 110, where the cap is
    # 3 * 10,000 / (110 * (1 + 3 * 0.0005)) = 272.32 -> 272 lots
    r = step(10_000, 0, 1.0, 100, (110, 111, 109, 110), fee=0.0005, leverage=3, lot=1.0)
    assert lots(r["qty"], 1.0) == 272
    assert r["trade_fee"] == money(14.96)  # 0.0005 * 272 * 110
    assert r["cash"] == money(-19_934.96)  # 10,000 - 29,920 - 14.96
    equity_after_fill = r["cash"] + r["qty"] * r["trade_price"]
    assert equity_after_fill == money(9_985.04)
    assert abs(r["qty"]) * r["trade_price"] <= 3 * equity_after_fill  # 29,920 <= 29,955.12


def test_long_is_liquidated_at_its_liquidation_price_when_the_low_crosses_it():
    # long 1 BTC with cash -40,000: P = 40,000 / (1 * (1 - 0.004)) = 40,160.6426
    assert liquidation_price(-40_000.0, 1.0, 0.004) == pytest.approx(40_160.6426, abs=1e-4)
    bar = (44_000, 44_500, 40_000, 41_000)
    r = step(-40_000, 1.0, 1.0, 45_000, bar, leverage=10, liq_fee=0.002, deadband=HOLD)
    assert r["liquidation_qty"] == -1.0 and r["qty"] == 0.0
    assert r["liquidation_price"] == pytest.approx(40_160.6426, abs=1e-4)
    assert r["liquidation_fee"] == money(80.3213)  # 0.002 * 40,160.6426
    # what is left is the maintenance margin 0.004 * P = 160.6426, less the fee
    assert r["cash"] == money(80.3213)
    assert r["equity"] == money(80.3213)
    # with Binance's 0.5 % fee the margin left does not cover it: floored at zero
    assert step(-40_000, 1.0, 1.0, 45_000, bar, leverage=10, deadband=HOLD)["equity"] == 0.0


def test_short_is_liquidated_at_its_liquidation_price_when_the_high_crosses_it():
    # short 1 BTC with cash 48,000: P = 48,000 / (1 * (1 + 0.004)) = 47,808.7649
    r = step(
        48_000,
        -1.0,
        -1.0,
        46_000,
        (46_000, 48_000, 45_500, 47_000),
        leverage=10,
        liq_fee=0.002,
        deadband=HOLD,
    )
    assert r["liquidation_qty"] == 1.0 and r["qty"] == 0.0
    assert r["liquidation_price"] == pytest.approx(47_808.7649, abs=1e-4)
    assert r["liquidation_fee"] == money(95.6175)  # 0.002 * 47,808.7649
    assert r["equity"] == money(95.6175)  # 0.004 * P - 0.002 * P


def test_gap_through_the_liquidation_price_closes_at_the_open_and_floors_isolated_equity_at_zero():
    # long, P = 40,160.64; the bar opens at 38,000: closed at the open, the order is not sent
    r = step(-40_000, 1.0, -1.0, 45_000, (38_000, 38_500, 37_000, 38_200), leverage=5, lot=0.001)
    assert r["trade_qty"] == 0.0
    assert r["liquidation_qty"] == -1.0 and r["liquidation_price"] == 38_000.0
    assert r["liquidation_fee"] == money(190.0)  # 0.005 * 38,000
    # -40,000 + 38,000 - 190 = -2,190: the exchange takes the shortfall, not the account
    assert r["cash"] == 0.0 and r["equity"] == 0.0 and r["qty"] == 0.0
    # short, P = 47,808.76; the bar opens at 50,000
    s = step(48_000, -1.0, 1.0, 46_000, (50_000, 51_000, 49_000, 50_500), leverage=5, lot=0.001)
    assert s["liquidation_qty"] == 1.0 and s["liquidation_price"] == 50_000.0
    assert s["liquidation_fee"] == money(250.0)
    assert s["equity"] == 0.0


def test_costs_charged_at_the_close_that_reach_maintenance_liquidate_at_the_close():
    # long 1 BTC, P = 40,160.64 < low 40,200; funding of 100 USDT moves P to 40,100 / 0.996 = 40,261.04
    r = step(
        -40_000,
        1.0,
        1.0,
        40_200,
        (40_200,) * 4,
        leverage=10,
        liq_fee=0.001,
        deadband=HOLD,
        funding_per_unit=100,
    )
    assert r["funding"] == money(100.0)
    assert r["liquidation_qty"] == -1.0 and r["liquidation_price"] == 40_200.0
    assert r["liquidation_fee"] == money(40.2)
    assert r["equity"] == money(59.8)  # -40,100 + 40,200 - 40.2


def test_spot_long_without_debt_is_never_liquidated_even_by_a_99_percent_crash():
    for cash in (0.0, 12.5):
        r = step(cash, 0.25, 1.0, 40_000, (40_000, 40_000, 400, 400), deadband=HOLD)
        assert r["liquidation_qty"] == 0.0 and r["qty"] == 0.25
        assert r["equity"] == money(cash + 100.0)  # 0.25 * 400


# -- the array form -----------------------------------------------------------------------------


def test_step_accounts_steps_each_account_from_its_own_bar_like_step_account():
    o = np.array([40_000.0, 40_000.0, 41_000.0])
    h = np.array([40_100.0, 40_200.0, 41_100.0])
    lo = np.array([39_900.0, 39_900.0, 40_900.0])
    c = np.array([40_000.0, 40_100.0, 41_050.0])
    half_spread = np.full(3, 0.0001)
    zeros = np.zeros(3)
    cash = np.array([10_000.0, 4_994.4995, 10_000.0])
    qty = np.array([0.0, 0.125, 0.0])
    exposure = np.array([0.5, 0.0, 0.0])
    idx = np.array([0, 1, 1])
    out = np.zeros((len(OUT_FIELDS), 3))
    bar = [(o[u], h[u], lo[u], c[u]) for u in idx + 1]
    expected = [step(cash[i], qty[i], exposure[i], c[idx[i]], bar[i], **SPOT) for i in range(3)]
    step_accounts(
        cash, qty, exposure, idx, o, h, lo, c, half_spread, zeros, zeros, zeros,
        SLIP_NONE, 0.0, 0.001, 1.0, 0.004, 0.005, 0.001, 0.0, 0.0, 0.0, out,
    )  # fmt: skip
    for i in range(3):
        assert cash[i] == expected[i]["cash"] and qty[i] == expected[i]["qty"]
        assert out[:, i].tolist() == [expected[i][k] for k in OUT_FIELDS]
    # account 0 is the spot buy above; account 1 sells it at the next open; account 2 stays flat
    assert cash[0] == money(4_994.4995) and out[OUT_FIELDS.index("equity"), 0] == money(10_006.9995)
    assert cash[1] == money(10_113.8625) and qty[1] == 0.0
    assert cash[2] == 10_000.0 and out[:, 2].tolist() == [0.0] * 9 + [10_000.0]


# -- the worked example of docs/accounting.md ---------------------------------------------------

# BTCUSDT perpetual, 1h bars from 2024-01-01T05:00Z; the 08:00Z funding event (rate 0.0001, mark
# 40,210) belongs to the 07:00 bar
EX_BARS = [  # open, high, low, close
    (39_950.0, 40_050.0, 39_900.0, 40_000.0),  # 05:00
    (40_010.0, 40_150.0, 39_950.0, 40_100.0),  # 06:00
    (40_100.0, 40_300.0, 40_050.0, 40_200.0),  # 07:00
    (40_190.0, 40_400.0, 40_000.0, 40_200.0),  # 08:00
    (40_250.0, 48_500.0, 40_150.0, 47_000.0),  # 09:00
]
EX_FUNDING = [0.0, 0.0, 0.0001 * 40_210, 0.0, 0.0]
EX_ACTIONS = [1.0, 1.0, -1.0, -1.0]
EX_COSTS = {
    "half_spread": 0.0001, "slip_mode": SLIP_FIXED, "slip_value": 0.0001, "fee": 0.0005, "leverage": 5.0,
    "mmr": 0.004, "liq_fee": 0.005, "lot": 0.001, "min_notional": 0.0, "deadband": 0.05,
}  # fmt: skip
# the doc's table, one column per stepped bar (06:00, 07:00, 08:00, 09:00)
EX_TABLE = {
    "equity at decision": [10_000.0, 10_077.2383, 10_196.8281, 10_101.3150],
    "target raw": [1.250000, 1.256514, -1.268262, -1.256382],
    "target lots": [1250, 1256, -1268, -1256],
    "traded": [True, False, True, False],
    "fill price": [40_018.002, None, 40_181.962, None],
    "leverage cap": [1.246322, None, 1.259770, None],
    "position after order lots": [1246, 1246, -1259, -1259],
    "dq lots": [1246, 0, -2505, 0],
    "fee": [24.9312, 0.0, 50.3279, 0.0],
    "slippage cost": [9.9705, 0.0, 20.1352, 0.0],
    "cash after fill": [-39_887.3617, -39_887.3617, 60_713.1150, 60_713.1150],
    "liquidation price after fill": [32_140.8924, 32_140.8924, 48_031.1597, 48_031.1597],
    "liquidated at": [None, None, None, 48_031.1597],
    "liquidation fee": [0.0, 0.0, 0.0, 302.3562],
    "funding": [0.0, 5.0102, 0.0, 0.0],
    "cash at close": [-39_887.3617, -39_892.3719, 60_713.1150, 0.0],
    "position at close lots": [1246, 1246, -1259, 0],
    "equity at close": [10_077.2383, 10_196.8281, 10_101.3150, 0.0],
}


def test_worked_example_in_docs_matches_the_kernel_to_the_cent():
    col = {k: iter(v) for k, v in EX_TABLE.items()}
    L, f, lot = EX_COSTS["leverage"], EX_COSTS["fee"], EX_COSTS["lot"]
    cash, qty, ledger = 10_000.0, 0.0, []
    for t, e in enumerate(EX_ACTIONS):
        c_prev = EX_BARS[t][3]
        equity_t = cash + qty * c_prev
        assert equity_t == money(next(col["equity at decision"]))
        raw = e * L * equity_t / c_prev
        assert raw == pytest.approx(next(col["target raw"]), abs=1e-6)
        assert lots(lot_round(raw, lot), lot) == next(col["target lots"])

        r = step(cash, qty, e, c_prev, EX_BARS[t + 1], funding_per_unit=EX_FUNDING[t + 1], **EX_COSTS)
        traded, p, cap = next(col["traded"]), next(col["fill price"]), next(col["leverage cap"])
        assert (r["trade_qty"] != 0.0) == traded
        if traded:
            assert r["trade_price"] == pytest.approx(p, abs=1e-6)
            e_p = cash + qty * p
            assert L * (e_p - f * abs(qty) * p) / (p * (1 + L * f)) == pytest.approx(cap, abs=1e-6)
        assert lots(r["trade_qty"], lot) == next(col["dq lots"])
        assert lots(qty + r["trade_qty"], lot) == next(col["position after order lots"])
        assert r["trade_fee"] == money(next(col["fee"]))
        assert r["trade_slippage"] == money(next(col["slippage cost"]))
        cash_after_fill = cash - r["trade_qty"] * r["trade_price"] - r["trade_fee"]
        assert cash_after_fill == money(next(col["cash after fill"]))
        p_liq = liquidation_price(cash_after_fill, qty + r["trade_qty"], EX_COSTS["mmr"])
        assert p_liq == pytest.approx(next(col["liquidation price after fill"]), abs=1e-4)
        liquidated_at = next(col["liquidated at"])
        if liquidated_at is None:
            assert r["liquidation_qty"] == 0.0
        else:
            assert r["liquidation_qty"] == -(qty + r["trade_qty"])
            assert r["liquidation_price"] == pytest.approx(liquidated_at, abs=1e-4)
        assert r["liquidation_fee"] == money(next(col["liquidation fee"]))
        assert r["funding"] == money(next(col["funding"]))
        assert r["cash"] == money(next(col["cash at close"]))
        assert lots(r["qty"], lot) == next(col["position at close lots"])
        assert r["equity"] == money(next(col["equity at close"]))
        cash, qty = r["cash"], r["qty"]
        ledger.append(r)

    # the ledger identity: fills (the liquidation included) marked to the last close, less costs,
    # plus what the isolated-margin floor handed to the exchange
    fills = [(r["trade_qty"], r["trade_price"]) for r in ledger] + [
        (r["liquidation_qty"], r["liquidation_price"]) for r in ledger
    ]
    c_last = EX_BARS[-1][3]
    pnl = sum(dq * (c_last - p) for dq, p in fills)
    assert pnl == money(-9_677.8458)
    costs = sum(r["trade_fee"] + r["liquidation_fee"] + r["funding"] + r["borrow"] for r in ledger)
    assert costs == money(75.2591 + 302.3562 + 5.0102)
    assert 10_000 + pnl - costs + 60.4712 == money(ledger[-1]["equity"])

    # the same four bars through the array form, two identical accounts
    o, h, lo, c = (np.array(x) for x in zip(*EX_BARS, strict=True))
    n = 2
    cash_v, qty_v = np.full(n, 10_000.0), np.zeros(n)
    out = np.zeros((len(OUT_FIELDS), n))
    half_spread = np.full(len(EX_BARS), EX_COSTS["half_spread"])
    zeros = np.zeros(len(EX_BARS))
    for t, e in enumerate(EX_ACTIONS):
        step_accounts(
            cash_v, qty_v, np.full(n, e), np.full(n, t), o, h, lo, c, half_spread, zeros, zeros,
            np.array(EX_FUNDING), SLIP_FIXED, 0.0001, 0.0005, 5.0, 0.004, 0.005, 0.001, 0.0, 0.05, 0.0, out,
        )  # fmt: skip
        for k, name in enumerate(OUT_FIELDS):
            assert out[k].tolist() == [ledger[t][name]] * n
    assert cash_v.tolist() == [0.0, 0.0] and qty_v.tolist() == [0.0, 0.0]


# -- fills at the edges of margin and lots -----------------------------------------------------


def test_closing_fill_beyond_the_liquidation_price_floors_isolated_equity_at_zero():
    # Long 1 BTC with cash -40,000: P = 40,160.64, bankrupt below 40,000. The open (40,200) has
    # not reached P, so there is no gap liquidation, but the order to flatten pays 0.5 % of
    # spread and slippage: 40,200 * 0.995 = 39,999, and -40,000 + 39,999 - 20.00 = -21.00.
    r = step(
        -40_000, 1.0, 0.0, 40_500, (40_200, 40_300, 39_000, 39_500),
        half_spread=0.0025, slip_mode=SLIP_FIXED, slip_value=0.0025, fee=0.0005, leverage=5, lot=0.001,
    )  # fmt: skip
    assert r["trade_qty"] == -1.0
    assert r["trade_price"] == pytest.approx(39_999.0, abs=1e-9)
    assert r["trade_fee"] == money(19.9995)  # 0.0005 * 39,999
    # the loss stops at the account's equity: the exchange takes the other 21.00
    assert r["cash"] == 0.0 and r["equity"] == 0.0 and r["qty"] == 0.0


def test_position_opened_past_its_liquidation_price_by_costs_is_liquidated_there_not_at_the_open():
    # 125x long from flat: fill 100 * (1 + 0.005 + 0.005) = 101, cap 125 * 10,000 / 101 =
    # 12,376.2376 -> 12,376.23; cash 10,000 - 12,376.23 * 101 = -1,239,999.23, so
    # P = 1,239,999.23 / (12,376.23 * 0.996) = 100.5944: above the open, below the fill
    r = step(
        10_000, 0, 1.0, 100, (100, 102, 99, 100.5),
        half_spread=0.005, slip_mode=SLIP_FIXED, slip_value=0.005, leverage=125, liq_fee=0.002, lot=0.01,
    )  # fmt: skip
    assert lots(r["trade_qty"], 0.01) == 1_237_623
    assert r["trade_price"] == pytest.approx(101.0, abs=1e-9)
    # the price path starts at the fill and meets P on its way down to the low of 99
    assert r["liquidation_price"] == pytest.approx(100.5944, abs=1e-4)
    assert r["liquidation_fee"] == money(2_489.9583)  # 0.002 * 12,376.23 * 100.5944
    assert r["equity"] == money(2_489.9583)  # (0.004 - 0.002) * 12,376.23 * 100.5944


def test_leverage_cap_a_hair_below_a_whole_lot_rounds_down_and_spot_cash_stays_non_negative():
    # 49,999.99999998 / 40,000 = 1.2499999999995 BTC: the target rounds to 1.250 (lot rounding
    # forgives 1e-9 of a lot), which the cap does not: it takes 1.249, not 1.250 at cash -2e-8
    r = step(49_999.99999998, 0, 1.0, 40_000, (40_000,) * 4, lot=0.001)
    assert lots(r["qty"], 0.001) == 1249
    assert r["cash"] == money(40.0)  # 49,999.99999998 - 1.249 * 40,000
    assert r["cash"] >= 0.0


def test_sqrt_impact_order_is_shrunk_until_it_fits_the_leverage_cap_at_its_own_price():
    # e = -1 of L = 10 asks -1,000 at c_prev 100; the bar gaps to 110. Each smaller order moves
    # the price less, and a better sell price means a lower cap, L * E / (p * (1 + L * f)): the
    # order is shrunk until it fits at the price it gets, 950.934 at 104.637.
    r = step(
        10_000, 0, -1.0, 100, (110, 112, 80, 110),
        slip_mode=SLIP_SQRT, slip_value=1.0, sigma=0.05, ref_volume=1_000, fee=0.0005, leverage=10,
    )  # fmt: skip
    assert r["trade_qty"] == pytest.approx(-950.934, abs=1e-3)
    # s = 0.05 * sqrt(950.934 / 1,000) = 0.04876: 110 * (1 - 0.04876) = 104.637
    assert r["trade_price"] == pytest.approx(104.637, abs=1e-3)
    equity_after_fill = 10_000 - r["trade_fee"]
    assert equity_after_fill == money(9_950.2488)  # fee 0.0005 * 950.934 * 104.637 = 49.7512
    exposure = abs(r["trade_qty"]) * r["trade_price"]
    assert exposure <= 10 * equity_after_fill
    assert exposure == money(99_502.49)  # the cap binds: 10 * 9,950.2488
