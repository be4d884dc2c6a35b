"""The hard risk gate between a policy and the broker: limits that no action can get past.

The serving loop asks the policy for a target position, then :meth:`RiskGate.check` turns it into
the order actually sent. The gate is synchronous, pure and deterministic: no I/O, no clock (the
caller passes ``now_ms`` and the account in a :class:`RiskContext`), and the same inputs always
give the same :class:`RiskDecision`. As in NautilusTrader's ``RiskEngine``, each check returns
``None`` (pass) or a reason; a clamp or a denial is a :class:`RiskEvent` in the decision, never an
exception.

Trading states (:class:`TradingState`) and what each lets through:

- ``ACTIVE``: any target within the limits.
- ``REDUCING`` (the bars are stale or have gaps): only reductions, toward 0 on the position's
  side; no growth and no flip.
- ``HALTED``: only the flatten, ``order = -position`` exactly. Nothing else is checked, so order
  size, lot size, minimum notional, price band and order rate never block it. A timed halt (daily
  loss: until the next UTC midnight) ends by itself at ``halted_until_ms``; a manual one (kill
  switch, drawdown: ``halted_until_ms=None``) ends only when the operator passes ``ACTIVE`` again,
  together with a fresh ``peak_equity`` and ``day_start_equity``, or the next check halts again.
  Overlapping halts keep the longer one (manual outlasts any time).

The checks, in order (``risk.<field>`` is a :class:`RiskLimits` field, ``None`` = no limit):

1. ``non_finite``: a NaN/inf target, a price that is not a positive finite number, or a
   non-finite equity, position, day start or peak equity -> deny: no order, unless 2-5 demand
   the flatten.
2. resume: HALTED with ``halted_until_ms`` reached -> ACTIVE.
3. ``kill_switch``: ``ctx.kill`` -> HALTED until a manual resume.
4. ``daily_loss``: ``equity <= day_start_equity * (1 - risk.max_daily_loss)`` -> HALTED until
   the next UTC midnight after ``now_ms``.
5. ``drawdown``: ``equity <= peak_equity * (1 - risk.max_drawdown)`` -> HALTED until a manual
   resume.
6. ``halted``: in HALTED, target 0 (the flatten) and the decision is final.
7. ``stale_data``: ``ctx.data_stale`` -> REDUCING; fresh data in REDUCING -> ACTIVE. In REDUCING
   (check ``reducing``) the target is clamped into ``[0, position]`` on the position's side.
8. ``max_position_notional``: ``|target| * price <= risk.max_position_notional``.
9. ``max_leverage``: ``|target| * price <= risk.max_leverage * max(equity, 0)``.
10. ``max_order_notional``: ``order = target - position`` is shrunk, sign kept, to
    ``|order| * price <= risk.max_order_notional``.
11. ``lot_size``: ``|order|`` is rounded down to whole lots, with a 1e-9-lot tolerance so that
    0.3 / 0.1 stays 3 lots; without it when a cap shrank the order, since a cap must hold. An
    exact close (``order == -position``) is kept as it is.
12. ``min_notional``: ``0 < |order| * price < risk.min_notional`` -> deny, except an exact close.
13. ``price_band``: ``|price - last_close| > risk.price_band * last_close`` -> deny an order that
    grows the position; a flip is cut to the close; reductions pass.
14. ``orders_per_minute``: ``risk.max_orders_per_minute`` orders already sent in
    ``(now_ms - 60 s, now_ms]`` -> deny.

Finally ``target = position + order``. Steps 8-9 pull the target toward 0 into the limits, and
steps 7 and 10-14 only move it back toward the current position (shrink or cancel the order) or
cut it to 0, so no order ever takes the account past a limit: after every decision the target is
within every limit, or the order is a pure reduction (same side, ``|target| <= |position|``), as
when a rally carried a held position past ``max_position_notional`` and ``max_order_notional``
lets only a slice be sold this bar.

The caller's duties: record every sent order's time in ``recent_orders_ms``; reset
``day_start_equity`` at each UTC midnight and track ``peak_equity``; pass back the ``state`` and
``halted_until_ms`` of each decision into the next context (persisted, so a restart keeps them).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import datetime, timezone

DAY_MS = 86_400_000
MINUTE_MS = 60_000
# lot rounding tolerance, in lots: 0.3 / 0.1 == 2.9999999999999996 must count as 3 lots
LOT_EPS = 1e-9


class TradingState(str, enum.Enum):
    """What the gate lets through: ACTIVE anything within limits, REDUCING only reductions,
    HALTED only the flatten."""

    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


@dataclass(frozen=True)
class RiskLimits:
    """Hard limits, each ``None`` (off) or a positive number; notionals in quote currency.

    ``max_daily_loss`` and ``max_drawdown`` are fractions (0.05 = 5 %) of the UTC day's starting
    equity and of the peak mark-to-market equity; ``price_band`` is the largest
    ``|price / last_close - 1|`` at which an order may grow the position. ``min_notional`` and
    ``lot_size`` are the exchange's (0 = none); ccxt does not enforce them, so the gate does.
    """

    max_position_notional: float | None = None
    max_leverage: float | None = None
    max_order_notional: float | None = None
    max_orders_per_minute: int | None = None
    max_daily_loss: float | None = None
    max_drawdown: float | None = None
    price_band: float | None = None
    min_notional: float = 0.0
    lot_size: float = 0.0

    def __post_init__(self) -> None:
        def fail(name: str, accepted: str) -> None:
            raise ValueError(f"risk.{name}={getattr(self, name)!r} is invalid; {accepted}")

        def number(value: object) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        for name in ("max_position_notional", "max_leverage", "max_order_notional"):
            value = getattr(self, name)
            if value is not None and not (number(value) and value > 0):
                fail(name, "it must be a positive number, or null for no limit")
        for name in ("max_daily_loss", "max_drawdown", "price_band"):
            value = getattr(self, name)
            if value is not None and not (number(value) and 0 < value < 1):
                fail(name, "it must be a fraction in (0, 1), e.g. 0.05 for 5 %, or null for no limit")
        rate = self.max_orders_per_minute
        if rate is not None and not (isinstance(rate, int) and not isinstance(rate, bool) and rate >= 1):
            fail("max_orders_per_minute", "it must be a whole number >= 1, or null for no limit")
        for name in ("min_notional", "lot_size"):
            value = getattr(self, name)
            if not (number(value) and value >= 0):
                fail(name, "it must be a finite number >= 0 (0 = none)")


@dataclass(frozen=True)
class RiskContext:
    """The account and market at the moment of a decision, as the caller sees them."""

    equity: float  # mark-to-market equity now
    position: float  # signed base quantity held now
    price: float  # the price an order would fill near (latest close)
    last_close: float  # the previous bar's close, for the price band
    now_ms: int
    day_start_equity: float  # equity at the start of the current UTC day
    peak_equity: float  # highest mark-to-market equity seen
    state: TradingState
    # HALTED until this time (daily loss: the next UTC midnight); None with HALTED = manual resume
    halted_until_ms: int | None = None
    recent_orders_ms: tuple[int, ...] = ()  # send times of orders already sent
    data_stale: bool = False  # the caller could not get fresh, gap-free bars
    kill: bool = False  # kill switch engaged (command, signal or file)


@dataclass(frozen=True)
class RiskEvent:
    """One thing the gate did: ``kind`` is clamp, deny, halt, reduce or resume; ``check`` names the
    rule (``max_leverage``, ``daily_loss``, ...); ``reason`` is a sentence with the numbers."""

    kind: str
    check: str
    reason: str


@dataclass(frozen=True)
class RiskDecision:
    """The gate's answer: hold ``target`` after sending ``order = target - position`` (0.0 = no
    order), then be in ``state`` (until ``halted_until_ms`` when HALTED on a timer)."""

    target: float
    order: float
    state: TradingState
    halted_until_ms: int | None
    events: tuple[RiskEvent, ...]


class RiskGate:
    """Applies :class:`RiskLimits` to each target the policy asks for; see the module docstring."""

    def __init__(self, limits: RiskLimits):
        self.limits = limits

    def check(self, desired: float, ctx: RiskContext) -> RiskDecision:
        """The order to send for the policy's ``desired`` signed target position, and why."""
        position, price = ctx.position, ctx.price
        state = TradingState(ctx.state)
        until = ctx.halted_until_ms if state is TradingState.HALTED else None
        events: list[RiskEvent] = []

        # 1. numbers the gate cannot reason about
        bad = _check_finite(desired, ctx)
        if bad is not None:
            events.append(RiskEvent("deny", "non_finite", bad))

        # 2. a timed halt that has run out
        if state is TradingState.HALTED and until is not None and ctx.now_ms >= until:
            events.append(RiskEvent("resume", "halted", f"the halt until {_utc(until)} is over; ACTIVE"))
            state, until = TradingState.ACTIVE, None
        was_halted = state is TradingState.HALTED

        # 3-5. breaches that halt and flatten
        for name, halt in (
            ("kill_switch", self._check_kill(ctx)),
            ("daily_loss", self._check_daily_loss(ctx)),
            ("drawdown", self._check_drawdown(ctx)),
        ):
            if halt is None:
                continue
            halt_until, reason = halt
            longer = _longer(until, halt_until) if state is TradingState.HALTED else halt_until
            if state is not TradingState.HALTED or longer != until:
                events.append(
                    RiskEvent(
                        "halt",
                        name,
                        f"{reason}; HALTED {_until(longer)}, flattening position {_qty(position)}",
                    )
                )
            state, until = TradingState.HALTED, longer

        # 6. halted: only the flatten, exact, whatever the other limits say
        if state is TradingState.HALTED:
            if was_halted and bad is None and desired != 0.0:
                events.append(
                    RiskEvent(
                        "deny",
                        "halted",
                        f"trading is HALTED {_until(until)}; the policy's target {_qty(desired)} "
                        f"is replaced by flat (order {_qty(-position)})",
                    )
                )
            return _decide(position, -position if math.isfinite(position) else 0.0, state, until, events)

        # 7. stale data: reduce only
        if ctx.data_stale and state is TradingState.ACTIVE:
            state = TradingState.REDUCING
            events.append(
                RiskEvent(
                    "reduce", "stale_data", "bars are stale or have gaps; REDUCING: only reductions pass"
                )
            )
        elif not ctx.data_stale and state is TradingState.REDUCING:
            state = TradingState.ACTIVE
            events.append(RiskEvent("resume", "stale_data", "bars are fresh and gap-free again; ACTIVE"))
        if bad is not None:
            return _decide(position, 0.0, state, None, events)

        # 7-10. clamp the target, then the order; a clamped order must not regain a lot by rounding
        target = float(desired)
        capped = False
        for name, clamp in (
            ("reducing", self._clamp_reducing if state is TradingState.REDUCING else None),
            ("max_position_notional", self._clamp_position_notional),
            ("max_leverage", self._clamp_leverage),
        ):
            hit = clamp(target, ctx) if clamp is not None else None
            if hit is not None:
                new, reason = hit
                capped = True
                if not _rounding(new, target):
                    events.append(RiskEvent("clamp", name, reason))
                target = new
        order = target - position
        hit = self._clamp_order_notional(order, price)
        if hit is not None:
            new, reason = hit
            capped = True
            if not _rounding(new, order):
                events.append(RiskEvent("clamp", "max_order_notional", reason))
            order = new

        # 11. whole lots
        lot = self.limits.lot_size
        if lot > 0.0 and order != 0.0 and order != -position:
            rounded = _lot_floor(order, lot, strict=capped)
            if rounded == 0.0:
                events.append(
                    RiskEvent(
                        "deny",
                        "lot_size",
                        f"order {_qty(order)} is less than one lot of risk.lot_size={_lim(lot)}; no order",
                    )
                )
            order = rounded

        # 12-14. deny what the exchange or the market would not take
        reason = self._check_min_notional(order, position, price)
        if reason is not None:
            events.append(RiskEvent("deny", "min_notional", reason))
            order = 0.0
        band = self._check_price_band(order, position, ctx)
        if band is not None:
            order, kind, reason = band
            events.append(RiskEvent(kind, "price_band", reason))
        reason = self._check_orders_per_minute(order, ctx)
        if reason is not None:
            events.append(RiskEvent("deny", "orders_per_minute", reason))
            order = 0.0
        return _decide(position, order, state, None, events)

    # -- halts: (halted_until_ms or None for manual, reason) or None --------------------------------

    def _check_kill(self, ctx: RiskContext) -> tuple[int | None, str] | None:
        return (None, "the kill switch is engaged") if ctx.kill else None

    def _check_daily_loss(self, ctx: RiskContext) -> tuple[int | None, str] | None:
        limit = self.limits.max_daily_loss
        if limit is None or not ctx.equity <= ctx.day_start_equity * (1.0 - limit):
            return None
        until = (int(ctx.now_ms) // DAY_MS + 1) * DAY_MS
        return until, (
            f"equity {_money(ctx.equity)} is {_drop(ctx.equity, ctx.day_start_equity)} below the UTC day's "
            f"start {_money(ctx.day_start_equity)}, at or past risk.max_daily_loss={_lim(limit)}"
        )

    def _check_drawdown(self, ctx: RiskContext) -> tuple[int | None, str] | None:
        limit = self.limits.max_drawdown
        if limit is None or not ctx.equity <= ctx.peak_equity * (1.0 - limit):
            return None
        return None, (
            f"equity {_money(ctx.equity)} is {_drop(ctx.equity, ctx.peak_equity)} below the peak "
            f"{_money(ctx.peak_equity)}, at or past risk.max_drawdown={_lim(limit)}"
        )

    # -- clamps: (new value, reason) or None ---------------------------------------------------------

    def _clamp_reducing(self, target: float, ctx: RiskContext) -> tuple[float, str] | None:
        position = ctx.position
        if _reduces(position, target):
            return None
        new = position if target * position > 0.0 else 0.0
        return new, (
            f"REDUCING allows only reductions: target {_qty(target)} from position {_qty(position)} "
            f"clamped to {_qty(new)}"
        )

    def _clamp_position_notional(self, target: float, ctx: RiskContext) -> tuple[float, str] | None:
        cap, price = self.limits.max_position_notional, ctx.price
        if cap is None or abs(target) * price <= cap:
            return None
        new = math.copysign(cap / price, target)
        return new, (
            f"target {_qty(target)} = {_money(abs(target) * price)} notional exceeds "
            f"risk.max_position_notional={_lim(cap)}; clamped to {_qty(new)}"
        )

    def _clamp_leverage(self, target: float, ctx: RiskContext) -> tuple[float, str] | None:
        leverage, price, equity = self.limits.max_leverage, ctx.price, ctx.equity
        if leverage is None:
            return None
        room = leverage * max(equity, 0.0)
        if abs(target) * price <= room:
            return None
        if room == 0.0:
            return 0.0, (
                f"equity {_money(equity)} is not positive, so risk.max_leverage={_lim(leverage)} allows no "
                f"position; target {_qty(target)} clamped to 0"
            )
        new = math.copysign(room / price, target)
        return new, (
            f"target {_qty(target)} = {_money(abs(target) * price)} notional is "
            f"{abs(target) * price / equity:,.2f}x equity {_money(equity)}, above "
            f"risk.max_leverage={_lim(leverage)}; clamped to {_qty(new)}"
        )

    def _clamp_order_notional(self, order: float, price: float) -> tuple[float, str] | None:
        cap = self.limits.max_order_notional
        if cap is None or abs(order) * price <= cap:
            return None
        new = math.copysign(cap / price, order)
        return new, (
            f"order {_qty(order)} = {_money(abs(order) * price)} notional exceeds "
            f"risk.max_order_notional={_lim(cap)}; shrunk to {_qty(new)}"
        )

    # -- denials: reason or None ---------------------------------------------------------------------

    def _check_min_notional(self, order: float, position: float, price: float) -> str | None:
        minimum = self.limits.min_notional
        if order == 0.0 or order == -position or abs(order) * price >= minimum:
            return None
        return (
            f"order {_qty(order)} = {_money(abs(order) * price)} notional is below the exchange's "
            f"risk.min_notional={_lim(minimum)}; no order (only a full close may be smaller)"
        )

    def _check_price_band(
        self, order: float, position: float, ctx: RiskContext
    ) -> tuple[float, str, str] | None:
        """``(order, event kind, reason)`` when the band stops a growing order; reductions pass."""
        band = self.limits.price_band
        target = position + order
        if band is None or order == 0.0 or _reduces(position, target):
            return None
        last = ctx.last_close
        if not (math.isfinite(last) and last > 0.0):
            why = f"last close {last} is not a positive finite number, so risk.price_band cannot be checked"
        elif abs(ctx.price - last) > band * last:
            why = (
                f"price {ctx.price:,.10g} is {ctx.price / last - 1.0:+.2%} from the last close {last:,.10g}, "
                f"outside risk.price_band={_lim(band)}"
            )
        else:
            return None
        if position != 0.0 and target * position < 0.0:
            return (
                -position,
                "clamp",
                f"{why}; the flip to {_qty(target)} is cut to the close {_qty(-position)}",
            )
        return 0.0, "deny", f"{why}; order {_qty(order)} would grow the position, no order"

    def _check_orders_per_minute(self, order: float, ctx: RiskContext) -> str | None:
        limit = self.limits.max_orders_per_minute
        if limit is None or order == 0.0:
            return None
        sent = sum(1 for t in ctx.recent_orders_ms if ctx.now_ms - MINUTE_MS < t <= ctx.now_ms)
        if sent < limit:
            return None
        return (
            f"{sent} orders sent in the last 60 s reach risk.max_orders_per_minute={limit}; "
            f"order {_qty(order)} denied"
        )


def _check_finite(desired: float, ctx: RiskContext) -> str | None:
    if not math.isfinite(desired):
        return f"the policy's target {desired} is not a finite number; its order is denied"
    if not (math.isfinite(ctx.price) and ctx.price > 0.0):
        return f"price {ctx.price} is not a positive finite number; no order can be sized"
    for name in ("equity", "position", "day_start_equity", "peak_equity"):
        value = getattr(ctx, name)
        if not math.isfinite(value):
            return f"{name} {value} is not a finite number; no order can be checked"
    return None


def _rounding(clamped: float, asked: float) -> bool:
    """A clamp that moves a value by rounding noise only, as for a policy at exactly the limit (full
    exposure at a ``risk.max_leverage`` equal to the bundle's leverage lands an ulp above it, and
    the clamp's ``room / price`` is often the same float). The clamped value is kept; no event is
    recorded, or the operator would read "clamped" on every bar."""
    return abs(clamped - asked) <= 1e-12 * abs(asked)


def _decide(
    position: float, order: float, state: TradingState, until: int | None, events: list[RiskEvent]
) -> RiskDecision:
    order += 0.0  # -0.0 -> 0.0, so `order == 0.0` and its printed form agree
    return RiskDecision(position + order, order, state, until, tuple(events))


def _reduces(position: float, target: float) -> bool:
    """True when ``target`` is on ``position``'s side of 0 (or 0) and no larger: pure de-risking."""
    return abs(target) <= abs(position) and target * position >= 0.0


def _lot_floor(qty: float, lot: float, *, strict: bool) -> float:
    """``qty`` rounded toward zero to whole lots; ``strict`` never lets the tolerance round up. An
    order of more lots than a float can count (1e300 with a 1e-5 lot) rounds to nothing."""
    lots = abs(qty) / lot + LOT_EPS
    if not math.isfinite(lots):
        return 0.0
    n = math.floor(lots)
    if strict and n * lot > abs(qty):
        n -= 1
    return math.copysign(n * lot, qty) if n > 0 else 0.0


def _longer(a: int | None, b: int | None) -> int | None:
    """The later of two halt ends; None (a manual resume) outlasts any time."""
    return None if a is None or b is None else max(a, b)


def _until(until: int | None) -> str:
    return "until a manual resume" if until is None else f"until {_utc(until)}"


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _drop(value: float, reference: float) -> str:
    return f"{1.0 - value / reference:.2%}" if reference > 0 else "not above 0 and"


def _qty(x: float) -> str:
    return f"{x:.10g}"


def _money(x: float) -> str:
    return f"{x:,.2f}"


def _lim(x: float) -> str:
    return f"{x:,g}"
