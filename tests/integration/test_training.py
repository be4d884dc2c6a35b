"""Training end to end on a small synthetic market: config, SB3, TensorBoard, bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from agents.bundle import BundleError, load_policy
from agents.config import ConfigError, TrainConfig
from agents.training import load_split, train
from envs.replay import MarketReplayEnv

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
# a small market so that a run takes seconds: 20,000 1m bars, short ranges, short warm-up
SMALL = [
    "data.synthetic_bars=20000",
    "data.train_start=2024-01-01",
    "data.train_end=2024-01-09",
    "data.val_start=2024-01-09T02:00",
    "data.val_end=2024-01-11",
    "data.test_start=2024-01-11T02:00",
    "data.test_end=2024-01-13",
    "data.embargo_bars=120",
    "env.norm_window=120",
    "env.episode_length=100",
    "env.window=8",
    "trainer.total_timesteps=2048",
    "trainer.n_envs=8",
    "trainer.eval_every=1024",
    "trainer.checkpoint_every=1024",
    "agent.n_steps=64",
    "agent.batch_size=128",
]


def composed(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


RLLIB_ONLY = ("agent=appo", "agent=impala")
CONTINUOUS_ONLY = ("agent=sac", "agent=td3")


@pytest.mark.parametrize(
    "override",
    [f"{g}={o}" for g in ("data", "env", "features", "agent", "trainer") for o in options(g)]
    + [f"+experiment={o}" for o in options("experiment")]
    + [f"+hparams_search={o}" for o in options("hparams_search")]
    + [f"+walk_forward={o}" for o in options("walk_forward")],
)
def test_every_config_group_and_experiment_composes_into_a_train_config(override):
    overrides = [override, "trainer=rllib"] if override in RLLIB_ONLY else [override]
    if override in CONTINUOUS_ONLY:
        overrides.append("env.action_type=continuous")
    if override == "features=perp":  # funding_rate: a perpetual's account only
        overrides.append("env=perp")
    config = TrainConfig.from_dict(composed(overrides))
    assert config.trainer.backend == ("rllib" if "trainer=rllib" in overrides else "sb3")
    if override.startswith("+experiment="):
        assert config.experiment_name == override.split("=")[1]
    if override.startswith("features="):
        assert config.env.features == tuple(composed([override])["env"]["features"])
    if override.startswith("+hparams_search="):
        assert config.hparams_search.params["agent.learning_rate"].log is True
    if override.startswith("+walk_forward="):
        assert config.walk_forward.folds >= 1


def test_an_algorithm_the_backend_lacks_names_the_backend_that_has_it():
    with pytest.raises(ConfigError, match="agent=appo is not offered by trainer=sb3.*use trainer=rllib"):
        TrainConfig.from_dict(composed(["agent=appo"]))
    with pytest.raises(ConfigError, match="agent=sac is not offered by trainer=rllib.*use trainer=sb3"):
        TrainConfig.from_dict(composed(["agent=sac", "trainer=rllib"]))


def test_a_wrong_key_or_type_stops_with_the_keys_full_name():
    values = composed([])
    values["agent"]["learnin_rate"] = 1e-3
    near = r"did you mean agent.learning_rate or agent.learning_starts\?"
    with pytest.raises(ConfigError, match=f"unknown key agent.learnin_rate; {near} agent accepts: algo"):
        TrainConfig.from_dict(values)
    values = composed(["agent.learning_rate=fast"])
    with pytest.raises(ConfigError, match="agent.learning_rate='fast' must be a number"):
        TrainConfig.from_dict(values)
    with pytest.raises(ConfigError, match="data.val_start=2024-03-20 must be at least data.embargo_bars"):
        TrainConfig.from_dict(composed(["data.val_start=2024-03-20"]))


def test_sac_on_discrete_actions_names_the_fix():
    with pytest.raises(ConfigError, match="agent=sac needs continuous actions: add env.action_type=contin"):
        TrainConfig.from_dict(composed([*SMALL, "agent=sac"]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    values = composed([*SMALL, f"data.root={tmp / 'store'}", "seed=3"])
    config = TrainConfig.from_dict(values)
    return config, train(config, tmp / "run", values), tmp / "run"


def test_training_writes_checkpoints_tensorboard_trading_scalars_and_a_bundle(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, result, run = trained
    assert (run / "checkpoints" / "best.zip").exists() and (run / "checkpoints" / "last.zip").exists()
    (events,) = list((run / "tb").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("trading/episode_return_pct", "trading/fees_pct", "trading/trades_per_day",
                "validation/sharpe", "validation_buy_and_hold/sharpe", "train/loss"):  # fmt: skip
        assert tag in tags, sorted(tags)
    spec = json.loads((run / "policy" / "spec.json").read_text())
    assert spec["observation_shape"] == [8 * 10 + 4] and spec["observation_dtype"] == "float32"
    assert spec["features"][-2:] == ["momentum_240", "momentum_1440"]
    assert spec["action_space"] == {"type": "Discrete", "n": 2} and spec["action_values"] == [0.0, 1.0]
    assert spec["window"] == 8 and spec["timeframe"] == "1m" and spec["algo"] == "ppo"
    assert spec["ranges"]["test"] == ["2024-01-11T02:00", "2024-01-13"]
    assert len(spec["config_hash"]) == 16 and spec["package_version"]
    assert len(result.validation) == 3  # at 1024, at 2048, and at the end


def test_loaded_bundle_acts_exactly_as_the_trained_model(trained):
    config, result, run = trained
    bars, funding, _ = load_split(config.data, config.env, "val", with_history=True)
    env = MarketReplayEnv(bars=bars, funding=funding, **{**vars(config.env), "random_start": True})
    policy = load_policy(run, env=env)
    obs, _ = env.reset(seed=0)
    for _ in range(200):
        expected = int(result.model.predict(obs, deterministic=True)[0])
        assert policy.act(obs) == expected
        obs, _, terminated, truncated, _ = env.step(expected)
        if terminated or truncated:
            obs, _ = env.reset()
    batch = np.stack([env.reset()[0] for _ in range(5)])
    np.testing.assert_array_equal(policy.act(batch), result.model.predict(batch, deterministic=True)[0])


def test_a_bundle_refuses_an_env_it_was_not_trained_for(trained):
    config, _, run = trained
    bars, _, _ = load_split(config.data, config.env, "val", with_history=True)
    other = MarketReplayEnv(
        bars=bars, **{**vars(config.env), "window": 16, "market": "perp", "actions": None}
    )
    with pytest.raises(BundleError, match="observation_shape: bundle \\[84\\] != env \\[\\d+\\]") as err:
        load_policy(run, env=other)
    assert "window: bundle 8 != env 16" in str(err.value) and "market: bundle 'spot' != env 'perp'" in str(
        err.value
    )


def test_train_py_prints_the_run_dir_last_and_refuses_a_typo(tmp_path):
    args = ["trainer.total_timesteps=512", "trainer.eval_every=512"]
    ok = run_train(args, tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    last = ok.stdout.strip().splitlines()[-1]
    assert last.startswith("run_dir: runs/default/")
    assert (tmp_path / last.split(": ", 1)[1] / "policy" / "spec.json").exists()
    bad = run_train([*args, "agent.learning_rate=fast"], tmp_path, timeout=120)
    assert bad.returncode == 2
    assert "error: agent.learning_rate='fast' must be a number" in bad.stderr


def run_train(
    args: list[str], cwd: Path, timeout: int = 600, flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    env = {**os.environ, "KLINEGYM_DATA": str(cwd / "store")}
    cmd = [sys.executable, str(ROOT / "train.py"), *flags, *SMALL, *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_a_multirun_sweep_trains_each_value_into_its_own_numbered_folder(tmp_path):
    out = run_train(
        ["agent.learning_rate=0.0001,0.0003", "trainer.total_timesteps=512"], tmp_path, flags=("-m",)
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (sweep,) = (tmp_path / "multirun" / "default").iterdir()
    for job, lr in (("0", 0.0001), ("1", 0.0003)):
        spec = json.loads((sweep / job / "policy" / "spec.json").read_text())
        assert spec["config"]["agent"]["learning_rate"] == lr


def test_an_optuna_search_scores_trials_on_validation_and_keeps_the_best_bundle(tmp_path):
    import optuna

    out = run_train(
        ["+hparams_search=optuna", "hparams_search.n_trials=3", "trainer.total_timesteps=512"], tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    run = tmp_path / out.stdout.strip().splitlines()[-1].split(": ", 1)[1]
    summary = json.loads((run / "search.json").read_text())
    scores = [t["score"] for t in summary["trials"]]
    assert len(scores) == 3 and summary["best"]["score"] == max(scores)
    for t in summary["trials"]:
        trained = json.loads((Path(t["run_dir"]) / "policy" / "spec.json").read_text())
        assert trained["config"]["agent"]["learning_rate"] == t["params"]["agent.learning_rate"]
        assert trained["validation"]["sharpe"] == t["score"]
        assert "hparams_search" not in trained["config"]
    best = json.loads((run / "policy" / "spec.json").read_text())
    assert best["validation"]["sharpe"] == summary["best"]["score"]
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{run / 'study.db'}")
    assert sorted(t.value for t in study.trials) == sorted(scores)
    assert 1e-5 <= study.best_params["agent.learning_rate"] <= 1e-3


def test_resume_continues_from_the_checkpoint_with_its_step_count(trained, tmp_path):
    config, _, run = trained
    # stable-baselines3 adds the .zip suffix itself, so a checkpoint may be named without it
    values = composed([*SMALL, f"data.root={config.data.root}", "seed=3", "trainer.total_timesteps=512",
                       f"resume={run / 'checkpoints' / 'last'}"])  # fmt: skip
    result = train(TrainConfig.from_dict(values), tmp_path / "resumed", values)
    assert result.model.num_timesteps >= 2048 + 512  # the first run's 2048 steps, then 512 more
    assert result.validation[0]["timesteps"] > 2048
