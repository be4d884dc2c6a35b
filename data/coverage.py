"""What the store holds: per series, first and last row, row count and every gap.

Gaps are ``[from_ts, to_ts)`` ranges of missing bar open times (see :mod:`data.validate`).
Time bars are checked against their timeframe; funding against its usual interval (the median
step, since exchanges use 8 h, 4 h or 1 h); trade ticks and volume/dollar bars are event data and
have no gaps by definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.schema import FUNDING, iso, parse_bar_spec
from data.store import SeriesKey, Store
from data.validate import find_gaps


@dataclass(frozen=True)
class SeriesCoverage:
    series: str
    first_ts: int
    last_ts: int
    rows: int
    step_ms: int | None
    gaps: list[list[int]]
    orphan_temp_files: list[str] = field(default_factory=list)

    @property
    def missing(self) -> int:
        """Rows that would fill every gap (0 for event data)."""
        if not self.step_ms:
            return 0
        return sum((b - a) // self.step_ms for a, b in self.gaps)

    def to_json(self) -> dict:
        return {
            "series": self.series,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "first": iso(self.first_ts),
            "last": iso(self.last_ts),
            "rows": self.rows,
            "step_ms": self.step_ms,
            "missing": self.missing,
            "gaps": self.gaps,
            "orphan_temp_files": self.orphan_temp_files,
        }


def _step(key: SeriesKey, ts: np.ndarray) -> int | None:
    if key.kind == FUNDING:
        return int(np.median(np.diff(ts))) if len(ts) > 1 else None
    if key.kind == "bars":
        spec = parse_bar_spec(key.timeframe)
        return spec.ms if spec.is_time else None
    return None


def series_coverage(store: Store, key: SeriesKey) -> SeriesCoverage | None:
    ts = store.read_arrays(key, columns=["ts"])["ts"]
    if len(ts) == 0:
        return None
    step = _step(key, ts)
    gaps = find_gaps(ts, step).tolist() if step else []
    orphans = [p.name for p in store.stale_temp_files(key)]
    return SeriesCoverage(str(key), int(ts[0]), int(ts[-1]), len(ts), step, gaps, orphans)


def coverage(store: Store) -> list[SeriesCoverage]:
    """Coverage of every series in the store."""
    out = []
    for key in store.series():
        cov = series_coverage(store, key)
        if cov is not None:
            out.append(cov)
    return out


def _duration(ms: int) -> str:
    minutes = ms / 60_000
    if minutes < 120:
        return f"{minutes:g} min"
    if minutes < 48 * 60:
        return f"{minutes / 60:.1f} h"
    return f"{minutes / 1440:.1f} d"


def orphans_note(orphans: list[Path], root: Path) -> list[str]:
    """Lines about the temp files of killed writes under ``root`` (none when there are none)."""
    if not orphans:
        return []
    return [
        f"{len(orphans)} orphan temp file(s) of killed writes (the partitions are whole, but those "
        "writes may be incomplete: re-run them, which removes the files):",
        *(f"  {p.relative_to(root)}" for p in orphans),
    ]


def format_table(
    items: list[SeriesCoverage], root: str, largest: int = 3, orphans: list[Path] | None = None
) -> str:
    """A readable report: one line per series and its largest gaps below it, then the temp files
    that killed writes left (``orphans``, from :meth:`Store.stale_temp_files`)."""
    note = orphans_note(orphans or [], Path(root))
    if not items:
        return "\n".join(
            [
                f"no series under {root}",
                "fill it with `python -m data download ...`, `python -m data import path=...` "
                "or `python -m data synth`",
                *note,
            ]
        )
    width = max(len(c.series) for c in items)
    tw = max(len(iso(t)) for c in items for t in (c.first_ts, c.last_ts))
    lines = [
        f"store: {root}",
        f"{'series':<{width}}  {'first':<{tw}}  {'last':<{tw}}  {'rows':>10}  {'gaps':>5}  {'missing':>9}",
    ]
    for c in items:
        lines.append(
            f"{c.series:<{width}}  {iso(c.first_ts):<{tw}}  {iso(c.last_ts):<{tw}}  {c.rows:>10,}  "
            f"{len(c.gaps):>5}  {c.missing:>9,}"
        )
        biggest = sorted(c.gaps, key=lambda g: g[0] - g[1])[:largest]
        for a, b in sorted(biggest):
            lines.append(f"{'':<{width}}    gap {iso(a)} -> {iso(b)}  ({_duration(b - a)} missing)")
    return "\n".join(lines + note)
