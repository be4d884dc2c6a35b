"""Replay env throughput on one year of 1m bars, costs and features included.

    python benchmarks/env_throughput.py [--steps 200000] [--skip-peer]

Prints single-env steps/s, batched env-steps/s at N = 1, 64, 1024 (window 32, the default 8
features, a perp account paying fees, spread, slippage and funding), the observation bytes the
batched env writes per second beside a plain numpy copy's bandwidth measured in the same run
(the ceiling), and gym-trading-env's steps/s on the same bars when it is installed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from data.synthetic import SyntheticConfig, generate
from envs.features import DEFAULT_FEATURES
from envs.replay import MarketReplayEnv
from envs.vector import BatchedMarketReplayEnv

YEAR_OF_MINUTES = 525_600
# the default 8 features (a perp would add funding_rate as a 9th by default)
ENV = dict(market="perp", window=32, features=DEFAULT_FEATURES, episode_length=10_000)


def steps_per_s(env, steps: int) -> float:
    """Random actions of a 3-action env for ``steps`` steps, resetting at episode ends."""
    actions = np.random.default_rng(0).integers(0, 3, steps).tolist()
    env.reset(seed=0)
    env.step(0)  # compile outside the clock
    t0 = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - t0)


def single_steps_per_s(bars: pd.DataFrame, funding: pd.DataFrame, steps: int) -> float:
    return steps_per_s(MarketReplayEnv(bars=bars, funding=funding, **ENV), steps)


def batched_steps_per_s(bars, funding, n: int, env_steps: int, copy: bool) -> tuple[float, int]:
    env = BatchedMarketReplayEnv(num_envs=n, bars=bars, funding=funding, copy=copy, **ENV)
    steps = max(env_steps // n, 50)
    actions = np.random.default_rng(0).integers(0, 3, (64, n))
    env.reset(seed=0)
    env.step(actions[0])
    t0 = time.perf_counter()
    for k in range(steps):
        env.step(actions[k % 64])
    return steps * n / (time.perf_counter() - t0), env.single_observation_space.shape[0] * 4


def copy_bandwidth(nbytes: int = 256 << 20, repeat: int = 5) -> float:
    """Bytes per second of ``np.copyto`` between two large float32 arrays (read + write)."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def make_peer(bars: pd.DataFrame, features: np.ndarray, episode: int):
    """A gym-trading-env env over the same bars and feature values (long/flat/short, 0.05 %
    fees), or None when it is not installed."""
    try:
        from gym_trading_env.environments import TradingEnv
    except ImportError:
        return None
    df = pd.DataFrame(
        bars[["open", "high", "low", "close", "volume"]].to_numpy(),
        columns=["open", "high", "low", "close", "volume"],
        index=pd.to_datetime(bars["ts"], unit="ms"),
    )
    for k in range(features.shape[1]):
        df[f"feature_{k}"] = features[:, k]
    return TradingEnv(
        df=df, positions=[-1, 0, 1], trading_fees=0.0005, verbose=0, max_episode_duration=episode
    )


def peer_steps_per_s(bars: pd.DataFrame, features: np.ndarray, steps: int) -> float | None:
    env = make_peer(bars, features, 10_000)
    return None if env is None else steps_per_s(env, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200_000, help="steps of the single env")
    parser.add_argument("--env-steps", type=int, default=2_000_000, help="env-steps of each batched run")
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()

    bars, funding = generate(SyntheticConfig(bars=YEAR_OF_MINUTES))
    t0 = time.perf_counter()
    probe = BatchedMarketReplayEnv(num_envs=1, bars=bars, funding=funding, **ENV)
    print(
        f"build: {len(bars):,} bars, {probe.market.features.shape[1]} features, window {ENV['window']}: "
        f"{time.perf_counter() - t0:.2f} s (features, costs and funding for the whole year)"
    )
    # this shared machine's speed drifts between runs; three runs show the spread
    runs = sorted(single_steps_per_s(bars, funding, args.steps) for _ in range(3))
    single = runs[1]
    print(f"single env: {single:,.0f} steps/s (median of 3; best {runs[2]:,.0f}, worst {runs[0]:,.0f})")
    bandwidth = copy_bandwidth()
    for n in (1, 64, 1024):
        for copy in (False, True):
            rate, obs_bytes = batched_steps_per_s(
                bars, funding, n, args.env_steps if n > 1 else 100_000, copy
            )
            written = rate * obs_bytes
            print(
                f"batched N={n:>4} copy={copy!s:<5}: {rate:>12,.0f} env-steps/s, observations "
                f"{written / 1e9:5.2f} GB/s ({obs_bytes} B each; "
                f"numpy copy ceiling {bandwidth / 1e9:.2f} GB/s)"
            )
    if not args.skip_peer:
        peer = peer_steps_per_s(bars, probe.market.features, min(args.steps, 100_000))
        if peer is None:
            print("gym-trading-env: not installed (pip install --no-deps gym-trading-env to compare)")
        else:
            print(f"gym-trading-env: {peer:,.0f} steps/s; klinegym single env is {single / peer:.1f}x")


if __name__ == "__main__":
    main()
