"""Replay evaluation: one policy (a bundle or a baseline by name) over one range, next to every
baseline on the same bars with the same costs, written as a ledger anyone can recompute.

``python evaluate.py run=runs/<...>`` calls :func:`evaluate`. The folder it writes:

- ``ledger.parquet``: one row per bar (:data:`reports.replay.LEDGER_COLUMNS`);
- ``trades.parquet``: one row per fill (:data:`reports.replay.FILL_COLUMNS`), and
  ``round_trips.parquet`` derived from them (entry, exit, PnL net of fees, duration);
- ``equity.parquet``: the equity curve of the policy and of each baseline, per bar;
- ``metrics.json``: ``{"policy": {...}, "baselines": {name: {...}}, "periods_per_year", "start",
  "end", "bars", "spec": {...}}`` (keys of :func:`reports.metrics.summary`);
- ``report.html``: the self-contained report (:mod:`reports.html`).

Everything is written into a temporary folder beside the destination and moved into place at the
end, so a failed evaluation leaves nothing half written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agents.baselines import BASELINES, make_baseline
from agents.bundle import BundleError, load_policy
from agents.config import config_time
from data.config import ConfigError, build, closest
from data.errors import DataError
from data.loader import load_bars, load_funding
from data.schema import MARKETS, TIMEFRAMES, file_symbol, iso, timeframe_ms
from envs.config import EnvConfig, EnvKeys
from envs.vector import BatchedMarketReplayEnv
from reports import metrics
from reports.replay import ReplayError, fills, ledger, replay, replay_metrics, round_trips


class EvalError(ConfigError):
    """An evaluation that cannot run as asked. Policy: stop before writing, naming the fix."""


@dataclass(frozen=True)
class EvalData:
    """The series and range; ``None`` takes the bundle's (its test range)."""

    exchange: str | None = None
    market: str | None = None
    symbol: str | None = None
    timeframe: str | None = None
    start: str | None = None
    end: str | None = None
    root: str | None = None

    def __post_init__(self) -> None:
        if self.market is not None and self.market not in MARKETS:
            raise EvalError(
                f"data.market={self.market!r} is not supported; choose one of {', '.join(MARKETS)} "
                "(futures trades on a perp account)"
            )
        if self.timeframe is not None and self.timeframe not in TIMEFRAMES:
            raise EvalError(
                f"data.timeframe={self.timeframe!r} is not supported; choose one of {', '.join(TIMEFRAMES)}"
            )
        start = None if self.start is None else config_time("data.start", self.start)
        end = None if self.end is None else config_time("data.end", self.end)
        if start is not None and end is not None and start >= end:
            raise EvalError(f"data.start={self.start} must be before data.end={self.end}")


@dataclass(frozen=True)
class EvalConfig:
    """What ``evaluate.py`` was asked: ``run`` and/or ``policy`` (a bundle path or a baseline
    name), ``data``, the env (``env`` the composed group, ``env_overrides`` the keys given on the
    command line), ``baselines`` to run beside it, and where to write (``out`` or ``name``)."""

    run: str | None = None
    policy: str | None = None
    out: str | None = None
    name: str | None = None
    seed: int = 0
    baselines: tuple[str, ...] = BASELINES
    data: EvalData = field(default_factory=EvalData)
    env: dict[str, Any] = field(default_factory=dict)
    env_overrides: dict[str, Any] = field(default_factory=dict)
    env_group_chosen: bool = False


@dataclass(frozen=True)
class EvalCommand:
    """``conf/evaluate.yaml``, typed: what ``evaluate.py`` converts its composed config into
    (:func:`data.config.build`), so that an unknown key or a value of the wrong type stops it with
    the key's name. ``env`` holds the env and features groups' keys, each typed; the env they make
    is checked in :func:`plan`, once laid over the bundle's (or, for a baseline, as it is)."""

    run: str | None = None
    policy: str | None = None
    out: str | None = None
    name: str | None = None
    seed: int = 0
    baselines: tuple[str, ...] = BASELINES
    data: EvalData = field(default_factory=EvalData)
    env: EnvKeys = field(default_factory=EnvKeys)

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise EvalError(f"seed={self.seed} must be a whole number >= 0")
        for name in self.baselines:
            if name not in BASELINES:
                near = closest(name, BASELINES)
                hint = f" did you mean {' or '.join(near)}?" if near else ""
                raise EvalError(
                    f"baselines: {name} is not a baseline;{hint} choose from {', '.join(BASELINES)}"
                )

    def config(self, given: Iterable[str], group_chosen: bool) -> EvalConfig:
        """The evaluation: ``given`` are the env keys named on the command line (they override a
        bundle's env), ``group_chosen`` whether the env or features group was."""
        env = {f.name: getattr(self.env, f.name) for f in dataclasses.fields(self.env)}
        return EvalConfig(
            run=self.run, policy=self.policy, out=self.out, name=self.name, seed=self.seed,
            baselines=self.baselines, data=self.data,
            env={k: v for k, v in env.items() if v is not None},
            env_overrides={k: env[k] for k in given},
            env_group_chosen=group_chosen,
        )  # fmt: skip


@dataclass
class Plan:
    """The resolved evaluation: what to replay, on what, with which env, and where to write."""

    label: str
    policy: Any  # a Policy or a Baseline
    spec: dict[str, Any] | None
    env_kwargs: dict[str, Any]
    exchange: str
    market: str
    symbol: str
    timeframe: str
    start: int
    end: int
    root: str | None
    out: Path


def _bundle_path(cfg: EvalConfig) -> Path | None:
    if cfg.run and not Path(cfg.run).is_dir():
        what = "is not a folder" if Path(cfg.run).exists() else "does not exist"
        raise EvalError(f"run={cfg.run} {what}; give a training run's folder (runs/<experiment>/<time>)")
    if cfg.policy and cfg.policy in BASELINES:
        return None
    if cfg.policy:
        path = Path(cfg.policy)
        if not path.exists():
            if "/" not in cfg.policy:
                raise EvalError(
                    f"policy={cfg.policy} is neither a bundle path nor a baseline ({', '.join(BASELINES)})"
                )
            raise EvalError(
                f"policy={cfg.policy} does not exist; give a bundle folder (a run's policy/) or a baseline: "
                f"{', '.join(BASELINES)}"
            )
    elif cfg.run:
        path = Path(cfg.run) / "policy"
    else:
        raise EvalError("give run=runs/<experiment>/<time>, or policy=PATH (a bundle) or a baseline name")
    if not (path / "spec.json").exists() and not (path / "policy" / "spec.json").exists():
        if cfg.policy:
            raise EvalError(f"policy={cfg.policy} holds no policy bundle (spec.json); give a run's policy/")
        raise EvalError(
            f"run={cfg.run} holds no policy bundle (policy/spec.json): the run did not finish; train it to "
            "the end or pass policy=PATH to a bundle"
        )
    return path


def _check_out(out: Path, given: str | None) -> None:
    """Refuse to replace anything but an earlier evaluation: the folder is replaced whole."""
    if out.exists() and not (out.is_dir() and (out / "metrics.json").is_file()):
        raise EvalError(
            f"out={given or out} exists and is not an evaluation folder (no metrics.json); it would be "
            "replaced: choose another out="
        )


def plan(cfg: EvalConfig) -> Plan:
    """Resolve policy, env, series and range; every error a sentence naming the fix."""
    bundle = _bundle_path(cfg)
    d = cfg.data
    if bundle is not None:
        policy = load_policy(bundle)
        spec = policy.spec
        if cfg.env_group_chosen:
            raise EvalError(
                "a bundle brings its own env; override single keys (env.taker_fee=0.001), not the env or "
                "features group"
            )
        if d.timeframe and d.timeframe != spec["timeframe"]:
            raise EvalError(
                f"data.timeframe={d.timeframe} but the bundle was trained on {spec['timeframe']} bars; its "
                f"observations only mean something on {spec['timeframe']} (drop data.timeframe)"
            )
        env_kwargs = {**spec["env"], **cfg.env_overrides}
        test = spec["ranges"]["test"]
        exchange, market = d.exchange or spec["exchange"], d.market or spec.get("data_market", "spot")
        symbol, timeframe = d.symbol or spec["symbol"], spec["timeframe"]
        start, end = d.start or test[0], d.end or test[1]
        label = "policy"
        run = Path(cfg.run) if cfg.run else (bundle.parent if bundle.name == "policy" else bundle)
    else:
        missing = [k for k in ("symbol", "timeframe", "start", "end") if getattr(d, k) is None]
        if missing:
            raise EvalError(
                f"policy={cfg.policy} has no bundle to take the series from: give data.{missing[0]}= "
                "(data.symbol, data.timeframe, data.start, data.end)"
            )
        spec = None
        exchange, market = d.exchange or "binance", d.market or "spot"
        symbol, timeframe, start, end = d.symbol, d.timeframe, d.start, d.end
        env_kwargs = {**cfg.env, **cfg.env_overrides}
        if "market" not in cfg.env_overrides:
            env_kwargs["market"] = "perp" if market == "futures" else "spot"
        label = cfg.policy
        policy = None  # made per replay, seeded
        run = Path(cfg.run) if cfg.run else Path("evals")
    env_cfg = build(EnvConfig, env_kwargs, "env.")
    t0, t1 = config_time("data.start", start), config_time("data.end", end)
    if t0 >= t1:
        raise EvalError(f"data.start={start} must be before data.end={end}")
    name = cfg.name or f"{label}_{file_symbol(symbol)}_{timeframe}_{iso(t0)[:10]}_{iso(t1)[:10]}"
    out = Path(cfg.out) if cfg.out else run / "eval" / name
    _check_out(out, cfg.out)
    return Plan(label, policy, spec, dataclasses.asdict(env_cfg), exchange, market, symbol, timeframe,
                t0, t1, d.root, out)  # fmt: skip


def _fill_command(p: Plan, start: int) -> str:
    if p.exchange == "synthetic":
        return "python -m data synth ... (or python train.py, which generates its synthetic market)"
    return (
        f"python -m data download exchange={p.exchange} market={p.market} symbol={p.symbol} "
        f"timeframe={p.timeframe} start={iso(start)} end={iso(p.end)}"
    )


def load(p: Plan) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The bars of the range with the features' warm-up before it, and funding for a perp."""
    from agents.training import history_bars

    cfg = EnvConfig.from_kwargs(p.env_kwargs)
    first = p.start - history_bars(cfg) * timeframe_ms(p.timeframe)
    try:
        bars = load_bars(p.symbol, p.timeframe, exchange=p.exchange, market=p.market, start=first, end=p.end,
                         root=p.root).to_frame()  # fmt: skip
    except DataError as exc:
        raise EvalError(
            f"the store ({p.root or 'data/store or $KLINEGYM_DATA'}) has no {p.exchange} {p.market} "
            f"{p.symbol} {p.timeframe} bars in {iso(first)} (with warm-up) .. {iso(p.end)}; set data.root=, "
            f"or fill it with: {_fill_command(p, first)}"
        ) from exc
    bar = timeframe_ms(p.timeframe)
    if int(bars.ts.iloc[0]) > p.start or int(bars.ts.iloc[-1]) < p.end - bar:
        raise EvalError(
            f"the store has {p.symbol} {p.timeframe} only from {iso(int(bars.ts.iloc[0]))} to "
            f"{iso(int(bars.ts.iloc[-1]))}, short of {iso(first)} (with warm-up) .. {iso(p.end)}; fill it "
            f"with: {_fill_command(p, first)}"
        )
    funding = None
    if cfg.market == "perp":
        f = load_funding(
            p.symbol, exchange=p.exchange, market=p.market, start=first, end=p.end + 1, root=p.root
        )
        funding = f.to_frame() if len(f) else None
    return bars, funding


def _baseline(name: str, env_kwargs: dict[str, Any], seed: int):
    cfg = EnvConfig.from_kwargs(env_kwargs)
    values = cfg.action_values if cfg.action_type == "discrete" else None
    return make_baseline(name, values, cfg.shorting, seed=seed)


@dataclass
class Evaluation:
    """What :func:`evaluate` computed and wrote."""

    out: Path
    rows: pd.DataFrame
    metrics: dict[str, Any]
    baselines: dict[str, pd.DataFrame]


def evaluate(cfg: EvalConfig, progress: Any = None) -> Evaluation:
    """Replay the policy and the baselines over the plan's range and write the folder."""
    p = plan(cfg)
    bars, funding = load(p)
    try:
        probe = BatchedMarketReplayEnv(num_envs=1, bars=bars, funding=funding, **p.env_kwargs)
    except ValueError as exc:
        raise EvalError(f"cannot build the env on {p.symbol} {p.timeframe}: {exc}") from exc
    if p.policy is not None:
        try:
            p.policy.check_env(probe, timeframe=p.timeframe)
        except BundleError as exc:
            raise EvalError(str(exc)) from exc
    names = [b for b in cfg.baselines if b != p.label]
    act = p.policy.act if p.policy is not None else _baseline(p.label, p.env_kwargs, cfg.seed).act
    runs: dict[str, pd.DataFrame] = {}
    for name in [p.label, *names]:
        if progress is not None:
            progress(name)
        policy_act = act if name == p.label else _baseline(name, p.env_kwargs, cfg.seed).act
        try:
            runs[name] = replay(policy_act, bars, funding, p.env_kwargs, p.start)
        except ReplayError as exc:
            raise EvalError(str(exc)) from exc
    rows = runs.pop(p.label)
    ppy = metrics.periods_per_year(p.timeframe)
    result = {
        "policy": replay_metrics(rows, p.timeframe),
        "baselines": {n: replay_metrics(r, p.timeframe) for n, r in runs.items()},
        "periods_per_year": ppy,
        "start": iso(int(rows["ts"].iloc[0])),
        "end": iso(int(rows["ts"].iloc[-1])),
        "bars": len(rows) - 1,
        "stopped_early": stopped_early(rows, bars, p),
        "spec": spec_summary(p),
    }
    _write(p, bars, rows, runs, result)
    return Evaluation(p.out, rows, result, runs)


def stopped_early(rows: pd.DataFrame, bars: pd.DataFrame, p: Plan) -> str | None:
    """Why the replay ended before the range did (a liquidation, or a gap in the data: one
    episode never crosses a gap), or None."""
    last = int(rows["ts"].iloc[-1])
    if last >= p.end - timeframe_ms(p.timeframe):
        return None
    if bool(rows["liquidated"].iloc[-1]) or rows["equity"].iloc[-1] <= 0:
        return f"the account was liquidated at {iso(last)}"
    after = bars.ts[bars.ts > last]
    resume = iso(int(after.iloc[0])) if len(after) else "the end of the data"
    return f"gap in the data after {iso(last)} (bars resume at {resume}); evaluate the rest separately"


def spec_summary(p: Plan) -> dict[str, Any]:
    """What the report shows of the setup: series, range, policy and every cost parameter."""
    env = p.env_kwargs
    resolved = EnvConfig.from_kwargs(env)
    return {
        "policy": p.label,
        "exchange": p.exchange,
        "market": p.market,
        "symbol": p.symbol,
        "timeframe": p.timeframe,
        "range": [iso(p.start), iso(p.end)],
        "account": env["market"],
        "costs": {
            k: env[k]
            for k in (
                "taker_fee",
                "maker_fee",
                "spread",
                "spread_bps",
                "slippage",
                "slippage_bps",
                "impact_k",
                "max_leverage",
                "maintenance_margin_rate",
                "liquidation_fee",
                "funding_rate",
                "borrow_rate",
                "initial_equity",
            )
        },
        "fee_charged": resolved.fee,
        "leverage": resolved.leverage,
        "trained_ranges": p.spec["ranges"] if p.spec else None,
        "algo": p.spec.get("algo") if p.spec else None,
    }


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as JSON can hold them (``null``, ``\"inf\"``)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def equity_frame(runs: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Equity per bar of each replay on one time axis; a replay that ended early (liquidated)
    keeps its last equity."""
    series = [pd.Series(r["equity"].to_numpy(), index=r["ts"].to_numpy(dtype=np.int64), name=n)
              for n, r in runs.items()]  # fmt: skip
    frame = pd.concat(series, axis=1).sort_index().ffill()
    frame.index = pd.to_datetime(frame.index, unit="ms", utc=True)
    return frame.rename_axis("ts").reset_index()


def _write(
    p: Plan, bars: pd.DataFrame, rows: pd.DataFrame, runs: dict[str, pd.DataFrame], result: dict
) -> None:
    from reports.html import render

    made = [d for d in (p.out.parent, *p.out.parent.parents) if not d.exists()]
    p.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.out.parent / f".{p.out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        book = ledger(rows, bars)
        book.to_parquet(tmp / "ledger.parquet", index=False)
        fills(rows).to_parquet(tmp / "trades.parquet", index=False)
        trips = round_trips(rows)
        for col in ("entry_ts", "exit_ts"):
            if col in trips:
                trips[col] = pd.to_datetime(trips[col].astype(np.int64), unit="ms", utc=True)
        trips.to_parquet(tmp / "round_trips.parquet", index=False)
        equity = equity_frame({p.label: rows, **runs})
        equity.to_parquet(tmp / "equity.parquet", index=False)
        (tmp / "metrics.json").write_text(json.dumps(json_safe(result), indent=2))
        (tmp / "report.html").write_text(render(book, trips, equity, result), encoding="utf-8")
        if p.out.exists():
            shutil.rmtree(p.out)
        tmp.rename(p.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:  # innermost first: the folders made for this output, if still empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def summary_table(result: dict[str, Any]) -> str:
    """The terminal table: the policy and each baseline, one row each."""
    cols = [
        ("total_return", "return", "{:+.2%}"), ("sharpe", "Sharpe", "{:.2f}"),
        ("sortino", "Sortino", "{:.2f}"), ("max_drawdown", "max DD", "{:.2%}"), ("trades", "trades", "{:d}"),
        ("win_rate", "win", "{:.0%}"), ("fees", "fees", "{:,.2f}"), ("funding", "funding", "{:,.2f}"),
        ("exposure", "exposure", "{:.0%}"), ("liquidations", "liq", "{:d}"),
    ]  # fmt: skip
    lines = [(result["spec"]["policy"], result["policy"])]
    lines += list(result["baselines"].items())
    width = max(len(n) for n, _ in lines) + 2
    head = "".join(f"{h:>10}" for _, h, _ in cols)
    out = [f"{'':{width}}{head}"]
    for name, m in lines:
        cells = "".join(f"{fmt.format(m[k]):>10}" for k, _, fmt in cols)
        out.append(f"{name:{width}}{cells}")
    return "\n".join(out)
