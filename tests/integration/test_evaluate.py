"""Replay evaluation end to end: a trained bundle and baselines over the test range, the ledger
recomputed from the fills and the bars, the metrics, bad input, and the report in a real browser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agents.config import TrainConfig
from agents.training import train
from data.store import SeriesKey, Store
from data.synthetic import SyntheticConfig, generate
from reports import metrics
from reports.evaluation import EvalConfig, EvalData, EvalError, evaluate
from reports.replay import FILL_COLUMNS, LEDGER_COLUMNS
from tests.integration.test_training import ROOT, SMALL, composed

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    values = composed([*SMALL, f"data.root={tmp / 'store'}", "seed=3"])
    train(TrainConfig.from_dict(values), tmp / "run", values)
    return tmp / "run", str(tmp / "store")


@pytest.fixture(scope="module")
def evaluated(run):
    run_dir, store = run
    return evaluate(EvalConfig(run=str(run_dir), data=EvalData(root=store)))


def recompute_equity(trades: pd.DataFrame, ledger: pd.DataFrame, initial: float, charges: bool) -> np.ndarray:
    """Equity per ledger bar from the fills and the closes: cash moves by each fill's notional and
    fee; with ``charges``, also by the ledger's funding, borrow interest and isolated-margin top-up."""
    signed = np.where(trades["side"] == "buy", trades["qty"], -trades["qty"])
    per_fill = pd.DataFrame(
        {"ts": trades["ts"], "dq": signed, "cash": -signed * trades["price"] - trades["fee"]}
    )
    by_bar = per_fill.groupby("ts").sum().reindex(ledger["ts"], fill_value=0.0)
    cash = initial + by_bar["cash"].cumsum().to_numpy()
    if charges:
        cash += (-ledger["funding"] - ledger["borrow"] + ledger["top_up"]).cumsum().to_numpy()
    position = by_bar["dq"].cumsum().to_numpy()
    return cash + position * ledger["close"].to_numpy()


def test_evaluation_writes_ledger_fills_metrics_and_report_over_the_test_range(run, evaluated):
    run_dir, _ = run
    out = evaluated.out
    assert out.parent == run_dir / "eval" and out.name == "policy_SYNUSDT_1m_2024-01-11_2024-01-13"
    for name in ("ledger.parquet", "trades.parquet", "round_trips.parquet", "metrics.json", "report.html"):
        assert (out / name).is_file(), name
    ledger = pd.read_parquet(out / "ledger.parquet")
    assert list(ledger.columns) == list(LEDGER_COLUMNS)
    assert list(pd.read_parquet(out / "trades.parquet").columns) == list(FILL_COLUMNS)
    # the first decision is at the test range's start, and the replay runs to its end
    assert ledger["ts"].iloc[0] == pd.Timestamp("2024-01-11T02:00Z")
    assert ledger["ts"].iloc[-1] == pd.Timestamp("2024-01-12T23:59Z")
    assert json.loads((out / "metrics.json").read_text())["stopped_early"] is None
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["baselines"]) == {
        "buy_and_hold",
        "flat",
        "random",
        "sma_crossover",
        "rsi_reversion",
        "zscore_reversion",
    }
    assert m["periods_per_year"] == 525_600 and m["bars"] == len(ledger) - 1
    keys = (
        "total_return cagr volatility sharpe sortino calmar max_drawdown max_drawdown_bars win_rate "
        "profit_factor trades average_trade trades_per_day turnover fees funding exposure liquidations"
    )
    for key in keys.split():
        assert key in m["policy"] and key in m["baselines"]["buy_and_hold"], key
    assert m["baselines"]["flat"]["total_return"] == 0.0 and m["baselines"]["flat"]["fees"] == 0.0


def test_the_ledger_equity_is_recomputed_from_the_fills_and_the_bars_alone(evaluated):
    out = evaluated.out
    ledger = pd.read_parquet(out / "ledger.parquet")
    trades = pd.read_parquet(out / "trades.parquet")
    assert len(trades) > 0 and (trades["reason"] == "policy").all()
    equity = recompute_equity(trades, ledger, 10_000.0, charges=False)  # spot: no funding, no borrow
    np.testing.assert_allclose(equity, ledger["equity"], rtol=1e-9)
    np.testing.assert_allclose(ledger["fee"].sum(), trades["fee"].sum(), rtol=1e-12)


def test_metrics_agree_with_the_ledger(evaluated):
    ledger = pd.read_parquet(evaluated.out / "ledger.parquet")
    m = evaluated.metrics["policy"]
    e = ledger["equity"].to_numpy()
    assert m["total_return"] == pytest.approx(e[-1] / e[0] - 1, rel=1e-12)
    assert m["max_drawdown"] == pytest.approx(float(np.max(1 - e / np.maximum.accumulate(e))), rel=1e-12)
    assert m["sharpe"] == pytest.approx(metrics.sharpe(np.diff(e) / e[:-1], 525_600), rel=1e-12)
    assert m["fees"] == pytest.approx(ledger["fee"].sum(), rel=1e-9)


def test_a_perp_baseline_with_liquidations_keeps_the_ledger_identity(tmp_path):
    bars, funding = generate(SyntheticConfig(seed=9, bars=6_000))
    store = Store(tmp_path / "store")
    store.write(SeriesKey.of("synthetic", "futures", "SYN/USDT", "1m"), bars)
    store.write(SeriesKey.of("synthetic", "futures", "SYN/USDT", "funding"), funding)
    data = EvalData(
        exchange="synthetic",
        market="futures",
        symbol="SYN/USDT",
        timeframe="1m",
        start="2024-01-02",
        end="2024-01-05",
        root=str(tmp_path / "store"),
    )
    env = composed([])["env"]
    # 20x leverage and a random policy: liquidations, funding and the margin floor all happen
    result = evaluate(
        EvalConfig(
            policy="random",
            data=data,
            env=env,
            seed=1,
            baselines=("buy_and_hold",),
            env_overrides={"max_leverage": 20.0, "norm_window": 120},
            out=str(tmp_path / "o"),
        )
    )
    ledger = pd.read_parquet(result.out / "ledger.parquet")
    trades = pd.read_parquet(result.out / "trades.parquet")
    assert result.metrics["spec"]["account"] == "perp"  # futures data: a perp account
    assert ledger["funding"].abs().sum() > 0
    if ledger["liquidated"].any():
        assert (trades["reason"] == "liquidation").sum() == ledger["liquidated"].sum()
    equity = recompute_equity(trades, ledger, 10_000.0, charges=True)
    np.testing.assert_allclose(equity, ledger["equity"], rtol=1e-9, atol=1e-6)


def test_a_gap_in_the_range_is_reported_as_an_early_stop(tmp_path):
    bars, _ = generate(SyntheticConfig(seed=9, bars=6_000))
    store = Store(tmp_path / "store")
    store.write(SeriesKey.of("synthetic", "spot", "SYN/USDT", "1m"), bars.drop(index=range(4000, 4030)))
    data = EvalData(exchange="synthetic", symbol="SYN/USDT", timeframe="1m", start="2024-01-02",
                    end="2024-01-05", root=str(tmp_path / "store"))  # fmt: skip
    env = {**composed([])["env"], "norm_window": 120}
    result = evaluate(
        EvalConfig(policy="buy_and_hold", data=data, env=env, baselines=(), out=str(tmp_path / "o"))
    )
    assert result.metrics["stopped_early"] == (
        "gap in the data after 2024-01-03T18:39:00Z (bars resume at 2024-01-03T19:10:00Z); evaluate the rest "
        "separately"
    )


def test_a_stress_override_changes_the_costs_but_not_the_decisions_of_buy_and_hold(run, tmp_path):
    run_dir, store = run
    data = EvalData(symbol="SYN/USDT", timeframe="1m", exchange="synthetic", start="2024-01-11T02:00",
                    end="2024-01-13", root=store)  # fmt: skip

    def hold(out: str, **env_overrides):
        env = composed([])["env"]
        config = EvalConfig(policy="buy_and_hold", run=str(run_dir), out=str(tmp_path / out), baselines=(),
                            data=data, env=env, env_overrides=env_overrides)  # fmt: skip
        return evaluate(config)

    base, dear = hold("a"), hold("b", taker_fee=0.01)
    # the same decisions every bar, ten times the fee rate: more than 9x the fees, less return
    np.testing.assert_array_equal(dear.rows["action"], base.rows["action"])
    assert dear.metrics["policy"]["fees"] > 9 * base.metrics["policy"]["fees"]
    assert dear.metrics["policy"]["total_return"] < base.metrics["policy"]["total_return"]
    assert dear.metrics["spec"]["costs"]["taker_fee"] == 0.01


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda run, store, tmp: EvalConfig(run=str(tmp)), "holds no policy bundle (policy/spec.json)"),
        (
            lambda run, store, tmp: EvalConfig(
                run=str(run), data=EvalData(root=store, start="2023-01-01", end="2023-02-01")
            ),
            "has no synthetic spot SYN/USDT 1m bars in",
        ),
        (
            lambda run, store, tmp: EvalConfig(run=str(run), data=EvalData(root=store, timeframe="5m")),
            "data.timeframe=5m but the bundle was trained on 1m bars",
        ),
        (lambda run, store, tmp: EvalConfig(policy="buy_and_hold"), "give data.symbol="),
        (lambda run, store, tmp: EvalConfig(policy="nonesuch"), "neither a bundle path nor a baseline"),
    ],
    ids=[
        "run-without-bundle",
        "range-outside-the-store",
        "other-timeframe",
        "baseline-without-data",
        "unknown-policy",
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(run, tmp_path, make, message):
    run_dir, store = run
    with pytest.raises(EvalError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate(make(run_dir, store, tmp_path))
    assert not list(tmp_path.rglob("*.parquet"))


def test_a_write_that_fails_leaves_no_half_written_folder_nor_the_folders_made_for_it(
    run, tmp_path, monkeypatch
):
    import reports.html

    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(reports.html, "render", broken)
    run_dir, store = run
    with pytest.raises(OSError, match="No space left"):
        evaluate(EvalConfig(run=str(run_dir), data=EvalData(root=store), out=str(tmp_path / "a" / "b" / "c")))
    assert list(tmp_path.iterdir()) == []


def test_a_bundle_whose_features_the_series_cannot_feed_is_refused(tmp_path):
    features = "[log_return,range,volatility,taker_imbalance]"
    values = composed([*SMALL, f"data.root={tmp_path / 'store'}", f"env.features={features}"])
    train(TrainConfig.from_dict(values), tmp_path / "run", values)
    # the same bars as a ccxt download stores them: no taker_buy_base column
    store = Store(tmp_path / "store")
    bars = store.read(SeriesKey.of("synthetic", "spot", "SYN/USDT", "1m")).drop(columns=["taker_buy_base"])
    store.write(SeriesKey.of("synthetic", "spot", "CCXT/USDT", "1m"), bars)
    with pytest.raises(EvalError, match="feature 'taker_imbalance' needs taker_buy_base in the bars"):
        evaluate(
            EvalConfig(
                run=str(tmp_path / "run"), data=EvalData(root=str(tmp_path / "store"), symbol="CCXT/USDT")
            )
        )
    assert not (tmp_path / "run" / "eval").exists()


def test_evaluate_py_prints_the_table_and_the_eval_dir_last(run, tmp_path):
    run_dir, store = run
    env = {**os.environ, "KLINEGYM_DATA": store}
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "evaluate.py"),
            f"run={run_dir}",
            "env.taker_fee=0.002",
            f"out={tmp_path / 'cli'}",
            "baselines=[buy_and_hold,flat]",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "eval_dir: cli"
    assert (
        lines[1].startswith("policy ")
        and lines[2].startswith("buy_and_hold ")
        and lines[3].startswith("flat ")
    )
    m = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert m["spec"]["costs"]["taker_fee"] == 0.002 and set(m["baselines"]) == {"buy_and_hold", "flat"}
    bad = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), f"run={run_dir}", "env.taker_fe=0.1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert bad.returncode != 0 and "taker_fe" in bad.stderr


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_report_renders_every_chart_in_headless_chromium_without_console_errors(evaluated):
    from playwright.sync_api import sync_playwright

    report = evaluated.out / "report.html"
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on(
            "request",
            lambda req: errors.append(f"network: {req.url}") if req.url.startswith("http") else None,
        )
        page.goto(report.as_uri(), wait_until="load", timeout=60_000)
        for chart in ("equity", "drawdown", "price", "exposure", "rolling_sharpe"):
            page.wait_for_selector(f"#chart-{chart} .main-svg", timeout=30_000)
            assert page.locator(f"#chart-{chart} .scatterlayer .trace").count() >= 1, chart
        assert page.locator("table.metrics tbody tr").count() == 18
        assert "net of costs" in page.locator("#headline").inner_text()
        artifacts = ROOT / "tests" / "artifacts"
        artifacts.mkdir(exist_ok=True)
        page.screenshot(path=str(artifacts / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    shutil.copy(report, ROOT / "tests" / "artifacts" / "report.html")


def test_walk_forward_trains_each_fold_tests_it_on_the_next_window_and_chains_the_test_replays(tmp_path):
    from tests.integration.test_training import run_train

    folds = [
        "+walk_forward=rolling", "walk_forward.folds=2", "walk_forward.train_days=4",
        "walk_forward.val_days=1", "walk_forward.test_days=1", "trainer.total_timesteps=512",
    ]  # fmt: skip
    out = run_train(folds, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / out.stdout.strip().splitlines()[-1].split(": ", 1)[1]
    m = json.loads((run_dir / "walk_forward" / "metrics.json").read_text())
    f0, f1 = m["folds"]
    # fold 1 is fold 0 moved on by the test window; each test range follows its validation range
    assert (f0["train_start"], f1["train_start"]) == ("2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z")
    assert f0["test_start"] == "2024-01-06T04:00:00Z" and f0["test_end"] == "2024-01-07T04:00:00Z"
    for k, f in enumerate((f0, f1)):
        spec = json.loads((run_dir / f"fold_{k}" / "policy" / "spec.json").read_text())
        assert spec["ranges"]["test"] == [f["test_start"], f["test_end"]]
        assert Path(f["eval_dir"]).parent == run_dir / f"fold_{k}" / "eval"
    # the combined curve compounds the two test replays
    r0, r1 = f0["policy"]["total_return"], f1["policy"]["total_return"]
    assert m["policy"]["total_return"] == pytest.approx((1 + r0) * (1 + r1) - 1, rel=1e-9)
    hold = [f["buy_and_hold"]["total_return"] for f in (f0, f1)]
    assert m["baselines"]["buy_and_hold"]["total_return"] == pytest.approx((1 + hold[0]) * (1 + hold[1]) - 1)
    equity = pd.read_parquet(run_dir / "walk_forward" / "equity.parquet")
    assert len(equity) == m["bars"] + 1 and equity["policy"].iloc[0] == 10_000.0
    assert (run_dir / "walk_forward" / "report.html").stat().st_size > 100_000


def test_a_baseline_on_real_binance_perp_bars_pays_real_funding_and_keeps_the_ledger_identity(
    shared_data, tmp_path
):
    from data.importer import import_files

    store = Store(tmp_path / "store")
    btc = shared_data / "binance" / "futures_um" / "BTCUSDT"
    import_files(store, SeriesKey.of("binance", "futures", "BTC/USDT", "5m"), [btc / "5m.parquet"])
    import_files(store, SeriesKey.of("binance", "futures", "BTC/USDT", "funding"), [btc / "funding.parquet"])
    data = EvalData(exchange="binance", market="futures", symbol="BTC/USDT", timeframe="5m",
                    start="2025-03-01", end="2025-04-01", root=str(tmp_path / "store"))  # fmt: skip
    env = {**composed([])["env"], "norm_window": 288}
    config = EvalConfig(policy="sma_crossover", data=data, env=env, baselines=("buy_and_hold", "flat"),
                        env_overrides={"max_leverage": 1.0}, out=str(tmp_path / "o"))  # fmt: skip
    result = evaluate(config)
    ledger = pd.read_parquet(result.out / "ledger.parquet")
    trades = pd.read_parquet(result.out / "trades.parquet")
    assert result.metrics["spec"]["account"] == "perp" and result.metrics["bars"] == 31 * 288 - 1
    assert (ledger["funding"] != 0).sum() > 31 * 3 * 0.5  # real 8-hourly funding, paid or received
    np.testing.assert_allclose(recompute_equity(trades, ledger, 10_000.0, charges=True), ledger["equity"],
                               rtol=1e-9)  # fmt: skip
    # buy-and-hold (exposure 1 at max_leverage 1: one unit of notional, held) earns the month's
    # price move, less one fill's costs and the funding paid
    closes = ledger["close"].to_numpy()
    hold = result.metrics["baselines"]["buy_and_hold"]
    move = closes[-1] / closes[0] - 1
    assert abs(hold["total_return"] - move) < 0.01, (hold["total_return"], move)
