"""The native batched replay env: N accounts stepped by one kernel call.

:class:`BatchedMarketReplayEnv` implements ``gymnasium.vector.VectorEnv`` with
``autoreset_mode = SAME_STEP`` (the default): when an account's episode ends, the step returns
its reward, ``terminated``/``truncated`` flags, its last observation in ``infos["final_obs"]`` and
its last info in ``infos["final_info"]``, and the observation and info of the account's *next*
episode (already reset) in their usual places.

``autoreset_mode = NEXT_STEP`` (gymnasium's own vector default, which Ray RLlib expects): the step
that ends an episode returns its last observation and info, with the episode's statistics in
``infos["episode"]`` (masked by ``infos["_episode"]``); the next step ignores that account's action
and returns the new episode's first observation with reward 0.

The single env (:mod:`envs.replay`) is this env with ``num_envs=1``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from numba import njit

from data.schema import bars_per_year, parse_time
from envs.accounting import SLIP_FIXED, SLIP_NONE, SLIP_SQRT, step_account
from envs.config import EnvConfig
from envs.market import EpisodeStarts, MarketData, episode_starts, load_market, prepare
from envs.rewards import REWARDS, reward_step

ACCOUNT_FEATURES: tuple[str, ...] = ("exposure", "unrealized_pnl", "bars_since_trade", "margin_ratio")
INFO_KEYS: tuple[str, ...] = (
    "ts", "price", "position", "cash", "equity", "fees", "funding", "slippage", "turnover",
    "borrow", "trade_qty", "trade_price", "trade_fee", "trade_slippage", "liquidation_qty",
    "liquidation_price", "liquidation_fee", "top_up", "liquidated",
)  # fmt: skip
"""Keys of every step's info. ``fees`` .. ``borrow`` add up over the episode; ``trade_*`` (the
policy's fill), ``liquidation_*`` (the forced close) and ``top_up`` (the loss the isolated-margin
floor passed to the exchange, docs/accounting.md) are this step's alone."""
_SLIP = {"none": SLIP_NONE, "fixed_bps": SLIP_FIXED, "sqrt_impact": SLIP_SQRT}


def slippage_params(cfg: EnvConfig) -> tuple[int, float]:
    """The kernel's ``(slip_mode, slip_value)`` for a config (:func:`envs.accounting.fill_price`):
    a fixed fraction for ``fixed_bps``, the impact coefficient for ``sqrt_impact``."""
    return _SLIP[cfg.slippage], cfg.slippage_bps / 1e4 if cfg.slippage == "fixed_bps" else cfg.impact_k


_BARS_SINCE_SCALE = float(np.log1p(1440))  # a day of 1m bars reads as 1.0

# Columns of the packed per-account arrays (one row per account, so an account's state shares a
# few cache lines) and rows/entries of the market and parameter arrays the compiled step reads.
# Packing keeps the call to seven arguments: numba checks every argument's type on each call
# (~0.1 us apiece), a large part of what one step of one account costs.
(S_CASH, S_QTY, S_ENTRY, S_FEES, S_FUNDING, S_SLIPPAGE, S_TURNOVER, S_BORROW, S_EQUITY, S_PEAK,
 S_DRAWDOWN, S_A, S_B, S_RETURN, S_TRADE_QTY, S_TRADE_PRICE, S_TRADE_FEE, S_EXPOSURE,
 S_REWARD, S_TRADES, S_EXPOSED, S_LOGRET_SUM, S_LOGRET_SQ, S_MAX_DRAWDOWN, S_TRADE_SLIPPAGE,
 S_LIQ_QTY, S_LIQ_PRICE, S_LIQ_FEE, S_TOP_UP) = range(29)  # fmt: skip
N_STATE = 29
I_IDX, I_END, I_LAST_TRADE, I_LENGTH, I_LIQUIDATED, I_TERMINATED, I_TRUNCATED = range(7)
M_OPEN, M_HIGH, M_LOW, M_CLOSE, M_HALF_SPREAD, M_SIGMA, M_REF_VOLUME, M_FUNDING = range(8)
(P_FEE, P_LEVERAGE, P_MMR, P_LIQ_FEE, P_LOT, P_MIN_NOTIONAL, P_DEADBAND, P_BORROW, P_SLIP,
 P_INITIAL, P_PENALTY, P_ETA) = range(12)  # fmt: skip
Q_SLIP_MODE, Q_REWARD, Q_WINDOW, Q_FEATURES = range(4)
_INFO_STATE = {
    "position": S_QTY, "cash": S_CASH, "equity": S_EQUITY, "fees": S_FEES, "funding": S_FUNDING,
    "slippage": S_SLIPPAGE, "turnover": S_TURNOVER, "borrow": S_BORROW, "trade_qty": S_TRADE_QTY,
    "trade_price": S_TRADE_PRICE, "trade_fee": S_TRADE_FEE, "trade_slippage": S_TRADE_SLIPPAGE,
    "liquidation_qty": S_LIQ_QTY, "liquidation_price": S_LIQ_PRICE, "liquidation_fee": S_LIQ_FEE,
    "top_up": S_TOP_UP,
}  # fmt: skip
_INFO_STATE_KEYS = tuple(_INFO_STATE)
_INFO_COLUMNS = np.array(list(_INFO_STATE.values()))


@njit(cache=True)
def _observe_row(i, features, market, state, istate, params, iparams, obs):
    """Row i of the observation: the feature rows ``t-window+1 .. t`` flattened, then the account.
    ``features`` is the C-ordered (bars, F) table flattened, so a window is one slice."""
    t = istate[i, I_IDX]
    n_feat = iparams[Q_FEATURES]
    width = iparams[Q_WINDOW] * n_feat
    obs[i, :width] = features[(t + 1) * n_feat - width : (t + 1) * n_feat]
    c = market[t, M_CLOSE]
    qty, cash = state[i, S_QTY], state[i, S_CASH]
    equity = cash + qty * c
    safe = equity if equity > 0.0 else 1e-12
    obs[i, width] = qty * c / (safe * params[P_LEVERAGE])
    obs[i, width + 1] = qty * (c - state[i, S_ENTRY]) / safe if qty != 0.0 else 0.0
    obs[i, width + 2] = np.log1p(t - istate[i, I_LAST_TRADE]) / _BARS_SINCE_SCALE
    owes = qty < 0.0 or cash < 0.0
    obs[i, width + 3] = params[P_MMR] * abs(qty) * c / safe if owes else 0.0


@njit(cache=True)
def _observe(rows, features, market, state, istate, params, iparams, obs):
    for i in rows:
        _observe_row(i, features, market, state, istate, params, iparams, obs)


@njit(cache=True)
def entry_after(entry: float, qty0: float, dq: float, price: float) -> float:
    """Average entry price after a fill of ``dq`` at ``price`` on a position of ``qty0``: the
    fill price when opening or flipping, the quantity-weighted mean when adding, unchanged when
    reducing, 0 when flat. (The serving loop's live account uses this too.)"""
    q1 = qty0 + dq
    if dq == 0.0:
        return entry
    if q1 == 0.0:
        return 0.0
    if qty0 == 0.0 or (qty0 > 0.0) != (q1 > 0.0):
        return price
    if abs(q1) > abs(qty0):
        return (entry * abs(qty0) + price * abs(dq)) / abs(q1)
    return entry


# Not cached on disk: numba's cache checks only this file, and a cached step would keep an old
# copy of the accounting kernel or the reward after either changed. Compiling costs ~1 s per process.
@njit
def _step_all(features, market, params, iparams, state, istate, obs):
    """Step every account one bar with the accounting kernel, then reward, flags and observation."""
    for i in range(state.shape[0]):
        t = istate[i, I_IDX]
        u = t + 1
        if u > istate[i, I_END]:
            # an account past its episode's last bar is never stepped: the bars there may
            # lie across a gap or beyond the data
            istate[i, I_TRUNCATED] = not istate[i, I_TERMINATED]
            state[i, S_REWARD] = 0.0
            continue
        qty0 = state[i, S_QTY]
        r = step_account(
            state[i, S_CASH], qty0, state[i, S_EXPOSURE], market[t, M_CLOSE],
            market[u, M_OPEN], market[u, M_HIGH], market[u, M_LOW], market[u, M_CLOSE],
            market[t, M_HALF_SPREAD], iparams[Q_SLIP_MODE], params[P_SLIP], market[t, M_SIGMA],
            market[t, M_REF_VOLUME], params[P_FEE], params[P_LEVERAGE], params[P_MMR], params[P_LIQ_FEE],
            params[P_LOT], params[P_MIN_NOTIONAL], params[P_DEADBAND], market[u, M_FUNDING], params[P_BORROW],
        )  # fmt: skip
        cash, qty, t_qty, t_price, t_fee, t_slip, l_qty, l_price, l_fee, funding, borrow, equity = r
        # what the isolated-margin floor added when it set cash to 0: the loss passed to the exchange
        flows = state[i, S_CASH] - t_qty * t_price - t_fee - l_qty * l_price - l_fee - funding - borrow
        state[i, S_TOP_UP] = -flows if cash == 0.0 and flows < 0.0 else 0.0
        state[i, S_CASH] = cash
        state[i, S_QTY] = qty
        istate[i, I_IDX] = u
        # average entry of the open position, for the unrealised-PnL observation
        if t_qty != 0.0:
            state[i, S_ENTRY] = entry_after(state[i, S_ENTRY], qty0, t_qty, t_price)
            istate[i, I_LAST_TRADE] = u
        if qty == 0.0:
            state[i, S_ENTRY] = 0.0
        state[i, S_FEES] += t_fee + l_fee
        state[i, S_FUNDING] += funding
        state[i, S_SLIPPAGE] += t_slip
        state[i, S_BORROW] += borrow
        state[i, S_TURNOVER] += abs(t_qty) * t_price + abs(l_qty) * l_price
        state[i, S_TRADE_QTY] = t_qty
        state[i, S_TRADE_PRICE] = t_price
        state[i, S_TRADE_FEE] = t_fee
        state[i, S_TRADE_SLIPPAGE] = t_slip
        state[i, S_LIQ_QTY] = l_qty
        state[i, S_LIQ_PRICE] = l_price
        state[i, S_LIQ_FEE] = l_fee
        rew, peak, dd, a, b, log_r = reward_step(
            iparams[Q_REWARD], equity, state[i, S_EQUITY], state[i, S_PEAK], state[i, S_DRAWDOWN],
            state[i, S_A], state[i, S_B], params[P_INITIAL], params[P_PENALTY], params[P_ETA],
        )  # fmt: skip
        # episode statistics for the trading picture of finished episodes
        if t_qty != 0.0:
            state[i, S_TRADES] += 1.0
        if qty != 0.0:
            state[i, S_EXPOSED] += 1.0
        state[i, S_LOGRET_SUM] += log_r
        state[i, S_LOGRET_SQ] += log_r * log_r
        state[i, S_MAX_DRAWDOWN] = max(state[i, S_MAX_DRAWDOWN], dd)
        state[i, S_EQUITY] = equity
        state[i, S_PEAK], state[i, S_DRAWDOWN], state[i, S_A], state[i, S_B] = peak, dd, a, b
        state[i, S_RETURN] += rew
        istate[i, I_LENGTH] += 1
        state[i, S_REWARD] = rew
        liquidated = l_qty != 0.0
        terminated = liquidated or equity <= 0.0
        istate[i, I_LIQUIDATED] = liquidated
        istate[i, I_TERMINATED] = terminated
        istate[i, I_TRUNCATED] = (not terminated) and u >= istate[i, I_END]
        _observe_row(i, features, market, state, istate, params, iparams, obs)


def as_frame(bars: Any) -> pd.DataFrame:
    """A DataFrame in the store's schema, from a DataFrame or a loader's ``Bars`` / ``Funding``."""
    if isinstance(bars, pd.DataFrame):
        return bars
    if hasattr(bars, "to_frame"):
        return bars.to_frame()
    raise TypeError(
        "bars and funding must be pandas DataFrames in the store's schema (bars: ts open high low "
        f"close volume; funding: ts rate mark_price) or data.loader results, got {type(bars).__name__}"
    )


class BatchedMarketReplayEnv(VectorEnv):
    """``num_envs`` independent accounts replaying the same market, stepped together.

    Arguments are those of :class:`envs.replay.MarketReplayEnv` plus ``num_envs`` and ``copy``
    (return a fresh observation array each step, as gymnasium's vector envs do; ``copy=False``
    returns the env's own buffer, overwritten by the next step, for speed), ``autoreset_mode``
    (see the module's docstring) and ``prepared``: a :class:`envs.market.MarketData` already built by
    ``prepare(bars, funding, EnvConfig(**kwargs))`` with these same keyword arguments, in place of
    ``bars``/``funding`` (workers that share one copy through Ray's object store pass it). Infos are
    dicts of arrays of length ``num_envs`` (no ``_key`` masks: every account has every key).
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int = 1,
        bars: Any = None,
        funding: pd.DataFrame | None = None,
        copy: bool = True,
        autoreset_mode: AutoresetMode | str = AutoresetMode.SAME_STEP,
        prepared: MarketData | None = None,
        **kwargs: Any,
    ):
        if (bars is None) == (prepared is None):
            raise TypeError(
                "give bars (a DataFrame in the store's schema or a data.loader.Bars) or a prepared market"
            )
        if not (isinstance(num_envs, int) and num_envs >= 1):
            raise ValueError(f"num_envs must be a whole number >= 1, got {num_envs!r}")
        mode = AutoresetMode(autoreset_mode)
        if mode not in (AutoresetMode.SAME_STEP, AutoresetMode.NEXT_STEP):
            raise ValueError(f"autoreset_mode must be SameStep or NextStep, got {mode.value!r}")
        self.metadata = {**self.metadata, "autoreset_mode": mode}
        self.cfg = EnvConfig.from_kwargs(kwargs)
        if prepared is None:
            if funding is not None and not isinstance(funding, pd.DataFrame):
                funding = as_frame(funding)
            prepared = prepare(as_frame(bars), funding, self.cfg)
        self._set_market(prepared)
        self.num_envs = num_envs
        self.copy = copy
        self.render_mode = None
        cfg, n = self.cfg, num_envs

        width = cfg.window * self.market.features.shape[1] + len(ACCOUNT_FEATURES)
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (width,), np.float32)
        if cfg.action_type == "discrete":
            self._action_values = np.asarray(cfg.action_values, dtype=np.float64)
            self.single_action_space = gym.spaces.Discrete(len(cfg.action_values))
        else:
            low = -1.0 if cfg.shorting else 0.0
            self.single_action_space = gym.spaces.Box(low, 1.0, (1,), np.float32)
        self.observation_space = batch_space(self.single_observation_space, n)
        self.action_space = batch_space(self.single_action_space, n)

        m = self.market
        params = np.zeros(12)
        params[P_FEE], params[P_LEVERAGE] = cfg.fee, cfg.leverage
        params[P_MMR], params[P_LIQ_FEE] = cfg.maintenance_margin_rate, cfg.liquidation_fee
        params[P_LOT], params[P_MIN_NOTIONAL], params[P_DEADBAND] = (
            cfg.lot_size,
            cfg.min_notional,
            cfg.deadband,
        )
        params[P_BORROW] = cfg.borrow_rate / bars_per_year(m.bar_ms)
        slip_mode, params[P_SLIP] = slippage_params(cfg)
        params[P_INITIAL], params[P_PENALTY], params[P_ETA] = (
            cfg.initial_equity,
            cfg.drawdown_penalty,
            cfg.sharpe_eta,
        )
        self._params = params
        self._iparams = np.array(
            [slip_mode, REWARDS[cfg.reward], cfg.window, m.features.shape[1]], dtype=np.int64
        )
        self.state = np.zeros((n, N_STATE))
        self.istate = np.zeros((n, 7), dtype=np.int64)
        self._obs = np.zeros((n, width), dtype=np.float32)
        self._all = np.arange(n)
        self._pending = np.zeros(n, dtype=bool)  # NEXT_STEP: accounts to reset on the next step

    def _set_market(self, prepared: MarketData) -> None:
        self.market: MarketData = prepared
        self.starts: EpisodeStarts = episode_starts(prepared, self.cfg.window)
        m = prepared
        # one row per bar: the 8 values a step reads of bar t share one 64-byte cache line, which
        # matters when 1024 accounts sit at 1024 random places in a year of bars
        columns = [m.open, m.high, m.low, m.close, m.half_spread, m.sigma, m.ref_volume, m.funding_per_unit]
        self._market = np.ascontiguousarray(np.stack(columns, axis=1))
        self._features = m.features.reshape(-1)

    def use_market(self, prepared: MarketData) -> None:
        """Put the env over other bars without building it again: ``prepared`` is
        ``prepare(bars, funding, self.cfg)`` of bars with the same bar length (the serving loop's
        rolling buffer, one bar on). Accounts keep their state arrays, whose bar indices now point
        into the new bars: reset them, or set their rows, before stepping."""
        old = self.market
        if prepared.feature_columns != old.feature_columns or prepared.bar_ms != old.bar_ms:
            raise ValueError(
                f"use_market needs bars of {old.bar_ms} ms with features {list(old.feature_columns)}; got "
                f"{prepared.bar_ms} ms with {list(prepared.feature_columns)}: build a new env for them"
            )
        self._set_market(prepared)

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
        num_envs: int = 1,
        **kwargs: Any,
    ) -> BatchedMarketReplayEnv:
        """The env over a stored series (see :func:`envs.market.load_market`)."""
        bars, funding = load_market(
            symbol,
            timeframe,
            exchange=exchange,
            market=kwargs.get("market", "spot"),
            start=start,
            end=end,
            root=root,
        )
        return cls(num_envs=num_envs, bars=bars, funding=funding, **kwargs)

    # -- episodes ----------------------------------------------------------------------------

    def _start_index(self, options: dict | None, count: int) -> tuple[np.ndarray, np.ndarray]:
        if options and options.get("start") is not None:
            t = parse_time(options["start"])
            i = int(np.searchsorted(self.market.ts, t))
            inside = (self.starts.lo <= i) & (i < self.starts.hi)
            if i >= len(self.market.ts) or self.market.ts[i] != t or not inside.any():
                raise ValueError(
                    f"options['start']={options['start']!r} is not a bar where an episode can start: it "
                    f"must be a bar's open time with {max(self.market.warmup, self.cfg.window - 1)} bars "
                    "of gap-free history before it and at least one bar after it"
                )
            return np.full(count, i), np.full(count, self.starts.seg_last[np.argmax(inside)])
        if self.cfg.random_start:
            k = self.np_random.integers(0, self.starts.count, size=count)
        else:
            k = np.zeros(count, dtype=np.int64)
        return self.starts.pick(k)

    def _reset_accounts(self, which: np.ndarray, options: dict | None = None) -> None:
        start, seg_last = self._start_index(options, len(which))
        length = self.cfg.episode_length
        if options and options.get("length") is not None:
            length = int(options["length"])
            if length < 1:
                raise ValueError(f"options['length'] must be >= 1, got {length}")
        initial = self.cfg.initial_equity
        self.state[which] = 0.0
        for col in (S_CASH, S_EQUITY, S_PEAK):
            self.state[which, col] = initial
        self.istate[which] = 0
        self.istate[which, I_IDX] = start
        self.istate[which, I_LAST_TRADE] = start
        self.istate[which, I_END] = np.minimum(start + length, seg_last)
        _observe(which, self._features, self._market, self.state, self.istate, self._params,
                 self._iparams, self._obs)  # fmt: skip

    def _info(self) -> dict:
        """Each account's state after the last step (or reset), as fresh arrays."""
        idx = self.istate[:, I_IDX]
        info = {"ts": self.market.ts[idx], "price": self._market[idx, M_CLOSE]}
        # one gather for all state columns: each row of the copy is one key's array
        values = self.state[:, _INFO_COLUMNS].T.copy()
        info.update(zip(_INFO_STATE_KEYS, values, strict=True))
        info["liquidated"] = self.istate[:, I_LIQUIDATED].astype(bool)
        return info

    def _episode_stats(self) -> dict[str, np.ndarray]:
        """Per account, the episode so far: reward sum, bars, fills, bars in a position, maximum
        drawdown of equity, and mean and std of per-bar log returns of equity."""
        s, length = self.state, self.istate[:, I_LENGTH].copy()
        n = np.maximum(length, 1)
        mean = s[:, S_LOGRET_SUM] / n
        var = np.maximum(s[:, S_LOGRET_SQ] / n - mean * mean, 0.0)
        return {
            "episode_return": s[:, S_RETURN].copy(),
            "episode_length": length,
            "episode_trades": s[:, S_TRADES].copy(),
            "episode_exposed_bars": s[:, S_EXPOSED].copy(),
            "episode_max_drawdown": s[:, S_MAX_DRAWDOWN].copy(),
            "episode_log_return_mean": mean,
            "episode_log_return_std": np.sqrt(var),
        }

    def _obs_out(self) -> np.ndarray:
        return self._obs.copy() if self.copy else self._obs

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Start a new episode in every account. ``options``: ``start`` (a bar's open time, ISO or
        ms, the first decision bar; default a random valid bar) and ``length`` (bars to step,
        default ``episode_length``). Episodes end early at the end of their gap-free segment."""
        super().reset(seed=seed)
        self.action_space.seed(seed)
        self._reset_accounts(self._all, options)
        self._pending[:] = False
        return self._obs_out(), self._info()

    # -- stepping ----------------------------------------------------------------------------

    def _exposures(self, actions: Any) -> np.ndarray:
        a = np.asarray(actions)
        n = self.num_envs
        if self.cfg.action_type == "discrete":
            a = a.reshape(-1)
            if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
                if a.shape == (n,) and np.issubdtype(a.dtype, np.floating) and np.all(a == np.round(a)):
                    a = a.astype(np.int64)
                else:
                    raise ValueError(
                        f"actions must be {n} integer(s) in [0, {len(self._action_values)}), got {actions!r}"
                    )
            k = len(self._action_values)
            if a.min() < 0 or a.max() >= k:
                raise ValueError(
                    f"action {a[(a < 0) | (a >= k)][0]} is outside Discrete({k}); the actions are "
                    f"target exposures {list(self.cfg.action_values)}"
                )
            return self._action_values[a]
        a = a.astype(np.float64).reshape(-1)
        if a.shape != (n,):
            raise ValueError(f"actions must have shape ({n}, 1) or ({n},), got {np.shape(actions)}")
        low = self.single_action_space.low[0]
        if not np.isfinite(a).all() or a.min() < low - 1e-6 or a.max() > 1 + 1e-6:
            bad = a[(a < low - 1e-6) | (a > 1 + 1e-6) | ~np.isfinite(a)]
            raise ValueError(f"continuous actions must lie in [{low:g}, 1], got {bad[:3]}")
        return np.clip(a, low, 1.0)

    def _advance(self, actions: Any) -> None:
        """One compiled step of every account; results stay in the env's arrays."""
        self.state[:, S_EXPOSURE] = self._exposures(actions)
        _step_all(
            self._features, self._market, self._params, self._iparams, self.state, self.istate, self._obs
        )

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        if self.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP:
            return self._step_next(actions)
        self._advance(actions)
        rewards = self.state[:, S_REWARD].copy()
        terminated = self.istate[:, I_TERMINATED].astype(bool)
        truncated = self.istate[:, I_TRUNCATED].astype(bool)
        info = self._info()
        done = terminated | truncated
        if done.any():
            which = np.flatnonzero(done)
            final_obs = np.full(self.num_envs, None, dtype=object)
            for i in which:
                final_obs[i] = self._obs[i].copy()
            final_info = {k: v.copy() for k, v in info.items()}
            final_info.update(self._episode_stats())
            self._reset_accounts(which)
            fresh = self._info()
            for k in INFO_KEYS:
                info[k][which] = fresh[k][which]
            info["final_obs"], info["_final_obs"] = final_obs, done.copy()
            info["final_info"], info["_final_info"] = final_info, done.copy()
        return self._obs_out(), rewards, terminated, truncated, info

    def _step_next(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """A NEXT_STEP step: accounts whose episode ended last step restart instead of stepping."""
        pending = np.flatnonzero(self._pending)
        # the kernel never steps an account at its episode's end
        self.istate[pending, I_END] = self.istate[pending, I_IDX]
        self._advance(actions)
        rewards = self.state[:, S_REWARD].copy()
        if len(pending):
            self._reset_accounts(pending)
            rewards[pending] = 0.0
        terminated = self.istate[:, I_TERMINATED].astype(bool)
        truncated = self.istate[:, I_TRUNCATED].astype(bool)
        info = self._info()
        done = terminated | truncated
        if done.any():
            info["episode"], info["_episode"] = self._episode_stats(), done.copy()
        self._pending = done
        return self._obs_out(), rewards, terminated, truncated, info
