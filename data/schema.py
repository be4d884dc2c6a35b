"""Names, units and columns shared by everything that reads or writes market data.

Conventions (the contract of the store):

- ``ts`` is int64 milliseconds since the Unix epoch, UTC. For bars it is the bar's *open* time.
- Bars: ``open high low close volume`` float64 (``volume`` in the base asset), and the optional
  ``quote_volume trades taker_buy_base`` float64, NaN where the source did not give them.
  ``trades`` is a count kept as float64 so that "unknown" can be NaN without a masked array.
- Funding: ``ts rate mark_price`` (``rate`` per funding interval; longs pay when positive).
- Trades: ``ts price qty is_buyer_maker``.

A *series* is one of those tables for one exchange, market, symbol and bar spec. The bar spec is
a timeframe (``1m``), a volume bar (``volume-10``: a bar every 10 base units) or a dollar bar
(``dollar-1000000``: a bar every 1e6 quote units); ``funding`` and ``trades`` name the other kinds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

BAR_COLUMNS: tuple[str, ...] = ("ts", "open", "high", "low", "close", "volume")
OPTIONAL_BAR_COLUMNS: tuple[str, ...] = ("quote_volume", "trades", "taker_buy_base")
ALL_BAR_COLUMNS: tuple[str, ...] = BAR_COLUMNS + OPTIONAL_BAR_COLUMNS
FUNDING_COLUMNS: tuple[str, ...] = ("ts", "rate", "mark_price")
TRADE_COLUMNS: tuple[str, ...] = ("ts", "price", "qty", "is_buyer_maker")

MARKETS: tuple[str, ...] = ("spot", "futures")
"""``spot``, or ``futures`` for linear (USD-M) perpetual futures."""

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS
# Weekly bars open on Monday 00:00 UTC; the epoch was a Thursday, so they sit 4 days off it.
WEEK_ORIGIN_MS = 4 * DAY_MS

TIMEFRAMES: dict[str, int] = {
    "1s": 1_000,
    "1m": MINUTE_MS,
    "3m": 3 * MINUTE_MS,
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS,
    "1h": HOUR_MS,
    "2h": 2 * HOUR_MS,
    "4h": 4 * HOUR_MS,
    "6h": 6 * HOUR_MS,
    "8h": 8 * HOUR_MS,
    "12h": 12 * HOUR_MS,
    "1d": DAY_MS,
    "3d": 3 * DAY_MS,
    "1w": WEEK_MS,
}

DAYS_PER_YEAR = 365
"""Crypto trades every day: annualisation uses 365 days, never 252."""


def bars_per_year(bar_ms: int) -> float:
    """Bars of ``bar_ms`` in a 365-day year: 525,600 for 1m bars."""
    return DAYS_PER_YEAR * DAY_MS / bar_ms


FUNDING = "funding"
TRADES = "trades"
_INFO_BAR = re.compile(r"^(volume|dollar)-([0-9]+(?:\.[0-9]+)?)$")


def timeframe_ms(timeframe: str) -> int:
    """Length of a timeframe in ms; a clear error names the timeframes that exist."""
    try:
        return TIMEFRAMES[timeframe]
    except KeyError:
        raise ValueError(
            f"timeframe {timeframe!r} is not supported; choose one of {', '.join(TIMEFRAMES)}"
        ) from None


def timeframe_origin(timeframe: str) -> int:
    """The ts every bar of this timeframe is aligned to, modulo its length."""
    return WEEK_ORIGIN_MS if timeframe == "1w" else 0


@dataclass(frozen=True)
class BarSpec:
    """How bars are cut: by time (``kind='time'``), or every ``size`` base (``volume``) or quote
    (``dollar``) units traded."""

    kind: str
    size: float
    name: str

    @property
    def is_time(self) -> bool:
        return self.kind == "time"

    @property
    def ms(self) -> int:
        """Bar length in ms (time bars only)."""
        if not self.is_time:
            raise ValueError(f"{self.name} bars have no fixed length")
        return int(self.size)


def parse_bar_spec(name: str) -> BarSpec:
    """``1m`` -> a 60,000 ms time bar; ``volume-10`` / ``dollar-1000000`` -> information bars."""
    if name in TIMEFRAMES:
        return BarSpec("time", float(TIMEFRAMES[name]), name)
    m = _INFO_BAR.match(name)
    if m and float(m.group(2)) > 0:
        return BarSpec(m.group(1), float(m.group(2)), name)
    if re.fullmatch(r"[0-9]+[smhdwM]", name):
        timeframe_ms(name)  # raises the error that lists the timeframes
    raise ValueError(
        f"bar spec {name!r} is not supported; use a timeframe ({', '.join(TIMEFRAMES)}), "
        "'volume-N' (a bar every N base units) or 'dollar-N' (a bar every N quote units)"
    )


def file_symbol(symbol: str) -> str:
    """The file-safe form of a symbol: ``BTC/USDT``, ``BTC/USDT:USDT``, ``btcusdt`` -> ``BTCUSDT``."""
    base = symbol.split(":", 1)[0]
    safe = re.sub(r"[^A-Za-z0-9]", "", base).upper()
    if not safe:
        raise ValueError(f"symbol {symbol!r} has no letters or digits")
    return safe


def ccxt_symbol(symbol: str, market: str) -> str:
    """The ccxt form for a market: ``BTC/USDT`` on spot, ``BTC/USDT:USDT`` on linear futures."""
    if "/" not in symbol:
        raise ValueError(f"symbol {symbol!r} must be given in ccxt form with a slash, e.g. 'BTC/USDT'")
    if market == "futures" and ":" not in symbol:
        return f"{symbol}:{symbol.split('/', 1)[1]}"
    return symbol


def check_market(market: str) -> str:
    if market not in MARKETS:
        raise ValueError(f"market {market!r} is not supported; choose one of {', '.join(MARKETS)}")
    return market


def parse_time(value: str | int | float | datetime | None, name: str | None = None) -> int | None:
    """A time as int ms UTC. Accepts ISO dates and datetimes (naive means UTC) and epoch ms.
    ``name`` is the key the value came from, for the message when it is not a time."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, (int, float)):
        return int(value)
    else:
        text = str(value).strip()
        if re.fullmatch(r"-?[0-9]+", text):
            return int(text)
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            # '2024-04-31' has the form of a date: say what is wrong with it
            why = f" ({exc})" if re.match(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text) else ""
            shown = f"{name}={value!r}" if name else f"time {value!r}"
            raise ValueError(
                f"{shown} is not a valid date{why}; give an ISO date ('2024-01-01', "
                "'2024-01-01T12:00') or epoch milliseconds"
            ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return round(dt.timestamp() * 1000)


def iso(ts_ms: int) -> str:
    """``1704067200000`` -> ``2024-01-01T00:00:00Z`` (milliseconds shown only when present)."""
    dt = datetime.fromtimestamp(int(ts_ms) / 1000, tz=timezone.utc)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if ts_ms % 1000:
        text += f".{int(ts_ms) % 1000:03d}"
    return text + "Z"
