"""Decision latency of the serving loop, from a closed bar in the buffer to the order in the state
store, excluding the network.

    python benchmarks/decision_latency.py [--bars 500]

Trains nothing: it builds the default PPO MLP (64x64) policy untrained, the default spot env
(window 32, the momentum feature set, norm window 1440), a paper account, the risk gate with every
limit set, and a real SQLite state store, then times ``Server.process`` plus the buffer load for
each of ``--bars`` consecutive synthetic 1m bars. Prints p50, p99 and max in milliseconds of the
whole decision and of its parts: the buffer load (market arrays and features), the policy's forward
pass, the state store (every write and read, and the bar's commit), and the rest (observation,
risk gate, bookkeeping).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from agents.bundle import Policy
from agents.training import history_bars
from data.synthetic import SyntheticConfig, generate
from envs.config import EnvConfig
from envs.vector import BatchedMarketReplayEnv
from serving.account import Desk
from serving.loop import LoopConfig, Server
from serving.risk import RiskGate, RiskLimits
from serving.state import RunMeta, StateStore

FEATURES = ("log_return", "range", "body", "volatility", "volume_z", "rsi", "bb_pctb", "macd_hist",
            "momentum_240", "momentum_1440")  # fmt: skip


class _Feed:
    """The part of a feed the loop reads while processing: no network."""

    stale = False


class _Clock:
    """Time spent inside the wrapped callables; a call made from inside another is not counted twice."""

    def __init__(self) -> None:
        self.spent = 0.0
        self._depth = 0

    @contextlib.contextmanager
    def running(self):
        self._depth += 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.spent += time.perf_counter() - started

    def wrap(self, fn):
        def timed(*args, **kwargs):
            with self.running():
                return fn(*args, **kwargs)

        return timed

    def wrap_batch(self, batch):
        """A store's ``batch()`` timed when it opens and when it commits, not while its body runs."""

        @contextlib.contextmanager
        def timed():
            cm = batch()
            with self.running():
                cm.__enter__()
            try:
                yield
            except BaseException as exc:
                if not cm.__exit__(type(exc), exc, exc.__traceback__):
                    raise
            else:
                with self.running():
                    cm.__exit__(None, None, None)

        return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bars", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from stable_baselines3 import PPO

    env_kwargs = {"features": FEATURES, "norm_window": 1440, "window": 32}
    cfg = EnvConfig.from_kwargs(env_kwargs)
    history = history_bars(cfg)
    bars, _ = generate(SyntheticConfig(seed=0, bars=history + args.bars + 10))
    probe = BatchedMarketReplayEnv(num_envs=1, bars=bars.iloc[: history + 10], **env_kwargs)
    from envs.sb3 import SB3VecEnv

    model = PPO("MlpPolicy", SB3VecEnv(probe), policy_kwargs={"net_arch": [64, 64]}, device="cpu", seed=0)
    policy = Policy(model, {"algo": "ppo", "action_space": {"type": "Discrete"}}, Path("."))
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(str(Path(tmp) / "state.db"))
        store.open_run(RunMeta("bench", "-", "synthetic", "spot", "SYN/USDT", "1m", "paper"))
        limits = RiskLimits(
            max_position_notional=1e6, max_leverage=1.0, max_order_notional=1e6, max_orders_per_minute=10,
            max_daily_loss=0.5, max_drawdown=0.5, price_band=0.2,
        )  # fmt: skip
        desk = Desk(env_kwargs, history)
        gate = RiskGate(limits)
        forward, writes = _Clock(), _Clock()
        policy.act = forward.wrap(policy.act)
        for name in ("get", "set", "record_decision", "record_equity", "record_risk_event", "record_fill",
                     "create_order", "update_order", "order", "orders", "take_commands"):  # fmt: skip
            setattr(store, name, writes.wrap(getattr(store, name)))
        store.batch = writes.wrap_batch(store.batch)
        server = Server(run_id="bench", policy=policy, desk=desk, feed=_Feed(), gate=gate, store=store,
                        config=LoopConfig())  # fmt: skip
        parts: dict[str, list[float]] = {"load": [], "forward": [], "store": [], "rest": [], "total": []}
        for k in range(args.bars):
            upto = history + 1 + k
            forward.spent = writes.spent = 0.0
            t0 = time.perf_counter()
            desk.load(bars.iloc[upto - desk.need + 1 : upto].reset_index(drop=True), None)
            t1 = time.perf_counter()
            server.process(int(bars.ts.iloc[upto - 1]))
            t2 = time.perf_counter()
            parts["load"].append(t1 - t0)
            parts["forward"].append(forward.spent)
            parts["store"].append(writes.spent)
            parts["rest"].append(t2 - t1 - forward.spent - writes.spent)
            parts["total"].append(t2 - t0)
        store.close()
    for key, name in (
        ("load", "buffer load (market arrays and features)"),
        ("forward", "  policy forward (Policy.act)"),
        ("store", "  state store (writes, reads, commit)"),
        ("rest", "  the rest of Server.process"),
        ("total", "decision (load + decide + record)"),
    ):
        ms = np.asarray(parts[key][5:]) * 1000  # the first bars compile
        p50, p99 = np.percentile(ms, [50, 99])
        print(f"{name:<42} p50 {p50:6.2f} ms, p99 {p99:6.2f} ms, max {ms.max():6.2f} ms")
    print(
        f"({args.bars} bars of 1m, history {history} bars, window 32 x {len(FEATURES)} features, SQLite WAL)"
    )


if __name__ == "__main__":
    main()
