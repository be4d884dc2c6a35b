"""Train an agent: ``python train.py [+experiment=NAME] [group=option] [key=value ...]``.

Thin Hydra entry point: it converts the composed config once (agents/config.py) and hands it to
agents/training.py, or with ``+hparams_search=optuna`` to the Optuna search (agents/search.py), or
with ``+walk_forward=rolling`` to walk-forward validation (agents/walkforward.py).
The run folder is printed as the last line: ``run_dir: runs/...``.

A start the config alone refuses (an unknown key, a value out of range, an impossible date, a
checkpoint that is not there) stops before Hydra makes the run folder and before torch is
imported (agents/commandline.py); one refused later (a range the store lacks, a checkpoint that
does not load) removes the folder Hydra made. Either way: one ``error: ...`` line, exit status 2.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# before torch is imported anywhere: on CPU one OpenMP thread per process is 20-50x faster per
# SGD step than the default on this kind of machine (trainer.torch_threads sets torch's own pool)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from agents.commandline import discard_output, preflight
from agents.config import ConfigError, TrainConfig

log = logging.getLogger("train")
CONF = Path(__file__).resolve().parent / "conf"
# the folders on the way to Hydra's output folder that existed before it made it (preflight)
existed: frozenset[Path] = frozenset()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    values = OmegaConf.to_container(cfg, resolve=True)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        config = TrainConfig.from_dict(values)
        from agents.training import train

        if config.hparams_search is not None:
            from agents.search import search

            def composed(overrides: list[str]) -> dict:
                trial = compose(config_name="config", overrides=overrides)
                return OmegaConf.to_container(trial, resolve=True)

            best = search(config, run_dir, HydraConfig.get().overrides.task, composed, train)["best"]
            log.info("best trial %d: %s, score %.4f", best["trial"], best["params"], best["score"])
            bundle = run_dir / "policy"
        elif config.walk_forward is not None:
            from agents.walkforward import walk_forward

            combined = walk_forward(config, values, run_dir, train)["policy"]
            log.info("walk-forward out of sample: %+.2f%%, Sharpe %.2f", combined["total_return"] * 100,
                     combined["sharpe"])  # fmt: skip
            bundle = run_dir / f"fold_{config.walk_forward.folds - 1}" / "policy"
        else:
            bundle = train(config, run_dir, values).bundle
    except ConfigError as exc:
        discard_output(run_dir, existed)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    log.info("policy bundle: %s", bundle)
    try:
        shown = run_dir.relative_to(Path.cwd())
    except ValueError:
        shown = run_dir
    print(f"run_dir: {shown}")


if __name__ == "__main__":
    existed = preflight(CONF, "config", TrainConfig, check=TrainConfig.from_dict)
    main()
