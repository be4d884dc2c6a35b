"""The evaluation report: one self-contained HTML file that works offline.

Charts are plotly figures with plotly.js embedded once in the file (no CDN): equity of the policy
and every baseline, drawdown, price with buy and sell markers, exposure, rolling Sharpe; then the
monthly returns table, the metrics table and the setup (series, range, costs). Long series are
thinned for drawing to at most :data:`MAX_POINTS` points (the last value of each stretch), so a
year of 1m bars still opens quickly; the files beside the report keep every bar.
"""

from __future__ import annotations

import calendar
import html
import json
from typing import Any

import numpy as np
import pandas as pd

MAX_POINTS = 5_000
ROLLING_DAYS = 7


def _thin(frame: pd.DataFrame) -> pd.DataFrame:
    step = max(len(frame) // MAX_POINTS, 1)
    if step == 1:
        return frame
    keep = np.unique(np.r_[np.arange(step - 1, len(frame), step), len(frame) - 1])
    return frame.iloc[keep]


def _figure(traces: list, title: str, yaxis: dict | None = None, height: int = 360):
    import plotly.graph_objects as go

    fig = go.Figure(traces)
    fig.update_layout(
        title=title, height=height, margin=dict(l=60, r=20, t=50, b=40), hovermode="x unified",
        yaxis=yaxis or {}, template="plotly_white", legend=dict(orientation="h", y=-0.15),
    )  # fmt: skip
    return fig


def figures(ledger: pd.DataFrame, equity: pd.DataFrame, periods_per_year: float, label: str) -> list:
    """The report's charts, in order."""
    import plotly.graph_objects as go

    eq = _thin(equity)
    names = [c for c in equity.columns if c != "ts"]
    width = {c: 2.5 if c == label else 1.2 for c in names}
    curves = [go.Scatter(x=eq["ts"], y=eq[c], name=c, mode="lines", line=dict(width=width[c])) for c in names]
    peak = equity.drop(columns="ts").cummax()
    dd = _thin(pd.concat([equity["ts"], equity.drop(columns="ts") / peak - 1], axis=1))
    drawdowns = [go.Scatter(x=dd["ts"], y=dd[c], name=c, mode="lines", fill="tozeroy" if c == label else None,
                            line=dict(width=width[c])) for c in names]  # fmt: skip
    px = _thin(ledger)
    price = [
        go.Scatter(x=px["ts"], y=px["close"], name="close", mode="lines", line=dict(color="#555", width=1))
    ]
    trades = ledger[ledger["trade_qty"] != 0]
    sides = (("buy", trades["trade_qty"] > 0, "triangle-up", "#16a34a"),
             ("sell", trades["trade_qty"] < 0, "triangle-down", "#dc2626"))  # fmt: skip
    for side, mask, symbol, color in sides:
        t = trades[mask]
        price.append(go.Scatter(x=t["ts"], y=t["trade_price"], name=side, mode="markers",
                                marker=dict(symbol=symbol, color=color, size=8)))  # fmt: skip
    liq = ledger[ledger["liquidation_qty"] != 0]
    if len(liq):
        price.append(go.Scatter(x=liq["ts"], y=liq["liquidation_price"], name="liquidation", mode="markers",
                                marker=dict(symbol="x", color="black", size=11)))  # fmt: skip
    notional = ledger["position"] * ledger["close"]
    exposure = pd.DataFrame(
        {"ts": ledger["ts"], "exposure": notional / ledger["equity"].where(ledger["equity"] > 0)}
    )
    ex = _thin(exposure.fillna(0.0))
    exposure_trace = [
        go.Scatter(x=ex["ts"], y=ex["exposure"], name="exposure", mode="lines", line_shape="hv")
    ]
    # a week of bars, or a tenth of a shorter replay
    window = max(min(round(periods_per_year / 365 * ROLLING_DAYS), len(equity) // 10), 2)
    days = window / (periods_per_year / 365)
    returns = equity.drop(columns="ts").pct_change()
    roll = returns.rolling(window).mean() / returns.rolling(window).std() * np.sqrt(periods_per_year)
    roll = _thin(pd.concat([equity["ts"], roll.replace([np.inf, -np.inf], np.nan)], axis=1))
    rolling = [
        go.Scatter(x=roll["ts"], y=roll[c], name=c, mode="lines", line=dict(width=width[c])) for c in names
    ]
    return [
        (
            "equity",
            _figure(curves, "Equity (quote currency), policy and baselines, every cost paid", height=420),
        ),
        ("drawdown", _figure(drawdowns, "Drawdown from the running peak", dict(tickformat=".0%"))),
        ("price", _figure(price, "Price with the policy's fills", height=420)),
        (
            "exposure",
            _figure(exposure_trace, "Exposure (position notional / equity)", dict(tickformat=".0%")),
        ),
        (
            "rolling_sharpe",
            _figure(rolling, f"Rolling Sharpe ({window:,} bars = {days:.3g} days, annualised)"),
        ),
    ]


def monthly_returns(equity: pd.DataFrame, column: str) -> pd.DataFrame:
    """Month-by-month simple returns of ``column`` (rows: years, columns: months)."""
    s = equity.set_index("ts")[column]
    month_end = s.groupby([s.index.year, s.index.month]).last()
    start = s.iloc[0]
    prev = month_end.shift(1).fillna(start)
    table = (month_end / prev - 1).unstack()
    table.index.name, table.columns.name = "year", "month"
    return table


def _fmt(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if key in ("trades", "liquidations", "max_drawdown_bars"):
        return f"{int(value):,}"
    if key in ("total_return", "cagr", "volatility", "max_drawdown", "win_rate", "exposure"):
        return f"{value:.2%}" if abs(value) < 1e4 else f"{value:.3e}"
    return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:.3e}"


METRIC_ROWS = ("total_return", "cagr", "volatility", "sharpe", "sortino", "calmar", "max_drawdown",
               "max_drawdown_bars", "win_rate", "profit_factor", "trades", "average_trade", "trades_per_day",
               "turnover", "fees", "funding", "exposure", "liquidations")  # fmt: skip


def _metrics_table(result: dict[str, Any]) -> str:
    runs = {result["spec"]["policy"]: result["policy"], **result["baselines"]}
    head = "".join(f"<th>{html.escape(n)}</th>" for n in runs)
    body = "".join(
        f"<tr><th>{k}</th>" + "".join(f"<td>{_fmt(m[k], k)}</td>" for m in runs.values()) + "</tr>"
        for k in METRIC_ROWS
    )
    return f"<table class='metrics'><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>"


def _monthly_table(table: pd.DataFrame) -> str:
    head = "".join(f"<th>{calendar.month_abbr[m]}</th>" for m in table.columns)
    rows = []
    for year, row in table.iterrows():
        cells = "".join(
            "<td></td>" if pd.isna(v) else f"<td class='{'pos' if v >= 0 else 'neg'}'>{v:+.2%}</td>"
            for v in row
        )
        rows.append(f"<tr><th>{year}</th>{cells}</tr>")
    body = "".join(rows)
    return f"<table class='monthly'><thead><tr><th>year</th>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1200px; color: #111; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 8px 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e5e7eb; text-align: right; }
th:first-child { text-align: left; } td.pos { color: #15803d; } td.neg { color: #b91c1c; }
pre { background: #f6f8fa; padding: 12px; font-size: 0.85em; overflow-x: auto; }
"""


def render(ledger: pd.DataFrame, trips: pd.DataFrame, equity: pd.DataFrame, result: dict[str, Any]) -> str:
    """The report as one HTML string (plotly.js embedded once)."""
    spec = result["spec"]
    label = spec["policy"]
    charts = []
    for i, (key, fig) in enumerate(figures(ledger, equity, result["periods_per_year"], label)):
        charts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"chart-{key}",
                                  config={"displaylogo": False, "responsive": True}))  # fmt: skip
    title = f"{label} on {spec['symbol']} {spec['timeframe']}, {result['start'][:10]} .. {result['end'][:10]}"
    m = result["policy"]
    headline = (
        f"{m['total_return']:+.2%} net of costs over {result['bars']:,} bars, Sharpe {m['sharpe']:.2f}, "
        f"max drawdown {m['max_drawdown']:.2%}, {m['trades']:,} round trips; buy-and-hold "
        f"{result['baselines']['buy_and_hold']['total_return']:+.2%}"
        if "buy_and_hold" in result["baselines"]
        else f"{m['total_return']:+.2%} net of costs over {result['bars']:,} bars"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p id="headline">{html.escape(headline)}</p>
{charts[0]}
{charts[1]}
{charts[2]}
{charts[3]}
{charts[4]}
<h2>Monthly returns ({html.escape(label)})</h2>
{_monthly_table(monthly_returns(equity, label))}
<h2>Metrics</h2>
<p>Sharpe, Sortino and CAGR with {result["periods_per_year"]:,.0f} periods a year (365-day year);
win rate, profit factor and average trade over round trips ({len(trips):,}).</p>
{_metrics_table(result)}
<h2>Setup</h2>
<pre>{html.escape(json.dumps(spec, indent=2))}</pre>
</body></html>
"""
