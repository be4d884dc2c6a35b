from __future__ import annotations

import numpy as np
import pytest

from agents.baselines import BASELINES, make_baseline


def run(policy, closes):
    return [policy.act(None, {"price": c}) for c in closes]


def test_buy_and_hold_and_flat_map_to_the_nearest_discrete_exposure():
    assert run(make_baseline("buy_and_hold", [-1, 0, 1], True), [1, 2]) == [2, 2]
    assert run(make_baseline("flat", [-1, 0, 1], True), [1, 2]) == [1, 1]
    assert run(make_baseline("buy_and_hold", [0, 0.5], False), [1]) == [1]


def test_sma_crossover_is_flat_until_the_slow_window_fills_then_follows_the_cross():
    policy = make_baseline("sma_crossover", [-1, 0, 1], True, fast=2, slow=4)
    # closes 1 2 3 4: fast mean 3.5 > slow mean 2.5 -> long; then 4 3 2 1 falls below
    assert run(policy, [1, 2, 3, 4, 3, 2, 1]) == [1, 1, 1, 2, 2, 0, 0]
    long_only = make_baseline("sma_crossover", [0, 1], False, fast=2, slow=4)
    assert run(long_only, [1, 2, 3, 4, 3, 2, 1]) == [0, 0, 0, 1, 1, 0, 0]


def test_rsi_reversion_buys_oversold_and_sells_overbought():
    policy = make_baseline("rsi_reversion", [-1, 0, 1], True, window=4, low=30, high=70)
    # four falls: RSI 0 -> long; four rises after: RSI 100 -> short; mixed -> flat
    actions = run(policy, [10, 9, 8, 7, 6, 7, 8, 9, 10, 9, 10])
    assert actions[4] == 2 and actions[8] == 0
    # last window of changes: +1 +1 -1 +1 -> gains 3, losses 1 -> RSI 75 -> short
    assert actions[10] == 0


def test_zscore_reversion_enters_beyond_entry_holds_and_exits_inside_exit():
    policy = make_baseline("zscore_reversion", [-1, 0, 1], True, window=5, entry=1.5, exit=0.5)
    # [10 10 10 10 20]: mean 12, std 4, z = 2 > 1.5 -> short (action 0)
    # [10 10 10 20 18]: mean 13.6, std 4.454, z = 0.99, between exit and entry -> still short
    # [10 10 20 18 13]: mean 14.2, std 4.118, z = -0.29, inside exit -> flat (action 1)
    assert run(policy, [10, 10, 10, 10, 20, 18, 13]) == [1, 1, 1, 1, 0, 0, 1]


def test_random_is_seeded_and_continuous_actions_stay_in_the_space():
    a = run(make_baseline("random", [-1, 0, 1], True, seed=5), range(50))
    b = run(make_baseline("random", [-1, 0, 1], True, seed=5), range(50))
    assert a == b and set(a) == {0, 1, 2}
    cont = make_baseline("random", None, False, seed=1)
    values = [float(cont.act(None, {"price": 1.0})[0]) for _ in range(100)]
    assert min(values) >= 0.0 and max(values) <= 1.0


def test_every_baseline_drives_a_real_replay_and_unknown_names_are_refused():
    from data.synthetic import SyntheticConfig, generate
    from reports.replay import replay

    bars, _ = generate(SyntheticConfig(seed=2, bars=3000))
    for name in BASELINES:
        ledger = replay(
            make_baseline(name, [0, 1], False).act,
            bars,
            None,
            {"norm_window": 100, "window": 8},
            int(bars.ts[500]),
        )
        assert len(ledger) > 2000 and np.isfinite(ledger["equity"]).all()
    with pytest.raises(ValueError, match="unknown baseline 'hodl'; choose one of buy_and_hold"):
        make_baseline("hodl", [0, 1], False)
