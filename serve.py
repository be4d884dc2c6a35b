"""Serve a policy: ``python serve.py run=runs/<...> mode=paper|live [confirm_live=true] [risk.KEY=...]``.

Thin Hydra entry point over serving/: builds the bot from the bundle, the exchange client, the
risk limits and the state store, then runs the loop until ``serve.max_bars`` decisions, a signal
(SIGINT/SIGTERM stop after the current bar), or forever. Exit status 2: it did not start (the
message says why); 3: it halted and stopped on an exchange problem (reconciliation, refusals).
``command=status|halt|resume|flatten`` operates a running or stopped bot through its state store and
exits.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from agents.commandline import preflight
from data.config import ConfigError
from serving.config import ServeConfig

log = logging.getLogger("serve")


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    # the exchange client, the database and the policy's libraries load after the command line has
    # passed its checks: a refused line answers in a fraction of a second
    from serving.app import ServeError, build, command
    from serving.broker import BrokerError

    try:
        config = ServeConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))
        if config.command:
            print(json.dumps(command(config), indent=2, default=str))
            return
        server = build(config)
    except (ConfigError, ServeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

    def stop(signum, _frame):
        log.info("signal %d: stopping after the current bar", signum)
        server.stop_event.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        server.run()
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"decisions: {server.decisions}")
        sys.exit(3)
    print(f"decisions: {server.decisions}")


if __name__ == "__main__":
    preflight(Path(__file__).resolve().parent / "conf", "serve", ServeConfig, check=ServeConfig.from_dict)
    main()
