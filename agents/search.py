"""Hyperparameter search with Optuna, driven through Hydra's compose API.

``python train.py +hparams_search=optuna [overrides]`` runs ``hparams_search.n_trials`` full
training runs. Each trial composes the same config as the command line plus the sampled
overrides (``agent.learning_rate=0.00012``, a group option such as ``agent=a2c``, ...), so a
sampled value goes through exactly the checks a typed override does. A trial's score is
``hparams_search.metric`` of its final validation replay, net of all costs; the test range is
never read. (``hydra-optuna-sweeper`` 1.3 pins optuna < 3, which breaks with SQLAlchemy 2
storage, hence this driver.)

The run folder gets ``trial_000/`` ... (each a complete run), ``study.db`` (the Optuna study,
unless ``hparams_search.storage`` names another), ``search.json`` (every trial's overrides and
score, and the best), and ``policy/``: a copy of the best trial's bundle.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agents.config import ConfigError, HparamsSearchConfig, SearchParam, TrainConfig
from data.config import closest
from reports import metrics

log = logging.getLogger(__name__)


def suggest(trial: Any, name: str, p: SearchParam) -> Any:
    """The trial's value for one search dimension."""
    if p.type == "categorical":
        return trial.suggest_categorical(name, list(p.choices))
    if p.type == "int":
        return trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(name, float(p.low), float(p.high), log=p.log)


def _sampler(s: HparamsSearchConfig):
    import optuna

    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    return optuna.samplers.TPESampler(seed=s.seed)


def search(
    config: TrainConfig,
    run_dir: Path,
    base_overrides: Sequence[str],
    compose: Callable[[list[str]], dict[str, Any]],
    train_fn: Callable[[TrainConfig, Path, dict[str, Any]], Any],
) -> dict[str, Any]:
    """Run the study; ``compose(overrides)`` gives a resolved config dict, ``train_fn`` is
    :func:`agents.training.train`. Returns the summary also written to ``search.json``."""
    import optuna

    s = config.hparams_search
    assert s is not None
    # the keys of a validation replay's metrics, from a replay of one flat bar (before any trial)
    offered = list(metrics.summary([1.0, 1.0], [0.0], [], periods_per_year=1.0))
    if s.metric not in offered:
        near = closest(s.metric, offered)
        hint = f" did you mean {' or '.join(near)}?" if near else ""
        raise ConfigError(
            f"hparams_search.metric={s.metric} is not a validation metric;{hint} choose one of "
            f"{', '.join(offered)}"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = s.storage or f"sqlite:///{(run_dir / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=config.experiment_name,
        storage=storage,
        sampler=_sampler(s),
        direction=s.direction,
        load_if_exists=True,
    )
    base = [o for o in base_overrides if not o.lstrip("+~").startswith("hparams_search")]
    trials: list[dict[str, Any]] = []

    def objective(trial: Any) -> float:
        sampled = {name: suggest(trial, name, p) for name, p in s.params.items()}
        overrides = [*base, *(f"{k}={v}" for k, v in sampled.items())]
        values = compose(overrides)
        values.pop("hparams_search", None)
        trial_dir = run_dir / f"trial_{trial.number:03d}"
        try:
            result = train_fn(TrainConfig.from_dict(values), trial_dir, values)
        except ConfigError as exc:
            raise ConfigError(f"trial {trial.number} with {sampled}: {exc}") from exc
        final = result.validation[-1]
        score = float(final[s.metric])
        trials.append({"trial": trial.number, "params": sampled, "score": score, "run_dir": str(trial_dir)})
        log.info("trial %d: %s -> validation %s %.4f", trial.number, sampled, s.metric, score)
        return score

    study.optimize(objective, n_trials=s.n_trials)
    best = min(trials, key=lambda t: -t["score"] if s.direction == "maximize" else t["score"])
    summary = {
        "metric": s.metric,
        "direction": s.direction,
        "storage": storage,
        "best": best,
        "trials": trials,
    }
    (run_dir / "search.json").write_text(json.dumps(summary, indent=2, default=str))
    shutil.copytree(Path(best["run_dir"]) / "policy", run_dir / "policy", dirs_exist_ok=True)
    return summary
