"""SB3 PPO training throughput: the native batched env against SB3's DummyVecEnv of single envs.

    python benchmarks/train_throughput.py [--timesteps 65536] [--skip-peer]

The same model in each case (MLP 64x64, 64 envs, n_steps 64, minibatch 256, 4 epochs, one torch
thread) on 200,000 synthetic 1m bars, window 32 x 8 features; and gym-trading-env under
DummyVecEnv when it is installed. Prints env-steps/s of ``model.learn`` for each, in one run.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd
import torch

# the script's own folder is on sys.path when it runs: share the peer set-up with the env benchmark
from env_throughput import make_peer
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from data.synthetic import SyntheticConfig, generate
from envs.features import DEFAULT_FEATURES
from envs.replay import MarketReplayEnv
from envs.sb3 import SB3VecEnv

N_ENVS = 64
ENV = dict(market="perp", window=32, features=DEFAULT_FEATURES, episode_length=2_000)
PPO_ARGS = dict(
    n_steps=64, batch_size=256, n_epochs=4, policy_kwargs={"net_arch": [64, 64]}, verbose=0, seed=0
)


def steps_per_s(venv, timesteps: int) -> float:
    model = PPO("MlpPolicy", venv, device="cpu", **PPO_ARGS)
    model.learn(N_ENVS * PPO_ARGS["n_steps"])  # warm up: compile, allocate
    t0 = time.perf_counter()
    model.learn(timesteps, reset_num_timesteps=False)
    return timesteps / (time.perf_counter() - t0)


def peer_venv(bars: pd.DataFrame, features: np.ndarray):
    first = make_peer(bars, features, 2_000)
    if first is None:
        return None
    return DummyVecEnv([lambda: first] + [lambda: make_peer(bars, features, 2_000)] * (N_ENVS - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timesteps", type=int, default=65_536)
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    bars, funding = generate(SyntheticConfig(bars=200_000))
    native = SB3VecEnv.make(N_ENVS, bars=bars, funding=funding, **ENV)
    rate_native = steps_per_s(native, args.timesteps)
    print(f"PPO on the native batched env ({N_ENVS} accounts): {rate_native:,.0f} env-steps/s")

    dummy = DummyVecEnv([lambda: MarketReplayEnv(bars=bars, funding=funding, **ENV)] * N_ENVS)
    rate_dummy = steps_per_s(dummy, args.timesteps)
    print(
        f"PPO on DummyVecEnv of {N_ENVS} single envs: {rate_dummy:,.0f} env-steps/s "
        f"(native is {rate_native / rate_dummy:.1f}x)"
    )
    if not args.skip_peer:
        peer = peer_venv(bars, native.env.market.features)
        if peer is None:
            print("gym-trading-env: not installed (pip install --no-deps gym-trading-env to compare)")
        else:
            rate_peer = steps_per_s(peer, args.timesteps)
            print(
                f"PPO on DummyVecEnv of {N_ENVS} gym-trading-env envs: {rate_peer:,.0f} env-steps/s "
                f"(native is {rate_native / rate_peer:.1f}x)"
            )


if __name__ == "__main__":
    main()
