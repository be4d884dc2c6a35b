"""``python -m data COMMAND key=value ...``: download, import, coverage, validate, resample, bars, synth.

Every command takes ``key=value`` arguments (:mod:`data.commandline`). Each command's arguments
are a frozen dataclass that checks its values when it is built, so a bad command line stops before
any work. A refusal is one line on stderr, exit status 2: an unknown key names the closest valid
ones (:func:`data.config.unknown_key`), a bad value names the key and what it must be.
``python -m data COMMAND --help`` shows the keys with their defaults.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from data.commandline import UsageError, arg, at_least, choice, parse, time_range, usage
from data.config import closest
from data.errors import DataError, ValidationError
from data.schema import FUNDING, TRADES, ccxt_symbol, iso, parse_bar_spec, parse_time, timeframe_ms
from data.store import ON_CONFLICT, SeriesKey, Store

EXIT_USAGE = 2


def open_store(root: str | None, *, must_exist: bool) -> Store:
    """The store of ``root=``; a root that is a file is refused, and so is a missing one where
    the command only reads (it is never created then)."""
    store = Store(root)
    if root not in (None, ""):
        source = "root="
    elif os.environ.get("KLINEGYM_DATA"):
        source = "$KLINEGYM_DATA"
    else:
        source = "the default; give root= or set KLINEGYM_DATA"
    if store.root.exists() and not store.root.is_dir():
        raise UsageError(
            f"store root {store.root} ({source}) is a file, not a folder; give the store's folder"
        )
    if must_exist and not store.root.exists():
        raise UsageError(
            f"store root {store.root} ({source}) does not exist; check the path, or fill a store "
            "with python -m data download, import or synth"
        )
    return store


def removed(store: Store, *keys: SeriesKey) -> str:
    """After a write to ``keys`` succeeded: remove the temp files killed writes left in those
    series (a refusal leaves them, as it leaves everything) and say so."""
    n = sum(store.remove_stale_temp_files(key) for key in keys)
    return f"; removed {n} orphan temp file(s) of a killed write" if n else ""


# -- commands ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesArgs:
    exchange: str = arg("ccxt exchange id, or 'synthetic'", "binance")
    market: str = arg("spot, or futures (linear USD-M perpetual)", "spot")
    symbol: str = arg("symbol in ccxt form, e.g. BTC/USDT", "BTC/USDT")
    timeframe: str = arg("1m, 5m, 1h, ... ; volume-N / dollar-N; funding; trades", "1m")
    root: str | None = arg("store root (default: $KLINEGYM_DATA or ./data/store)", None)

    def __post_init__(self) -> None:
        self.key()  # exchange, market, symbol and timeframe, each with its own message

    def key(self) -> SeriesKey:
        return SeriesKey.of(self.exchange, self.market, self.symbol, self.timeframe)


@dataclass(frozen=True)
class DownloadArgs(SeriesArgs):
    start: str = arg("first bar, ISO date/time (UTC) or epoch ms", "2024-01-01")
    end: str | None = arg("end (exclusive); default: the last closed bar", None)
    funding: bool | None = arg("also download the funding-rate history (default: true on futures)", None)
    api_url: str | None = arg("rewrite the exchange's API base URL (testnet, mirror, tests)", None)
    limit: int | None = arg("bars per request (default: the exchange's maximum)", None)
    retries: int = arg("retries of a transient error before giving up", 5)
    timeout_ms: int = arg("HTTP timeout per request", 10_000)
    progress: bool = arg("show a progress bar", True)

    def __post_init__(self) -> None:
        if self.exchange.strip().lower() == "synthetic":
            raise UsageError(
                "exchange=synthetic has no API; write a synthetic market with python -m data synth"
            )
        if self.timeframe == FUNDING:
            raise UsageError(
                "timeframe=funding is not a candle timeframe; funding rates come with market=futures "
                "(funding=true, the default there)"
            )
        if self.timeframe == TRADES:
            raise UsageError(
                "timeframe=trades cannot be downloaded; import Binance trades archives with "
                "python -m data import path=... timeframe=trades"
            )
        if not parse_bar_spec(self.timeframe).is_time:
            raise UsageError(
                f"timeframe={self.timeframe} bars are built from trades, not downloaded: import the "
                f"trades, then python -m data bars timeframe={self.timeframe}"
            )
        super().__post_init__()
        ccxt_symbol(self.symbol, self.market)  # the exchange is asked for BTC/USDT, not BTCUSDT
        if not str(self.start).strip():
            raise UsageError(
                "start= is empty; give the first bar (an ISO date such as 2024-01-01 or epoch ms)"
            )
        time_range(self.start, self.end)
        if self.funding and self.market != "futures":
            raise UsageError(
                f"funding=true needs market=futures (funding rates exist for perpetual futures only), "
                f"not market={self.market}"
            )
        at_least("limit", self.limit, 1)
        at_least("retries", self.retries, 0)
        at_least("timeout_ms", self.timeout_ms, 1)


def cmd_download(a: DownloadArgs) -> int:
    start, end = time_range(a.start, a.end)
    from data.download import download_funding, download_ohlcv

    store = open_store(a.root, must_exist=False)
    common = dict(api_url=a.api_url, progress=a.progress, max_retries=a.retries, timeout_ms=a.timeout_ms)
    results = [
        download_ohlcv(
            store, a.exchange, a.market, a.symbol, a.timeframe, start, end, limit=a.limit, **common
        )
    ]
    if a.market == "futures" and a.funding is not False:
        results.append(download_funding(store, a.exchange, a.market, a.symbol, start, end, **common))
    for r in results:
        first, last = store.first_ts(r.key), store.last_ts(r.key)
        stored = f"stored {iso(first)} -> {iso(last)}" if first is not None else "nothing stored"
        if r.rows_added:
            got = f"+{r.rows_added:,} rows {iso(r.first_ts)} -> {iso(r.last_ts)}; {stored}"
        elif first is not None:
            got = f"up to date, {stored}"
        else:  # funding only: a download of bars refuses to end with nothing
            got = f"no {r.key.timeframe} rows from {iso(start)} on; {stored}"
        print(f"{r.key}: {got} ({r.requests} requests){removed(store, r.key)}")
    return 0


@dataclass(frozen=True)
class ImportArgs(SeriesArgs):
    path: tuple[str, ...] = arg("file(s), folder(s) or glob(s); repeat path= or separate with commas", ())
    on_conflict: str = arg("rows already stored with other values: error, keep or replace", "error")
    progress: bool = arg("show a progress bar", True)

    def __post_init__(self) -> None:
        super().__post_init__()
        choice("on_conflict", self.on_conflict, ON_CONFLICT)
        if self.timeframe == FUNDING and self.market != "futures":
            raise UsageError(
                f"timeframe=funding needs market=futures (funding rates exist for perpetual futures "
                f"only), not market={self.market}"
            )
        if not self.path:
            raise UsageError("give the files to import with path=FILE (archives .zip, .csv or .parquet)")


def cmd_import(a: ImportArgs) -> int:
    from data.importer import import_files

    store = open_store(a.root, must_exist=False)
    result = import_files(store, a.key(), a.path, on_conflict=a.on_conflict, progress=a.progress)
    print(
        f"{a.key()}: +{result.rows_added:,} rows in {len(result.partitions)} partition(s) "
        f"under {store.root}; read {result.rows_read:,} rows from {result.files} file(s), "
        f"sorted {result.out_of_order:,} out-of-order row(s), "
        f"dropped {result.duplicates:,} exact duplicate row(s){removed(store, a.key())}"
    )
    return 0


@dataclass(frozen=True)
class CoverageArgs:
    root: str | None = arg("store root (default: $KLINEGYM_DATA or ./data/store)", None)
    json: bool = arg("print JSON for scripts (also: --json)", False)
    largest: int = arg("gaps listed per series in the table", 3)

    def __post_init__(self) -> None:
        at_least("largest", self.largest, 0)


def cmd_coverage(a: CoverageArgs) -> int:
    from data.coverage import coverage, format_table

    store = open_store(a.root, must_exist=True)
    items = coverage(store)
    orphans = store.stale_temp_files()
    if a.json:
        print(json.dumps([c.to_json() for c in items], indent=2))
        if orphans:
            print(
                f"warning: {len(orphans)} orphan temp file(s) of killed writes under {store.root}; "
                "python -m data validate lists them",
                file=sys.stderr,
            )
    else:
        print(format_table(items, str(store.root), a.largest, orphans))
    return 0


@dataclass(frozen=True)
class ValidateArgs:
    root: str | None = arg("store root (default: $KLINEGYM_DATA or ./data/store)", None)
    series: str | None = arg("one series as exchange/market/SYMBOL/timeframe (default: all)", None)

    def __post_init__(self) -> None:
        self.key()

    def key(self) -> SeriesKey | None:
        if self.series is None:
            return None
        parts = self.series.strip("/").split("/")
        if len(parts) != 4:
            raise UsageError(
                "series must be exchange/market/SYMBOL/timeframe as coverage lists them (e.g. "
                f"binance/spot/BTCUSDT/1m), got {self.series!r}"
            )
        return SeriesKey.of(*parts)


def cmd_validate(a: ValidateArgs) -> int:
    store = open_store(a.root, must_exist=True)
    stored = [str(k) for k in store.series()]
    wanted = a.key()
    if wanted is not None and str(wanted) not in stored:
        near = closest(str(wanted), stored)
        hint = f"; did you mean {' or '.join(near)}?" if near else ";"
        listed = ", ".join(stored[:10]) + (f" and {len(stored) - 10} more" if len(stored) > 10 else "")
        raise UsageError(f"no series {wanted} under {store.root}{hint} stored: {listed or 'none'}")
    keys = [wanted] if wanted is not None else list(store.series())
    orphans: dict[str, list[Path]] = {}
    for tmp in store.stale_temp_files(wanted):
        orphans.setdefault("/".join(tmp.parent.relative_to(store.root).parts), []).append(tmp)
    # a series whose first write was killed has a temp file and no partition yet
    keys += [SeriesKey(*name.split("/")) for name in orphans if name not in map(str, keys)]
    if not keys:
        print(f"no series under {store.root}; nothing to validate")
        return 0
    bad = 0
    for key in sorted(keys, key=str):
        issues = store.validate(key)
        left = orphans.get(str(key), [])
        found = [f"{len(issues)} problem(s)"] * bool(issues) + [f"{len(left)} orphan temp file(s)"] * bool(
            left
        )
        print(f"{key}: {', '.join(found) or 'ok'}")
        for issue in issues[:50]:
            print(f"  {issue}")
        for tmp in left:
            print(
                f"  {tmp.name}: left by a write that was killed; every partition is whole, but that "
                "write may be incomplete: re-run it (that removes the file)"
            )
        bad += bool(issues or left)
    return 1 if bad else 0


@dataclass(frozen=True)
class ResampleArgs(SeriesArgs):
    to: str = arg("target timeframe, a whole multiple of timeframe=", "5m")
    partial: bool = arg("keep buckets with missing bars (default: drop them)", False)
    start: str | None = arg("first bar (ISO or ms)", None)
    end: str | None = arg("end, exclusive (ISO or ms)", None)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.timeframe in (FUNDING, TRADES) or not parse_bar_spec(self.timeframe).is_time:
            raise UsageError(
                f"resample builds time bars from time bars; timeframe={self.timeframe} is not a time bar "
                "(bars from trades: python -m data bars)"
            )
        timeframe_ms(self.to)
        if self.to == self.timeframe:
            raise UsageError(
                f"to={self.to} is the series' own timeframe; give a longer one (a whole multiple of "
                f"{self.timeframe}, e.g. to=1h)"
            )
        time_range(self.start, self.end)


def cmd_resample(a: ResampleArgs) -> int:
    from data.resample import resample_series

    store = open_store(a.root, must_exist=True)
    start, end = time_range(a.start, a.end)
    result = resample_series(store, a.key(), a.to, partial=a.partial, start=start, end=end)
    kept = "kept (partial=true)" if a.partial else "dropped"
    target = SeriesKey.of(a.exchange, a.market, a.symbol, a.to)
    print(
        f"{a.key()} -> {a.to}: +{result.rows_added:,} bars; {result.incomplete:,} incomplete bucket(s) "
        f"{kept}{removed(store, target)}"
    )
    return 0


@dataclass(frozen=True)
class BarsArgs(SeriesArgs):
    timeframe: str = arg("bars to build: a timeframe (1m), volume-N or dollar-N", "1m")
    start: str | None = arg("first trade (ISO or ms)", None)
    end: str | None = arg("end, exclusive (ISO or ms)", None)

    def __post_init__(self) -> None:
        parse_bar_spec(self.timeframe)  # funding and trades are not bars
        super().__post_init__()
        time_range(self.start, self.end)


def cmd_bars(a: BarsArgs) -> int:
    from data.bars import build_bar_series

    store = open_store(a.root, must_exist=True)
    start, end = time_range(a.start, a.end)
    trades = SeriesKey.of(a.exchange, a.market, a.symbol, TRADES)
    result = build_bar_series(store, trades, a.timeframe, start=start, end=end)
    print(f"{trades} -> {a.timeframe}: +{result.rows_added:,} bars{removed(store, a.key())}")
    return 0


@dataclass(frozen=True)
class SynthArgs:
    symbol: str = arg("symbol of the synthetic market", "SYN/USDT")
    market: str = arg("spot, or futures (also writes funding rates)", "spot")
    root: str | None = arg("store root (default: $KLINEGYM_DATA or ./data/store)", None)
    seed: int = arg("random seed; the same seed gives the same bars", 0)
    start: str = arg("first bar", "2024-01-01")
    bars: int = arg("number of bars", 200_000)
    timeframe: str = arg("bar length", "1m")
    annual_vol: float = arg("long-run annualised volatility", 0.6)
    ar1: float = arg("planted AR(1) coefficient of returns (0 = none)", 0.1)
    trend_strength: float = arg("planted slow drift, in per-bar volatilities (0 = none)", 0.1)
    on_conflict: str = arg("if the series exists with other values: error, keep or replace", "error")

    def __post_init__(self) -> None:
        self.key()
        self.config()
        choice("on_conflict", self.on_conflict, ON_CONFLICT)

    def key(self) -> SeriesKey:
        return SeriesKey.of("synthetic", self.market, self.symbol, self.timeframe)

    def config(self):
        from data.synthetic import SyntheticConfig

        parse_time(self.start, "start")
        return SyntheticConfig(
            seed=self.seed,
            start=self.start,
            bars=self.bars,
            timeframe=self.timeframe,
            annual_vol=self.annual_vol,
            ar1=self.ar1,
            trend_strength=self.trend_strength,
        )


def cmd_synth(a: SynthArgs) -> int:
    from data.synthetic import generate

    store = open_store(a.root, must_exist=False)
    t0 = time.perf_counter()
    bars, funding = generate(a.config())
    key = a.key()
    written = store.write(key, bars, on_conflict=a.on_conflict)
    print(
        f"{key}: {len(bars):,} bars {iso(int(bars.ts.iloc[0]))} -> {iso(int(bars.ts.iloc[-1]))} "
        f"(+{written.rows_added:,} new) in {time.perf_counter() - t0:.1f}s under {store.root}"
        f"{removed(store, key)}"
    )
    if a.market == "futures":
        fkey = SeriesKey.of("synthetic", a.market, a.symbol, FUNDING)
        store.write(fkey, funding, on_conflict=a.on_conflict)
        print(f"{fkey}: {len(funding):,} funding events{removed(store, fkey)}")
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


def _refuse(message: str) -> int:
    """The one line of a refusal: a message of several lines is joined, never cut."""
    print("error: " + " ".join(line.strip() for line in message.splitlines()), file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        return _refuse(f"give a command: {', '.join(COMMANDS)} (python -m data --help says what each does)")
    if argv[0] in ("-h", "--help", "help"):
        print(_overview())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        near = closest(name, COMMANDS)
        hint = f"; did you mean {' or '.join(near)}?" if near else ";"
        return _refuse(f"unknown command {name!r}{hint} the commands are {', '.join(COMMANDS)}")
    cls, run, desc = COMMANDS[name]
    if any(w in ("-h", "--help") for w in rest):
        print(f"python -m data {name} key=value ...: {desc}\n\n{usage(cls)}")
        return 0
    rest = ["json=true" if w == "--json" and name == "coverage" else w for w in rest]
    # a plain `kill` stops as cleanly as Ctrl-C: buffered bars are flushed by the `finally`s
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(parse(cls, rest, f"python -m data {name}"))
    except ValidationError as exc:
        return _refuse(exc.one_line())
    except (DataError, ValueError) as exc:
        return _refuse(str(exc))
    except OSError as exc:
        return _refuse(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    except KeyboardInterrupt:
        print("\ninterrupted: what was stored is kept; re-run the same command to resume", file=sys.stderr)
        return 130
