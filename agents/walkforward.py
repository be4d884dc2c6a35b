"""Walk-forward validation: train on rolling windows, test each model on the window after it.

``python train.py +walk_forward=rolling`` runs :func:`walk_forward`. Each fold is a complete
training run in ``fold_K/`` (its own train / validation / test ranges, embargoed) followed by the
replay evaluation of its bundle on its test range (``fold_K/eval/...``). The test replays are then
chained: each fold's per-bar returns, in order, compound into one out-of-sample equity curve from
the initial equity, and the baselines are chained the same way. ``walk_forward/`` gets
``metrics.json`` (the combined metrics, and each fold's), ``equity.parquet``, ``folds.json`` and
``report.html``.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agents.config import ConfigError, DataConfig, TrainConfig, WalkForwardConfig
from data.schema import DAY_MS, iso, parse_time, timeframe_ms
from reports import metrics

log = logging.getLogger(__name__)


def fold_ranges(wf: WalkForwardConfig, d: DataConfig) -> list[dict[str, str]]:
    """The ``data.*_start``/``*_end`` values of every fold (ISO strings)."""
    embargo = d.embargo_bars * timeframe_ms(d.timeframe)
    start = parse_time(wf.start or d.train_start)
    step = (wf.step_days or wf.test_days) * DAY_MS
    folds = []
    for k in range(wf.folds):
        t0 = int(start + k * step)
        t1 = int(t0 + wf.train_days * DAY_MS)
        v0 = t1 + embargo
        v1 = int(v0 + wf.val_days * DAY_MS)
        s0 = v1 + embargo
        s1 = int(s0 + wf.test_days * DAY_MS)
        folds.append({
            "train_start": iso(t0), "train_end": iso(t1), "val_start": iso(v0), "val_end": iso(v1),
            "test_start": iso(s0), "test_end": iso(s1),
        })  # fmt: skip
    return folds


def chain(curves: list[pd.DataFrame], column: str, initial: float) -> np.ndarray:
    """One equity curve from consecutive replays: each replay's per-bar returns, compounded in
    order from ``initial`` (each replay's own first row is its starting equity, not a bar)."""
    out = [initial]
    for c in curves:
        e = c[column].to_numpy(dtype=float)
        out.extend(out[-1] * e[1:] / e[0])
    return np.asarray(out)


def walk_forward(
    config: TrainConfig,
    values: dict[str, Any],
    run_dir: Path,
    train_fn: Callable[[TrainConfig, Path, dict[str, Any]], Any],
) -> dict[str, Any]:
    """Train and evaluate every fold, then write the combined out-of-sample report."""
    from agents.training import ensure_data
    from reports.evaluation import EvalConfig, EvalData, evaluate, json_safe
    from reports.html import render
    from reports.replay import round_trips

    wf = config.walk_forward
    assert wf is not None
    folds = fold_ranges(wf, config.data)
    base = {k: v for k, v in values.items() if k != "walk_forward"}
    # one store fill for every fold (a synthetic market is generated once, from the first fold)
    span = {**base["data"], **folds[0], "test_end": folds[-1]["test_end"]}
    try:
        overall = DataConfig(
            **{**span, "val_start": folds[0]["val_start"], "test_start": folds[-1]["test_start"]}
        )
    except ConfigError as exc:
        raise ConfigError(f"walk_forward: {exc}") from exc
    env = config.env
    try:
        ensure_data(
            overall, env.market == "perp" and (overall.market == "futures" or overall.exchange == "synthetic")
        )
    except ConfigError as exc:
        raise ConfigError(
            f"walk_forward.folds={wf.folds} run to {folds[-1]['test_end']} (the last fold's test end): {exc}"
        ) from exc

    evals = []
    for k, ranges in enumerate(folds):
        fold_values = copy.deepcopy(base)
        fold_values["data"].update(ranges)
        fold_dir = run_dir / f"fold_{k}"
        log.info("fold %d/%d: train %s .. %s, test %s .. %s", k + 1, len(folds), ranges["train_start"],
                 ranges["train_end"], ranges["test_start"], ranges["test_end"])  # fmt: skip
        train_fn(TrainConfig.from_dict(fold_values), fold_dir, fold_values)
        evals.append(evaluate(EvalConfig(run=str(fold_dir), data=EvalData(root=config.data.root))))

    initial = env.initial_equity
    label = "policy"
    names = list(evals[0].baselines)
    replays = {label: [e.rows for e in evals], **{n: [e.baselines[n] for e in evals] for n in names}}
    first_ts = evals[0].rows["ts"].iloc[0]
    ts = np.r_[first_ts, np.concatenate([r["ts"].to_numpy()[1:] for r in replays[label]])]
    equity = pd.DataFrame({"ts": pd.to_datetime(ts.astype(np.int64), unit="ms", utc=True)})
    for name, rows in replays.items():
        equity[name] = chain(rows, "equity", initial)
    ppy = metrics.periods_per_year(config.data.timeframe)

    def combined(name: str) -> dict[str, Any]:
        """Metrics of the chained curve; money amounts (fees, funding, turnover, round-trip PnL)
        of each fold are scaled by the chained equity at the fold's start over the initial."""
        rows, e = replays[name], equity[name].to_numpy()
        starts = np.r_[0, np.cumsum([len(r) - 1 for r in rows])[:-1]]
        scale = e[starts] / initial
        pnls = [round_trips(r)["pnl"].to_numpy() * s for r, s in zip(rows, scale, strict=True)]
        return metrics.summary(
            e,
            np.concatenate([r["position"].to_numpy()[1:] for r in rows]),
            np.concatenate(pnls),
            periods_per_year=ppy,
            fees=float(sum(r["fees"].iloc[-1] * s for r, s in zip(rows, scale, strict=True))),
            funding=float(sum(r["funding"].iloc[-1] * s for r, s in zip(rows, scale, strict=True))),
            turnover_notional=float(
                sum(r["turnover"].iloc[-1] * s for r, s in zip(rows, scale, strict=True))
            ),
            liquidations=int(sum(r["liquidated"].sum() for r in rows)),
        )

    result = {
        "policy": combined(label),
        "baselines": {n: combined(n) for n in names},
        "periods_per_year": ppy,
        "start": iso(int(evals[0].rows["ts"].iloc[0])),
        "end": iso(int(evals[-1].rows["ts"].iloc[-1])),
        "bars": len(equity) - 1,
        "spec": {
            **evals[0].metrics["spec"],
            "policy": label,
            "walk_forward": folds,
            "range": [folds[0]["test_start"], folds[-1]["test_end"]],
        },
        "folds": [
            {
                **f,
                "eval_dir": str(e.out),
                "policy": e.metrics["policy"],
                "buy_and_hold": e.metrics["baselines"].get("buy_and_hold"),
            }
            for f, e in zip(folds, evals, strict=True)
        ],
    }
    out = run_dir / "walk_forward"
    out.mkdir(parents=True, exist_ok=True)
    equity.to_parquet(out / "equity.parquet", index=False)
    (out / "metrics.json").write_text(json.dumps(json_safe(result), indent=2))
    (out / "folds.json").write_text(json.dumps(json_safe(result["folds"]), indent=2))
    ledgers = pd.concat([pd.read_parquet(e.out / "ledger.parquet") for e in evals], ignore_index=True)
    trips = pd.concat([pd.read_parquet(e.out / "round_trips.parquet") for e in evals], ignore_index=True)
    (out / "report.html").write_text(render(ledgers, trips, equity, result), encoding="utf-8")
    return result
