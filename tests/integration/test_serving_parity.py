"""Serving sees what training saw: replaying a stretch of real Binance bars, the serving desk's
observations (over a rolling buffer, bar by bar) and paper fills (the env's kernel) equal the
training env's for the same bars, policy and account."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from agents.training import history_bars
from envs.config import EnvConfig
from envs.features import DEFAULT_FEATURES
from reports.replay import replay
from serving.account import Account, Desk

FEATURES = (*DEFAULT_FEATURES, "momentum_240")
ENV = dict(
    market="perp", window=16, norm_window=240, episode_length=100_000, max_leverage=2.0, features=FEATURES
)


def rule(obs: np.ndarray, info: dict) -> int:
    """A deterministic policy that trades often: long, flat or short on the sign of two features."""
    width = len(ENV["features"]) * ENV["window"]
    last = obs[width - len(ENV["features"]) : width]
    return int(np.sign(last[0] + last[-1]) + 1)  # actions [-1, 0, 1]


@pytest.fixture(scope="module")
def real(shared_data):
    btc = shared_data / "binance" / "futures_um" / "BTCUSDT"
    bars = pd.read_parquet(btc / "5m.parquet").iloc[:2_000].reset_index(drop=True)
    funding = pd.read_parquet(btc / "funding.parquet").rename(columns={"funding_rate": "rate"})
    return bars, funding[funding.ts <= bars.ts.iloc[-1]]


def test_serving_observations_and_paper_fills_equal_the_training_envs_on_real_bars(real):
    bars, funding = real
    history = history_bars(EnvConfig.from_kwargs(ENV))
    start = int(bars.ts[history + 50])
    observed: list[np.ndarray] = []

    def act(obs, info):
        observed.append(obs.copy())
        return rule(obs, info)

    rows = replay(act, bars, funding, ENV, start)
    desk = Desk(dict(ENV), history)
    account = Account(cash=10_000.0, last_trade_ts=start)
    first = int(np.searchsorted(bars.ts, start))
    steps = len(rows) - 1
    assert steps > 1_000
    for k in range(steps):
        t = first + k
        buffer = bars.iloc[max(t - desk.need + 2, 0) : t + 2]  # the history, bar t and the bar it fills on
        desk.load(buffer.reset_index(drop=True), funding)
        obs = desk.observe(account, int(bars.ts[t]))
        np.testing.assert_array_equal(obs, observed[k], err_msg=f"step {k}")  # bit for bit
        action = rule(obs, {})
        assert action == rule(observed[k], {})
        account, _ = desk.fill(account, desk.exposure(action), int(bars.ts[t]))
        env_row = rows.iloc[k + 1]
        assert account.position == pytest.approx(env_row["position"], rel=1e-9, abs=1e-12), k
        assert account.equity(float(bars.close[t + 1])) == pytest.approx(env_row["equity"], rel=1e-9), k
    assert rows["trade_qty"].ne(0).sum() > 100 and rows["funding"].iloc[-1] != 0
