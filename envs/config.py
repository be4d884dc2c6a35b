"""The environment's configuration: one frozen dataclass, checked at construction.

Field names are the keyword arguments of ``gymnasium.make("klinegym/MarketReplay-v0", ...)``
and the keys of the Hydra ``env`` group. A value that cannot work fails here with the field's
name and what it accepts.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from data.config import closest
from envs.features import FEATURES

MARKETS = ("spot", "perp")
SLIPPAGE_MODELS = ("none", "fixed_bps", "sqrt_impact")
SPREAD_MODELS = ("fixed", "estimated")
ACTION_TYPES = ("discrete", "continuous")
REWARDS = ("log_return", "pnl", "differential_sharpe", "log_return_drawdown")

# Binance standard (VIP 0) taker fees: spot 0.10 %, USD-M futures 0.05 %.
DEFAULT_TAKER_FEE = {"spot": 0.001, "perp": 0.0005}
DEFAULT_MAKER_FEE = {"spot": 0.001, "perp": 0.0002}


def check_feature_names(names: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the first feature that :data:`envs.features.FEATURES` does not
    offer, with the closest names (``momentm_240`` -> ``momentum_240``), or one listed twice. Names
    are whole: ``momentum_240`` and ``momentum_1440`` are two features, not one with a parameter."""
    for name in names:
        if name not in FEATURES:
            near = closest(str(name), FEATURES)
            hint = f" did you mean {' or '.join(near)}?" if near else ""
            listed = ", ".join(FEATURES)
            raise ValueError(f"env.features: unknown feature {name!r};{hint} choose from: {listed}")
    for name in names:
        if list(names).count(name) > 1:
            raise ValueError(f"env.features: feature {name!r} is listed twice; list each feature once")


@dataclass(frozen=True)
class EnvConfig:
    """Costs, account rules, actions, observations, reward and episodes of a replay env.

    Money: ``taker_fee`` (fraction of notional; default by market), ``spread_bps`` (full
    quoted spread; a fill pays half) or ``spread="estimated"`` (causal Abdi-Ranaldo estimate from
    bars), ``slippage`` on top of it (``fixed_bps`` with ``slippage_bps``, or ``sqrt_impact``:
    ``impact_k * sigma * sqrt(|qty| / volume)``). Account: ``market`` ``spot`` (leverage 1,
    long only unless ``allow_short``, borrow at ``borrow_rate`` a year, accrued every bar) or
    ``perp`` (linear perpetual, isolated, up to ``max_leverage``, funding, liquidation at
    ``maintenance_margin_rate`` with ``liquidation_fee``). ``lot_size`` and ``min_notional`` as on
    the exchange. See docs/accounting.md for every formula.
    """

    market: str = "spot"
    initial_equity: float = 10_000.0
    taker_fee: float | None = None
    maker_fee: float | None = None
    spread: str = "fixed"
    spread_bps: float = 1.0
    spread_window: int = 60
    slippage: str = "fixed_bps"
    slippage_bps: float = 1.0
    impact_k: float = 1.0
    vol_window: int = 60
    max_leverage: float | None = None
    maintenance_margin_rate: float = 0.004
    liquidation_fee: float = 0.005
    funding_rate: float = 0.0001
    funding_interval_hours: float = 8.0
    allow_short: bool = False
    borrow_rate: float = 0.0
    lot_size: float = 0.0
    min_notional: float = 0.0
    action_type: str = "discrete"
    actions: tuple[float, ...] | None = None
    deadband: float = 0.0
    window: int = 32
    features: tuple[str, ...] | None = None
    norm_window: int = 1440
    reward: str = "log_return"
    drawdown_penalty: float = 0.5
    sharpe_eta: float = 0.01
    episode_length: int = 1440
    random_start: bool = True

    def __post_init__(self) -> None:
        def fail(name: str, accepted: str) -> None:
            raise ValueError(f"env.{name}={getattr(self, name)!r} is invalid; {accepted}")

        def choice(name: str, options: Sequence[str]) -> None:
            if getattr(self, name) not in options:
                fail(name, f"choose one of {', '.join(options)}")

        choice("market", MARKETS)
        choice("spread", SPREAD_MODELS)
        choice("slippage", SLIPPAGE_MODELS)
        choice("action_type", ACTION_TYPES)
        choice("reward", REWARDS)
        for name in (
            "taker_fee",
            "maker_fee",
            "spread_bps",
            "slippage_bps",
            "impact_k",
            "borrow_rate",
            "lot_size",
            "min_notional",
            "deadband",
            "liquidation_fee",
            "drawdown_penalty",
        ):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                fail(name, "it must be a finite number >= 0")
        if not (math.isfinite(self.initial_equity) and self.initial_equity > 0):
            fail("initial_equity", "it must be a positive number")
        if not 0 < self.maintenance_margin_rate < 1:
            fail("maintenance_margin_rate", "it must lie in (0, 1), e.g. 0.004 for Binance BTCUSDT tier 1")
        if not math.isfinite(self.funding_rate):
            fail("funding_rate", "it must be a finite number (rate per funding interval)")
        if not self.funding_interval_hours > 0:
            fail("funding_interval_hours", "it must be positive (8 on Binance for most symbols)")
        if self.max_leverage is not None:
            if not (math.isfinite(self.max_leverage) and self.max_leverage > 0):
                fail("max_leverage", "it must be a positive number")
            if self.market == "spot" and self.max_leverage > 1:
                fail("max_leverage", "spot accounts trade without leverage: use <= 1, or market=perp")
            if self.market == "perp" and self.max_leverage * self.maintenance_margin_rate >= 1:
                fail(
                    "max_leverage",
                    f"with maintenance_margin_rate={self.maintenance_margin_rate} it must stay below "
                    f"{1 / self.maintenance_margin_rate:g}, or a full position is liquidated on entry",
                )
        if self.market == "perp" and self.allow_short:
            fail("allow_short", "perpetuals always allow shorts; allow_short is a spot setting")
        if self.borrow_rate and not (self.market == "spot" and self.allow_short):
            fail("borrow_rate", "borrowing applies to spot with allow_short=true only")
        for name in ("window", "episode_length", "norm_window", "spread_window", "vol_window"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                fail(name, "it must be a whole number >= 1")
        if self.norm_window < 2:
            fail("norm_window", "it must be a whole number >= 2 (the bars of the features' rolling z-score)")
        if self.features is not None:
            check_feature_names(self.features)
            funded = [n for n in self.features if FEATURES[n].needs_funding]
            if funded and self.market != "perp":
                fail("features", f"{funded[0]} needs a perpetual's funding rates; drop it, or market=perp")
        if self.action_type == "discrete" and self.actions is not None:
            if not self.actions:
                fail("actions", "give at least one target exposure, e.g. [-1, 0, 1]")
            bad = [a for a in self.actions if not (math.isfinite(a) and -1 <= a <= 1)]
            if bad:
                fail("actions", "every target exposure must lie in [-1, 1] (a fraction of max_leverage)")
            if min(self.actions) < 0 and not self.shorting:
                fail("actions", "negative exposures need market=perp or allow_short=true on spot")
        if not 0 < self.sharpe_eta < 1:
            fail("sharpe_eta", "it must lie in (0, 1)")

    @property
    def shorting(self) -> bool:
        return self.market == "perp" or self.allow_short

    @property
    def action_values(self) -> tuple[float, ...]:
        """Target exposures of the discrete actions: ``actions``, or [-1, 0, 1] where shorting is
        possible and [0, 1] on a long-only spot account."""
        if self.actions is not None:
            return tuple(float(a) for a in self.actions)
        return (-1.0, 0.0, 1.0) if self.shorting else (0.0, 1.0)

    @property
    def fee(self) -> float:
        """The taker fee in force (the market's Binance default unless set)."""
        return DEFAULT_TAKER_FEE[self.market] if self.taker_fee is None else float(self.taker_fee)

    @property
    def leverage(self) -> float:
        """Max leverage in force: 1 on spot, 3 on perps unless set."""
        if self.max_leverage is not None:
            return float(self.max_leverage)
        return 1.0 if self.market == "spot" else 3.0

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> EnvConfig:
        """Build from keyword arguments; an unknown name is an error listing the accepted ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown env argument(s) {unknown}; accepted: {', '.join(sorted(names))}")
        values = dict(kwargs)
        for name in ("actions", "features"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)


EnvKeys = dataclasses.make_dataclass(
    "EnvKeys",
    [(f.name, hint | None, dataclasses.field(default=None)) for f, hint in
     ((f, typing.get_type_hints(EnvConfig)[f.name]) for f in dataclasses.fields(EnvConfig))],
    frozen=True,
)  # fmt: skip
EnvKeys.__module__ = __name__
EnvKeys.__doc__ = """Every key of :class:`EnvConfig`, each of its type or ``None`` (not given), none
checked against the others: the ``env.KEY=VALUE`` part of a command line that changes an env it
does not know yet (``evaluate.py run=...``: the bundle's own). The env it changes becomes an
:class:`EnvConfig` once they are laid over it, and is checked then."""
