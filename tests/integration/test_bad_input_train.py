"""``python train.py`` with bad input: exit status 2, one line on stderr naming what was wrong and
the fix, no traceback, and nothing written (no ``runs/`` stub, nothing in the store).

Refusals that the config alone decides run with a ``torch`` that cannot be imported on the path:
they must come before any of the slow work (importing torch and stable-baselines3, reading or
generating the market), so a mistyped value costs a fraction of a second, not a training start.
The few that need the store or the library (a range the store lacks, a checkpoint that does not
load) run for real and must still leave no run folder behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from data.store import SeriesKey, Store
from data.synthetic import SyntheticConfig, generate
from tests.integration.test_training import SMALL
from tests.refusals import ROOT, refuses


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory) -> dict[str, str]:
    """An environment whose ``import torch`` fails: a refusal that still passes is taken before
    torch is imported."""
    fake = tmp_path_factory.mktemp("no_torch")
    (fake / "torch").mkdir()
    (fake / "torch" / "__init__.py").write_text("raise ImportError('torch imported before the refusal')\n")
    return {"PYTHONPATH": f"{fake}:{ROOT}"}


def train(tmp_path: Path, args: list[str], *fragments: str, env: dict[str, str] | None = None) -> str:
    root = f"data.root={tmp_path / 'store'}"
    return refuses(["train.py", *SMALL, root, *args], tmp_path, [], *fragments, env=env)


def old_run(tmp_path: Path) -> Path:
    """A finished run's folder with a checkpoint (its bytes do not matter to a refusal)."""
    checkpoints = tmp_path / "old" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.zip").write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip archive
    return tmp_path / "old"


CONFIG_CASES = [
    # keys that are not in the config, with + or without
    ("unknown-key", ["agent.learnin_rate=0.001"],
     "error: unknown key agent.learnin_rate; did you mean agent.learning_rate or agent.learning_starts? "
     "agent accepts: algo, policy, net_arch, learning_rate"),
    ("unknown-key-with-plus", ["+agent.learnin_rate=0.001"],
     "error: unknown key agent.learnin_rate; did you mean agent.learning_rate"),
    ("unknown-data-key-with-plus", ["+data.foo=1"],
     "error: unknown key data.foo; did you mean data.root? data accepts: exchange, market, symbol, "
     "timeframe, root, train_start"),
    ("unknown-group-option", ["agent=ppo2"],
     "error: agent=ppo2 is not a file of conf/agent; did you mean agent=ppo or agent=appo? choose one of "
     "a2c, appo, dqn, impala, ppo, recurrent_ppo, sac, td3"),
    ("unknown-features-option", ["features=momentm"],
     "error: features=momentm is not a file of conf/features; did you mean features=momentum?"),
    ("unparsable-override", ["agent.net_arch=[64,"],
     "error: cannot read agent.net_arch=[64,: no viable alternative at input '[64,'"),
    # hyperparameters out of range
    ("negative-learning-rate", ["agent.learning_rate=-1"],
     "error: agent.learning_rate=-1.0 must be a finite number > 0 (e.g. 0.0003)"),
    ("learning-rate-not-a-number", ["agent.learning_rate=fast"],
     "error: agent.learning_rate='fast' must be a number"),
    ("gamma-above-one", ["agent.gamma=1.5"], "error: agent.gamma=1.5 must lie in (0, 1]"),
    ("zero-batch-size", ["agent.batch_size=0"], "error: agent.batch_size=0 must be a whole number >= 1"),
    ("zero-epochs", ["agent.n_epochs=0"], "error: agent.n_epochs=0 must be a whole number >= 1"),
    ("negative-clip-range", ["agent.clip_range=-0.2"],
     "error: agent.clip_range=-0.2 must be a finite number > 0"),
    ("gae-lambda-above-one", ["agent.gae_lambda=1.2"], "error: agent.gae_lambda=1.2 must lie in [0, 1]"),
    ("exploration-fraction-above-one", ["agent=dqn", "agent.exploration_fraction=1.5"],
     "error: agent.exploration_fraction=1.5 must lie in [0, 1]"),
    ("empty-layer", ["agent.net_arch=[64,0]"],
     "error: agent.net_arch=[64, 0]: every layer needs a whole number of units >= 1"),
    ("cnn-policy", ["agent.policy=CnnPolicy"],
     "error: agent.policy=CnnPolicy: agent=ppo trains MlpPolicy on this env's flat observations; set "
     "agent.policy=MlpPolicy"),
    ("sac-on-discrete-actions", ["agent=sac"],
     "error: agent=sac needs continuous actions: add env.action_type=continuous"),
    ("algo-backend-mismatch", ["trainer=rllib", "agent=sac"],
     "error: agent=sac is not offered by trainer=rllib (it offers ppo, appo, impala); use trainer=sb3"),
    ("zero-envs", ["trainer.n_envs=0"], "error: trainer.n_envs must be >= 1"),
    ("negative-seed", ["seed=-1"], "error: seed=-1 must be a whole number >= 0"),
    ("device-name", ["device=gpu"],
     "error: device=gpu is not a torch device; use auto, cpu, cuda, cuda:N (a GPU's index) or mps"),
    # dates
    ("impossible-date", ["data.train_start=2024-02-30"],
     "error: data.train_start=2024-02-30 is not a date (day is out of range for month); write an ISO date "
     "such as 2024-01-01 or 2024-01-01T12:00"),
    ("impossible-month", ["data.val_end=2024-13-01"], "error: data.val_end=2024-13-01 is not a date"),
    ("end-before-start", ["data.test_end=2024-01-10"],
     "error: data.test_start=2024-01-11T02:00 must be before data.test_end=2024-01-10"),
    ("inside-the-embargo", ["data.val_start=2024-01-09T01:00"],
     "error: data.val_start=2024-01-09T01:00 must be at least data.embargo_bars=120 bars after the "
     "previous range's end (2024-01-09T02:00:00Z)"),
    ("walk-forward-start", ["+walk_forward=rolling", "walk_forward.start=2024-02-31"],
     "error: walk_forward.start=2024-02-31 is not a date (day is out of range for month)"),
    ("walk-forward-folds", ["+walk_forward=rolling", "walk_forward.folds=0"],
     "error: walk_forward.folds must be >= 1"),
    ("search-trials", ["+hparams_search=optuna", "hparams_search.n_trials=0"],
     "error: hparams_search.n_trials must be >= 1"),
    # the series
    ("timeframe", ["data.timeframe=7m"],
     "error: data.timeframe='7m' is not supported; choose one of 1s, 1m, 3m, 5m, "),
    ("market", ["data.market=perp"],
     "error: data.market='perp' is not supported; choose one of spot, futures (the env's account is "
     "env=perp)"),
    ("synthetic-bars", ["data.synthetic_bars=1"],
     "error: data.synthetic_bars=1: a synthetic market needs at least 2 bars"),
    ("negative-embargo", ["data.embargo_bars=-1"], "error: data.embargo_bars=-1 must be a whole number >= 0"),
    # the env and its features
    ("unknown-feature", ["env.features=[log_return,momentm_240]"],
     "error: env.features: unknown feature 'momentm_240'; did you mean momentum_240 or momentum_1440? "
     "choose from: log_return, range, body"),
    ("unsupported-momentum-window", ["env.features=[log_return,momentum_60]"],
     "error: env.features: unknown feature 'momentum_60'; did you mean momentum_240"),
    ("feature-twice", ["env.features=[log_return,rsi,rsi]"],
     "error: env.features: feature 'rsi' is listed twice; list each feature once"),
    ("features-as-a-string", ["env.features=rsi"], "error: env.features='rsi' must be a list"),
    ("funding-feature-on-spot", ["env.features=[log_return,funding_rate]"],
     "error: env.features=('log_return', 'funding_rate') is invalid; funding_rate needs a perpetual's "
     "funding rates; drop it, or market=perp"),
    ("negative-fee", ["env.taker_fee=-0.001"],
     "error: env.taker_fee=-0.001 is invalid; it must be a finite number >= 0"),
    ("leverage-on-spot", ["env.max_leverage=3"],
     "error: env.max_leverage=3.0 is invalid; spot accounts trade without leverage"),
    ("norm-window-of-one", ["env.norm_window=1"],
     "error: env.norm_window=1 is invalid; it must be a whole number >= 2"),
    # resume
    ("resume-missing", ["resume=runs/default/x/checkpoints/last.zip"],
     "error: resume=runs/default/x/checkpoints/last.zip does not exist; give a checkpoint like "
     "runs/<experiment>/<time>/checkpoints/last.zip"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_a_bad_config_is_refused_before_torch_is_imported(tmp_path, no_torch, args, message):
    line = train(tmp_path, args, message, env=no_torch)
    assert ".zip.zip" not in line


def test_resume_of_a_checkpoint_given_without_its_suffix_that_does_not_exist(tmp_path, no_torch):
    line = train(tmp_path, ["resume=old/checkpoints/step_5"],
                 "error: resume=old/checkpoints/step_5 does not exist (nor old/checkpoints/step_5.zip)",
                 env=no_torch)  # fmt: skip
    assert ".zip.zip" not in line


def test_resume_of_a_run_folder_names_its_last_checkpoint(tmp_path, no_torch):
    old_run(tmp_path)
    train(tmp_path, ["resume=old"],
          "error: resume=old is a run folder; continue from its checkpoint: resume=old/checkpoints/last.zip",
          env=no_torch)  # fmt: skip


def test_resume_of_a_file_that_is_not_a_checkpoint(tmp_path, no_torch):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    train(tmp_path, ["resume=notes.txt"],
          "error: resume=notes.txt is not a stable-baselines3 checkpoint (not a zip archive); give a run's "
          "checkpoints/last.zip", env=no_torch)  # fmt: skip


def test_resume_of_a_zip_archive_that_is_not_a_checkpoint(tmp_path, no_torch):
    old_run(tmp_path)  # its last.zip is an empty archive
    train(tmp_path, ["resume=old/checkpoints/last.zip"],
          "error: resume=old/checkpoints/last.zip is not a stable-baselines3 checkpoint (no data or "
          "policy.pth in the archive); give a run's checkpoints/last.zip", env=no_torch)  # fmt: skip


def test_rllib_resume_of_an_sb3_checkpoint(tmp_path, no_torch):
    old_run(tmp_path)
    train(tmp_path, ["trainer=rllib", "resume=old/checkpoints/last.zip"],
          "error: resume=old/checkpoints/last.zip is not an RLlib checkpoint (no rllib_checkpoint.json); "
          "give a run's checkpoints/last (or step_N)", env=no_torch)  # fmt: skip


def test_a_sweep_with_one_bad_value_is_refused_before_any_job_runs(tmp_path, no_torch):
    args = [*SMALL, f"data.root={tmp_path / 'store'}", "agent.learning_rate=0.001,-1"]
    refuses(["train.py", "-m", *args], tmp_path, [],
            "error: agent.learning_rate=-1.0 must be a finite number > 0", env=no_torch)  # fmt: skip


# -- refusals that need the store or the library: after Hydra started, still nothing left behind


def test_a_range_the_store_lacks_names_the_download_and_leaves_no_run_folder(tmp_path):
    train(tmp_path, ["+experiment=btc_1m", "data.download=false"],
          "error: the store lacks binance/spot/BTCUSDT/1m over the data ranges; fill it with: python -m "
          "data download exchange=binance market=spot symbol=BTC/USDT timeframe=1m start=")  # fmt: skip


def test_a_range_beyond_the_synthetic_market_writes_no_store_and_no_run_folder(tmp_path):
    train(tmp_path, ["data.test_end=2024-02-01"],
          "error: data.synthetic_bars=20000 ends at 2024-01-14T21:19:00Z, before data.test_end=2024-02-01; "
          "raise data.synthetic_bars or move the ranges")  # fmt: skip


def test_a_sweep_refused_in_its_first_job_leaves_no_multirun_folder(tmp_path):
    args = [*SMALL, f"data.root={tmp_path / 'store'}", "data.test_end=2024-02-01", "seed=0,1"]
    refuses(["train.py", "-m", *args], tmp_path, [], "error: data.synthetic_bars=20000 ends at")


def test_a_search_on_a_metric_the_validation_lacks_is_refused_before_its_first_trial(tmp_path):
    train(tmp_path, ["+hparams_search=optuna", "hparams_search.metric=sharp"],
          "error: hparams_search.metric=sharp is not a validation metric; did you mean sharpe? choose one of "
          "total_return, cagr, volatility, sharpe")  # fmt: skip


def test_walk_forward_folds_beyond_the_market_are_refused_naming_the_folds(tmp_path):
    train(tmp_path, ["+walk_forward=rolling", "walk_forward.folds=50"],
          "error: walk_forward.folds=50 run to 2025-01-22T04:00:00Z (the last fold's test end): "
          "data.synthetic_bars=20000 ends at 2024-01-14T21:19:00Z")  # fmt: skip


def test_a_feature_the_stored_series_cannot_feed_is_refused_naming_the_series(tmp_path):
    # 1m bars as a ccxt download stores them: no taker_buy_base column
    bars, _ = generate(SyntheticConfig(seed=0, start="2024-01-01", bars=20_000, timeframe="1m"))
    key = SeriesKey.of("binance", "spot", "SYN/USDT", "1m")
    Store(tmp_path / "store").write(key, bars.drop(columns=["taker_buy_base"]))
    args = ["data.exchange=binance", "data.download=false", "env.features=[log_return,taker_imbalance]"]
    train(tmp_path, args,
          "error: cannot build the env on the data.val range of binance spot SYN/USDT 1m: feature "
          "'taker_imbalance' needs taker_buy_base in the bars")  # fmt: skip


def test_a_refused_start_keeps_the_runs_of_the_experiment_that_were_there(tmp_path):
    earlier = tmp_path / "runs" / "default" / "earlier"
    earlier.mkdir(parents=True)
    (earlier / "train.log").write_text("an earlier run\n")
    train(tmp_path, ["data.test_end=2024-02-01"], "error: data.synthetic_bars=20000 ends at")
    assert sorted(p.name for p in (tmp_path / "runs" / "default").iterdir()) == ["earlier"]


def test_a_checkpoint_of_another_env_is_refused_naming_resume_and_leaves_no_run_folder(tmp_path, bundle):
    # a store that already holds the market (a resumed run's has), so a refusal must not touch it
    bars, _ = generate(SyntheticConfig(seed=0, start="2024-01-01", bars=20_000, timeframe="1m"))
    Store(tmp_path / "store").write(SeriesKey.of("synthetic", "spot", "SYN/USDT", "1m"), bars)
    # the serving fixture's bundle: a perp policy on 5m bars with six features, not this env's ten
    checkpoint = bundle / "policy" / "model.zip"
    train(tmp_path, [f"resume={checkpoint}"],
          f"error: resume={checkpoint} cannot be loaded as a ppo checkpoint for this env (Observation spaces "
          "do not match", "resume with the agent and env the checkpoint was trained with")  # fmt: skip
