"""``python -m data COMMAND key=value ...``: download, import, coverage, validate, resample, bars, synth.

Every command takes ``key=value`` arguments, the same spelling as the Hydra overrides of the
training entry point. Each command's arguments are a frozen dataclass: an unknown key or a value
of the wrong type stops at once with the list of keys the command accepts.
``python -m data COMMAND --help`` shows them with their defaults.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import time
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from data.errors import DataError
from data.schema import FUNDING, TRADES, iso, parse_time
from data.store import SeriesKey, Store

EXIT_USAGE = 2


class UsageError(ValueError):
    """A command line that cannot be run. Policy: print it with the command's help and exit 2."""


def _help(text: str, default=dataclasses.MISSING):
    if default is dataclasses.MISSING:
        return field(metadata={"help": text})
    return field(default=default, metadata={"help": text})


def _convert(name: str, raw: str, annotation) -> object:
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
            return float(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a valid {hint.__name__}") from None
    return raw


def parse(cls: type, argv: Sequence[str]):
    """Build ``cls`` from ``key=value`` words; repeated keys of tuple fields accumulate."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, object] = {}
    for word in argv:
        key, sep, raw = word.partition("=")
        key = key.lstrip("+").replace("-", "_")
        if not sep:
            raise UsageError(f"expected key=value, got {word!r}")
        if key not in fields:
            raise UsageError(f"unknown key {key!r}; this command accepts: {', '.join(fields)}")
        value = _convert(key, raw, hints[key])
        if isinstance(value, tuple) and isinstance(values.get(key), tuple):
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


# -- commands ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesArgs:
    exchange: str = _help("ccxt exchange id, or 'synthetic'", "binance")
    market: str = _help("spot, or futures (linear USD-M perpetual)", "spot")
    symbol: str = _help("symbol in ccxt form, e.g. BTC/USDT", "BTC/USDT")
    timeframe: str = _help("1m, 5m, 1h, ... ; volume-N / dollar-N; funding; trades", "1m")
    root: str | None = _help("store root (default: $KLINEGYM_DATA or ./data/store)", None)

    def key(self) -> SeriesKey:
        return SeriesKey.of(self.exchange, self.market, self.symbol, self.timeframe)


@dataclass(frozen=True)
class DownloadArgs(SeriesArgs):
    start: str = _help("first bar, ISO date/time (UTC) or epoch ms", "2024-01-01")
    end: str | None = _help("end (exclusive); default: the last closed bar", None)
    funding: bool = _help("with market=futures, also download the funding-rate history", True)
    api_url: str | None = _help("rewrite the exchange's API base URL (testnet, mirror, tests)", None)
    limit: int | None = _help("bars per request (default: the exchange's maximum)", None)
    retries: int = _help("retries of a transient error before giving up", 5)
    timeout_ms: int = _help("HTTP timeout per request", 10_000)
    progress: bool = _help("show a progress bar", True)


def cmd_download(a: DownloadArgs) -> int:
    start, end = parse_time(a.start), parse_time(a.end)
    if end is not None and start >= end:
        raise UsageError(f"start {iso(start)} must be before end {iso(end)}")
    from data.download import download_funding, download_ohlcv

    store = Store(a.root)
    store.remove_stale_temp_files()
    common = dict(api_url=a.api_url, progress=a.progress, max_retries=a.retries, timeout_ms=a.timeout_ms)
    results = [
        download_ohlcv(
            store, a.exchange, a.market, a.symbol, a.timeframe, start, end, limit=a.limit, **common
        )
    ]
    if a.market == "futures" and a.funding:
        results.append(download_funding(store, a.exchange, a.market, a.symbol, start, end, **common))
    for r in results:
        span = f"{iso(r.first_ts)} -> {iso(r.last_ts)}" if r.last_ts is not None else "empty"
        print(f"{r.key}: +{r.rows_added:,} rows, stored {span} ({r.requests} requests)")
    return 0


@dataclass(frozen=True)
class ImportArgs(SeriesArgs):
    path: tuple[str, ...] = _help("file(s), folder(s) or glob(s); repeat path= or separate with commas", ())
    on_conflict: str = _help("rows already stored with other values: error, keep or replace", "error")
    progress: bool = _help("show a progress bar", True)


def cmd_import(a: ImportArgs) -> int:
    from data.importer import import_files

    if not a.path:
        raise UsageError("give the files to import with path=FILE (archives .zip, .csv or .parquet)")
    store = Store(a.root)
    result = import_files(store, a.key(), a.path, on_conflict=a.on_conflict, progress=a.progress)
    print(
        f"{a.key()}: +{result.rows_added:,} rows in {len(result.partitions)} partition(s) under {store.root}"
    )
    return 0


@dataclass(frozen=True)
class CoverageArgs:
    root: str | None = _help("store root (default: $KLINEGYM_DATA or ./data/store)", None)
    json: bool = _help("print JSON for scripts (also: --json)", False)
    largest: int = _help("gaps listed per series in the table", 3)


def cmd_coverage(a: CoverageArgs) -> int:
    from data.coverage import coverage, format_table

    store = Store(a.root)
    items = coverage(store)
    if a.json:
        print(json.dumps([c.to_json() for c in items], indent=2))
    else:
        print(format_table(items, str(store.root), a.largest))
    return 0


@dataclass(frozen=True)
class ValidateArgs:
    root: str | None = _help("store root (default: $KLINEGYM_DATA or ./data/store)", None)
    series: str | None = _help("one series as exchange/market/SYMBOL/timeframe (default: all)", None)


def cmd_validate(a: ValidateArgs) -> int:
    store = Store(a.root)
    if a.series:
        parts = a.series.split("/")
        if len(parts) != 4:
            raise UsageError(f"series must be exchange/market/SYMBOL/timeframe, got {a.series!r}")
        keys = [SeriesKey.of(*parts)]
    else:
        keys = list(store.series())
    bad = 0
    for key in keys:
        issues = store.validate(key)
        print(f"{key}: {'ok' if not issues else f'{len(issues)} problem(s)'}")
        for issue in issues[:50]:
            print(f"  {issue}")
        bad += bool(issues)
    return 1 if bad else 0


@dataclass(frozen=True)
class ResampleArgs(SeriesArgs):
    to: str = _help("target timeframe, a whole multiple of timeframe=", "5m")
    partial: bool = _help("keep buckets with missing bars (default: drop them)", False)
    start: str | None = _help("first bar (ISO or ms)", None)
    end: str | None = _help("end, exclusive (ISO or ms)", None)


def cmd_resample(a: ResampleArgs) -> int:
    from data.resample import resample_series

    store = Store(a.root)
    result = resample_series(
        store, a.key(), a.to, partial=a.partial, start=parse_time(a.start), end=parse_time(a.end)
    )
    kept = "kept (partial=true)" if a.partial else "dropped"
    print(
        f"{a.key()} -> {a.to}: +{result.rows_added:,} bars; {result.incomplete:,} incomplete bucket(s) {kept}"
    )
    return 0


@dataclass(frozen=True)
class BarsArgs(SeriesArgs):
    timeframe: str = _help("bars to build: a timeframe (1m), volume-N or dollar-N", "1m")
    start: str | None = _help("first trade (ISO or ms)", None)
    end: str | None = _help("end, exclusive (ISO or ms)", None)


def cmd_bars(a: BarsArgs) -> int:
    from data.bars import build_bar_series

    store = Store(a.root)
    trades = SeriesKey.of(a.exchange, a.market, a.symbol, TRADES)
    result = build_bar_series(store, trades, a.timeframe, start=parse_time(a.start), end=parse_time(a.end))
    print(f"{trades} -> {a.timeframe}: +{result.rows_added:,} bars")
    return 0


@dataclass(frozen=True)
class SynthArgs:
    symbol: str = _help("symbol of the synthetic market", "SYN/USDT")
    market: str = _help("spot, or futures (also writes funding rates)", "spot")
    root: str | None = _help("store root (default: $KLINEGYM_DATA or ./data/store)", None)
    seed: int = _help("random seed; the same seed gives the same bars", 0)
    start: str = _help("first bar", "2024-01-01")
    bars: int = _help("number of bars", 200_000)
    timeframe: str = _help("bar length", "1m")
    annual_vol: float = _help("long-run annualised volatility", 0.6)
    ar1: float = _help("planted AR(1) coefficient of returns (0 = none)", 0.1)
    trend_strength: float = _help("planted slow drift, in per-bar volatilities (0 = none)", 0.1)
    on_conflict: str = _help("if the series exists with other values: error, keep or replace", "error")


def cmd_synth(a: SynthArgs) -> int:
    from data.synthetic import SyntheticConfig, generate

    cfg = SyntheticConfig(
        seed=a.seed,
        start=a.start,
        bars=a.bars,
        timeframe=a.timeframe,
        annual_vol=a.annual_vol,
        ar1=a.ar1,
        trend_strength=a.trend_strength,
    )
    t0 = time.perf_counter()
    bars, funding = generate(cfg)
    store = Store(a.root)
    key = SeriesKey.of("synthetic", a.market, a.symbol, a.timeframe)
    written = store.write(key, bars, on_conflict=a.on_conflict)
    print(
        f"{key}: {len(bars):,} bars {iso(int(bars.ts.iloc[0]))} -> {iso(int(bars.ts.iloc[-1]))} "
        f"(+{written.rows_added:,} new) in {time.perf_counter() - t0:.1f}s under {store.root}"
    )
    if a.market == "futures":
        fkey = SeriesKey.of("synthetic", a.market, a.symbol, FUNDING)
        store.write(fkey, funding, on_conflict=a.on_conflict)
        print(f"{fkey}: {len(funding):,} funding events")
    return 0


COMMANDS: dict[str, tuple[type, Callable, str]] = {
    "download": (DownloadArgs, cmd_download, "download klines (and funding) through ccxt, resuming"),
    "import": (ImportArgs, cmd_import, "import Binance archives (.zip), CSV or Parquet files"),
    "coverage": (CoverageArgs, cmd_coverage, "first/last bar, rows and gaps of every stored series"),
    "validate": (ValidateArgs, cmd_validate, "check stored series for bad rows"),
    "resample": (ResampleArgs, cmd_resample, "aggregate bars to a longer timeframe"),
    "bars": (BarsArgs, cmd_bars, "build time, volume or dollar bars from stored trades"),
    "synth": (SynthArgs, cmd_synth, "write a seeded synthetic market (offline default data)"),
}


def _overview() -> str:
    lines = ["usage: python -m data COMMAND key=value ...  (COMMAND --help for its keys)", ""]
    lines += [f"  {name:<10} {desc}" for name, (_, _, desc) in COMMANDS.items()]
    return "\n".join(lines)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_overview())
        return 0 if argv else EXIT_USAGE
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{_overview()}", file=sys.stderr)
        return EXIT_USAGE
    cls, run, desc = COMMANDS[name]
    if any(w in ("-h", "--help") for w in rest):
        print(f"python -m data {name} key=value ...: {desc}\n\n{usage(cls)}")
        return 0
    rest = ["json=true" if w == "--json" else w for w in rest]
    # a plain `kill` stops as cleanly as Ctrl-C: buffered bars are flushed by the `finally`s
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(parse(cls, rest))
    except UsageError as exc:
        print(f"error: {exc}\n\npython -m data {name} accepts:\n{usage(cls)}", file=sys.stderr)
        return EXIT_USAGE
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted: what was stored is kept; re-run the same command to resume", file=sys.stderr)
        return 130
