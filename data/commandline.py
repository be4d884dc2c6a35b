"""Command lines of ``key=value`` words, as ``python -m data`` and ``python -m serving.replay_exchange``
take them: the same spelling as the Hydra overrides of the training entry point (``+key=value``
too).

An entry point describes its arguments as a frozen dataclass whose fields carry their help
(:func:`arg`) and whose ``__post_init__`` checks the values (:func:`at_least`, :func:`choice`,
:func:`time_range`); :func:`parse` builds it from the words. A command line that cannot run raises
:class:`UsageError` with one line naming the key: an unknown key with the closest valid ones
(:func:`data.config.unknown_key`), a key given twice, a value of the wrong type or out of range.
A field marked secret never has its value shown.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import field

from data.config import unknown_key
from data.schema import iso, parse_time


class UsageError(ValueError):
    """A command line that cannot be run. Policy: print it on one line and exit 2, before any work."""


def arg(text: str, default=dataclasses.MISSING, *, secret: bool = False):
    """A field with its ``--help`` text; ``secret`` fields never have their value shown in an error."""
    metadata = {"help": text, "secret": secret}
    if default is dataclasses.MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


_TYPE_WORDS = {bool: "true or false", int: "a whole number", float: "a number"}


def _convert(name: str, raw: str, annotation, secret: bool = False) -> object:
    hint = annotation
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if raw.lower() in ("", "null", "none"):
            return None
        hint = args[0]
    if typing.get_origin(hint) is tuple:
        return tuple(p for p in raw.split(",") if p)
    try:
        if hint is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            number = float(raw)  # accepts 1e6 as well as 1000000
            if not number.is_integer():
                raise ValueError
            return int(number)
        if hint is float:
            number = float(raw)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError
            return number
    except (ValueError, OverflowError):
        shown = name if secret else f"{name}={raw!r}"
        raise UsageError(f"{shown} is not {_TYPE_WORDS[hint]}") from None
    return raw


def parse(cls: type, argv: Sequence[str], where: str = "this command"):
    """Build ``cls`` from ``key=value`` words (``+key=value`` too); repeated keys of tuple fields
    accumulate, any other key given twice is refused. ``where`` names the command in messages
    (``python -m data synth``). The values of fields marked secret are never shown, nor is a
    word without ``=`` when the command has secret fields (it might be a bare secret)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    has_secret = any(f.metadata.get("secret") for f in fields.values())
    values: dict[str, object] = {}
    for n, word in enumerate(argv, 1):
        key, sep, raw = word.partition("=")
        key = key.lstrip("+").replace("-", "_")
        if not sep or not key:
            shown = f"argument {n}" if has_secret else repr(word)
            raise UsageError(
                f"expected key=value, got {shown}; {where} takes key=value words (--help lists them)"
            )
        if key not in fields:
            raise UsageError(str(unknown_key(key, fields, where)))
        tuple_field = typing.get_origin(hints[key]) is tuple
        if key in values and not tuple_field:
            raise UsageError(f"{key}= is given twice; give it once")
        value = _convert(key, raw, hints[key], secret=fields[key].metadata.get("secret", False))
        if tuple_field and isinstance(values.get(key), tuple):
            value = values[key] + value
        values[key] = value
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise UsageError(f"missing required key(s): {', '.join(f'{m}=...' for m in missing)}")
    return cls(**values)


def usage(cls: type) -> str:
    lines = []
    for f in dataclasses.fields(cls):
        default = "(required)" if f.default is dataclasses.MISSING else f"[{f.default}]"
        lines.append(f"  {f.name:<14} {f.metadata.get('help', '')} {default}")
    return "\n".join(lines)


# -- checks shared by the commands ---------------------------------------------------------


def at_least(key: str, value: float | None, low: float) -> None:
    """Refuse ``key=value`` below ``low`` (``None`` passes: the default applies)."""
    if value is not None and value < low:
        raise UsageError(f"{key}={value} must be {low:g} or more")


def choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UsageError(f"{key}={value!r} is not one of {', '.join(choices)}")


def time_range(start: str | int | None, end: str | int | None) -> tuple[int | None, int | None]:
    """``start`` and ``end`` as ms, refused when either is not a date or ``end`` is not after ``start``."""
    lo, hi = parse_time(start, "start"), parse_time(end, "end")
    if lo is not None and hi is not None and lo >= hi:
        raise UsageError(f"start {iso(lo)} must be before end {iso(hi)}")
    return lo, hi
