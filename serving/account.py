"""The serving loop's view of the market and the account, computed by the training env's own code.

:class:`Desk` holds a rolling buffer of closed bars and, for each decision, builds the env's
market arrays over it (:func:`envs.market.prepare`: features, spread, volatility, funding) and
one account row of the env's packed state. Observations come from the env's compiled
``_observe`` and paper fills from its compiled ``_step_all``, so serving sees exactly what
training and evaluation see for the same bars and account (a test replays stored bars through
both and compares). Nothing here is a copy of the accounting or the features.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from data.schema import ALL_BAR_COLUMNS
from envs.config import EnvConfig
from envs.market import prepare
from envs.vector import (
    I_END,
    I_IDX,
    I_LAST_TRADE,
    S_CASH,
    S_ENTRY,
    S_EQUITY,
    S_EXPOSURE,
    S_FEES,
    S_FUNDING,
    S_LIQ_FEE,
    S_LIQ_PRICE,
    S_LIQ_QTY,
    S_PEAK,
    S_QTY,
    S_SLIPPAGE,
    S_TRADE_FEE,
    S_TRADE_PRICE,
    S_TRADE_QTY,
    BatchedMarketReplayEnv,
    _observe,
    _step_all,
    entry_after,
)

ACCOUNT_KEYS = ("cash", "position", "entry", "last_trade_ts", "fees", "funding", "slippage")


@dataclasses.dataclass
class Account:
    """What the bot holds: quote ``cash``, signed base ``position``, average ``entry`` price,
    the open time of the bar of the last fill, and running totals of what it paid."""

    cash: float
    position: float = 0.0
    entry: float = 0.0
    last_trade_ts: int | None = None
    fees: float = 0.0
    funding: float = 0.0
    slippage: float = 0.0

    def equity(self, price: float) -> float:
        return self.cash + self.position * price

    def after_fill(self, ts: int, qty: float, price: float, fee: float) -> Account:
        """The account after a live fill of signed ``qty`` at ``price`` paying ``fee`` (quote),
        by the env's rules (cash, position, average entry); ``ts`` is the fill bar's open."""
        return dataclasses.replace(
            self,
            cash=self.cash - qty * price - fee,
            position=self.position + qty,
            entry=float(entry_after(self.entry, self.position, qty, price)),
            last_trade_ts=ts,
            fees=self.fees + fee,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Account:
        return cls(**{k: d[k] for k in ACCOUNT_KEYS if k in d})


def _with_placeholder(bars: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The bar columns of ``bars`` (a DataFrame or a mapping of column names to arrays) as float64
    arrays with the placeholder bar (:meth:`Desk.load`) after the last: one bar later, opening and
    closing at the last close, its range wide enough that spread and slippage are not clipped when
    :meth:`Desk.plan` sizes a live order on it; its volume (and the rest) the last bar's."""
    wanted = [c for c in ALL_BAR_COLUMNS[1:] if c in bars]
    if "ts" not in bars or len(bars["ts"]) == 0:  # prepare says what is wrong
        return {c: np.asarray(bars[c]) for c in ALL_BAR_COLUMNS if c in bars}
    ts = np.asarray(bars["ts"])  # its own dtype, so that prepare rejects open times that are not integers
    n = len(ts)
    table = np.empty((len(wanted), n + 1))
    for row, c in zip(table, wanted, strict=True):
        row[:n] = bars[c]
        row[n] = row[n - 1]
    cols = dict(zip(wanted, table, strict=True))
    if {"open", "high", "low", "close"} <= cols.keys():
        cols["ts"] = np.append(ts, ts[-1] + (ts[-1] - ts[-2] if n > 1 else 60_000))
        close = cols["close"][n]
        cols["open"][n] = close
        cols["high"][n], cols["low"][n] = close * 1.5, close * 0.5
    return cols


@dataclasses.dataclass(frozen=True)
class Fill:
    """One paper fill (or liquidation) of one bar: signed ``qty`` at ``price``."""

    ts: int
    qty: float
    price: float
    fee: float
    slippage: float
    reason: str


class Desk:
    """The env's arithmetic over a rolling buffer of closed bars.

    ``env_kwargs`` are the bundle's env parameters; ``history`` is the number of bars the
    features need before a decision bar (:func:`agents.training.history_bars`).
    """

    def __init__(self, env_kwargs: dict[str, Any], history: int):
        self.env_kwargs = {**env_kwargs, "random_start": False}
        self.cfg = EnvConfig.from_kwargs(self.env_kwargs)
        self.history = history
        self._env: BatchedMarketReplayEnv | None = None

    @property
    def need(self) -> int:
        """Bars around a decision: its history, the decision bar, and the bar it fills on."""
        return self.history + 2

    def load(self, bars: Mapping[str, Any], funding: pd.DataFrame | None) -> None:
        """Compute the env's market arrays over ``bars`` (the buffer, oldest first, ending at the
        decision bar: a DataFrame, or the feed's mapping of column names to arrays). The env wants
        a bar to step into after its start, so a placeholder bar follows the last one; features
        are causal, so it changes no row before it, and only :meth:`plan` reads it.

        The buffer reaches :func:`envs.market.prepare` as arrays (the same checks and features as
        training, without pandas), and the env is built on the first load only and then moved onto
        each new buffer (:meth:`envs.vector.BatchedMarketReplayEnv.use_market`)."""
        market = prepare(_with_placeholder(bars), funding, self.cfg)
        if self._env is not None and self._env.market.bar_ms == market.bar_ms:
            self._env.use_market(market)
        else:
            kwargs = {**self.env_kwargs, "episode_length": len(market)}
            self._env = BatchedMarketReplayEnv(num_envs=1, prepared=market, copy=False, **kwargs)

    @property
    def env(self) -> BatchedMarketReplayEnv:
        if self._env is None:
            raise RuntimeError("Desk.load(bars) first")
        return self._env

    def _row(self, account: Account, t: int) -> None:
        env = self.env
        ts = env.market.ts
        env.state[0] = 0.0
        env.istate[0] = 0
        env.state[0, S_CASH], env.state[0, S_QTY], env.state[0, S_ENTRY] = (
            account.cash,
            account.position,
            account.entry,
        )
        env.state[0, S_EQUITY] = env.state[0, S_PEAK] = account.equity(float(env.market.close[t]))
        # bars since the last fill counted in bars, as the env counts them (it may predate the buffer)
        since = (
            0 if account.last_trade_ts is None else (int(ts[t]) - account.last_trade_ts) // env.market.bar_ms
        )
        env.istate[0, I_IDX] = t
        env.istate[0, I_LAST_TRADE] = t - max(since, 0)
        env.istate[0, I_END] = t + 1

    def index(self, ts: int) -> int:
        i = int(np.searchsorted(self.env.market.ts, ts))
        if i >= len(self.env.market.ts) or int(self.env.market.ts[i]) != ts:
            raise KeyError(f"bar {ts} is not in the buffer")
        return i

    def observe(self, account: Account, ts: int) -> np.ndarray:
        """The observation at the close of bar ``ts`` for ``account``, as the env builds it."""
        env = self.env
        t = self.index(ts)
        if t < env.market.warmup + self.cfg.window - 1:
            raise ValueError(f"bar {ts} has too little history in the buffer for the features")
        self._row(account, t)
        _observe(np.array([0]), env._features, env._market, env.state, env.istate, env._params, env._iparams,
                 env._obs)  # fmt: skip
        return env._obs[0].copy()

    def exposure(self, action: Any) -> float:
        """The target exposure an action means (the env's action mapping)."""
        return float(self.env._exposures(np.reshape(np.asarray(action), (1, -1)))[0])

    def target_qty(self, exposure: float, account: Account, price: float) -> float:
        """The position an exposure asks for at ``price``: ``e * L * E / price``, before lot rounding
        and the leverage cap (docs/accounting.md)."""
        equity = account.equity(price)
        return exposure * self.cfg.leverage * equity / price if equity > 0 else 0.0

    def exposure_for(self, qty: float, account: Account, price: float) -> float:
        equity = account.equity(price)
        return qty * price / (self.cfg.leverage * equity) if equity > 0 else 0.0

    def plan(self, account: Account, exposure: float, decided_ts: int) -> float:
        """The position the kernel would move to for ``exposure`` if the next bar opened at the
        decision bar's close: its lot rounding, minimum notional, and leverage cap at the fill
        price that spread and slippage give. A live order is sized by it, since the exchange, not
        the kernel, fills it."""
        env = self.env
        t = self.index(decided_ts)
        if t + 2 != len(env.market.ts):
            raise KeyError(f"bar {decided_ts} is not the last bar of the buffer")
        self._row(account, t)
        env.state[0, S_EXPOSURE] = exposure
        _step_all(env._features, env._market, env._params, env._iparams, env.state, env.istate, env._obs)
        return account.position + float(env.state[0, S_TRADE_QTY])

    def fill(self, account: Account, exposure: float, decided_ts: int) -> tuple[Account, list[Fill]]:
        """Step the account through the bar after ``decided_ts`` with the env's kernel: fill the
        target ``exposure`` at that bar's open (spread, slippage, fee, leverage cap), then
        liquidation, funding and the mark at its close. Returns the new account and its fills."""
        env = self.env
        t = self.index(decided_ts)
        if t + 2 >= len(env.market.ts):  # the last bar is the placeholder
            raise KeyError(f"the bar after {decided_ts} is not in the buffer")
        self._row(account, t)
        env.state[0, S_EXPOSURE] = exposure
        _step_all(env._features, env._market, env._params, env._iparams, env.state, env.istate, env._obs)
        s = env.state[0]
        u_ts = int(env.market.ts[t + 1])
        fills = []
        if s[S_TRADE_QTY] != 0.0:
            fills.append(Fill(u_ts, float(s[S_TRADE_QTY]), float(s[S_TRADE_PRICE]), float(s[S_TRADE_FEE]),
                              float(s[S_SLIPPAGE]), "policy"))  # fmt: skip
        if s[S_LIQ_QTY] != 0.0:
            fills.append(Fill(u_ts, float(s[S_LIQ_QTY]), float(s[S_LIQ_PRICE]), float(s[S_LIQ_FEE]), 0.0,
                              "liquidation"))  # fmt: skip
        last_trade = u_ts if fills else account.last_trade_ts
        after = Account(
            cash=float(s[S_CASH]),
            position=float(s[S_QTY]),
            entry=float(s[S_ENTRY]),
            last_trade_ts=last_trade,
            fees=account.fees + float(s[S_FEES]),
            funding=account.funding + float(s[S_FUNDING]),
            slippage=account.slippage + float(s[S_SLIPPAGE]),
        )
        return after, fills
