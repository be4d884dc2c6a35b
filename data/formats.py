"""Reading one file to import: Binance public-data archives and plain CSV / Parquet / Feather.

What is understood, per series kind (``SeriesKey.kind`` decides which):

- **bars** — Binance kline archives from data.binance.vision (``BTCUSDT-1m-2024-01.zip``,
  monthly or daily, one CSV inside; spot without a header row, USD-M futures with one) and the
  same 12-column CSV unzipped. The open time is in ms up to 2024 and in µs on spot from 2025; the
  unit is read per row from its magnitude. ``count`` becomes ``trades`` and ``taker_buy_volume``
  ``taker_buy_base``; ``close_time``, ``taker_buy_quote_volume`` and ``ignore`` are dropped after
  ``close_time`` has been used to check that the file holds bars of the series' timeframe.
  Any CSV / Parquet / Feather with a header works too: a time column (``ts``, ``timestamp``,
  ``open_time``, ``date``, ``time`` or ``datetime``; integer s / ms / µs / ns told apart by
  magnitude, ISO strings or datetimes, naive meaning UTC), ``open high low close volume`` and
  optionally ``quote_volume trades taker_buy_base`` (common aliases accepted, case and
  camelCase ignored). Files already in the store's schema import as they are.
- **funding** — a time column (also ``funding_time`` / ``calc_time``), ``rate`` (or
  ``funding_rate`` / ``fundingRate`` / ``last_funding_rate``) and optionally ``mark_price``
  (``markPrice``).
- **trades** — Binance trades archives (``id, price, qty, quote_qty, time, is_buyer_maker,
  is_best_match``, with or without a header, time in ms or µs) and files with ``time`` / ``ts``,
  ``price``, ``qty``, ``is_buyer_maker``. Trade times in µs are floored to the millisecond; the
  exchange's order inside a millisecond is kept.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as pafeather
import pyarrow.parquet as pq

from data.errors import ImportFormatError
from data.schema import FUNDING, TIMEFRAMES, TRADES, iso, parse_bar_spec
from data.store import SeriesKey

EXTENSIONS: tuple[str, ...] = (".zip", ".csv", ".parquet", ".feather")

BINANCE_KLINE_COLUMNS: tuple[str, ...] = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
)
BINANCE_TRADE_COLUMNS: tuple[str, ...] = (
    "id",
    "price",
    "qty",
    "quote_qty",
    "time",
    "is_buyer_maker",
    "is_best_match",
)

# Times outside this window are a unit or column mix-up (row numbers, seconds read as ms), not data.
_EARLIEST_MS = 631_152_000_000  # 1990-01-01
_LATEST_MS = 4_102_444_800_000  # 2100-01-01
_ARCHIVE_NAME = re.compile(
    r"^(?P<symbol>[A-Z0-9]+)-(?P<what>[0-9]+(?:s|m|h|d|w|mo)|trades|aggTrades|fundingRate)"
    r"-\d{4}-\d{2}(?:-\d{2})?\.(?:zip|csv)$"
)


@dataclass(frozen=True)
class _Layout:
    """The columns one kind of series accepts, by their snake_case names."""

    time: tuple[str, ...]  # candidate time columns, most specific first
    fields: dict[str, tuple[str, ...]]  # store column -> accepted source names
    required: tuple[str, ...]
    ignored: frozenset[str]


_LAYOUTS: dict[str, _Layout] = {
    "bars": _Layout(
        time=("ts", "timestamp", "open_time", "date", "time", "datetime"),
        fields={
            "open": ("open",),
            "high": ("high",),
            "low": ("low",),
            "close": ("close",),
            "volume": ("volume",),
            "quote_volume": ("quote_volume", "quote_asset_volume"),
            "trades": ("trades", "count", "number_of_trades", "num_trades", "trade_count"),
            "taker_buy_base": (
                "taker_buy_base",
                "taker_buy_volume",
                "taker_buy_base_volume",
                "taker_buy_base_asset_volume",
            ),
        },
        required=("open", "high", "low", "close", "volume"),
        ignored=frozenset(
            {
                "close_time",
                "ignore",
                "taker_buy_quote",
                "taker_buy_quote_volume",
                "taker_buy_quote_asset_volume",
            }
        ),
    ),
    FUNDING: _Layout(
        time=("ts", "funding_time", "calc_time", "timestamp", "time", "date", "datetime"),
        fields={"rate": ("rate", "funding_rate", "last_funding_rate"), "mark_price": ("mark_price",)},
        required=("rate",),
        ignored=frozenset({"symbol", "funding_interval_hours"}),
    ),
    TRADES: _Layout(
        time=("ts", "time", "timestamp", "datetime", "date"),
        fields={
            "price": ("price",),
            "qty": ("qty", "quantity"),
            "is_buyer_maker": ("is_buyer_maker",),
        },
        required=("price", "qty", "is_buyer_maker"),
        ignored=frozenset({"quote_qty", "is_best_match"}),
    ),
}
_TRADE_ID_NAMES = ("id", "trade_id")


@dataclass(frozen=True)
class _Columns:
    """Which source column feeds which store column, for one file."""

    time: str
    fields: dict[str, str]
    close_time: str | None
    trade_id: str | None

    @property
    def used(self) -> list[str]:
        extra = [c for c in (self.close_time, self.trade_id) if c is not None]
        return [self.time, *self.fields.values(), *extra]


@dataclass
class Parsed:
    frame: pd.DataFrame  # the store's columns for the kind
    ids: np.ndarray | None  # trade ids where the source has them


def suffix(path: Path) -> str:
    return path.suffix.lower()


# -- columns ---------------------------------------------------------------------------------


def _snake(name: str) -> str:
    """``fundingRate`` / ``Open time`` / ``taker-buy volume`` -> ``funding_rate`` / ``open_time`` /
    ``taker_buy_volume``."""
    name = name.replace("\ufeff", "").strip()
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _map_columns(names: Sequence[str], key: SeriesKey, source: str) -> _Columns:
    layout = _LAYOUTS[key.kind]
    by_snake: dict[str, str] = {}
    for name in names:
        snake = _snake(str(name))
        if snake in by_snake:
            raise ImportFormatError(
                f"{source}: columns {by_snake[snake]!r} and {name!r} mean the same thing; keep one"
            )
        by_snake[snake] = str(name)
    time = next((by_snake[t] for t in layout.time if t in by_snake), None)
    fields: dict[str, str] = {}
    for column, aliases in layout.fields.items():
        hits = [by_snake[a] for a in aliases if a in by_snake]
        if len(hits) > 1:
            raise ImportFormatError(f"{source}: columns {hits} all look like {column!r}; keep one")
        if hits:
            fields[column] = hits[0]
    trade_id = next((by_snake[n] for n in _TRADE_ID_NAMES if n in by_snake), None)
    if key.kind != TRADES:
        trade_id = None
    known = set(fields.values()) | {by_snake[t] for t in layout.time if t in by_snake}
    known |= {by_snake[n] for n in layout.ignored if n in by_snake}
    if trade_id is not None:
        known.add(trade_id)
    missing = [c for c in layout.required if c not in fields]
    unknown = [n for n in map(str, names) if n not in known]
    if time is None or missing or unknown:
        optional = [c for c in layout.fields if c not in layout.required]
        what = []
        if time is None:
            what.append(f"no time column (one of {', '.join(layout.time)})")
        if missing:
            what.append(f"missing {missing}")
        if unknown:
            what.append(f"unknown {unknown}")
        raise ImportFormatError(
            f"{source}: columns {list(map(str, names))} do not fit a {key.kind} series: "
            f"{'; '.join(what)}. Expected a time column, {list(layout.required)} and optionally "
            f"{optional}. Rename or drop columns, or import into the right kind of series "
            "(bars, funding, trades)."
        )
    close_time = by_snake.get("close_time") if key.kind == "bars" else None
    return _Columns(time, fields, close_time, trade_id)


# -- reading containers ----------------------------------------------------------------------


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(open_stream: Callable[[], IO[bytes]], key: SeriesKey, source: str) -> tuple[pa.Table, _Columns]:
    with open_stream() as fh:
        first = fh.readline()
        second = fh.readline()
    if not first.strip():
        raise ImportFormatError(f"{source} is empty; download or export it again")
    fields = [f.strip().strip('"') for f in first.decode("utf-8-sig", errors="replace").split(",")]
    has_header = not _is_number(fields[0])
    if has_header:
        names = tuple(fields)
        read_options = pacsv.ReadOptions()
        sample = second
    else:
        names = _headerless_names(len(fields), key, source)
        read_options = pacsv.ReadOptions(column_names=list(names))
        sample = first
    columns = _map_columns(names, key, source)
    types: dict[str, pa.DataType] = {c: pa.float64() for c in columns.fields.values()}
    if key.kind == TRADES:
        types[columns.fields["is_buyer_maker"]] = pa.bool_()
    if columns.trade_id is not None:
        types[columns.trade_id] = pa.int64()
    # Exact types, so that a later block cannot be inferred differently from the first; a time
    # column is read as integers when the first data row has an integer there, else inferred.
    values = sample.decode("utf-8", errors="replace").strip().split(",")
    for name in (columns.time, columns.close_time):
        if name is not None:
            idx = names.index(name)
            if idx < len(values) and re.fullmatch(r'"?-?[0-9]+"?', values[idx].strip()):
                types[name] = pa.int64()
    convert = pacsv.ConvertOptions(column_types=types, include_columns=columns.used)
    try:
        with open_stream() as fh:
            table = pacsv.read_csv(fh, read_options=read_options, convert_options=convert)
    except pa.ArrowInvalid as exc:
        hint = (
            "A row with too few fields means the file was cut off or is malformed; download or "
            "export it again."
            if "columns, got" in str(exc)
            else "Fix or remove that value, or export the file again."
        )
        raise ImportFormatError(f"{source}: cannot parse the CSV: {exc}. {hint}") from None
    if table.num_rows == 0:
        raise ImportFormatError(f"{source} has a header but no rows; download or export it again")
    return table, columns


def _headerless_names(n: int, key: SeriesKey, source: str) -> tuple[str, ...]:
    if key.kind == "bars" and n == len(BINANCE_KLINE_COLUMNS):
        return BINANCE_KLINE_COLUMNS
    if key.kind == TRADES and n in (6, 7):
        return BINANCE_TRADE_COLUMNS[:n]
    expected = {
        "bars": f"the 12 Binance kline columns ({', '.join(BINANCE_KLINE_COLUMNS)})",
        TRADES: f"the 6 or 7 Binance trade columns ({', '.join(BINANCE_TRADE_COLUMNS)})",
        FUNDING: "a header row naming the columns",
    }[key.kind]
    raise ImportFormatError(
        f"{source}: {n} columns and no header row; a file without a header must hold {expected}. "
        "Add a header row naming the columns."
    )


def _read_table(path: Path, key: SeriesKey) -> tuple[pa.Table, _Columns, str]:
    """The file's rows as an Arrow table of the columns it maps, and a name for messages."""
    source = str(path)
    if path.stat().st_size == 0:
        raise ImportFormatError(f"{source} is empty; download or export it again")
    ext = suffix(path)
    if ext == ".csv":
        return (*_read_csv(lambda: open(path, "rb"), key, source), source)
    if ext == ".zip":
        try:
            with zipfile.ZipFile(path) as zf:
                members = [m for m in zf.infolist() if not m.is_dir()]
                csvs = [m for m in members if m.filename.lower().endswith(".csv")]
                if len(csvs) != 1:
                    raise ImportFormatError(
                        f"{source}: expected one CSV inside the zip, found "
                        f"{[m.filename for m in members]}; unzip it and import the CSV files"
                    )
                source = f"{path} ({csvs[0].filename})"
                if csvs[0].file_size == 0:
                    raise ImportFormatError(f"{source} is empty; download it again")
                table, columns = _read_csv(lambda: zf.open(csvs[0]), key, source)
                return table, columns, source
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise ImportFormatError(
                f"{source} is not a readable zip ({exc}); the download was probably cut off. "
                "Download it again (and compare it with the .CHECKSUM file next to it)."
            ) from None
    try:
        if ext == ".parquet":
            # a pandas index saved alongside is not data
            names = [n for n in pq.read_schema(path).names if not n.startswith("__index_level_")]
            columns = _map_columns(names, key, source)
            table = pq.read_table(path, columns=columns.used)
        else:
            names = pafeather.read_table(path, memory_map=True).column_names
            columns = _map_columns(names, key, source)
            table = pafeather.read_table(path, columns=columns.used)
    except (OSError, pa.ArrowException) as exc:
        raise ImportFormatError(
            f"{source} is not a readable {ext[1:]} file ({exc}); export it again"
        ) from None
    if table.num_rows == 0:
        raise ImportFormatError(f"{source} has no rows; export it again")
    return table, columns, source


# -- values ----------------------------------------------------------------------------------


def _to_ms(values: pd.Series, *, exact: bool, source: str, column: str) -> np.ndarray:
    """Times as int64 ms UTC. Integers are read per row by magnitude (< 1e11 s, < 1e14 ms,
    < 1e17 µs, else ns); strings as ISO dates; datetimes as they are (naive = UTC). ``exact``
    refuses sub-millisecond parts (bar and funding times); otherwise they are floored (trades)."""
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise ImportFormatError(f"{source}: row {row + 1} has no value in the time column {column!r}")
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            values = values.dt.tz_convert("UTC").dt.tz_localize(None)
        ns = values.to_numpy().astype("datetime64[ns]").astype(np.int64)
        ms = _scaled(ns, np.full(len(ns), 1_000_000), exact, source, column)
    elif pd.api.types.is_bool_dtype(values.dtype):
        raise ImportFormatError(f"{source}: time column {column!r} holds booleans")
    elif pd.api.types.is_integer_dtype(values.dtype):
        ms = _from_epoch(values.to_numpy(dtype=np.int64), exact, source, column)
    elif pd.api.types.is_float_dtype(values.dtype):
        x = values.to_numpy(dtype=np.float64)
        if np.all(x == np.round(x)):
            ms = _from_epoch(x.astype(np.int64), exact, source, column)
        elif np.all(np.abs(x) < 1e11):  # fractional epoch seconds
            ms = np.round(x * 1000).astype(np.int64)
        else:
            raise ImportFormatError(
                f"{source}: time column {column!r} holds fractional values like {x[x != np.round(x)][0]} "
                "that are not epoch seconds; use integer epoch ms or ISO dates"
            )
    else:
        text = values.astype(str).str.strip()
        if text.str.fullmatch(r"-?[0-9]+").all():
            ms = _from_epoch(text.astype(np.int64).to_numpy(), exact, source, column)
        else:
            try:
                parsed = pd.to_datetime(text, utc=True, format="ISO8601")
            except (ValueError, TypeError) as exc:
                raise ImportFormatError(
                    f"{source}: time column {column!r} is not epoch numbers or ISO dates ({exc})"
                ) from None
            return _to_ms(parsed, exact=exact, source=source, column=column)
    bad = (ms < _EARLIEST_MS) | (ms >= _LATEST_MS)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ImportFormatError(
            f"{source}: time column {column!r} row {i + 1} reads as {iso(int(ms[i]))}, outside "
            "1990-2100; is it the right column, in epoch s / ms / µs?"
        )
    return ms


def _from_epoch(v: np.ndarray, exact: bool, source: str, column: str) -> np.ndarray:
    a = np.abs(v)
    # Binance switched spot archives from ms to µs in 2025, so the unit is decided per row
    v = np.where(a < 10**11, v * 1000, v)  # epoch seconds
    per_ms = np.select([a < 10**14, a < 10**17], [1, 1000], 1_000_000)
    return _scaled(v, per_ms, exact, source, column)


def _scaled(v: np.ndarray, per_ms: np.ndarray, exact: bool, source: str, column: str) -> np.ndarray:
    ms = v // per_ms
    if exact:
        frac = v - ms * per_ms
        if frac.any():
            i = int(np.flatnonzero(frac)[0])
            raise ImportFormatError(
                f"{source}: time column {column!r} row {i + 1} ({v[i]}) is not a whole millisecond; "
                "bar and funding times must be"
            )
    return ms.astype(np.int64)


def _floats(values: pd.Series, source: str, column: str) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(x) & values.notna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ImportFormatError(
            f"{source}: column {column!r} row {i + 1} is not a number: {values.iloc[i]!r}"
        )
    return x


def _bools(values: pd.Series, source: str, column: str) -> np.ndarray:
    if pd.api.types.is_bool_dtype(values.dtype) and not values.isna().any():
        return values.to_numpy(dtype=bool)
    lookup = {"true": True, "1": True, "false": False, "0": False}
    mapped = values.astype(str).str.strip().str.lower().map(lookup)
    if mapped.isna().any():
        i = int(np.flatnonzero(mapped.isna().to_numpy())[0])
        raise ImportFormatError(
            f"{source}: column {column!r} row {i + 1} is {values.iloc[i]!r}, not true/false"
        )
    return mapped.to_numpy(dtype=bool)


def _check_bar_length(close_ms: np.ndarray, ts: np.ndarray, key: SeriesKey, source: str) -> None:
    spec = parse_bar_spec(key.timeframe)
    if not spec.is_time:
        return
    lengths, counts = np.unique(close_ms - ts + 1, return_counts=True)
    # the most common length: a single odd bar (an exchange outage) is not a wrong file
    length = int(lengths[np.argmax(counts)])
    if length != spec.ms:
        name = next((k for k, v in TIMEFRAMES.items() if v == length), f"{length} ms")
        raise ImportFormatError(
            f"{source}: its bars last {name} (close_time - open_time), but the series is {key}; "
            f"import it into the {name} series"
        )


def _check_archive_name(path: Path, key: SeriesKey) -> None:
    m = _ARCHIVE_NAME.match(path.name)
    if m is None:
        return
    expected = {"bars": key.timeframe, FUNDING: "fundingRate", TRADES: "trades"}[key.kind]
    if m["symbol"] != key.symbol or m["what"] != expected:
        raise ImportFormatError(
            f"{path}: the file name says {m['symbol']} {m['what']}, but the series is {key} "
            f"(expects {key.symbol}-{expected}-...). Import it into the matching series, or rename "
            "the file if its name is wrong."
        )


def read_import_file(path: str | Path, key: SeriesKey) -> pd.DataFrame:
    """One file parsed into the store's schema for ``key`` (not validated, not written)."""
    return parse_file(Path(path), key).frame


def parse_file(path: Path, key: SeriesKey) -> Parsed:
    _check_archive_name(path, key)
    table, columns, source = _read_table(path, key)
    # without pandas metadata an index saved into a Parquet file is an ordinary column
    raw = table.to_pandas(ignore_metadata=True)
    ts = _to_ms(raw[columns.time], exact=key.kind != TRADES, source=source, column=columns.time)
    out: dict[str, np.ndarray] = {"ts": ts}
    for column in key.columns[1:]:
        name = columns.fields.get(column)
        if name is None:
            out[column] = np.full(len(ts), np.nan)
        elif column == "is_buyer_maker":
            out[column] = _bools(raw[name], source, name)
        else:
            out[column] = _floats(raw[name], source, name)
    if columns.close_time is not None:
        close = _to_ms(raw[columns.close_time], exact=False, source=source, column=columns.close_time)
        _check_bar_length(close, ts, key, source)
    ids = None
    if columns.trade_id is not None and not raw[columns.trade_id].isna().any():
        ids = raw[columns.trade_id].to_numpy(dtype=np.int64)
    return Parsed(pd.DataFrame(out), ids)
