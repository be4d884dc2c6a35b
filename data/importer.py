"""Bringing files into the store: many files, directories or globs, checked together.

The formats understood are described in :mod:`data.formats`.

Policy: every file is parsed before anything is written, so one bad file among a hundred leaves the
store untouched. A file that cannot be understood raises :class:`~data.errors.ImportFormatError`
naming the file and what to do; rows that parse but break the rules raise
:class:`~data.errors.ValidationError` naming each row's timestamp and file. Nothing is repaired.
Two things are done to the rows, both harmless and common with concatenated Binance archives,
and both counted in the result (:class:`ImportResult`) so that the command line reports them:

- rows are put in time order (a file's rows that come before an earlier row are counted as out
  of order; files may be given in any order);
- a row that appears *identically* more than once (in one file, or in a monthly and a daily
  archive of the same days) is kept once. Rows with the same time and other values are refused.

Trades have no natural key, so they are de-duplicated by trade id when every file has ids;
overlapping trade files without ids are refused.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from glob import glob
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from data.errors import ImportFormatError, Issue, ValidationError
from data.formats import EXTENSIONS, Parsed, parse_file, suffix
from data.schema import TRADES, iso
from data.store import SeriesKey, Store, WriteResult, check

log = logging.getLogger(__name__)

_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class ImportResult(WriteResult):
    """What :func:`import_files` wrote, and what it did to the rows on the way: ``rows_read``
    from ``files`` file(s), ``out_of_order`` of them put back in time order, ``duplicates``
    identical repeats dropped."""

    files: int
    rows_read: int
    out_of_order: int
    duplicates: int


# -- paths -----------------------------------------------------------------------------------


def expand_paths(paths: Sequence[str | Path] | str | Path) -> list[Path]:
    """Files to import: each path as given, each directory's importable files (sorted, not
    recursive, hidden files and other extensions such as ``.CHECKSUM`` skipped), each glob's
    importable matches (sorted). The same file named twice is read once."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ImportFormatError("no files given to import; pass files, directories or globs")
    out: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(f for f in path.iterdir() if f.is_file() and _importable(f))
            if not found:
                raise ImportFormatError(
                    f"{path} holds no importable files (looked for {', '.join(EXTENSIONS)})"
                )
        elif path.exists():
            if suffix(path) not in EXTENSIONS:
                raise ImportFormatError(
                    f"{path}: unknown extension {suffix(path)!r}; importable files end in "
                    f"{', '.join(EXTENSIONS)}. Convert the file or rename it if it is one of those."
                )
            found = [path]
        elif _GLOB_CHARS.search(str(raw)):
            found = sorted(Path(p) for p in glob(str(path)) if Path(p).is_file() and _importable(Path(p)))
            if not found:
                raise ImportFormatError(f"{raw} matches no importable files ({', '.join(EXTENSIONS)})")
        else:
            raise ImportFormatError(f"{path} does not exist; check the path (globs like '*.zip' work)")
        out += found
    seen: set[Path] = set()
    unique = []
    for path in out:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    return unique


def _importable(path: Path) -> bool:
    return not path.name.startswith(".") and suffix(path) in EXTENSIONS


# -- combining -------------------------------------------------------------------------------


def _with_files(issues: list[Issue], ts: np.ndarray, src: np.ndarray, files: list[Path]) -> list[Issue]:
    out = []
    for issue in issues:
        i = min(int(np.searchsorted(ts, issue.ts)), len(ts) - 1)
        out.append(Issue(issue.ts, issue.kind, f"{issue.detail} (in {files[src[i]].name})"))
    return out


def _out_of_order(parsed: list[Parsed], kept: np.ndarray) -> int:
    """Rows earlier than a row before them in their own file, among the rows kept (``kept``: their
    places in the files' concatenation; a repeat dropped is not also counted as out of order)."""
    keep = np.zeros(sum(len(p.frame) for p in parsed), dtype=bool)
    keep[kept] = True
    late, start = 0, 0
    for p in parsed:
        ts = p.frame["ts"].to_numpy()
        t = ts[keep[start : start + len(ts)]]
        start += len(ts)
        if len(t) > 1:
            late += int((t[1:] < np.maximum.accumulate(t)[:-1]).sum())
    return late


def _concat(parsed: list[Parsed], **extra) -> pd.DataFrame:
    frames = [p.frame.assign(_src=i, **{k: v[i] for k, v in extra.items()}) for i, p in enumerate(parsed)]
    frame = pd.concat(frames, ignore_index=True)
    frame["_pos"] = np.arange(len(frame))
    return frame


def _combine_rows(parsed: list[Parsed], files: list[Path], key: SeriesKey) -> tuple[pd.DataFrame, int, int]:
    """Bars or funding of every file, sorted, identical repeats dropped, disagreements refused;
    with the counts of rows out of order and of repeats dropped."""
    frame = _concat(parsed).sort_values("ts", kind="stable", ignore_index=True)
    columns = list(key.columns)
    repeat = frame.duplicated(subset=columns, keep="first").to_numpy()
    if repeat.any():
        log.info("%s: %d row(s) appear identically in more than one place; kept once", key, repeat.sum())
        frame = frame[~repeat].reset_index(drop=True)
    ts = frame["ts"].to_numpy()
    src = frame["_src"].to_numpy()
    clash = np.flatnonzero(ts[1:] == ts[:-1])
    if len(clash):
        issues = []
        for i in clash[:1000]:
            a, b = frame.iloc[i], frame.iloc[i + 1]
            values = [c for c in columns[1:] if not (a[c] == b[c] or (pd.isna(a[c]) and pd.isna(b[c])))]
            issues.append(
                Issue(
                    int(ts[i]),
                    "conflicting_duplicate",
                    f"{files[src[i]].name} has {', '.join(f'{c}={a[c]}' for c in values)}; "
                    f"{files[src[i + 1]].name} has {', '.join(f'{c}={b[c]}' for c in values)}",
                )
            )
        raise ValidationError(
            f"refusing to import into {key}: the files disagree on {len(clash)} bar(s). Import the "
            "better source alone, then the other with on_conflict=keep",
            issues,
        )
    late = _out_of_order(parsed, frame["_pos"].to_numpy())
    frame = frame.drop(columns=["_src", "_pos"])
    issues = check(frame, key)
    if issues:
        raise ValidationError(f"refusing to import into {key}", _with_files(issues, ts, src, files))
    return frame, late, int(repeat.sum())


def _combine_trades(parsed: list[Parsed], files: list[Path], key: SeriesKey) -> tuple[pd.DataFrame, int, int]:
    """Trades of every file in time order. With trade ids, a trade repeated identically in two
    files is kept once and a disagreement is refused; without ids files must not overlap.
    With the counts of trades out of order and of repeats dropped."""
    repeats = 0
    if all(p.ids is not None for p in parsed):
        frame = _concat(parsed, _id=[p.ids for p in parsed])
        read = len(frame)
        frame = frame.drop_duplicates(subset=["_id", *key.columns]).sort_values(
            ["ts", "_id"], kind="stable", ignore_index=True
        )
        repeats = read - len(frame)
        ids = frame["_id"].to_numpy()
        order = np.argsort(ids, kind="stable")
        same = np.flatnonzero(ids[order][1:] == ids[order][:-1])
        if len(same):
            rows = order[same]
            raise ValidationError(
                f"refusing to import into {key}: files give different trades under the same id",
                [
                    Issue(
                        int(frame["ts"].iloc[r]),
                        "conflicting_trade_id",
                        f"trade id {ids[r]} in {files[frame['_src'].iloc[r]].name}",
                    )
                    for r in rows[:1000]
                ],
            )
        frame = frame.drop(columns="_id")
    else:
        frame = _concat(parsed)
        spans = [(int(part["ts"].min()), int(part["ts"].max()), int(i)) for i, part in frame.groupby("_src")]
        for (_, end_a, a), (start_b, _, b) in pairwise(sorted(spans)):
            if start_b <= end_a:
                raise ImportFormatError(
                    f"{files[a]} (to {iso(end_a)}) and {files[b]} (from {iso(start_b)}) overlap in "
                    "time and have no trade ids to tell repeated trades apart; import one of them"
                )
        frame = frame.sort_values("ts", kind="stable", ignore_index=True)
    late = _out_of_order(parsed, frame["_pos"].to_numpy())
    ts, src = frame["ts"].to_numpy(), frame["_src"].to_numpy()
    frame = frame.drop(columns=["_src", "_pos"])
    issues = check(frame, key)
    if issues:
        raise ValidationError(f"refusing to import into {key}", _with_files(issues, ts, src, files))
    return frame, late, repeats


def import_files(
    store: Store,
    key: SeriesKey,
    paths: Sequence[str | Path] | str | Path,
    *,
    on_conflict: str = "error",
    progress: bool = True,
) -> ImportResult:
    """Import files, directories or globs into the series ``key`` (its kind picks the format).

    Every file is parsed and the rows are checked together before :meth:`Store.write` is called
    once, so an error in any file writes nothing. ``on_conflict`` decides what happens where the
    store already holds rows at the same ``ts`` (``error``, ``keep``, ``replace``); files that
    disagree with each other are always refused. Rows are sorted and identical repeats dropped;
    the result counts both (see the module docstring). A progress bar runs over the files when
    there are several and ``progress`` is true.

    Raises :class:`ImportFormatError` for files that cannot be read or do not fit the series,
    :class:`ValidationError` for rows that break the store's rules (with their timestamps),
    :class:`~data.errors.ConflictError` for rows that differ from stored ones.
    """
    files = expand_paths(paths)
    parsed = [
        parse_file(path, key)
        for path in tqdm(files, desc=f"import {key}", unit="file", disable=not progress or len(files) < 2)
    ]
    combine = _combine_trades if key.kind == TRADES else _combine_rows
    frame, late, repeats = combine(parsed, files, key)
    written = store.write(key, frame, on_conflict=on_conflict)
    read = sum(len(p.frame) for p in parsed)
    return ImportResult(written.rows_added, written.partitions, len(files), read, late, repeats)
