"""``serve.py``'s configuration: frozen dataclasses that mirror ``conf/serve.yaml``.

``serve.py`` converts the composed config once (:meth:`ServeConfig.from_dict`); below it nothing
sees OmegaConf or a dict of options. An unknown key (``+serve.kill_fle=KILL``) names the closest
valid ones; a value of the wrong type or out of its bounds names the key and what it accepts.
What needs the bundle, the exchange or the files is checked later, in :func:`serving.app.build`.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from data.config import ConfigError, build
from serving.risk import RiskLimits

MODES = ("paper", "live")
COMMANDS = ("status", "halt", "resume", "flatten")
MARKETS = ("spot", "futures")
NOTIFIERS = ("telegram",)
# a real exchange polled more often than this invites a rate-limit ban for nothing: a bar closes
# once a minute at the shortest
MIN_POLL_SECONDS = 1.0
MIN_LOOPBACK_POLL_SECONDS = 0.01
MAX_POLL_SECONDS = 3600.0
MAX_RECV_WINDOW_MS = 60_000  # Binance refuses a longer receive window
# keys that mean something to a live bot only, and why a paper bot cannot honour them
_LIVE_ONLY = {
    "flatten_on_exit": "a paper account fills only at the next bar's open; use command=flatten and let the "
    "bot take one more bar before stopping it",
    "adopt_exchange": "a paper account has no exchange position to adopt",
    "limit_band": "a paper account fills at the next bar's open through the env's kernel, as in training",
}


def _fail(key: str, value: Any, accepted: str) -> None:
    raise ConfigError(f"{key}={value!r} is invalid; {accepted}")


@dataclass(frozen=True)
class LoopConfig:
    """The ``serve:`` section: how the loop polls, when it stops, what it exposes and tells.

    ``poll_seconds`` between polls of the exchange (bounded further by :class:`ServeConfig`: at
    least 1 s against a real exchange); ``request_timeout_ms`` per exchange request;
    ``recv_window_ms`` (live) the age past which the exchange drops a signed request; ``max_bars``
    decisions or ``max_polls`` polls before stopping (``None``: run on); ``kill_file``: when it
    exists, flatten and halt; ``metrics_port`` (0: any free port) on ``metrics_host``; ``notify``
    ``telegram``; ``limit_band`` (live) IOC limit orders this fraction past the close instead of
    market orders; ``flatten_on_exit`` (live) on a signal; ``max_rejections`` refused orders in a
    row halt the bot; ``adopt_exchange`` (live) takes the exchange's position where the store
    disagrees.
    """

    poll_seconds: float = 5.0
    request_timeout_ms: int = 10_000
    recv_window_ms: int = 10_000
    max_bars: int | None = None
    max_polls: int | None = None
    kill_file: str | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    notify: str | None = None
    telegram_api_url: str | None = None
    limit_band: float | None = None
    flatten_on_exit: bool = False
    max_rejections: int = 3
    adopt_exchange: bool = False

    def __post_init__(self) -> None:
        def fail(name: str, accepted: str) -> None:
            _fail(f"serve.{name}", getattr(self, name), accepted)

        if not (math.isfinite(self.poll_seconds) and 0 <= self.poll_seconds <= MAX_POLL_SECONDS):
            fail("poll_seconds", f"give seconds between polls, 0 to {MAX_POLL_SECONDS:g}")
        if not 100 <= self.request_timeout_ms <= 120_000:
            fail("request_timeout_ms", "give 100 to 120000 ms")
        if not 1 <= self.recv_window_ms <= MAX_RECV_WINDOW_MS:
            fail("recv_window_ms", f"give 1 to {MAX_RECV_WINDOW_MS} ms (Binance's limit)")
        for name in ("max_bars", "max_polls"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                fail(name, "give a whole number >= 1, or null to run on")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            fail("metrics_port", "give a port 1 to 65535, 0 for any free one, or null")
        if not self.metrics_host:
            fail("metrics_host", "give an address to bind, e.g. 127.0.0.1")
        if self.notify is not None and self.notify not in NOTIFIERS:
            fail("notify", f"choose {' or '.join(NOTIFIERS)}, or null")
        if self.limit_band is not None and not (math.isfinite(self.limit_band) and 0 < self.limit_band < 0.5):
            fail("limit_band", "give a fraction of the price in (0, 0.5) such as 0.002, or null")
        if not 1 <= self.max_rejections <= 1000:
            fail("max_rejections", "give a whole number 1 to 1000")
        if self.kill_file == "":
            fail("kill_file", "give a path, or null for no kill file")


@dataclass(frozen=True)
class ServeConfig:
    """What ``serve.py`` was asked (``conf/serve.yaml`` has each key's meaning)."""

    run: str | None = None
    policy: str | None = None
    mode: str = "paper"
    confirm_live: bool = False
    key_file: str | None = None
    exchange: str | None = None
    market: str | None = None
    symbol: str | None = None
    timeframe: str | None = None
    api_url: str | None = None
    state: str | None = None
    command: str | None = None
    serve: LoopConfig = field(default_factory=LoopConfig)
    risk: RiskLimits = field(default_factory=RiskLimits)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            _fail("mode", self.mode, "choose mode=paper or mode=live")
        if self.command is not None and self.command not in COMMANDS:
            _fail("command", self.command, f"choose one of {', '.join(COMMANDS)}")
        if self.market is not None and self.market not in MARKETS:
            _fail("market", self.market, "choose spot or futures (USD-M perpetuals)")
        for name in ("run", "policy", "state", "exchange", "symbol", "timeframe", "key_file"):
            if getattr(self, name) == "":
                _fail(name, "", f"give a value, or leave {name} out")
        if self.api_url is not None:
            parts = urlparse(self.api_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                _fail("api_url", self.api_url, "give the exchange's base URL, e.g. http://127.0.0.1:8080")
        least = MIN_LOOPBACK_POLL_SECONDS if self.loopback else MIN_POLL_SECONDS
        if self.command is None and self.serve.poll_seconds < least:
            where = "a loopback stand-in" if self.loopback else "a real exchange"
            _fail(
                "serve.poll_seconds", self.serve.poll_seconds,
                f"against {where} poll at least every {least:g} s (a tighter loop only invites a rate-limit "
                "ban: a bar closes once a minute at the shortest)",
            )  # fmt: skip
        live_only = [n for n in _LIVE_ONLY if getattr(self.serve, n) not in (None, False)]
        if live_only and self.mode != "live" and self.command is None:
            raise ConfigError(f"serve.{live_only[0]} needs mode=live: {_LIVE_ONLY[live_only[0]]}")

    @property
    def loopback(self) -> bool:
        """Whether ``api_url`` points at this machine (a replay exchange or a test stand-in)."""
        host = urlparse(self.api_url).hostname if self.api_url else None
        if host is None:
            return False
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ServeConfig:
        return build(cls, values)
