"""Training with Ray RLlib end to end on a small synthetic market: a real local Ray, TensorBoard,
checkpoints and resume, and a bundle that loads and acts without Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agents.bundle import load_policy
from agents.config import ConfigError, TrainConfig
from agents.rllib import check_resources
from agents.training import load_split, train
from envs.replay import MarketReplayEnv
from tests.integration.test_training import SMALL, composed

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

RLLIB = [
    *SMALL,
    "trainer=rllib",
    "trainer.n_envs=8",
    "trainer.num_env_runners=1",
    "trainer.total_timesteps=1024",
    "trainer.eval_every=512",
    "trainer.checkpoint_every=512",
    "ray.num_cpus=2",
]


def scalars(run) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted((run / "tb").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rllib")
    values = composed([*RLLIB, f"data.root={tmp / 'store'}", "seed=5"])
    config = TrainConfig.from_dict(values)
    result = train(config, tmp / "run", values)
    assert not ray.is_initialized()  # the run shut down the Ray it started
    return config, result, tmp / "run", values


def test_rllib_run_writes_trading_and_validation_scalars_checkpoints_and_a_bundle(trained):
    _, result, run, _ = trained
    tags = scalars(run)
    for tag in ("trading/episode_return_pct", "trading/sharpe", "trading/fees_pct", "trading/trades_per_day",
                "validation/sharpe", "validation_buy_and_hold/total_return",
                "rllib/learners/default_policy/policy_loss"):  # fmt: skip
        assert tag in tags, sorted(tags)
    # 8 accounts x 64 steps a rollout: 512 env-steps an iteration, validated every 512
    assert [step for step, _ in tags["validation/sharpe"]] == [512, 1024]
    for name in ("best", "last", "step_512", "step_1024"):
        assert (run / "checkpoints" / name / "rllib_checkpoint.json").exists(), name
    spec = json.loads((run / "policy" / "spec.json").read_text())
    assert spec["backend"] == "rllib" and spec["algo"] == "ppo"
    assert spec["observation_shape"] == [10 * 8 + 4] and spec["action_space"] == {"type": "Discrete", "n": 2}
    assert (run / "policy" / "rl_module").is_dir()
    assert [h["timesteps"] for h in result.validation] == [512, 1024]


def test_rllib_bundle_loads_without_ray_and_acts_exactly_as_the_trained_module(trained):
    config, result, run, _ = trained
    bars, funding, _ = load_split(config.data, config.env, "val", with_history=True)
    env = MarketReplayEnv(bars=bars, funding=funding, **vars(config.env))
    policy = load_policy(run, env=env)
    assert not ray.is_initialized()
    obs, _ = env.reset(seed=0)
    actions = []
    for _ in range(300):
        expected = int(result.model.predict(obs)[0])
        assert policy.act(obs) == expected
        actions.append(expected)
        obs, _, terminated, truncated, _ = env.step(expected)
        if terminated or truncated:
            obs, _ = env.reset()
    batch = np.stack([env.reset()[0] for _ in range(6)])
    np.testing.assert_array_equal(policy.act(batch), result.model.predict(batch)[0])
    # the module's logits decide: the same argmax as a plain forward pass through its layers
    import torch

    logits = result.model.module.forward_inference({"obs": torch.from_numpy(batch)})["action_dist_inputs"]
    np.testing.assert_array_equal(policy.act(batch), logits.argmax(-1).numpy())


def test_rllib_resume_continues_the_step_count_and_the_curves(trained, tmp_path):
    config, _, run, _ = trained
    more = composed([*RLLIB, f"data.root={config.data.root}", "trainer.total_timesteps=512"])
    more["resume"] = str(run / "checkpoints" / "last")
    result = train(TrainConfig.from_dict(more), tmp_path / "resumed", more)
    assert [h["timesteps"] for h in result.validation] == [1536]
    assert [step for step, _ in scalars(tmp_path / "resumed")["validation/sharpe"]] == [1536]


def test_rllib_refuses_gpus_the_cluster_does_not_have_naming_the_fix():
    config = TrainConfig.from_dict(composed(["trainer=rllib", "trainer.num_gpus_per_learner=1"]))
    with pytest.raises(ConfigError, match=r"asks for 1 GPU\(s\) but the Ray cluster has 0; set "
                       r"trainer.num_gpus_per_learner=0"):  # fmt: skip
        check_resources(config, {"CPU": 2.0})
    config = TrainConfig.from_dict(composed(["trainer=rllib", "trainer.num_env_runners=4"]))
    with pytest.raises(ConfigError, match="trainer.num_env_runners=4 .* need 5 CPUs .* has 2"):
        check_resources(config, {"CPU": 2.0})
    check_resources(TrainConfig.from_dict(composed(["trainer=rllib"])), {"CPU": 2.0})


def test_rllib_stops_a_gpu_request_before_training_when_ray_has_none(tmp_path):
    values = composed([*RLLIB, f"data.root={tmp_path / 'store'}", "trainer.num_gpus_per_learner=1"])
    with pytest.raises(ConfigError, match="but the Ray cluster has 0"):
        train(TrainConfig.from_dict(values), tmp_path / "run", values)
    assert not ray.is_initialized()
