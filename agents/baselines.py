"""Rule-based baseline policies behind the same ``act`` interface as trained ones.

Every policy answers ``act(obs, info=None)``. Trained policies read ``obs``; baselines read the
bar close in ``info["price"]`` (the env's info and the serving loop both carry it), keep their own
rolling history, and so need nothing the live loop does not have. Each rule decides a target
exposure in [-1, 1]; :class:`Baseline` maps it to the env's action (the nearest discrete target
exposure, or the continuous value), and a long-only account turns shorts into flat.

- ``buy_and_hold``: exposure 1 from the first bar. On spot that is all in, held. On a perpetual
  it is ``max_leverage`` x equity, rebalanced every bar as equity moves (constant leverage, which
  pays fees on each rebalance); evaluate with ``env.max_leverage=1`` for a 1x hold.
- ``flat``: exposure 0 (only costs that need no trade: none).
- ``random``: a uniformly random action each bar from a seeded generator.
- ``sma_crossover(fast=60, slow=240)``: long when the mean of the last ``fast`` closes is above the
  mean of the last ``slow``, short (flat on long-only) when below; flat until ``slow`` closes are known.
- ``rsi_reversion(window=14, low=30, high=70)``: Cutler's RSI of the last ``window`` changes;
  long below ``low``, short above ``high``, flat between.
- ``zscore_reversion(window=240, entry=2.0, exit=0.5)``: the single-symbol form of the z-score
  mean-reversion trade from statistical arbitrage: ``z = (c - mean) / std`` of the last
  ``window`` closes; short when ``z > entry``, long when ``z < -entry``, back to flat once
  ``|z| < exit``, otherwise keep the position.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

BASELINES = ("buy_and_hold", "flat", "random", "sma_crossover", "rsi_reversion", "zscore_reversion")


class Baseline:
    """A rule over closes, mapped onto an env's actions.

    ``action_values`` are the env's discrete target exposures (``None`` for continuous actions);
    ``allow_short`` is False on a long-only account.
    """

    name = "baseline"

    def __init__(self, action_values: Sequence[float] | None, allow_short: bool, seed: int = 0):
        self.values = None if action_values is None else np.asarray(action_values, dtype=float)
        self.allow_short = allow_short
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Forget history (a new episode)."""
        self.closes: deque[float] = deque(maxlen=self.memory)
        self.position = 0.0
        self.rng = np.random.default_rng(self.seed)

    memory = 1

    def target(self) -> float:
        raise NotImplementedError

    def act(self, obs: Any = None, info: dict | None = None) -> int | np.ndarray:
        if info is not None and "price" in info:
            self.closes.append(float(info["price"]))
        exposure = float(np.clip(self.target(), -1.0, 1.0))
        if not self.allow_short:
            exposure = max(exposure, 0.0)
        self.position = exposure
        if self.values is None:
            return np.array([exposure], dtype=np.float32)
        return int(np.argmin(np.abs(self.values - exposure)))


class BuyAndHold(Baseline):
    name = "buy_and_hold"

    def target(self) -> float:
        return 1.0


class Flat(Baseline):
    name = "flat"

    def target(self) -> float:
        return 0.0


class RandomPolicy(Baseline):
    name = "random"

    def act(self, obs: Any = None, info: dict | None = None) -> int | np.ndarray:
        if self.values is None:
            low = -1.0 if self.allow_short else 0.0
            return np.array([self.rng.uniform(low, 1.0)], dtype=np.float32)
        return int(self.rng.integers(len(self.values)))


class SmaCrossover(Baseline):
    name = "sma_crossover"

    def __init__(self, action_values, allow_short, seed: int = 0, fast: int = 60, slow: int = 240):
        if not 0 < fast < slow:
            raise ValueError(f"sma_crossover needs 0 < fast < slow, got fast={fast}, slow={slow}")
        self.fast, self.memory = fast, slow
        super().__init__(action_values, allow_short, seed)

    def target(self) -> float:
        if len(self.closes) < self.memory:
            return 0.0
        c = np.fromiter(self.closes, float)
        fast, slow = c[-self.fast :].mean(), c.mean()
        return 1.0 if fast > slow else -1.0 if fast < slow else 0.0


class RsiReversion(Baseline):
    name = "rsi_reversion"

    def __init__(
        self, action_values, allow_short, seed: int = 0, window: int = 14, low: float = 30, high: float = 70
    ):
        if not 0 < low < high < 100:
            raise ValueError(f"rsi_reversion needs 0 < low < high < 100, got {low}, {high}")
        self.low, self.high, self.memory = low, high, window + 1
        super().__init__(action_values, allow_short, seed)

    def target(self) -> float:
        if len(self.closes) < self.memory:
            return 0.0
        change = np.diff(np.fromiter(self.closes, float))
        gains, losses = change[change > 0].sum(), -change[change < 0].sum()
        rsi = 50.0 if gains + losses == 0 else 100.0 * gains / (gains + losses)
        return 1.0 if rsi < self.low else -1.0 if rsi > self.high else 0.0


class ZScoreReversion(Baseline):
    name = "zscore_reversion"

    def __init__(
        self,
        action_values,
        allow_short,
        seed: int = 0,
        window: int = 240,
        entry: float = 2.0,
        exit: float = 0.5,
    ):
        if not 0 <= exit < entry:
            raise ValueError(f"zscore_reversion needs 0 <= exit < entry, got exit={exit}, entry={entry}")
        self.entry, self.exit, self.memory = entry, exit, window
        super().__init__(action_values, allow_short, seed)

    def target(self) -> float:
        if len(self.closes) < self.memory:
            return 0.0
        c = np.fromiter(self.closes, float)
        std = c.std()
        z = 0.0 if std == 0 else (c[-1] - c.mean()) / std
        if z > self.entry:
            return -1.0
        if z < -self.entry:
            return 1.0
        return 0.0 if abs(z) < self.exit else self.position


_CLASSES = {c.name: c for c in (BuyAndHold, Flat, RandomPolicy, SmaCrossover, RsiReversion, ZScoreReversion)}


def make_baseline(
    name: str, action_values: Sequence[float] | None, allow_short: bool, seed: int = 0, **params: Any
) -> Baseline:
    """A baseline by name (see the module docstring for the rules and their parameters)."""
    if name not in _CLASSES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    return _CLASSES[name](action_values, allow_short, seed, **params)
