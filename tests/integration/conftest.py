"""Fixtures shared by the serving tests: a small perp bundle and real Binance perp bars."""

from __future__ import annotations

import pandas as pd
import pytest

from agents.config import TrainConfig
from agents.training import train
from tests.integration.test_training import composed

# a small perp bundle on synthetic 5m bars: features without taker volume (ccxt klines lack it)
TRAIN = [
    "env=perp", "data.timeframe=5m", "data.synthetic_bars=6000", "data.train_start=2024-01-01",
    "data.train_end=2024-01-12", "data.val_start=2024-01-13", "data.val_end=2024-01-16",
    "data.test_start=2024-01-17", "data.test_end=2024-01-20", "data.embargo_bars=288", "env.norm_window=120",
    "env.episode_length=200", "env.window=8", "trainer.total_timesteps=1024", "trainer.n_envs=8",
    "trainer.eval_every=1024", "agent.n_steps=64", "agent.batch_size=128",
    "env.features=[log_return,range,body,volatility,rsi,momentum_240]",
]  # fmt: skip


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    values = composed([*TRAIN, f"data.root={tmp / 'store'}", "seed=2"])
    train(TrainConfig.from_dict(values), tmp / "run", values)
    return tmp / "run"


@pytest.fixture(scope="session")
def market(shared_data):
    btc = shared_data / "binance" / "futures_um" / "BTCUSDT"
    bars = pd.read_parquet(btc / "5m.parquet").iloc[:1_500].reset_index(drop=True)
    funding = pd.read_parquet(btc / "funding.parquet")
    return bars, funding[funding.ts <= bars.ts.iloc[-1]].reset_index(drop=True)
