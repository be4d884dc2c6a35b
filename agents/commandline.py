"""The command line of a Hydra entry point, checked before Hydra composes it.

Hydra refuses a key that is not in the config with "To append to your config use +KEY", and then
takes ``+KEY`` without a word, so a mistyped ``+serve.kill_fle=KILL`` used to disarm a kill switch.
``train.py``, ``evaluate.py`` and ``serve.py`` call :func:`preflight` before ``hydra.main``: every
key, with ``+`` or without, must name a field of the entry point's typed config
(:func:`data.config.check_path`), every group choice a file of its group, and the whole line must
compose; anything else stops with exit status 2 and one line naming what was wrong and the closest
valid names. Values are checked after composition, when the entry point builds its typed config;
an entry point that passes ``check`` has them checked here too, for every job of a ``-m`` sweep,
before anything starts.

Hydra makes the run's output folder before the entry point's own code runs; a start refused after
that (a range the store lacks, a checkpoint that does not load) removes it with
:func:`discard_output`, and the folders Hydra made above it, so a refusal leaves nothing behind.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from data.config import ConfigError, check_path, closest

# Hydra's own flags (help, --cfg, another config ...): the line is Hydra's to read, not checked here
_MULTIRUN = ("-m", "--multirun")


def check_command_line(
    conf: Path,
    config_name: str,
    schema: type,
    argv: Sequence[str],
    check: Callable[[dict[str, Any]], object] | None = None,
) -> Path | None:
    """Raise :class:`ConfigError` for the first override of ``argv`` that names no key of ``schema``
    nor a group option under ``conf``, or when Hydra cannot compose ``config_name`` with them, or
    when ``check`` (given the composed, resolved config without its ``hydra`` node) raises it; with
    ``-m``, each job of the sweep is composed and checked. Returns Hydra's output folder as this
    line composes it (``hydra.run.dir``, or ``hydra.sweep.dir`` with ``-m``; its time may differ by
    the second from the one Hydra then uses), or ``None`` for a line left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    words = list(argv)
    if any(w.startswith("-") and w not in _MULTIRUN for w in words):
        return None
    multirun = any(w in _MULTIRUN for w in words)
    lines = [w for w in words if w not in _MULTIRUN]
    parser = OverridesParser.create()
    overrides = []
    for word in lines:  # one at a time, so that an error names the word it is about
        try:
            overrides += parser.parse_overrides([word])
        except HydraException as exc:
            raise ConfigError(f"cannot read {word}: {_one_line(exc)}") from exc
    for o in overrides:
        name = o.key_or_group
        if name == "hydra" or name.startswith(("hydra.", "hydra/")):
            continue
        group = conf / name
        if "/" in name or (group.is_dir() and "." not in name):
            _check_group(conf, schema, name, o.value() if not o.is_sweep_override() else None, o.is_delete())
        else:
            check_path(schema, name)
    if not multirun:
        return _compose_and_check(conf, config_name, lines, check, "hydra.run.dir")
    if any(o.key_or_group.startswith(("hydra/sweeper", "hydra.sweeper")) for o in overrides):
        return None  # another sweeper expands the line its own way
    options = []  # the jobs of Hydra's basic sweeper: every combination of the listed values
    for o in overrides:
        key = o.get_key_element()
        if not o.is_sweep_override():
            options.append([f"{key}={o.get_value_element_as_str()}"])
        elif o.is_discrete_sweep():
            options.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            return None  # an interval is for a sampling sweeper to draw from
    jobs = [list(job) for job in itertools.product(*options)]
    output = None
    for job in jobs:
        output = _compose_and_check(conf, config_name, job, check, "hydra.sweep.dir")
    return output


def _check_group(conf: Path, schema: type, name: str, value: object, delete: bool) -> None:
    group = conf / name
    if not group.is_dir():
        groups = sorted(p.relative_to(conf).as_posix() for p in conf.rglob("*") if p.is_dir())
        near = closest(name, groups)
        hint = f"; did you mean {' or '.join(near)}?" if near else ";"
        raise ConfigError(f"no config group {name}{hint} the groups are {', '.join(groups)}")
    target = _package(group)
    if target != "_global_":  # the group fills a section, which this entry point must have
        check_path(schema, target)
    if delete or not isinstance(value, str):
        return
    options = sorted(p.stem for p in group.glob("*.yaml"))
    if value not in options:
        near = closest(value, options)
        hint = f"; did you mean {' or '.join(f'{name}={n}' for n in near)}?" if near else ";"
        listed = ", ".join(options)
        raise ConfigError(f"{name}={value} is not a file of conf/{name}{hint} choose one of {listed}")


def _package(group: Path) -> str:
    """Where a group's files go: their ``# @package`` header (``env``, ``_global_``), else the
    group's own name."""
    for file in sorted(group.glob("*.yaml"))[:1]:
        for line in file.read_text().splitlines()[:3]:
            if line.startswith("# @package "):
                return line.split()[2]
    return group.name


def _compose_and_check(
    conf: Path,
    config_name: str,
    overrides: list[str],
    check: Callable[[dict[str, Any]], object] | None,
    output_key: str,
) -> Path:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(conf.resolve()), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        output = Path(str(OmegaConf.select(cfg, output_key)))
        if check is None:
            return output
        with open_dict(cfg):
            del cfg["hydra"]
        values = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_one_line(exc)) from exc
    check(values)
    return output


def _one_line(exc: BaseException) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def preflight(
    conf: Path,
    config_name: str,
    schema: type,
    argv: Sequence[str] | None = None,
    check: Callable[[dict[str, Any]], object] | None = None,
) -> frozenset[Path]:
    """:func:`check_command_line` on ``sys.argv``; on a refusal print ``error: ...`` to stderr and
    exit with status 2 before Hydra starts (no run folder, no log file). Returns the folders on the
    way to Hydra's output folder that exist now, for :func:`discard_output`."""
    try:
        output = check_command_line(conf, config_name, schema, sys.argv[1:] if argv is None else argv, check)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if output is None:
        return frozenset()
    output = output.absolute()
    return frozenset(p for p in (output, *output.parents) if p.exists())


def discard_output(output_dir: Path, existed: Collection[Path]) -> None:
    """Remove the output folder Hydra made for a start that was then refused, and each folder above
    it that Hydra made too (not in ``existed``, from :func:`preflight`) and that holds nothing else
    (a sweep's ``multirun.yaml`` aside); the log files Hydra opened in it are closed first."""
    output_dir = output_dir.absolute()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(output_dir):
            handler.close()
            root.removeHandler(handler)
    shutil.rmtree(output_dir, ignore_errors=True)
    stop = Path.cwd()
    for folder in output_dir.parents:
        if folder in existed or folder == stop or not folder.is_dir():
            break
        if {p.name for p in folder.iterdir()} - {"multirun.yaml"}:
            break
        shutil.rmtree(folder)
