"""The Parquet store: one folder per series, one file per month (per day for trade ticks).

Layout under the root::

    {root}/{exchange}/{market}/{SYMBOL}/{timeframe}/2024-01.parquet   bars (timeframe, volume-N, dollar-N)
    {root}/{exchange}/{market}/{SYMBOL}/funding/2024-01.parquet       funding rates
    {root}/{exchange}/{market}/{SYMBOL}/trades/2024-01-15.parquet     trade ticks

The root is, in order: the ``root`` argument, ``$KLINEGYM_DATA``, ``./data/store``.

Writes merge new rows into the partitions they touch, validate the result, and replace each
partition atomically (temp file, fsync, rename): a crash leaves every partition either as it was
or as it should be, never half-written. Appending a month writes that month's file only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data.errors import ConflictError, Issue, StoreError, ValidationError
from data.schema import (
    ALL_BAR_COLUMNS,
    BAR_COLUMNS,
    FUNDING,
    FUNDING_COLUMNS,
    TRADE_COLUMNS,
    TRADES,
    check_market,
    file_symbol,
    iso,
    parse_bar_spec,
    timeframe_origin,
)
from data.validate import check_bars, check_funding, check_trades

DEFAULT_ROOT = Path("data") / "store"
ON_CONFLICT = ("error", "keep", "replace")


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The store root: ``root`` if given, else ``$KLINEGYM_DATA``, else ``./data/store``."""
    if root not in (None, ""):
        return Path(root).expanduser()
    env = os.environ.get("KLINEGYM_DATA")
    return Path(env).expanduser() if env else DEFAULT_ROOT


@dataclass(frozen=True)
class SeriesKey:
    """Names one series. Build it with :meth:`of`, which normalises and checks every part."""

    exchange: str
    market: str
    symbol: str
    timeframe: str

    @classmethod
    def of(cls, exchange: str, market: str, symbol: str, timeframe: str) -> SeriesKey:
        exchange = exchange.strip().lower()
        if not exchange.isidentifier():
            raise ValueError(f"exchange {exchange!r} is not a plain name like 'binance'")
        if timeframe not in (FUNDING, TRADES):
            parse_bar_spec(timeframe)
        return cls(exchange, check_market(market), file_symbol(symbol), timeframe)

    @property
    def kind(self) -> str:
        """``bars``, ``funding`` or ``trades``."""
        return self.timeframe if self.timeframe in (FUNDING, TRADES) else "bars"

    @property
    def columns(self) -> tuple[str, ...]:
        return {"bars": ALL_BAR_COLUMNS, FUNDING: FUNDING_COLUMNS, TRADES: TRADE_COLUMNS}[self.kind]

    def path(self, root: Path) -> Path:
        return root / self.exchange / self.market / self.symbol / self.timeframe

    def __str__(self) -> str:
        return f"{self.exchange}/{self.market}/{self.symbol}/{self.timeframe}"


@dataclass(frozen=True)
class WriteResult:
    rows_added: int
    partitions: tuple[Path, ...]


def _partition_names(ts: np.ndarray, kind: str) -> np.ndarray:
    unit = "D" if kind == TRADES else "M"
    return np.datetime_as_string(ts.astype("datetime64[ms]").astype(f"datetime64[{unit}]"))


def _partition_bounds(name: str, kind: str) -> tuple[int, int]:
    start = np.datetime64(name, "D" if kind == TRADES else "M")
    stop = start + 1
    to_ms = "datetime64[ms]"
    return int(start.astype(to_ms).astype(np.int64)), int(stop.astype(to_ms).astype(np.int64))


def normalise(frame: pd.DataFrame, key: SeriesKey) -> pd.DataFrame:
    """The frame in the store's exact schema: required columns present, optional bar columns
    added as NaN, float64 values, int64 ``ts``. Unknown columns are an error, not dropped."""
    cols = key.columns
    required = BAR_COLUMNS if key.kind == "bars" else cols
    if key.kind == FUNDING:
        required = ("ts", "rate")
    missing = [c for c in required if c not in frame.columns]
    extra = [c for c in frame.columns if c not in cols]
    if missing or extra:
        raise ValueError(f"{key}: columns must be {list(cols)}; missing {missing}, unknown {extra}")
    ts = frame["ts"].to_numpy()
    if not np.issubdtype(ts.dtype, np.integer):
        raise ValueError(f"{key}: ts must be integer epoch milliseconds, got {ts.dtype}")
    out = {"ts": ts.astype(np.int64)}
    for c in cols[1:]:
        if c == "is_buyer_maker":
            out[c] = frame[c].to_numpy(dtype=bool)
        elif c in frame.columns:
            out[c] = frame[c].to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            out[c] = np.full(len(ts), np.nan)
    return pd.DataFrame(out)


def check(frame: pd.DataFrame, key: SeriesKey) -> list[Issue]:
    """All validation rules of the series' kind."""
    if key.kind == FUNDING:
        return check_funding(frame)
    if key.kind == TRADES:
        return check_trades(frame)
    spec = parse_bar_spec(key.timeframe)
    if spec.is_time:
        return check_bars(frame, spec.ms, timeframe_origin(key.timeframe))
    return check_bars(frame, None)


def _discard(tmp: Path) -> None:
    # OSError here means the folder itself could not be made: there is no temp file to remove
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


class Store:
    """Read and write series under one root."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = resolve_root(root)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- reading ---------------------------------------------------------------------------

    def partitions(self, key: SeriesKey) -> list[Path]:
        folder = key.path(self.root)
        return sorted(folder.glob("*.parquet")) if folder.is_dir() else []

    def series(self) -> Iterator[SeriesKey]:
        """Every series in the store, in path order."""
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.glob("*/*/*/*")):
            if folder.is_dir() and any(folder.glob("*.parquet")):
                exchange, market, symbol, timeframe = folder.relative_to(self.root).parts
                yield SeriesKey(exchange, market, symbol, timeframe)

    def _read_file(self, path: Path, columns: list[str] | None) -> pa.Table:
        try:
            return pq.read_table(path, columns=columns, memory_map=True)
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(
                f"cannot read {path}: {exc}. Delete the file and re-download or re-import that month."
            ) from exc

    def read_arrays(
        self,
        key: SeriesKey,
        start: int | None = None,
        end: int | None = None,
        columns: list[str] | tuple[str, ...] | None = None,
    ) -> dict[str, np.ndarray]:
        """Columns of rows with ``start <= ts < end`` as contiguous numpy arrays."""
        columns = list(columns or key.columns)
        if "ts" not in columns:
            columns = ["ts", *columns]
        files = []
        for path in self.partitions(key):
            lo, hi = _partition_bounds(path.stem, key.kind)
            if (start is None or hi > start) and (end is None or lo < end):
                files.append(path)
        if not files:
            return {
                c: np.empty(0, dtype=bool if c == "is_buyer_maker" else np.int64 if c == "ts" else np.float64)
                for c in columns
            }
        table = pa.concat_tables([self._read_file(f, columns) for f in files])
        ts = table.column("ts").to_numpy()
        i = 0 if start is None else int(np.searchsorted(ts, start, "left"))
        j = len(ts) if end is None else int(np.searchsorted(ts, end, "left"))
        if i > 0 or j < len(ts):
            table = table.slice(i, j - i)
        return {c: np.ascontiguousarray(table.column(c).to_numpy()) for c in columns}

    def read(self, key: SeriesKey, start: int | None = None, end: int | None = None) -> pd.DataFrame:
        """Rows with ``start <= ts < end`` as a DataFrame in the store's schema."""
        return pd.DataFrame(self.read_arrays(key, start, end))

    def first_ts(self, key: SeriesKey) -> int | None:
        parts = self.partitions(key)
        if not parts:
            return None
        return int(self._read_file(parts[0], ["ts"]).column("ts")[0].as_py())

    def last_ts(self, key: SeriesKey) -> int | None:
        """Open time of the last stored row; a download resumes after it."""
        parts = self.partitions(key)
        if not parts:
            return None
        return int(self._read_file(parts[-1], ["ts"]).column("ts")[-1].as_py())

    def validate(self, key: SeriesKey) -> list[Issue]:
        """Check a stored series from end to end, across partitions too."""
        issues: list[Issue] = []
        last = None
        for path in self.partitions(key):
            frame = self._read_file(path, None).to_pandas()
            issues += check(frame, key)
            if last is not None and len(frame) and frame["ts"].iloc[0] <= last:
                first = int(frame["ts"].iloc[0])
                issues.append(Issue(first, "unsorted_ts", f"{path.name} overlaps the file before"))
            if len(frame):
                last = int(frame["ts"].iloc[-1])
        return issues

    # -- writing ---------------------------------------------------------------------------

    def write(self, key: SeriesKey, frame: pd.DataFrame, on_conflict: str = "error") -> WriteResult:
        """Merge ``frame`` into the series.

        The incoming rows are validated first and refused as a whole if any is bad. Rows whose
        ``ts`` is already stored must agree with it (``on_conflict='error'``), or the stored row
        wins (``keep``), or the new one does (``replace``). Bar columns the stored row lacks
        (NaN) are filled from the new row either way.
        """
        if on_conflict not in ON_CONFLICT:
            raise ValueError(f"on_conflict must be one of {ON_CONFLICT}, got {on_conflict!r}")
        frame = normalise(frame, key)
        if key.kind == TRADES:
            # a stable sort keeps the exchange's order of trades inside one millisecond
            frame = frame.sort_values("ts", kind="stable", ignore_index=True)
        issues = check(frame, key)
        if issues:
            raise ValidationError(f"refusing to write {key}", issues)
        if frame.empty:
            return WriteResult(0, ())
        names = _partition_names(frame["ts"].to_numpy(), key.kind)
        merged_parts: list[tuple[Path, pd.DataFrame, int]] = []
        for name in pd.unique(names):
            new = frame[names == name]
            path = key.path(self.root) / f"{name}.parquet"
            old = self._read_file(path, None).to_pandas() if path.exists() else None
            if old is not None:
                old = normalise(old, key)
            merged = self._merge(key, old, new.reset_index(drop=True), on_conflict, path)
            if old is not None and merged.equals(old):
                continue
            added = len(merged) - (0 if old is None else len(old))
            issues = check(merged, key)
            if issues:
                raise ValidationError(f"refusing to write {path}", issues)
            merged_parts.append((path, merged, added))
        # merge and validate every partition before writing any, so a conflict in March
        # does not leave January written
        for path, merged, _ in merged_parts:
            self._atomic_write(merged, path)
        return WriteResult(sum(a for _, _, a in merged_parts), tuple(p for p, _, _ in merged_parts))

    def _merge(
        self, key: SeriesKey, old: pd.DataFrame | None, new: pd.DataFrame, on_conflict: str, path: Path
    ) -> pd.DataFrame:
        if old is None or old.empty:
            return new
        if key.kind == TRADES:
            if new["ts"].iloc[0] > old["ts"].iloc[-1]:
                return pd.concat([old, new], ignore_index=True)
            if new["ts"].iloc[-1] < old["ts"].iloc[0]:
                return pd.concat([new, old], ignore_index=True)
            if on_conflict == "replace":
                return new
            if on_conflict == "keep":
                return old
            raise ConflictError(
                f"{path} already holds trades from {iso(int(old['ts'].iloc[0]))} to "
                f"{iso(int(old['ts'].iloc[-1]))} and the new trades overlap them; trades have no "
                "unique key to merge on. Re-run with on_conflict=replace to replace that day with "
                "the new trades only."
            )
        o = old.set_index("ts")
        n = new.set_index("ts")
        common = o.index.intersection(n.index)
        if len(common):
            # optional columns (NaN where a source lacks them) never conflict: they are filled
            core = ["rate"] if key.kind == FUNDING else list(BAR_COLUMNS[1:])
            a, b = o.loc[common, core], n.loc[common, core]
            same = ((a == b) | (a.isna() & b.isna())).all(axis=1)
            if on_conflict == "error" and not same.all():
                bad = same.index[~same.to_numpy()]
                ts0 = int(bad[0])
                raise ConflictError(
                    f"{key}: {len(bad)} row(s) differ from the stored ones, first at {iso(ts0)}: "
                    f"stored {a.loc[ts0].to_dict()}, new {b.loc[ts0].to_dict()}. Re-run with "
                    "on_conflict=replace to take the new rows or on_conflict=keep to keep the stored."
                )
            if on_conflict == "keep":
                n = n.drop(common)
        merged = n.combine_first(o) if len(n) else o
        return merged[list(key.columns[1:])].reset_index()

    def _atomic_write(self, frame: pd.DataFrame, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pandas(frame, preserve_index=False)
            pq.write_table(table, tmp, compression="zstd")
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            _discard(tmp)
            raise StoreError(
                f"cannot write {path}: {exc.strerror or exc}. Check free disk space and "
                f"permissions, or choose another root (root=... or KLINEGYM_DATA). "
                "Nothing was changed in that partition."
            ) from exc
        except BaseException:
            _discard(tmp)
            raise

    def stale_temp_files(self, key: SeriesKey | None = None) -> list[Path]:
        """Temp files left by processes killed mid-write (of ``key``'s series, or of every series),
        in path order. Each partition beside them is whole, but the write that left them may not
        have replaced every partition it meant to. Files of processes still alive, such as
        another download into the same root, are not stale."""
        pattern = "*/*/*/*/.*.tmp" if key is None else str(key.path(Path()) / ".*.tmp")
        found = []
        for tmp in sorted(self.root.glob(pattern)) if self.root.is_dir() else []:
            pid = tmp.name.rsplit(".", 2)[-2]
            if not (pid.isdigit() and _alive(int(pid))):
                found.append(tmp)
        return found

    def remove_stale_temp_files(self, key: SeriesKey | None = None) -> int:
        """Delete :meth:`stale_temp_files` (they are never read); how many there were. Call it
        with the series a write has just completed, so that the leftovers of other interrupted
        writes stay as their trace."""
        found = self.stale_temp_files(key)
        for tmp in found:
            tmp.unlink(missing_ok=True)
        return len(found)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True
