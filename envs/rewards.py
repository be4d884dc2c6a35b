"""Per-step rewards, computed from equity after every cost.

All costs (fees, spread, slippage, funding, borrow interest, liquidation) are inside equity, so
every reward pays them. With ``E`` the equity marked at this bar's close and ``E'`` at the
previous one:

- ``log_return``: ``log(E / E')``. Equity is floored at ``RUIN_FLOOR * initial_equity`` so a
  wiped-out account gets a large negative, finite reward.
- ``pnl``: ``(E - E') / initial_equity``, the profit in units of the starting equity.
- ``differential_sharpe`` (Moody & Saffell, 1998): with ``R = log(E / E')`` and moving moments
  ``A += eta (R - A)``, ``B += eta (R^2 - B)``, the reward is
  ``(B' dA - A' dB / 2) / (B' - A'^2)^(3/2)`` with the moments before the update (``A' B'``,
  ``dA = R - A'``, ``dB = R^2 - B'``); 0 while ``B' - A'^2`` is still 0 (an episode's first step).
- ``log_return_drawdown``: ``log(E / E') - drawdown_penalty * max(0, D - D')`` where
  ``D = 1 - E / max(E so far)``: each step deeper into drawdown costs extra.
"""

from __future__ import annotations

import math

from numba import njit

RUIN_FLOOR = 1e-6
REWARDS: dict[str, int] = {"log_return": 0, "pnl": 1, "differential_sharpe": 2, "log_return_drawdown": 3}


@njit(cache=True)
def reward_step(
    kind: int,
    equity: float,
    prev_equity: float,
    peak: float,
    drawdown: float,
    a: float,
    b: float,
    initial_equity: float,
    drawdown_penalty: float,
    eta: float,
) -> tuple:
    """``(reward, peak, drawdown, a, b, log_return)`` for one account stepping from
    ``prev_equity`` to ``equity`` (see the module docstring); ``peak drawdown a b`` are the
    reward's memory, ``log_return`` the floored ``log(E / E')`` every kind starts from."""
    floor = RUIN_FLOOR * initial_equity
    log_r = math.log(max(equity, floor) / max(prev_equity, floor))
    peak = max(peak, equity)
    dd = 1.0 - equity / peak if peak > 0.0 else 0.0
    if kind == 0:
        reward = log_r
    elif kind == 1:
        reward = (equity - prev_equity) / initial_equity
    elif kind == 2:
        var = b - a * a
        da = log_r - a
        db = log_r * log_r - b
        reward = (b * da - 0.5 * a * db) / var**1.5 if var > 1e-18 else 0.0
        a += eta * da
        b += eta * db
    else:
        reward = log_r - drawdown_penalty * max(0.0, dd - drawdown)
    return reward, peak, dd, a, b, log_r
