"""agents.bundle.Policy: one observation of a Discrete stable-baselines3 policy goes straight to its
network, and gets the action ``model.predict`` gives."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("stable_baselines3")
torch = pytest.importorskip("torch")

from stable_baselines3 import DQN, PPO  # noqa: E402

from agents.bundle import Policy  # noqa: E402

DIM = 40


class _Env(gym.Env):
    observation_space = gym.spaces.Box(-np.inf, np.inf, (DIM,), np.float32)
    action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        return np.zeros(DIM, np.float32), {}

    def step(self, action):
        return np.zeros(DIM, np.float32), 0.0, False, False, {}


@pytest.mark.parametrize("algo", [PPO, DQN])
def test_one_observation_gets_the_action_model_predict_gives(algo):
    torch.manual_seed(0)
    model = algo("MlpPolicy", _Env(), policy_kwargs={"net_arch": [16, 16]}, device="cpu", seed=0)
    policy = Policy(model, {"algo": algo.__name__.lower(), "action_space": {"type": "Discrete"}}, Path("."))
    assert policy._net is model.policy
    model.policy.set_training_mode(True)  # as a freshly built model is: the fast path switches it once
    rng = np.random.default_rng(0)
    obs = rng.normal(0.0, 3.0, (300, DIM)).astype(np.float32)
    actions = [policy.act(o) for o in obs]
    assert not model.policy.training
    expected = [int(model.predict(o, deterministic=True)[0]) for o in obs]
    assert actions == expected
    assert all(type(a) is int for a in actions)
    assert len(set(actions)) > 1  # the random network does not answer one action to everything
    # a batch still goes through predict, with the same answers
    np.testing.assert_array_equal(policy.act(obs), expected)
