"""Evaluate a policy: ``python evaluate.py run=runs/<...> [policy=...] [data.KEY=...] [env.KEY=...]``.

Thin Hydra entry point over reports/evaluation.py: a deterministic replay over the run's test
range (or ``data.start``/``data.end``, or another symbol) next to every baseline with the same
costs; writes the ledger, fills, metrics and an HTML report, prints a summary table, and prints
the output folder as the last line: ``eval_dir: ...``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from agents.bundle import BundleError
from reports.evaluation import EvalConfig, EvalData, EvalError, evaluate, summary_table


def _overrides() -> tuple[dict[str, str], bool]:
    """Keys given as ``env.KEY=...`` on the command line, and whether the env or features group was."""
    keys, group = {}, False
    for item in HydraConfig.get().overrides.task:
        key = item.split("=", 1)[0].lstrip("+~")
        if key.startswith("env."):
            keys[key[4:]] = True
        elif key in ("env", "features"):
            group = True
    return keys, group


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    values = OmegaConf.to_container(cfg, resolve=True)
    given, group = _overrides()
    env = values.pop("env")
    try:
        unknown = sorted(set(values) - {"run", "policy", "out", "name", "seed", "baselines", "data"})
        if unknown:
            raise EvalError(f"unknown key {unknown[0]}; evaluate.py accepts run, policy, out, name, seed, "
                            "baselines, data.*, env.*")  # fmt: skip
        data = EvalData(**values.pop("data"))
        baselines = tuple(values.pop("baselines") or ())
        config = EvalConfig(
            **values,
            baselines=baselines,
            data=data,
            env=env,
            env_overrides={k: env[k] for k in given if k in env},
            env_group_chosen=group,
        )
        bad = [k for k in given if k not in env]
        if bad:
            raise EvalError(f"unknown key env.{bad[0]}; see conf/env/spot.yaml for the env's keys")
        result = evaluate(config, progress=lambda name: print(f"replaying {name} ...", file=sys.stderr))
    except (EvalError, BundleError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(summary_table(result.metrics))
    if result.metrics["stopped_early"]:
        print(
            f"warning: the replay stopped before data.end: {result.metrics['stopped_early']}", file=sys.stderr
        )
    try:
        shown = result.out.resolve().relative_to(Path.cwd())
    except ValueError:
        shown = result.out
    print(f"eval_dir: {shown}")


if __name__ == "__main__":
    main()
