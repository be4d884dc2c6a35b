"""Typed configs from plain values: frozen dataclasses that refuse unknown keys and wrong types.

Every entry point converts what it was given once, here (:func:`build`): ``train.py``,
``evaluate.py`` and ``serve.py`` their composed Hydra config, ``python -m data`` and
``python -m serving.replay_exchange`` their ``key=value`` words. Code below an entry point sees
the dataclasses only. An unknown key is refused with the closest valid ones
(:func:`unknown_key`), so a typo never passes as a new key: ``+serve.kill_fle=KILL`` stops with
``unknown key serve.kill_fle; did you mean serve.kill_file?``.

This module is the bottom of the house (``data`` is the lowest layer), so that every layer above
converts its configs the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any


class ConfigError(ValueError):
    """A configuration that cannot run. Policy: stop before any work, naming the key and the fix."""


def closest(key: str, valid: Iterable[str], n: int = 3) -> list[str]:
    """The valid names nearest to ``key`` (a dotted path or one name), best first: close spellings
    of the whole path, then paths whose last part is spelt like ``key``'s (``kill_file`` ->
    ``serve.kill_file``)."""
    valid = list(dict.fromkeys(valid))
    found = difflib.get_close_matches(key, valid, n=n, cutoff=0.75)
    last = key.rsplit(".", 1)[-1]
    tails: dict[str, list[str]] = {}
    for path in valid:
        tails.setdefault(path.rsplit(".", 1)[-1], []).append(path)
    for name in difflib.get_close_matches(last, list(tails), n=n, cutoff=0.75):
        found += [p for p in tails[name] if p not in found]
    return found[:n]


def unknown_key(
    key: str, valid: Iterable[str], where: str, accepted: Iterable[str] | None = None
) -> ConfigError:
    """``unknown key KEY; did you mean A or B? WHERE accepts: ...`` as an error to raise.

    ``valid`` are the full paths a suggestion is drawn from; ``accepted`` the names listed (by
    default ``valid`` itself)."""
    valid = list(valid)
    near = closest(key, valid)
    hint = f"; did you mean {' or '.join(near)}?" if near else ";"
    listed = ", ".join(valid if accepted is None else accepted)
    return ConfigError(f"unknown key {key}{hint} {where} accepts: {listed}")


def key_paths(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a dataclass schema, sections and leaves (``serve``, ``serve.poll_seconds``)."""
    paths = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        paths.append(path)
        inner = _dataclass_of(hints[f.name])
        if inner is not None:
            paths += key_paths(inner, f"{path}.")
    return paths


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass a field holds (``X`` or ``X | None``), else ``None``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = options[0] if len(options) == 1 else None
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def check_path(cls: type, path: str) -> None:
    """Raise :class:`ConfigError` unless ``path`` (``serve.poll_seconds``) names a key of ``cls``;
    below a ``dict`` field any key is allowed (its values are checked by :func:`build`)."""
    parts = path.split(".")
    schema = cls
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(schema)]
        if part not in names:
            raise unknown_key(path, key_paths(cls), ".".join(parts[:i]) or "the config", accepted=names)
        hint = typing.get_type_hints(schema)[part]
        if typing.get_origin(hint) is dict:
            return
        inner = _dataclass_of(hint)
        if inner is None:
            if i < len(parts) - 1:
                leaf = ".".join(parts[: i + 1])
                raise ConfigError(f"unknown key {path}: {leaf} is a value, not a section; give {leaf}=VALUE")
            return
        schema = inner


def build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    """``cls(**values)`` with every key known and every value of its field's type, recursively for
    nested dataclasses; an ``int`` is taken where a ``float`` is asked. The dataclass's own
    ``__post_init__`` checks the values; a ``ValueError`` or ``TypeError`` from it becomes a
    :class:`ConfigError`."""
    try:
        return _build(cls, values, prefix, cls)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from exc


def _build(cls: type, values: Mapping[str, Any], prefix: str, root: type) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise unknown_key(f"{prefix}{unknown[0]}", key_paths(root), prefix.rstrip(".") or "the config", names)
    return cls(**{k: _check_type(v, hints[k], f"{prefix}{k}", root) for k, v in values.items()})


def _check_type(value: Any, hint: Any, key: str, root: type) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, key, root)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}={value!r} must be a mapping")
        inner = typing.get_args(hint)[1]
        return {k: _check_type(v, inner, f"{key}.{k}", root) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value or {}, f"{key}.", root)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list")
        inner = typing.get_args(hint)[0]
        return tuple(_check_type(v, inner, key, root) for v in value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if hint is Any:
        return value
    raise ConfigError(f"{key}={value!r} must be a {_type_name(hint)}")


def _type_name(hint: Any) -> str:
    names = {float: "number", int: "whole number", bool: "boolean (true or false)", str: "string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))
