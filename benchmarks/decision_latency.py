"""Decision latency of the serving loop, from a closed bar read from the exchange to its order
handed on, excluding the network.

    python benchmarks/decision_latency.py [--bars 500]

Trains nothing: it builds the default PPO MLP (64x64) policy untrained, the default spot env
(window 32, the momentum feature set, norm window 1440), a paper account, the risk gate with every
limit set, and a real SQLite state store, and runs the real loop (``Server.run``: the bar feed,
the buffer, the cycle collector held off between bars) for ``--bars`` consecutive synthetic 1m
bars. The exchange is an in-process stand-in that answers ``fetch_time`` and ``fetch_ohlcv`` at
once, one bar later on every poll, so nothing of the network is timed.

The whole decision is the loop's own clock (``Server.latency``, the number the Prometheus
histogram gets): from the moment the bar's read returned to the commit that records its order.
Its parts: the buffer load (market arrays and features), the policy's forward pass, the state
store (every write and read, and the bar's commit), and the rest (feed merge, observation, risk
gate, bookkeeping). Prints p50, p99 and max in milliseconds, then how much this machine alone
spreads a fixed workload (p99/p50), to read the p99 against.
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
from serving.app import CATCH_UP_BARS
from serving.config import LoopConfig
from serving.feed import BarFeed
from serving.loop import Server
from serving.risk import RiskGate, RiskLimits
from serving.state import RunMeta, StateStore

FEATURES = ("log_return", "range", "body", "volatility", "volume_z", "rsi", "bb_pctb", "macd_hist",
            "momentum_240", "momentum_1440")  # fmt: skip


class _Exchange:
    """The two reads of a ccxt exchange the bar feed makes, answered from memory: on each
    ``fetch_time`` the clock moves to the close of one more bar."""

    id = "bench"
    last_http_response = last_json_response = None

    def __init__(self, bars, first: int):
        self.rows = bars[["ts", "open", "high", "low", "close", "volume"]].to_numpy().tolist()
        self.ts = bars.ts.to_numpy()
        self.closed = first  # bars [0, closed) have closed

    def fetch_time(self) -> int:
        self.closed += 1
        return int(self.ts[self.closed - 1]) + 60_000 + 1

    def fetch_ohlcv(self, symbol, timeframe, since, limit):
        i = int(np.searchsorted(self.ts, since))
        return self.rows[i : min(i + limit, self.closed)]


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


def _jitter(repeats: int = 500) -> np.ndarray:
    """Milliseconds of one fixed piece of numpy and Python work (about a third of a decision),
    timed ``repeats`` times: how much this machine alone spreads a constant workload."""
    x = np.random.default_rng(0).random(2_000)

    def work() -> float:
        total = 0.0
        for _ in range(15):
            total += float(np.sort(np.cumsum(x))[5])
            total += len({i: i for i in range(200)})
        return total

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
        time.sleep(0.001)
    return np.asarray(times[20:]) * 1000


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
        store = StateStore(str(Path(tmp) / "state.db"), idle_checkpoints=True)
        store.open_run(RunMeta("bench", "-", "synthetic", "spot", "SYN/USDT", "1m", "paper", "bench"))
        limits = RiskLimits(
            max_position_notional=1e6, max_leverage=1.0, max_order_notional=1e6, max_orders_per_minute=10,
            max_daily_loss=0.5, max_drawdown=0.5, price_band=0.2,
        )  # fmt: skip
        desk = Desk(env_kwargs, history)
        gate = RiskGate(limits)
        load, forward, writes = _Clock(), _Clock(), _Clock()
        desk.load = load.wrap(desk.load)
        policy.act = forward.wrap(policy.act)
        for name in ("get", "set", "record_decision", "record_equity", "record_risk_event", "record_fill",
                     "create_order", "update_order", "order", "orders", "take_commands"):  # fmt: skip
            setattr(store, name, writes.wrap(getattr(store, name)))
        store.batch = writes.wrap_batch(store.batch)
        feed = BarFeed(_Exchange(bars, history + 1), "SYN/USDT", "1m", need=desk.need + CATCH_UP_BARS,
                       with_funding=False, max_retries=0)  # fmt: skip
        server = Server(run_id="bench", policy=policy, desk=desk, feed=feed, gate=gate, store=store,
                        config=LoopConfig(poll_seconds=0.0, max_bars=args.bars))  # fmt: skip
        parts: dict[str, list[float]] = {"load": [], "forward": [], "store": [], "rest": [], "total": []}
        process = server.process

        def timed_process(*a, **kw):
            process(*a, **kw)
            total = server.latency
            parts["load"].append(load.spent)
            parts["forward"].append(forward.spent)
            parts["store"].append(writes.spent)
            parts["rest"].append(total - load.spent - forward.spent - writes.spent)
            parts["total"].append(total)
            load.spent = forward.spent = writes.spent = 0.0

        server.process = timed_process
        server.run()
        store.close()
    for key, name in (
        ("load", "  buffer load (market arrays and features)"),
        ("forward", "  policy forward (Policy.act)"),
        ("store", "  state store (writes, reads, commit)"),
        ("rest", "  the rest (feed merge, observation, gate)"),
        ("total", "decision (bar read -> order recorded)"),
    ):
        ms = np.asarray(parts[key][5:]) * 1000  # the first bars compile
        p50, p99 = np.percentile(ms, [50, 99])
        print(f"{name:<42} p50 {p50:6.2f} ms, p99 {p99:6.2f} ms, max {ms.max():6.2f} ms")
    print(
        f"({args.bars} bars of 1m, history {history} bars, window 32 x {len(FEATURES)} features, SQLite WAL)"
    )
    ms = _jitter()
    p50, p99 = np.percentile(ms, [50, 99])
    print(f"this machine's own spread: a fixed workload timed {len(ms)} times, p50 {p50:.2f} ms, "
          f"p99 {p99:.2f} ms (p99/p50 {p99 / p50:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
