"""``python evaluate.py`` with bad input: exit status 2, one line on stderr naming what was wrong
and the fix, no traceback, and nothing written (no ``eval/`` folder, half-written or whole) or
changed (the bundle, the store).

Each test evaluates a copy of the session's small perp bundle (tests/integration/conftest.py:
5m synthetic bars, test range 2024-01-17 .. 2024-01-20) in ``tmp_path``, damaged there where the
case asks for it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agents.baselines import BASELINES
from tests.refusals import refuses


@pytest.fixture()
def run(tmp_path, bundle) -> Path:
    """A copy of the bundle's run folder (its ``policy/``) as ``tmp_path/run``."""
    shutil.copytree(bundle / "policy", tmp_path / "run" / "policy")
    return tmp_path / "run"


def evaluate(tmp_path: Path, bundle: Path, args: list[str], *fragments: str) -> str:
    store = bundle.parent / "store"
    return refuses(["evaluate.py", *args, f"data.root={store}"], tmp_path, [store], *fragments)


def edit_spec(run: Path, change) -> None:
    path = run / "policy" / "spec.json"
    spec = json.loads(path.read_text())
    change(spec)
    path.write_text(json.dumps(spec))


CASES = [
    # the command line: keys that are not in the config, with + or without, and their values
    ("unknown-data-key-with-plus", ["run=run", "+data.foo=1"],
     "error: unknown key data.foo; did you mean data.root? data accepts: exchange, market, symbol, "
     "timeframe, start, end, root"),
    ("misspelt-data-key", ["run=run", "data.strat=2024-01-18"],
     "error: unknown key data.strat; did you mean data.start?"),
    ("misspelt-env-key", ["run=run", "env.taker_fe=0.1"],
     "error: unknown key env.taker_fe; did you mean env.taker_fee or env.maker_fee? env accepts: market, "
     "initial_equity, taker_fee"),
    ("misspelt-env-key-with-plus", ["run=run", "+env.taker_fe=0.1"],
     "error: unknown key env.taker_fe; did you mean env.taker_fee or env.maker_fee?"),
    ("misspelt-top-level-key", ["run=run", "+polcy=flat"], "error: unknown key polcy; did you mean policy?"),
    ("env-value-of-the-wrong-type", ["run=run", "env.taker_fee=cheap"],
     "error: env.taker_fee='cheap' must be a number"),
    ("negative-fee", ["run=run", "env.taker_fee=-0.1"],
     "error: env.taker_fee=-0.1 is invalid; it must be a finite number >= 0"),
    ("leverage-beyond-the-margin-rate", ["run=run", "env.max_leverage=300"],
     "error: env.max_leverage=300.0 is invalid; with maintenance_margin_rate=0.004 it must stay below 250"),
    ("zero-window", ["run=run", "env.window=0"],
     "error: env.window=0 is invalid; it must be a whole number >= 1"),
    ("window-the-bundle-was-not-trained-on", ["run=run", "env.window=16"],
     "error: run/policy cannot drive this env: observation_shape: bundle [52] != env [100]; window: bundle "
     "8 != env 16"),
    ("env-group-with-a-bundle", ["run=run", "env=spot"],
     "error: a bundle brings its own env; override single keys (env.taker_fee=0.001), not the env or "
     "features group"),
    ("features-group-with-a-bundle", ["run=run", "features=default"], "error: a bundle brings its own env"),
    ("unknown-feature-for-a-baseline", ["policy=flat", "data.exchange=synthetic", "data.symbol=SYN/USDT",
                                        "data.timeframe=5m", "data.start=2024-01-17", "data.end=2024-01-20",
                                        "env.features=[log_return,momentm_240]"],
     "error: env.features: unknown feature 'momentm_240'; did you mean momentum_240 or momentum_1440? "
     "choose from: log_return"),
    ("unknown-baseline", ["run=run", "baselines=[buy_and_hold,sma_cross]"],
     "error: baselines: sma_cross is not a baseline; did you mean sma_crossover? choose from "
     f"{', '.join(BASELINES)}"),
    ("negative-seed", ["run=run", "seed=-1"], "error: seed=-1 must be a whole number >= 0"),
    # the data
    ("impossible-date", ["run=run", "data.start=2024-04-31"],
     "error: data.start=2024-04-31 is not a date (day is out of range for month); write an ISO date such as "
     "2024-01-01 or 2024-01-01T12:00"),
    ("impossible-end", ["run=run", "data.end=2024-01-32"], "error: data.end=2024-01-32 is not a date"),
    ("end-before-start", ["run=run", "data.start=2024-01-19", "data.end=2024-01-18"],
     "error: data.start=2024-01-19 must be before data.end=2024-01-18"),
    ("start-after-the-bundle-test-end", ["run=run", "data.start=2024-01-21"],
     "error: data.start=2024-01-21 must be before data.end=2024-01-20"),
    ("timeframe", ["run=run", "data.timeframe=7m"],
     "error: data.timeframe='7m' is not supported; choose one of 1s, 1m, 3m, 5m"),
    ("other-timeframe", ["run=run", "data.timeframe=1m"],
     "error: data.timeframe=1m but the bundle was trained on 5m bars; its observations only mean something "
     "on 5m (drop data.timeframe)"),
    ("market", ["run=run", "data.market=perp"],
     "error: data.market='perp' is not supported; choose one of spot, futures (futures trades on a perp "
     "account)"),
    ("range-outside-the-store", ["run=run", "data.start=2023-01-01", "data.end=2023-02-01"],
     "error: the store (", "has no synthetic spot SYN/USDT 5m bars in"),
    ("symbol-not-in-the-store", ["run=run", "data.symbol=ETH/USDT"],
     "has no synthetic spot ETH/USDT 5m bars"),
    ("baseline-without-data", ["policy=buy_and_hold"],
     "error: policy=buy_and_hold has no bundle to take the series from: give data.symbol="),
    # the run and the policy
    ("missing-run", ["run=runs/default/2024-01-01_00-00-00"],
     "error: run=runs/default/2024-01-01_00-00-00 does not exist; give a training run's folder "
     "(runs/<experiment>/<time>)"),
    ("missing-policy-path", ["policy=bundles/old"],
     "error: policy=bundles/old does not exist; give a bundle folder (a run's policy/) or a baseline: "
     f"{', '.join(BASELINES)}"),
    ("unknown-policy-name", ["policy=nonesuch"],
     "error: policy=nonesuch is neither a bundle path nor a baseline"),
    # where to write
    ("out-is-the-run", ["run=run", "out=run"],
     "error: out=run exists and is not an evaluation folder (no metrics.json); it would be replaced: "
     "choose another out="),
    ("out-is-here", ["run=run", "out=."], "error: out=. exists and is not an evaluation folder"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "fragments"), [(c[1], c[2:]) for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_command_line_is_refused(tmp_path, bundle, run, args, fragments):
    evaluate(tmp_path, bundle, args, *fragments)


def test_a_run_that_did_not_finish_is_named_as_such(tmp_path, bundle):
    # what a training start that died leaves: Hydra's files, no policy/
    (tmp_path / "stub" / ".hydra").mkdir(parents=True)
    (tmp_path / "stub" / "train.log").write_text("")
    evaluate(tmp_path, bundle, ["run=stub"],
             "error: run=stub holds no policy bundle (policy/spec.json): the run did not finish; train it to "
             "the end or pass policy=PATH to a bundle")  # fmt: skip


def test_an_out_that_is_a_file_is_refused(tmp_path, bundle, run):
    (tmp_path / "notes.txt").write_text("mine")
    evaluate(tmp_path, bundle, ["run=run", "out=notes.txt"],
             "error: out=notes.txt exists and is not an evaluation folder")  # fmt: skip


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "run/policy/spec.json is empty"),
        ('{"spec_version": 1, "observation_shape": [5', "run/policy/spec.json is not valid JSON (Expecting"),
        ("[1, 2]", "run/policy/spec.json is not a bundle spec (a JSON object)"),
    ],
    ids=["empty", "truncated", "not-an-object"],
)
def test_a_damaged_spec_is_refused_naming_the_file(tmp_path, bundle, run, text, fragment):
    (run / "policy" / "spec.json").write_text(text)
    line = evaluate(tmp_path, bundle, ["run=run"], f"error: {fragment}")
    assert line.endswith("the bundle is damaged: copy it again from where it was trained, or retrain it")


def test_a_spec_without_the_env_is_refused_naming_what_it_lacks(tmp_path, bundle, run):
    edit_spec(run, lambda spec: spec.pop("env"))
    evaluate(tmp_path, bundle, ["run=run"], "error: run/policy/spec.json lacks env: the bundle is damaged")


def test_a_spec_with_an_unknown_feature_is_refused_on_load(tmp_path, bundle, run):
    edit_spec(run, lambda spec: spec["env"].update(features=["log_return", "momentm_240"]))
    evaluate(tmp_path, bundle, ["run=run"],
             "error: run/policy/spec.json: env.features: unknown feature 'momentm_240'; did you mean "
             "momentum_240")  # fmt: skip


def test_a_truncated_model_is_refused_naming_the_file(tmp_path, bundle, run):
    model = run / "policy" / "model.zip"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    evaluate(tmp_path, bundle, ["run=run"], "error: run/policy/model.zip cannot be loaded (",
             "the bundle is damaged: copy it again from where it was trained, or retrain it")  # fmt: skip


def test_a_model_of_random_bytes_is_refused_naming_the_file(tmp_path, bundle, run):
    (run / "policy" / "model.zip").write_bytes(bytes(range(256)) * 64)
    evaluate(tmp_path, bundle, ["run=run"], "error: run/policy/model.zip cannot be loaded (")


def test_a_bundle_without_its_weights_is_refused(tmp_path, bundle, run):
    (run / "policy" / "model.zip").unlink()
    message = "error: run/policy has no model.zip (the policy's weights): the bundle is incomplete"
    evaluate(tmp_path, bundle, ["run=run"], message)
