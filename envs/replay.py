"""``MarketReplayEnv``: one trading account replaying market history, with the costs an exchange
charges. It is :class:`envs.vector.BatchedMarketReplayEnv` with one account: one truth."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd

from envs.market import load_market
from envs.vector import (
    _INFO_STATE,
    I_IDX,
    I_LIQUIDATED,
    I_TERMINATED,
    I_TRUNCATED,
    S_EXPOSURE,
    S_REWARD,
    BatchedMarketReplayEnv,
    _step_all,
)


class MarketReplayEnv(gym.Env):
    """Trade one symbol bar by bar over recorded history.

    **Timing.** Each step is one bar. The agent decides at the close of bar ``t`` from data up to
    and including ``t``; the order fills at the open of ``t+1`` (moved against it by half the
    spread and slippage, inside the bar's range) and the account is marked at the close of
    ``t+1``. Nothing after ``t`` can reach the observation at ``t``.

    **Action space.** ``action_type="discrete"``: ``Discrete(len(actions))``, action ``k`` meaning
    the target exposure ``actions[k]`` (default ``[-1, 0, 1]``, ``[0, 1]`` on a long-only spot
    account). ``"continuous"``: ``Box(-1, 1,
    (1,))`` (``Box(0, 1)`` on a long-only spot account). Exposure ``e`` targets a position worth
    ``e * max_leverage * equity``; ``deadband`` skips rebalances smaller than that fraction of
    equity.

    **Observation.** ``Box(-inf, inf, (window * F + 4,), float32)``: the last ``window`` rows of
    ``F`` causal, past-normalised features (``features``, default the 8 of
    :data:`envs.features.DEFAULT_FEATURES`, plus ``funding_rate`` on perps), oldest first, then

    ====  ==================  ===============================================================
    k     name                value
    ====  ==================  ===============================================================
    -4    exposure            ``position * price / (equity * max_leverage)``
    -3    unrealized_pnl      ``position * (price - average entry) / equity``
    -2    bars_since_trade    ``log1p(bars since the last fill) / log1p(1440)``
    -1    margin_ratio        ``maintenance_margin_rate * |position| * price / equity`` when
                              the account owes something (1 means liquidation), else 0
    ====  ==================  ===============================================================

    **Reward.** ``reward="log_return"`` of equity (default), ``"pnl"``, ``"differential_sharpe"``
    or ``"log_return_drawdown"`` (see :mod:`envs.rewards`). Equity already carries every cost.

    **Episode end.** ``terminated`` on liquidation or when equity reaches 0; ``truncated`` after
    ``episode_length`` steps or at the last bar before a gap in the data (episodes never
    straddle a gap). Starts are random over the valid bars (``random_start``) or set with
    ``reset(options={"start": ts, "length": n})``.

    **Info.** ``ts`` (open time of the bar just marked), ``price`` (its close), ``position``
    (signed base quantity), ``cash``, ``equity``, cumulative ``fees funding slippage turnover
    borrow`` (quote currency; funding positive when paid), this step's fill ``trade_qty
    trade_price trade_fee trade_slippage``, the liquidation's ``liquidation_qty liquidation_price
    liquidation_fee`` and the isolated-margin ``top_up`` (0 when none), ``liquidated``
    (:data:`envs.vector.INFO_KEYS`). The reset info has the same keys.

    **Arguments.** ``bars`` (DataFrame in the store's schema or a ``data.loader.Bars``; or build
    from the store with :meth:`from_store`),
    ``funding`` (DataFrame ``ts rate mark_price``; perps without it pay ``funding_rate`` every
    ``funding_interval_hours``), and every field of :class:`envs.config.EnvConfig`.

    **Version history.** v0: first release.
    """

    metadata = {"render_modes": []}

    def __init__(self, bars: Any = None, funding: pd.DataFrame | None = None, **kwargs: Any):
        self._vec = BatchedMarketReplayEnv(1, bars, funding, copy=False, **kwargs)
        self.cfg = self._vec.cfg
        self.market = self._vec.market
        self.observation_space = self._vec.single_observation_space
        self.action_space = self._vec.single_action_space
        self._discrete = isinstance(self.action_space, gym.spaces.Discrete)
        self._values = self._vec._action_values if self._discrete else None
        self._done = True
        vec = self._vec
        # bound once: attribute look-ups are a large share of a step this small
        self._step_args = (
            vec._features,
            vec._market,
            vec._params,
            vec._iparams,
            vec.state,
            vec.istate,
            vec._obs,
        )
        self._state, self._istate, self._obs = vec.state, vec.istate, vec._obs
        self._ts, self._close = self.market.ts, self.market.close

    @classmethod
    def from_store(
        cls,
        symbol: str,
        timeframe: str = "1m",
        *,
        exchange: str = "binance",
        start=None,
        end=None,
        root=None,
        **kwargs: Any,
    ) -> MarketReplayEnv:
        """The env over a stored series: bars, and funding for ``market="perp"``."""
        bars, funding = load_market(
            symbol,
            timeframe,
            exchange=exchange,
            market=kwargs.get("market", "spot"),
            start=start,
            end=end,
            root=root,
        )
        return cls(bars=bars, funding=funding, **kwargs)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._vec._np_random = self.np_random  # one generator, so reset(seed=s) reproduces exactly
        self._vec._reset_accounts(self._vec._all, options)
        self._done = False
        return self._vec._obs[0].copy(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        vec = self._vec
        if self._done:
            raise RuntimeError("the episode has ended (or never started): call reset() before step()")
        if self._discrete and isinstance(action, (int, np.integer)) and 0 <= action < len(self._values):
            self._state[0, S_EXPOSURE] = self._values[action]  # the common case, without array checks
            _step_all(*self._step_args)
        else:
            vec._advance(np.reshape(action, (1, -1)))
        flags = self._istate[0].tolist()
        s = self._state[0].tolist()
        terminated, truncated = flags[I_TERMINATED] != 0, flags[I_TRUNCATED] != 0
        self._done = terminated or truncated
        return self._obs[0].copy(), s[S_REWARD], terminated, truncated, self._info(flags, s)

    def _info(self, flags: list | None = None, s: list | None = None) -> dict:
        if flags is None:
            flags, s = self._istate[0].tolist(), self._state[0].tolist()
        t = flags[I_IDX]
        info = {"ts": int(self._ts[t]), "price": float(self._close[t])}
        info.update((k, s[col]) for k, col in _INFO_STATE.items())
        info["liquidated"] = flags[I_LIQUIDATED] != 0
        return info
