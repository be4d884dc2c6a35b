"""Evaluate a policy: ``python evaluate.py run=runs/<...> [policy=...] [data.KEY=...] [env.KEY=...]``.

Thin Hydra entry point over reports/evaluation.py: a deterministic replay over the run's test
range (or ``data.start``/``data.end``, or another symbol) next to every baseline with the same
costs; writes the ledger, fills, metrics and an HTML report, prints a summary table, and prints
the output folder as the last line: ``eval_dir: ...``.

The command line is checked before Hydra starts (agents/commandline.py) and the composed config
converted once into :class:`reports.evaluation.EvalCommand`; anything refused stops with one
``error: ...`` line and exit status 2, having written nothing.
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
from agents.commandline import preflight
from data.config import ConfigError, build
from reports.evaluation import EvalCommand, evaluate, summary_table


def _overrides() -> tuple[list[str], bool]:
    """Keys given as ``env.KEY=...`` on the command line, and whether the env or features group was."""
    keys, group = [], False
    for item in HydraConfig.get().overrides.task:
        key = item.split("=", 1)[0].lstrip("+~")
        if key.startswith("env."):
            keys.append(key[4:])
        elif key in ("env", "features"):
            group = True
    return keys, group


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    given, group = _overrides()
    try:
        command = build(EvalCommand, OmegaConf.to_container(cfg, resolve=True))
        result = evaluate(
            command.config(given, group),
            progress=lambda name: print(f"replaying {name} ...", file=sys.stderr),
        )
    except (ConfigError, BundleError) as exc:
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
    preflight(Path(__file__).resolve().parent / "conf", "evaluate", EvalCommand)
    main()
