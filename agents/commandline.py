"""The command line of a Hydra entry point, checked before Hydra composes it.

Hydra refuses a key that is not in the config with "To append to your config use +KEY", and then
takes ``+KEY`` without a word, so a mistyped ``+serve.kill_fle=KILL`` used to disarm a kill switch.
``train.py``, ``evaluate.py`` and ``serve.py`` call :func:`preflight` before ``hydra.main``: every
key, with ``+`` or without, must name a field of the entry point's typed config
(:func:`data.config.check_path`), every group choice a file of its group, and the whole line must
compose; anything else stops with exit status 2 and one line naming what was wrong and the closest
valid names. Values are checked after composition, when the entry point builds its typed config.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from data.config import ConfigError, check_path, closest

# Hydra's own flags (help, --cfg, another config ...): the line is Hydra's to read, not checked here
_MULTIRUN = ("-m", "--multirun")


def check_command_line(conf: Path, config_name: str, schema: type, argv: Sequence[str]) -> None:
    """Raise :class:`ConfigError` for the first override of ``argv`` that names no key of ``schema``
    nor a group option under ``conf``, or when Hydra cannot compose ``config_name`` with them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    words = list(argv)
    if any(w.startswith("-") and w not in _MULTIRUN for w in words):
        return
    multirun = any(w in _MULTIRUN for w in words)
    lines = [w for w in words if w not in _MULTIRUN]
    try:
        overrides = OverridesParser.create().parse_overrides(lines)
    except HydraException as exc:
        raise ConfigError(_one_line(exc)) from exc
    for o in overrides:
        name = o.key_or_group
        if name == "hydra" or name.startswith(("hydra.", "hydra/")):
            continue
        group = conf / name
        if "/" in name or (group.is_dir() and "." not in name):
            _check_group(conf, name, o.value() if not o.is_sweep_override() else None, o.is_delete())
        else:
            check_path(schema, name)
    if multirun:
        return  # a sweep's values compose one job at a time, in Hydra
    _compose(conf, config_name, lines)


def _check_group(conf: Path, name: str, value: object, delete: bool) -> None:
    group = conf / name
    if not group.is_dir():
        groups = sorted(p.relative_to(conf).as_posix() for p in conf.rglob("*") if p.is_dir())
        near = closest(name, groups)
        hint = f"; did you mean {' or '.join(near)}?" if near else ";"
        raise ConfigError(f"no config group {name}{hint} the groups are {', '.join(groups)}")
    if delete or not isinstance(value, str):
        return
    options = sorted(p.stem for p in group.glob("*.yaml"))
    if value not in options:
        near = closest(value, options)
        hint = f"; did you mean {name}={' or '.join(near)}?" if near else ";"
        listed = ", ".join(options)
        raise ConfigError(f"{name}={value} is not a file of conf/{name}{hint} choose one of {listed}")


def _compose(conf: Path, config_name: str, overrides: list[str]) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(conf.resolve()), version_base="1.3"):
            compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_one_line(exc)) from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def preflight(conf: Path, config_name: str, schema: type, argv: Sequence[str] | None = None) -> None:
    """:func:`check_command_line` on ``sys.argv``; on a refusal print ``error: ...`` to stderr and
    exit with status 2 before Hydra starts (no run folder, no log file)."""
    try:
        check_command_line(conf, config_name, schema, sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
