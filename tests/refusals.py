"""What every entry point promises for a bad input, checked the same way in each bad-input module
(``tests/integration/test_bad_input_*.py``): exit status 2, one line on stderr that names what was
wrong, no traceback, and nothing written or changed under the folders the test watches."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120):
    """``python ARGS...`` in ``cwd`` (a script path relative to the checkout, or ``-m module``),
    with the checkout importable; the finished process."""
    argv = list(args)
    if argv[0].endswith(".py"):
        argv[0] = str(ROOT / argv[0])
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file under ``folders`` (which may not exist) with the hash of its bytes."""
    files = {}
    for folder in folders:
        if folder.is_file():
            files[str(folder)] = hashlib.sha256(folder.read_bytes()).hexdigest()
            continue
        for path in sorted(folder.rglob("*")) if folder.exists() else ():
            if path.is_file():
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir() and not any(path.iterdir()):
                files[str(path)] = "(empty folder)"
    return files


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 2 and exactly one line on stderr, without a traceback, containing every
    fragment (case-sensitive); returns the line."""
    err = result.stderr.strip()
    assert result.returncode == 2, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {err}"
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, f"more than one line on stderr:\n{err}"
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    return err


def assert_unchanged(before: dict[str, str], *folders: Path) -> None:
    after = snapshot(*folders)
    added = sorted(set(after) - set(before))
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not added and not changed, f"written: {added}; changed or removed: {changed}"


def refuses(args: Sequence[str], cwd: Path, watched: Iterable[Path], *fragments: str,
            env: dict[str, str] | None = None) -> str:  # fmt: skip
    """Run, and check the refusal: one line with the fragments, exit 2, nothing written under
    ``watched`` (``cwd`` is always watched)."""
    folders = [cwd, *watched]
    before = snapshot(*folders)
    line = assert_refused(run(args, cwd, env), *fragments)
    assert_unchanged(before, *folders)
    return line
