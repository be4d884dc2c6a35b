"""Wiring for ``serve.py``: the bot from a bundle, an exchange client, risk limits and a state store,
with every check that must pass before anything runs (one sentence each, naming the fix)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from agents.bundle import BundleError, load_policy
from data.errors import DownloadError
from data.exchange import check_symbol, check_timeframe, load_markets, make_exchange
from data.schema import file_symbol
from envs.config import EnvConfig
from envs.features import FEATURES
from serving.account import Desk
from serving.feed import BarFeed
from serving.loop import LoopConfig, Server
from serving.risk import RiskGate, RiskLimits
from serving.state import RunMeta, StateError, StateStore

log = logging.getLogger("serve")
COMMANDS = ("status", "halt", "resume", "flatten")
CATCH_UP_BARS = 1_440


class ServeError(ValueError):
    """A bot that cannot start as asked. Policy: nothing runs; the message names the fix."""


def _bundle(values: dict[str, Any]) -> Path:
    if values.get("policy"):
        return Path(values["policy"])
    if values.get("run"):
        return Path(values["run"]) / "policy"
    raise ServeError("give run=runs/<experiment>/<time> (its policy/ is served) or policy=PATH to a bundle")


def state_path(values: dict[str, Any]) -> str:
    if values.get("state"):
        return values["state"]
    if values.get("run"):
        return str(Path(values["run"]) / "serve" / "state.db")
    raise ServeError("give state=PATH (or run=, whose serve/state.db is the default)")


def command(values: dict[str, Any]) -> dict[str, Any]:
    """``status`` reads a bot's state store; ``halt``, ``resume``, ``flatten`` queue a command that
    the running bot takes at its next poll (a stopped one at its start)."""
    name = values["command"]
    if name not in COMMANDS:
        raise ServeError(f"command={name} is not one of {', '.join(COMMANDS)}")
    path = state_path(values)
    if "://" not in path and not Path(path).exists():
        raise ServeError(f"no state store at {path}: the bot has not run yet (or give state=)")
    try:
        store = StateStore(path)
        if name == "status":
            return store.status()
        return {"queued": name, "id": store.push_command(name, int(time.time() * 1000))}
    except StateError as exc:
        raise ServeError(str(exc)) from exc


def build(values: dict[str, Any]) -> Server:
    """The bot, after every check: mode, bundle, exchange market, features, state store."""
    from agents.training import history_bars

    if values["mode"] == "live":
        raise ServeError(
            "mode=live is not in this version: live orders through ccxt come with the replay exchange; "
            "run mode=paper"
        )
    if values["mode"] != "paper":
        raise ServeError(f"mode={values['mode']}: choose mode=paper")
    try:
        policy = load_policy(_bundle(values))
    except BundleError as exc:
        raise ServeError(str(exc)) from exc
    spec = policy.spec
    env_kwargs = spec["env"]
    cfg = EnvConfig.from_kwargs(env_kwargs)
    exchange = values.get("exchange") or spec["exchange"]
    if exchange == "synthetic":
        raise ServeError(
            "the bundle was trained on the synthetic market, which no exchange quotes; give exchange= and "
            "symbol= of a real market (api_url= for a testnet or a loopback stand-in)"
        )
    market = values.get("market") or spec.get("data_market", "spot")
    if cfg.market == "perp" and market != "futures":
        raise ServeError(
            f"the bundle trades a perpetual account; market={market} has none: use market=futures"
        )
    if cfg.market == "spot" and market == "futures":
        raise ServeError(
            "the bundle was trained for a spot account; serving it on futures would change its costs and "
            "leverage: use market=spot"
        )
    needs_taker = [n for n in spec["features"] if n in FEATURES and FEATURES[n].needs_taker_buy]
    if needs_taker:
        raise ServeError(
            f"feature(s) {', '.join(needs_taker)} need taker_buy_base, which ccxt klines do not carry; "
            "train the bundle without them"
        )
    symbol = values.get("symbol") or spec["symbol"]
    timeframe = spec["timeframe"]
    try:
        ex = make_exchange(exchange, market, api_url=values.get("api_url"))
        load_markets(ex, max_retries=3)
        check_timeframe(ex, timeframe)
        symbol = check_symbol(ex, symbol, market)
    except (DownloadError, ValueError) as exc:
        raise ServeError(f"{exchange} {market}: {exc}") from exc
    # the exchange's lot size and minimum notional (ccxt does not enforce the latter) go into the
    # paper account's kernel, which rounds and skips orders exactly as evaluation does with them
    info = ex.market(symbol)
    exchange_min = float(((info.get("limits") or {}).get("cost") or {}).get("min") or 0.0)
    step = float((info.get("precision") or {}).get("amount") or 0.0)
    env_kwargs = {
        **env_kwargs,
        "lot_size": max(float(env_kwargs.get("lot_size") or 0.0), step if step < 1 else 0.0),
        "min_notional": max(float(env_kwargs.get("min_notional") or 0.0), exchange_min),
    }
    try:
        gate = RiskGate(RiskLimits(**(values.get("risk") or {})))
    except (TypeError, ValueError) as exc:
        raise ServeError(f"{exc}") from exc
    s = values.get("serve") or {}
    notifier = None
    if s.get("notify") == "telegram":
        from serving.notify import NotifyError, TelegramNotifier

        try:
            notifier = TelegramNotifier.from_env(s.get("telegram_api_url"))
        except NotifyError as exc:
            raise ServeError(str(exc)) from exc
    elif s.get("notify"):
        raise ServeError(f"serve.notify={s['notify']}: choose telegram or null")
    desk = Desk(env_kwargs, history_bars(cfg))
    # the feed keeps a day or more of bars beyond the history, so a restart can catch up on them
    feed = BarFeed(ex, symbol, timeframe, need=desk.need + CATCH_UP_BARS, with_funding=cfg.market == "perp")
    bundle = _bundle(values).resolve()
    run_id = (
        f"{bundle.parent.name if bundle.name == 'policy' else bundle.name}_{file_symbol(symbol)}_{timeframe}"
    )
    try:
        store = StateStore(state_path(values))
        store.open_run(RunMeta(run_id, str(bundle), exchange, market, symbol, timeframe, values["mode"]))
    except StateError as exc:
        raise ServeError(str(exc)) from exc
    config = LoopConfig(
        poll_seconds=float(s.get("poll_seconds", 5.0)), max_bars=s.get("max_bars"),
        max_polls=s.get("max_polls"), kill_file=s.get("kill_file"), metrics_port=s.get("metrics_port"),
        metrics_host=s.get("metrics_host") or "127.0.0.1",
    )  # fmt: skip
    log.info("serving %s on %s %s %s %s (state %s)", bundle, exchange, market, symbol, timeframe,
             state_path(values))  # fmt: skip
    return Server(run_id=run_id, policy=policy, desk=desk, feed=feed, gate=gate, store=store, config=config,
                  notifier=notifier)  # fmt: skip
