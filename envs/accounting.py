"""The accounting kernel: one step of N trading accounts, the only copy of the money logic.

Every env (single and batched), the evaluation replay and the paper broker call
:func:`step_accounts`. It is compiled with numba and loops over accounts; the per-account rules
live in :func:`step_account`, a pure function of scalars. docs/accounting.md derives every
formula below with a worked example that tests reproduce to the cent.

Timing. A decision is taken at the close of bar ``t`` (price ``c_t``) and filled at the open of
bar ``t+1``; the account is marked at the close of ``t+1``. Within bar ``t+1`` (prices
``o h l c``), in this order:

1. **Gap check.** An open position whose liquidation price the open has already passed is
   liquidated at ``o`` (see 4), and nothing is traded.
2. **Target.** ``E_t = cash + q * c_t``; target quantity ``q* = e * L * E_t / c_t`` for the
   target exposure ``e`` in [-1, 1] and max leverage ``L``, rounded toward zero to ``lot_size``.
   No trade when ``|q* - q| * c_t < deadband * E_t``.
3. **Fill.** ``dq = q* - q`` is filled at
   ``p = clamp(o * (1 + sign(dq) * (half_spread + slip)), l, h)``: always against the trader,
   never outside the bar. ``slip`` is 0, a fixed fraction, or ``impact_k * sigma_t *
   sqrt(|dq| / volume_t)`` with ``sigma_t`` and ``volume_t`` causal rolling values known at
   ``t``. Before trading, ``|q*|`` is shrunk (to whole lots) until the exposure after the fill
   and its fee stays within leverage at the order's own fill price:
   ``|q*| <= L * (E_p - f * |q| * p) / (p * (1 + L * f))`` with ``E_p = cash + q * p``. A fill
   whose notional ``|dq| * p`` is below ``min_notional`` is skipped unless it closes the
   position. Then ``cash -= dq * p + f * |dq| * p`` and ``q = q*``; a close filled beyond the
   bankruptcy price leaves cash at 0, not below. The slippage cost recorded is ``|dq| * |p - o|``.
4. **Liquidation.** The liquidation price solves ``cash + q * P = m * |q| * P`` (equity equals
   maintenance margin at rate ``m``): ``P = -cash / (q * (1 - m))`` for a long and
   ``P = -cash / (q * (1 + m))`` for a short (a spot long with no debt has ``P <= 0`` and is
   never liquidated). If the bar's adverse extreme (``l`` for a long, ``h`` for a short) reaches
   ``P``, the position is closed at ``P`` (at ``o`` on a gap, at the fill price if spread and
   slippage already filled it past ``P``), paying ``liquidation_fee * |q| *
   price``; with isolated margin the loss stops at the account's equity, so cash is floored at
   0 (the exchange's insurance fund takes the rest) and the episode ends.
5. **Funding** (perpetuals). Events with ``open < T <= close time`` of the bar are charged on
   the position held through the bar: ``cash -= q * sum(mark_T * rate_T)`` (longs pay positive
   rates, shorts receive them).
6. **Borrow** (spot shorts). ``cash -= borrow_per_bar * |q| * c`` every bar that a short is held.
7. **Mark.** ``equity = cash + q * c``. If funding or interest has pushed the account to its
   maintenance margin at the close, it is liquidated at ``c``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

SLIP_NONE, SLIP_FIXED, SLIP_SQRT = 0, 1, 2

# indices of the per-account output rows written by step_accounts
OUT_FIELDS: tuple[str, ...] = (
    "trade_qty",
    "trade_price",
    "trade_fee",
    "trade_slippage",
    "liquidation_qty",
    "liquidation_price",
    "liquidation_fee",
    "funding",
    "borrow",
    "equity",
)


@njit(cache=True)
def lot_round(qty: float, lot: float) -> float:
    """``qty`` rounded toward zero to a whole number of lots (unchanged when ``lot`` is 0)."""
    if lot <= 0.0:
        return qty
    n = math.floor(abs(qty) / lot + 1e-9)  # 1e-9 lots: 0.3 / 0.1 must count as 3 lots
    return math.copysign(n * lot, qty)


@njit(cache=True)
def lot_floor(qty: float, lot: float) -> float:
    """The largest whole number of lots not above ``qty >= 0`` (for caps, which must hold)."""
    if lot <= 0.0:
        return qty
    n = math.floor(qty / lot + 1e-9)
    if n * lot > qty:
        n -= 1
    return max(n, 0) * lot


@njit(cache=True)
def liquidation_price(cash: float, qty: float, mmr: float) -> float:
    """Price at which ``cash + qty * P == mmr * |qty| * P``; NaN for a flat account."""
    if qty > 0.0:
        return -cash / (qty * (1.0 - mmr))
    if qty < 0.0:
        return -cash / (qty * (1.0 + mmr))
    return math.nan


@njit(cache=True)
def liquidate(cash: float, qty: float, price: float, liq_fee: float) -> tuple:
    """Close ``qty`` at ``price`` paying the liquidation fee: ``(cash, l_qty, l_price, l_fee)``.
    Isolated margin: cash is floored at 0, the exchange's insurance fund takes any deficit."""
    fee = liq_fee * abs(qty) * price
    return max(cash + qty * price - fee, 0.0), -qty, price, fee


@njit(cache=True)
def fill_price(
    o: float,
    h: float,
    lo: float,
    dq: float,
    half_spread: float,
    slip_mode: int,
    slip_value: float,
    sigma: float,
    ref_volume: float,
) -> float:
    """The open moved against an order of ``dq`` by half the spread plus slippage, inside [lo, h]."""
    side = 1.0 if dq > 0.0 else -1.0
    slip = 0.0
    if slip_mode == SLIP_FIXED:
        slip = slip_value
    elif slip_mode == SLIP_SQRT:
        # no volume known: the order walks the whole book, i.e. to the bar's extreme
        slip = slip_value * sigma * math.sqrt(abs(dq) / ref_volume) if ref_volume > 0.0 else 1.0
    return min(max(o * (1.0 + side * (half_spread + slip)), lo), h)


@njit(cache=True)
def step_account(
    cash: float,
    qty: float,
    exposure: float,
    c_prev: float,
    o: float,
    h: float,
    lo: float,
    c: float,
    half_spread: float,
    slip_mode: int,
    slip_value: float,
    sigma: float,
    ref_volume: float,
    fee: float,
    leverage: float,
    mmr: float,
    liq_fee: float,
    lot: float,
    min_notional: float,
    deadband: float,
    funding_per_unit: float,
    borrow_per_bar: float,
) -> tuple:
    """One bar for one account (see the module docstring). Pure: scalars in, scalars out.

    Returns ``(cash, qty, trade_qty, trade_price, trade_fee, trade_slippage, liq_qty, liq_price,
    liq_fee, funding, borrow, equity)``; ``funding`` and ``borrow`` are what was paid (negative
    when received).
    """
    t_qty = t_price = t_fee = t_slip = 0.0
    l_qty = l_price = l_fee = 0.0
    funding = borrow = 0.0

    # 1. a gap through the liquidation price at the open
    gapped = False
    if qty != 0.0:
        p_liq = liquidation_price(cash, qty, mmr)
        if (qty > 0.0 and o <= p_liq) or (qty < 0.0 and o >= p_liq):
            gapped = True
            cash, l_qty, l_price, l_fee = liquidate(cash, qty, o, liq_fee)
            qty = 0.0

    if not gapped:
        # 2. target from the equity at the decision (close of the previous bar)
        equity_prev = cash + qty * c_prev
        target = 0.0
        if equity_prev > 0.0:
            target = lot_round(exposure * leverage * equity_prev / c_prev, lot)
        dq = target - qty
        if dq != 0.0 and abs(dq) * c_prev >= deadband * equity_prev:
            # 3. fill at the open, moved against the trader, capped to the leverage limit
            p = fill_price(o, h, lo, dq, half_spread, slip_mode, slip_value, sigma, ref_volume)
            # The cap depends on the fill price, which depends on the order (its side, and its
            # size under sqrt impact), so shrink until the order fits at its own price. Every
            # round shrinks |target| strictly, so the loop ends; at 0 the order always fits.
            for _ in range(64):
                cap = leverage * (cash + qty * p - fee * abs(qty) * p) / (p * (1.0 + leverage * fee))
                if abs(target) <= cap:
                    break
                smaller = lot_floor(min(max(cap, 0.0), abs(target) * (1.0 - 1e-9)), lot)
                target = math.copysign(smaller, target)
                dq = target - qty
                if dq == 0.0:
                    break
                p = fill_price(o, h, lo, dq, half_spread, slip_mode, slip_value, sigma, ref_volume)
            if dq != 0.0 and (abs(dq) * p >= min_notional or target == 0.0):
                t_qty, t_price = dq, p
                t_fee = fee * abs(dq) * p
                t_slip = abs(dq) * abs(p - o)
                cash -= dq * p + t_fee
                qty = target
                if qty == 0.0 and cash < 0.0:
                    # a close filled beyond the bankruptcy price: isolated margin stops the loss
                    # at the account's equity and the exchange's insurance fund takes the rest
                    cash = 0.0

        # 4. liquidation against the bar's adverse extreme; the path after a fill starts at
        # the fill price, which spread and slippage may already have pushed past P
        if qty != 0.0:
            p_liq = liquidation_price(cash, qty, mmr)
            if (qty > 0.0 and lo <= p_liq) or (qty < 0.0 and h >= p_liq):
                start = t_price if t_qty != 0.0 else o
                x = min(p_liq, start) if qty > 0.0 else max(p_liq, start)
                cash, l_qty, l_price, l_fee = liquidate(cash, qty, x, liq_fee)
                qty = 0.0

    # 5. funding on the position held through the bar; 6. borrow interest on a spot short
    if qty != 0.0:
        funding = qty * funding_per_unit
        cash -= funding
        if qty < 0.0 and borrow_per_bar > 0.0:
            borrow = borrow_per_bar * abs(qty) * c
            cash -= borrow
        # 7. costs charged at the close can reach the maintenance margin themselves
        p_liq = liquidation_price(cash, qty, mmr)
        if (qty > 0.0 and c <= p_liq) or (qty < 0.0 and c >= p_liq):
            cash, l_qty, l_price, l_fee = liquidate(cash, qty, c, liq_fee)
            qty = 0.0
    equity = cash + qty * c
    return cash, qty, t_qty, t_price, t_fee, t_slip, l_qty, l_price, l_fee, funding, borrow, equity


@njit(cache=True)
def step_accounts(
    cash: np.ndarray,
    qty: np.ndarray,
    exposure: np.ndarray,
    idx: np.ndarray,
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    half_spread: np.ndarray,
    sigma: np.ndarray,
    ref_volume: np.ndarray,
    funding_per_unit: np.ndarray,
    slip_mode: int,
    slip_value: float,
    fee: float,
    leverage: float,
    mmr: float,
    liq_fee: float,
    lot: float,
    min_notional: float,
    deadband: float,
    borrow_per_bar: float,
    out: np.ndarray,
) -> None:
    """Step every account ``i`` from bar ``idx[i]`` to bar ``idx[i] + 1``.

    ``cash`` and ``qty`` are updated in place; ``out`` (shape ``(len(OUT_FIELDS), N)``) receives
    each account's fill, liquidation, funding, borrow and equity. Market arrays are indexed by
    bar; ``half_spread``, ``sigma`` and ``ref_volume`` at ``idx[i]`` are the causal values known at
    the decision, the prices and ``funding_per_unit`` at ``idx[i] + 1`` those of the bar stepped.
    """
    for i in range(cash.shape[0]):
        t = idx[i]
        u = t + 1
        r = step_account(
            cash[i], qty[i], exposure[i], close[t], open_[u], high[u], low[u], close[u],
            half_spread[t], slip_mode, slip_value, sigma[t], ref_volume[t],
            fee, leverage, mmr, liq_fee, lot, min_notional, deadband, funding_per_unit[u], borrow_per_bar,
        )  # fmt: skip
        cash[i] = r[0]
        qty[i] = r[1]
        for k in range(10):
            out[k, i] = r[k + 2]
