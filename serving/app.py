"""Wiring for ``serve.py``: the bot from a bundle, an exchange client, risk limits and a state store,
with every check that must pass before anything runs (one sentence each, naming the fix)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from agents.baselines import BASELINES, make_baseline
from agents.bundle import BundleError, bundle_identity, config_hash, load_policy, read_spec
from data.config import closest
from data.errors import DownloadError
from data.exchange import check_symbol, check_timeframe, load_markets, make_exchange
from data.schema import file_symbol
from envs.config import EnvConfig
from envs.features import FEATURES
from serving.account import Desk
from serving.broker import CLOCK_HINT, BrokerError, LiveBroker
from serving.config import COMMANDS, ServeConfig
from serving.feed import BarFeed
from serving.loop import Server
from serving.risk import RiskGate
from serving.state import RunMeta, StateError, StateStore

log = logging.getLogger("serve")
CATCH_UP_BARS = 1_440
REPO = Path(__file__).resolve().parent.parent


class ServeError(ValueError):
    """A bot that cannot start as asked. Policy: nothing runs; the message names the fix."""


def _bundle(cfg: ServeConfig) -> Path:
    if cfg.policy:
        if not Path(cfg.policy).exists():
            near = closest(cfg.policy, BASELINES)
            hint = f"did you mean {' or '.join(near)}? " if near else ""
            raise ServeError(f"policy={cfg.policy} is neither a bundle folder nor a baseline; {hint}the "
                             f"baselines are {', '.join(BASELINES)}")  # fmt: skip
        return Path(cfg.policy)
    if cfg.run:
        if not Path(cfg.run).is_dir():
            raise ServeError(f"run={cfg.run}: no such folder; give a training run (runs/<experiment>/<time>)")
        return Path(cfg.run) / "policy"
    raise ServeError("give run=runs/<experiment>/<time> (its policy/ is served) or policy=PATH to a bundle")


def state_path(cfg: ServeConfig) -> str:
    if cfg.state:
        return cfg.state
    if cfg.run:
        return str(Path(cfg.run) / "serve" / "state.db")
    raise ServeError("give state=PATH (or run=, whose serve/state.db is the default)")


def command(cfg: ServeConfig) -> dict[str, Any]:
    """``status`` reads a bot's state store; ``halt``, ``resume``, ``flatten`` queue a command that
    the running bot takes at its next poll (a stopped one at its start). Only a store of ours is
    read or written; nothing is created."""
    name = cfg.command
    if name not in COMMANDS:
        raise ServeError(f"command={name} is not one of {', '.join(COMMANDS)}")
    try:
        store = StateStore(state_path(cfg), create=False)
        try:
            if name == "status":
                return store.status()
            return {"queued": name, "id": store.push_command(name, int(time.time() * 1000))}
        finally:
            store.close()
    except StateError as exc:
        raise ServeError(str(exc)) from exc


def api_keys(cfg: ServeConfig, exchange: str) -> tuple[str, str]:
    """The API key and secret for live trading, from ``<EXCHANGE>_API_KEY`` / ``<EXCHANGE>_API_SECRET``
    or from ``key_file=`` (two lines ``KEY=...``, ``SECRET=...``) outside the checkout. They go to the
    ccxt client only: never logged, never in the state store, never in an error."""
    prefix = exchange.upper()
    key, secret = os.environ.get(f"{prefix}_API_KEY"), os.environ.get(f"{prefix}_API_SECRET")
    if cfg.key_file:
        path = Path(cfg.key_file).expanduser().resolve()
        if path.is_relative_to(Path.cwd().resolve()) or path.is_relative_to(REPO):
            raise ServeError(
                f"key_file={path} is inside the project: keep keys outside it (e.g. ~/.config/klinegym)"
            )
        try:
            pairs = dict(line.split("=", 1) for line in path.read_text().split() if "=" in line)
        except (OSError, UnicodeDecodeError) as exc:
            raise ServeError(f"key_file={path} cannot be read ({type(exc).__name__}); give a text file with "
                             "lines KEY=... and SECRET=...") from None  # fmt: skip
        key, secret = pairs.get("KEY"), pairs.get("SECRET")
        if not key or not secret:
            raise ServeError(f"key_file={path} needs two lines, KEY=... and SECRET=... (its content is "
                             "not shown)")  # fmt: skip
    if not key or not secret:
        raise ServeError(
            f"mode=live needs API keys: set {prefix}_API_KEY and {prefix}_API_SECRET in the environment, or "
            "give key_file=PATH (lines KEY=... and SECRET=...) outside the project"
        )
    return key.strip(), secret.strip()


def _policy(cfg: ServeConfig) -> Any:
    """A bundle, or a baseline by name (``policy=sma_crossover``) on the env of ``run=``'s bundle or
    the default env of ``market=`` / ``symbol=`` / ``timeframe=``."""
    name = cfg.policy
    if name not in BASELINES:
        try:
            return load_policy(_bundle(cfg))
        except BundleError as exc:
            raise ServeError(str(exc)) from exc
    if cfg.run:
        try:
            spec = read_spec(cfg.run)
        except BundleError as exc:
            raise ServeError(str(exc)) from exc
    else:
        missing = [k for k in ("exchange", "market", "symbol", "timeframe") if not getattr(cfg, k)]
        if missing:
            raise ServeError(f"policy={name} without run= needs {', '.join(k + '=' for k in missing)}")
        env = {"market": "perp" if cfg.market == "futures" else "spot"}
        spec = {"env": env, "features": [], "data_market": cfg.market, "exchange": cfg.exchange,
                "symbol": cfg.symbol, "timeframe": cfg.timeframe}  # fmt: skip
    return BaselinePolicy(name, spec)


class BaselinePolicy:
    """A rule-based baseline served like a bundle. Its memory of closes is filled from the buffer
    before its first decision, so it starts as if it had run all along."""

    def __init__(self, name: str, spec: dict[str, Any]):
        cfg = EnvConfig.from_kwargs(spec["env"])
        values = cfg.action_values if cfg.action_type == "discrete" else None
        self.name = name
        self.baseline = make_baseline(name, values, cfg.shorting)
        self.spec, self.desk = {**spec, "features": list(spec.get("features") or [])}, None
        self._warm = False

    @property
    def identity(self) -> str:
        """The baseline's name and a hash of the env it decides on (costs, account, features)."""
        return f"{self.name}:{config_hash({'env': self.spec['env'], 'features': self.spec['features']})}"

    def act(self, obs: Any, info: dict | None = None) -> Any:
        if not self._warm and self.desk is not None and info is not None:
            t = self.desk.index(info["ts"])
            for close in self.desk.env.market.close[max(0, t - 10_000) : t]:
                self.baseline.act(None, {"price": float(close)})
            self._warm = True
        return self.baseline.act(obs, info)


def _kill_file(cfg: ServeConfig) -> None:
    if cfg.serve.kill_file and not Path(cfg.serve.kill_file).expanduser().resolve().parent.is_dir():
        raise ServeError(
            f"serve.kill_file={cfg.serve.kill_file}: its folder does not exist, so the kill file could never "
            "be made there; create the folder or give another path"
        )


def build(cfg: ServeConfig) -> Server:
    """The bot, after every check: mode, keys, bundle, exchange market, features, state store.
    A start refused after its state store was made removes that store again."""
    from agents.training import history_bars

    live = cfg.mode == "live"
    if live and not cfg.confirm_live:
        raise ServeError(
            "mode=live sends real orders with real money: add confirm_live=true to the command to mean it "
            "(try it first against the replay exchange: python -m serving.replay_exchange ...)"
        )
    _kill_file(cfg)
    s = cfg.serve
    exchange = cfg.exchange
    keys = api_keys(cfg, exchange or "binance") if live else None
    policy = _policy(cfg)
    spec = policy.spec
    env_kwargs = spec["env"]
    env_cfg = EnvConfig.from_kwargs(env_kwargs)
    exchange = exchange or spec["exchange"]
    if exchange == "synthetic":
        raise ServeError(
            "the bundle was trained on the synthetic market, which no exchange quotes; give exchange= and "
            "symbol= of a real market (api_url= for a testnet or a loopback stand-in)"
        )
    market = cfg.market or spec.get("data_market", "spot")
    if env_cfg.market == "perp" and market != "futures":
        raise ServeError(
            f"the bundle trades a perpetual account; market={market} has none: use market=futures"
        )
    if env_cfg.market == "spot" and market == "futures":
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
    symbol = cfg.symbol or spec["symbol"]
    timeframe = spec["timeframe"]
    if cfg.timeframe and cfg.timeframe != timeframe:
        raise ServeError(f"timeframe={cfg.timeframe}: the policy decides on {timeframe} bars")
    try:
        ex = make_exchange(exchange, market, api_url=cfg.api_url, timeout_ms=s.request_timeout_ms)
        if keys is not None:
            ex.apiKey, ex.secret = keys
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
    limits = cfg.risk
    if live:  # the gate is the one place a live order is rounded and checked against the exchange's limits
        limits = dataclasses.replace(
            limits, lot_size=max(limits.lot_size, env_kwargs["lot_size"]),
            min_notional=max(limits.min_notional, env_kwargs["min_notional"]),
        )  # fmt: skip
    gate = RiskGate(limits)
    notifier = None
    if s.notify == "telegram":
        from serving.notify import NotifyError, TelegramNotifier

        try:
            notifier = TelegramNotifier.from_env(s.telegram_api_url)
        except NotifyError as exc:
            raise ServeError(str(exc)) from exc
    desk = Desk(env_kwargs, history_bars(env_cfg))
    if isinstance(policy, BaselinePolicy):
        policy.desk = desk
    # the feed keeps a day or more of bars beyond the history, so a restart can catch up on them
    perp = env_cfg.market == "perp"
    feed = BarFeed(ex, symbol, timeframe, need=desk.need + CATCH_UP_BARS, with_funding=perp)
    if isinstance(policy, BaselinePolicy):  # a baseline: its name stands for a bundle
        bundle, name, identity = cfg.policy, cfg.policy, policy.identity
    else:
        path = _bundle(cfg).resolve()
        bundle, identity = str(path), bundle_identity(path)
        name = path.parent.name if path.name == "policy" else path.name
    # the identity in the run id keeps two bots from one folder name apart in their client order ids
    run_id = f"{name}_{file_symbol(symbol)}_{timeframe}_{identity.rsplit(':', 1)[-1][:8]}"
    try:
        store = StateStore(state_path(cfg), idle_checkpoints=True)  # Server.run checkpoints between bars
        store.open_run(RunMeta(run_id, bundle, exchange, market, symbol, timeframe, cfg.mode, identity))
    except StateError as exc:
        raise ServeError(str(exc)) from exc
    try:
        broker = None
        if live:
            try:
                broker = LiveBroker(ex, symbol, market, run_id, recv_window_ms=s.recv_window_ms,
                                    limit_band=s.limit_band)  # fmt: skip
            except ValueError as exc:
                raise ServeError(str(exc)) from exc
        server = Server(run_id=run_id, policy=policy, desk=desk, feed=feed, gate=gate, store=store, config=s,
                        notifier=notifier, broker=broker)  # fmt: skip
        if broker is not None:
            _start_live(server, broker, env_cfg)
    except ServeError:
        if store.created:
            store.discard()
        raise
    log.info("serving %s %s on %s %s %s %s (state %s)", cfg.mode, bundle, exchange, market, symbol,
             timeframe, store.where)  # fmt: skip
    return server


def _start_live(server: Server, broker: LiveBroker, cfg: EnvConfig) -> None:
    """Margin mode and leverage, then the reconciliation with the exchange; a clock the exchange
    rejects, keys it refuses, or an account that disagrees with the store stop the start.

    Cross margin: the env liquidates when the whole account's equity falls to the maintenance
    margin, which on an exchange is cross margin on an account that holds this one position
    (isolated margin would back it with ``notional / leverage`` only and liquidate sooner). The
    exchange's leverage is set one step above the bundle's: the bundle's cap is kept by the
    kernel's sizing and the risk gate, and an order sized at the cap at the close must not be
    refused because the next bar opened a little higher (or a limit order's margin is checked at
    its limit price)."""
    try:
        broker.setup(math.ceil(cfg.leverage) + 1, "cross")
        disagreement = server.reconcile(int(time.time() * 1000))
    except BrokerError as exc:
        text = str(exc)
        if "InvalidNonce" in text or "-1021" in text:
            raise ServeError(f"{CLOCK_HINT} ({text})") from exc
        if "AuthenticationError" in text or "PermissionDenied" in text:
            raise ServeError(f"the exchange refuses the API key: {text}") from exc
        raise ServeError(f"cannot read the account on the exchange: {text}") from exc
    if disagreement:
        server._halt(server.last_bar or 0, "reconcile", disagreement)
        raise ServeError(f"HALTED: {disagreement}")
    server._set(account=server.account.to_dict())
