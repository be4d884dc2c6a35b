"""Proof that the default learns: ``python train.py`` as shipped (the synthetic market with a
planted edge, PPO, every cost paid) beats buy-and-hold and a seeded random policy on the
validation range it never trained on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agents.baselines import make_baseline
from agents.config import TrainConfig
from agents.training import _action_values, load_split
from reports.replay import replay, replay_metrics

ROOT = Path(__file__).resolve().parents[2]

# margins, on the validation range, net of fees, spread, slippage: the policy's total return must
# exceed buy-and-hold's by 100 percentage points and random's by 200, and its Sharpe must be
# 25 % above buy-and-hold's
OVER_BUY_AND_HOLD = 1.0
OVER_RANDOM = 2.0
SHARPE_RATIO = 1.25


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_default_run_beats_buy_and_hold_and_random_on_validation_net_of_costs(tmp_path):
    env = {**os.environ, "KLINEGYM_DATA": str(tmp_path / "store"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "seed=0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=1100, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / out.stdout.strip().splitlines()[-1].split(": ", 1)[1]
    spec = json.loads((run / "policy" / "spec.json").read_text())
    policy, hold = spec["validation"], spec["validation_buy_and_hold"]

    values = spec["config"]
    values["data"]["root"] = str(tmp_path / "store")  # where the run wrote its market
    config = TrainConfig.from_dict(values)
    assert config.data.synthetic_bars == 200_000 and config.env.taker_fee is None  # the shipped default
    bars, funding, start = load_split(config.data, config.env, "val", with_history=True)
    kwargs = dict(vars(config.env))
    rand = make_baseline("random", _action_values(config.env), config.env.shorting, seed=0)
    random = replay_metrics(replay(rand.act, bars, funding, kwargs, start), config.data.timeframe)

    summary = {
        k: round(v["total_return"], 3) for k, v in (("policy", policy), ("hold", hold), ("random", random))
    }
    assert policy["total_return"] > hold["total_return"] + OVER_BUY_AND_HOLD, summary
    assert policy["total_return"] > random["total_return"] + OVER_RANDOM, summary
    assert policy["sharpe"] > SHARPE_RATIO * hold["sharpe"], (policy["sharpe"], hold["sharpe"])
    assert policy["fees"] > 0  # it trades, and pays for it
