"""Exceptions of the data layer. Each docstring states the policy that goes with it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class DataError(Exception):
    """Base of the data layer's errors. The CLI prints the message and exits with status 2."""


class StoreError(DataError):
    """The store could not be read or written (unwritable root, full disk, corrupt partition).
    Policy: stop; nothing partial is left behind, the previous partition stays as it was."""


@dataclass(frozen=True)
class Issue:
    """One problem found in a table: the row's ``ts``, a ``kind`` and a readable ``detail``."""

    ts: int
    kind: str
    detail: str

    def __str__(self) -> str:
        from data.schema import iso

        return f"{iso(self.ts)} ({self.ts}) {self.kind}: {self.detail}"


class ValidationError(DataError):
    """Rows failed validation. Policy: refuse the whole write and report every bad row with its
    timestamp; nothing is dropped or "fixed"."""

    def __init__(self, what: str, issues: Sequence[Issue], shown: int = 20):
        self.what = what
        self.issues = list(issues)
        lines = [f"{what}: {len(self.issues)} problem(s)"]
        lines += [f"  {issue}" for issue in self.issues[:shown]]
        if len(self.issues) > shown:
            lines.append(f"  ... and {len(self.issues) - shown} more")
        super().__init__("\n".join(lines))

    def one_line(self, shown: int = 3) -> str:
        """The message on one line with the first ``shown`` rows (a command line's refusal)."""
        rows = "; ".join(str(issue) for issue in self.issues[:shown])
        more = f"; and {len(self.issues) - shown} more" if len(self.issues) > shown else ""
        return f"{self.what}: {len(self.issues)} problem(s): {rows}{more}"


class ConflictError(DataError):
    """New rows disagree with rows already stored for the same timestamps. Policy: refuse the
    write; the user re-runs with ``on_conflict=replace`` if the new source is the better one."""


class ImportFormatError(DataError):
    """A file to import has the wrong columns, is truncated or cannot be parsed. Policy: refuse
    the whole import before anything is written."""


class DownloadError(DataError):
    """A download stopped on a permanent error (unknown symbol, bad arguments, retries exhausted,
    no network). Policy: stop with the reason; what was stored before stays, and a re-run
    resumes after the last stored bar."""
