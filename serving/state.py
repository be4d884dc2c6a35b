"""The serving loop's persistent state: everything a bot must not lose across crashes and restarts.

One SQLAlchemy Core code path serves SQLite (the default: a file; WAL journal, ``synchronous=NORMAL``,
``busy_timeout`` 5000 ms on every connection) and PostgreSQL (a ``postgresql://`` URL); the
statements a serving bar runs are compiled once and run on the driver's cursor (:class:`_Sql`). Every
write is one transaction, so a kill between two statements never leaves half a record; on SQLite a
write transaction starts with ``BEGIN IMMEDIATE``, so a read-then-write (an order's transition, taking
commands) cannot interleave with another process's write. All timestamps are epoch ms ints.

A store holds exactly one run of exactly one bundle (:meth:`StateStore.open_run` refuses another run,
and another bundle by its content hash), so the ``run`` table is the scope of every other table and
they carry no ``run_id`` of their own; client order ids carry it.

A database is used only when it is a store of ours at this :data:`SCHEMA_VERSION` (its
``klinegym_store`` row says so) or holds no table at all, which a start makes into one in a single
transaction. Anything else is refused before a byte is written: another program's SQLite file or
database, a file that is not SQLite, a store of another schema version (older stores, without the
bundle's identity, included: finish them with the version that wrote them).

Tables (one row per):

- ``klinegym_store``: the store itself (one row): ``schema_version created_ms``.
- ``run``: the run this store belongs to: ``run_id bundle exchange market symbol timeframe mode
  bundle_id`` (``bundle_id``: the served bundle's content hash, :func:`agents.bundle.bundle_identity`).
- ``kv``: a trading-state key (``trading_state halted_until_ms day day_start_equity peak_equity
  last_bar_ts`` ...) with its JSON value.
- ``decisions``: a decided bar (``bar_ts`` key): ``obs_hash raw_action target clamped_target events``.
- ``orders``: an order, written before it is sent (``client_id`` key): ``bar_ts side qty reduce_only
  price_hint status exchange_id filled error created_ms updated_ms``.
- ``fills``: a fill (``client_id trade_id`` key): ``ts_ms qty`` (signed, + buy / - sell) ``price fee``.
- ``account``: the account as the bot last knew it (a single row): ``cash position entry
  last_trade_ts ts_ms``.
- ``equity``: a point of the equity curve (``ts_ms`` key): ``equity position cash price``.
- ``risk_events``: a risk gate event: ``ts_ms kind check reason``.
- ``commands``: an operator command (``halt resume flatten``), queued by another process:
  ``command created_ms done_ms`` (``done_ms`` is null while pending).

Order life cycle (:data:`TRANSITIONS`): ``NEW -> SENT | REJECTED | UNKNOWN | CANCELED``;
``SENT -> PARTIALLY_FILLED | FILLED | CANCELED | REJECTED | UNKNOWN``; ``PARTIALLY_FILLED ->
PARTIALLY_FILLED | FILLED | CANCELED | UNKNOWN``; ``UNKNOWN -> SENT | PARTIALLY_FILLED | FILLED |
CANCELED | REJECTED``; ``FILLED CANCELED REJECTED`` are final. Repeating an order's last update with
nothing new (a restart replaying it) is a no-op; any other move outside the table is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    event,
    func,
    inspect,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError


class StateError(RuntimeError):
    """A state store that cannot be used as asked (corrupt file, another run's store, bad URL, an
    illegal order transition). Policy: do not start (or stop); the message names the file and the fix."""


ORDER_STATES = ("NEW", "SENT", "PARTIALLY_FILLED", "FILLED", "CANCELED", "REJECTED", "UNKNOWN")
OPEN_ORDER_STATES = ("NEW", "SENT", "PARTIALLY_FILLED", "UNKNOWN")
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "NEW": ("SENT", "REJECTED", "UNKNOWN", "CANCELED"),
    "SENT": ("PARTIALLY_FILLED", "FILLED", "CANCELED", "REJECTED", "UNKNOWN"),
    "PARTIALLY_FILLED": ("PARTIALLY_FILLED", "FILLED", "CANCELED", "UNKNOWN"),
    "UNKNOWN": ("SENT", "PARTIALLY_FILLED", "FILLED", "CANCELED", "REJECTED"),
    "FILLED": (),
    "CANCELED": (),
    "REJECTED": (),
}
COMMANDS = ("halt", "resume", "flatten")
# 1: the stores of klinegym 0.1 before a store was tied to its bundle (no klinegym_store table)
SCHEMA_VERSION = 2
MODES = ("paper", "live")
SQLITE_BUSY_TIMEOUT_MS = 5000
_DIALECTS = ("sqlite", "postgresql")

_meta = MetaData()
# epoch ms overflow a 32-bit PostgreSQL integer; SQLite wants INTEGER for an autoincrement key
_Id = BigInteger().with_variant(Integer(), "sqlite")
store_table = Table(
    "klinegym_store", _meta,
    Column("schema_version", Integer, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)  # fmt: skip
run_table = Table(
    "run", _meta,
    Column("run_id", String, primary_key=True),
    Column("bundle", String, nullable=False),
    Column("exchange", String, nullable=False),
    Column("market", String, nullable=False),
    Column("symbol", String, nullable=False),
    Column("timeframe", String, nullable=False),
    Column("mode", String, nullable=False),
    Column("bundle_id", String, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("opened_ms", BigInteger, nullable=False),
)  # fmt: skip
kv_table = Table(
    "kv", _meta,
    Column("key", String, primary_key=True),
    Column("value", Text, nullable=False),
)  # fmt: skip
decisions_table = Table(
    "decisions", _meta,
    Column("bar_ts", BigInteger, primary_key=True, autoincrement=False),
    Column("obs_hash", String, nullable=False),
    Column("raw_action", Double, nullable=False),
    Column("target", Double, nullable=False),
    Column("clamped_target", Double, nullable=False),
    Column("events", Text, nullable=False),
)  # fmt: skip
orders_table = Table(
    "orders", _meta,
    Column("client_id", String, primary_key=True),
    Column("bar_ts", BigInteger, nullable=False),
    Column("side", String, nullable=False),
    Column("qty", Double, nullable=False),
    Column("reduce_only", Boolean, nullable=False),
    Column("price_hint", Double),
    Column("status", String, nullable=False),
    Column("exchange_id", String),
    Column("filled", Double, nullable=False),
    Column("error", Text),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)  # fmt: skip
fills_table = Table(
    "fills", _meta,
    Column("client_id", String, primary_key=True),
    Column("trade_id", String, primary_key=True),
    Column("ts_ms", BigInteger, nullable=False),
    Column("qty", Double, nullable=False),
    Column("price", Double, nullable=False),
    Column("fee", Double, nullable=False),
)  # fmt: skip
account_table = Table(
    "account", _meta,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1: one account per store
    Column("cash", Double, nullable=False),
    Column("position", Double, nullable=False),
    Column("entry", Double, nullable=False),
    Column("last_trade_ts", BigInteger),
    Column("ts_ms", BigInteger, nullable=False),
)  # fmt: skip
equity_table = Table(
    "equity", _meta,
    Column("ts_ms", BigInteger, primary_key=True, autoincrement=False),
    Column("equity", Double, nullable=False),
    Column("position", Double, nullable=False),
    Column("cash", Double, nullable=False),
    Column("price", Double, nullable=False),
)  # fmt: skip
risk_events_table = Table(
    "risk_events", _meta,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("ts_ms", BigInteger, nullable=False),
    Column("kind", String, nullable=False),
    Column("check", String, nullable=False),
    Column("reason", Text, nullable=False),
)  # fmt: skip
commands_table = Table(
    "commands", _meta,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("command", String, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("done_ms", BigInteger),
)  # fmt: skip


def store_url(state: str) -> str:
    """``'runs/x/state.db'`` or ``'/abs/state.sqlite'`` -> ``'sqlite:////abs/...'`` (relative paths are
    resolved against the working directory); ``postgresql://`` (or ``postgres://``) without a driver
    -> ``postgresql+psycopg://`` (psycopg 3, the ``postgres`` extra; SQLAlchemy's own default is the
    older psycopg2); any other URL (anything with ``'://'``) is returned as is."""
    for bare in ("postgresql://", "postgres://"):
        if state.startswith(bare):
            return "postgresql+psycopg://" + state[len(bare) :]
    if "://" in state:
        return state
    if state == ":memory:":
        return "sqlite:///:memory:"
    return f"sqlite:///{Path(state).expanduser().resolve()}"


@dataclass(frozen=True)
class RunMeta:
    """The run a state store belongs to. ``mode`` is ``paper`` or ``live``; ``bundle_id`` identifies
    what decides by content (a bundle's hash, or a baseline's name and env), ``bundle`` is where it
    was loaded from."""

    run_id: str
    bundle: str
    exchange: str
    market: str
    symbol: str
    timeframe: str
    mode: str
    bundle_id: str


def _dumps(key: str, value: Any) -> str:
    def default(obj: Any) -> Any:
        # numpy scalars and arrays, without importing numpy here
        if hasattr(obj, "tolist"):
            return obj.tolist()
        raise TypeError(f"state key {key!r}: {type(obj).__name__} is not JSON serialisable")

    return json.dumps(value, default=default)


def _wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class _Sql:
    """A statement compiled once for the store's database, run on the connection's own DBAPI
    cursor: SQLAlchemy's per-execution work (cache key, parameter and result processing) cost each
    of a serving bar's statements 0.1-0.2 ms, several times the database's own time."""

    text: str
    names: tuple[str, ...] | None  # the parameters' order, for positional paramstyles (SQLite's ?)

    @classmethod
    def of(cls, stmt: Any, engine: Engine) -> _Sql:
        compiled = stmt.compile(dialect=engine.dialect)
        return cls(compiled.string, tuple(compiled.positiontup) if compiled.positional else None)

    def _args(self, row: dict[str, Any]) -> Any:
        return row if self.names is None else tuple(row[n] for n in self.names)

    def run(self, conn: Connection, row: dict[str, Any]) -> Any:
        """Execute with ``row``'s values (none of the columns needs a type conversion SQLAlchemy
        would make: numbers, text, and booleans both drivers take as they are); the cursor."""
        cur = conn.connection.cursor()
        cur.execute(self.text, self._args(row))
        return cur

    def run_many(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        conn.connection.cursor().executemany(self.text, [self._args(r) for r in rows])


class StateStore:
    """A bot's state in a SQLite file or a PostgreSQL database (see the module docstring).

    ``state`` is a path (its folder is created) or a SQLAlchemy URL; missing tables are created.
    """

    def __init__(self, state: str, *, idle_checkpoints: bool = False, create: bool = True):
        """``idle_checkpoints``: SQLite copies its WAL into the database file only when
        :meth:`checkpoint` is called (the serving loop does, between bars), never inside a commit,
        where an automatic checkpoint's writes and fsyncs cost a bar's transaction up to 8 ms.
        ``create``: make a store of a database that holds no table, or of a new file (and its folder);
        without it, such a database is refused (``command=status`` of a bot that never ran). What is
        not a store of ours is refused either way, before anything is written (module docstring)."""
        self.state = str(state)
        try:
            url = make_url(store_url(self.state))
        except ArgumentError as exc:
            raise StateError(
                f"state={self.state!r} is neither a path nor a database URL: give a SQLite file path or "
                "postgresql://user@host/db"
            ) from exc
        backend = url.get_backend_name()
        if backend not in _DIALECTS:
            raise StateError(
                f"state={url.render_as_string(hide_password=True)}: a {backend} database is not supported; "
                "give a SQLite file path or a postgresql:// URL"
            )
        self._sqlite = backend == "sqlite"
        self.where = url.database if self._sqlite else url.render_as_string(hide_password=True)
        self.created = False  # this object made the store (see discard)
        self._made_folder: Path | None = None
        file = Path(url.database) if self._sqlite and url.database not in (None, "", ":memory:") else None
        if file is not None and url.query.get("uri"):
            file = None
        survey = _sqlite_survey(file, self.where) if file is not None else None
        if file is not None and survey is None:  # no such file
            if not create:
                raise StateError(f"no state store at {self.where}: the bot has not run yet (or give state=)")
            folder = next((p for p in reversed(file.parents) if not p.exists()), None)
            try:
                file.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StateError(f"cannot create the folder of state store {self.where}: {exc}") from exc
            self._made_folder = folder
        try:
            self._engine: Engine = create_engine(url)
        except (NoSuchModuleError, ImportError) as exc:
            raise StateError(
                f"cannot open state store {self.where}: {exc}; install its database driver "
                "(pip install 'klinegym[postgres]' for postgresql://) or give a SQLite file path"
            ) from exc
        if file is None:  # PostgreSQL (or SQLite in memory): read what the database holds, writing nothing
            survey = self._survey()
        make = _admit(*(survey or (set(), None)), where=self.where, create=create)
        if self._sqlite:
            _sqlite_setup(self._engine, autocheckpoint=not idle_checkpoints)
        # reads take no write lock on SQLite (see _sqlite_setup)
        self._reader = self._engine.execution_options(state_read=True)
        self._batch: Connection | None = None
        self._writer: Connection | None = None

        # the statements of every bar, built once and run with parameters: building one per call
        # (``.values(row)``) cost SQLAlchemy ~0.3 ms each in cache-key work
        def sql(stmt: Any) -> _Sql:
            return _Sql.of(stmt, self._engine)

        self._add = {t.name: sql(self._insert(t).on_conflict_do_nothing())
                     for t in (decisions_table, orders_table, fills_table)}  # fmt: skip
        self._put = {t.name: sql(self._upsert(t)) for t in (kv_table, account_table, equity_table)}
        self._add_risk_event = sql(
            risk_events_table.insert().values({c: bindparam(c) for c in ("ts_ms", "kind", "check", "reason")})
        )
        self._get_kv = select(kv_table.c.value).where(kv_table.c.key == bindparam("k"))
        self._get_order = select(orders_table).where(orders_table.c.client_id == bindparam("cid"))
        # PostgreSQL's row lock; SQLite's is BEGIN IMMEDIATE
        self._lock_order = sql(self._get_order.with_for_update())
        self._set_order = sql(
            update(orders_table)
            .where(orders_table.c.client_id == bindparam("cid"))
            .values({c: bindparam(c) for c in ("status", "updated_ms", "exchange_id", "filled", "error")})
        )
        c = commands_table.c
        self._take_commands = sql(
            update(commands_table)
            .where(c.done_ms.is_(None))
            .values(done_ms=bindparam("now"))
            .returning(c.id, c.command)
        )
        if make:
            self._create()

    def _survey(self) -> tuple[set[str], int | None]:
        try:
            with self._engine.connect() as conn:
                names = set(inspect(conn).get_table_names())
                version = (
                    conn.execute(select(func.max(store_table.c.schema_version))).scalar()
                    if store_table.name in names
                    else None
                )
        except DBAPIError as exc:
            self._engine.dispose()
            raise StateError(
                f"cannot open state store {self.where}: {' '.join(str(exc.orig).split())}; check the URL, "
                "its permissions and that the database is reachable"
            ) from exc
        return names, version

    def _create(self) -> None:
        """Every table and the store's row in one transaction: a kill leaves no half-made store."""
        try:
            with self._engine.begin() as conn:
                _meta.create_all(conn)
                if conn.execute(select(func.count()).select_from(store_table)).scalar() == 0:
                    row = {"schema_version": SCHEMA_VERSION, "created_ms": _wall_ms()}
                    conn.execute(store_table.insert().values(row))
        except DBAPIError as exc:
            self._engine.dispose()
            raise StateError(
                f"cannot create state store {self.where}: {' '.join(str(exc.orig).split())}; check the path "
                "or URL and its permissions"
            ) from exc
        self.created = True

    def discard(self) -> None:
        """Remove the store this object created, for a start refused after it was made (live keys the
        exchange refuses, say): such a start leaves nothing behind. Refused for any other store."""
        if not self.created:
            raise StateError(f"state store {self.where} was not created by this start; it is kept")
        self.close()
        if self._sqlite:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{self.where}{suffix}").unlink(missing_ok=True)
            folder = Path(self.where).parent
            while self._made_folder is not None and folder.is_relative_to(self._made_folder):
                with contextlib.suppress(OSError):
                    folder.rmdir()
                folder = folder.parent
        else:
            with self._engine.begin() as conn:
                _meta.drop_all(conn)
            self._engine.dispose()
        self.created = False

    def checkpoint(self, if_over: int = 0) -> None:
        """SQLite: copy what the WAL holds into the database file and empty the WAL, if the WAL file
        is over ``if_over`` bytes (``PRAGMA wal_checkpoint(TRUNCATE)``, which waits up to the busy
        timeout for readers of the WAL to finish); nothing to do on PostgreSQL."""
        if not self._sqlite:
            return
        try:
            size = os.path.getsize(f"{self.where}-wal") if if_over else 0
        except OSError:  # no WAL file (yet): nothing to copy
            return
        if size >= if_over:
            raw = self._engine.raw_connection()  # outside a transaction, which a checkpoint cannot run in
            try:
                raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                raw.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection (SQLite checkpoints its WAL into the file)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._engine.dispose()

    def _insert(self, table: Table) -> Any:
        """An INSERT that can say ``ON CONFLICT`` in this database's dialect."""
        return sqlite.insert(table) if self._sqlite else postgresql.insert(table)

    def _upsert(self, table: Table) -> Any:
        """INSERT a row, or replace every other column of the row with its primary key."""
        stmt = self._insert(table)
        keys = [c.name for c in table.primary_key]
        rest = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
        return stmt.on_conflict_do_update(index_elements=keys, set_=rest)

    # -- the run ----------------------------------------------------------------------------------

    def open_run(self, meta: RunMeta) -> None:
        """Record ``meta`` on first use; later, check the store belongs to the same bundle, run and
        market.

        Refused (:class:`StateError`): a store of another bundle (``bundle_id``: another content,
        wherever it was loaded from); a store holding another run; the same run on another exchange,
        market, symbol or timeframe; a paper run going live (its account is not the exchange's).
        The bundle's path (the same content moved) and ``live -> paper`` may change and are recorded.
        """
        if meta.mode not in MODES:
            raise StateError(f"mode={meta.mode} is not one of {', '.join(MODES)}")
        now = _wall_ms()
        with self._write() as conn:
            rows = conn.execute(select(run_table)).mappings().all()
            if not rows:
                conn.execute(run_table.insert().values(**asdict(meta), created_ms=now, opened_ms=now))
                return
            old = RunMeta(**{k: rows[0][k] for k in RunMeta.__dataclass_fields__})
            owner = f"{old.run_id} ({old.symbol} {old.timeframe} on {old.exchange} {old.market})"
            if len(rows) == 1 and old.bundle_id != meta.bundle_id:
                raise StateError(
                    f"state store {self.where} belongs to bundle {old.bundle} ({old.bundle_id}) of run "
                    f"{owner}; this start serves {meta.bundle} ({meta.bundle_id}), another bundle: use a new "
                    "state= for it, or serve the bundle the store belongs to"
                )
            if len(rows) > 1 or old.run_id != meta.run_id:
                raise StateError(
                    f"state store {self.where} belongs to run {owner}; use a new state= for run {meta.run_id}"
                )
            fields = ("exchange", "market", "symbol", "timeframe")
            differ = [f"{f}={getattr(meta, f)} (recorded {getattr(old, f)})" for f in fields
                      if getattr(meta, f) != getattr(old, f)]  # fmt: skip
            if differ:
                raise StateError(
                    f"state store {self.where} belongs to run {owner}; this start asks {', '.join(differ)}: "
                    "use a new state= for another market"
                )
            if old.mode == "paper" and meta.mode == "live":
                raise StateError(
                    f"state store {self.where} holds the paper account of run {owner}; live trading must "
                    "start from a new state= (the paper account is not the exchange's)"
                )
            conn.execute(update(run_table).values(bundle=meta.bundle, mode=meta.mode, opened_ms=now))

    def run(self) -> RunMeta | None:
        with self._reader.connect() as conn:
            row = conn.execute(select(run_table)).mappings().first()
        return None if row is None else RunMeta(**{k: row[k] for k in RunMeta.__dataclass_fields__})

    # -- key/value trading state ------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The JSON value saved under ``key``, or ``default`` when it was never set (a key set to
        ``None`` gives ``None``)."""
        with self._reader.connect() as conn:
            value = conn.execute(self._get_kv, {"k": key}).scalar()
        return default if value is None else json.loads(value)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Every write inside the block in one transaction: one commit, and all or nothing (the
        serving loop writes each bar this way). Reads inside it see only what was committed."""
        if self._batch is not None:
            yield
            return
        if self._writer is None or self._writer.closed:
            # one connection kept for the batches, the serving loop's every bar: checking one out of
            # the pool and back for each cost a bar's transaction ~0.1 ms
            self._writer = self._engine.connect()
        with self._writer.begin():
            self._batch = self._writer
            try:
                yield
            finally:
                self._batch = None

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        if self._batch is not None:
            yield self._batch
        else:
            with self._engine.begin() as conn:
                yield conn

    def set(self, **values: Any) -> None:
        """Save several keys (JSON values) in one transaction."""
        if not values:
            return
        rows = [{"key": k, "value": _dumps(k, v)} for k, v in values.items()]
        with self._write() as conn:
            self._put["kv"].run_many(conn, rows)

    def _state(self, conn: Connection) -> dict[str, Any]:
        rows = conn.execute(select(kv_table).order_by(kv_table.c.key)).all()
        return {k: json.loads(v) for k, v in rows}

    # -- decisions --------------------------------------------------------------------------------

    def record_decision(self, bar_ts: int, obs_hash: str, raw_action: float, target: float,
                        clamped_target: float, events: list[dict]) -> bool:  # fmt: skip
        """Record the decision at the close of ``bar_ts``; ``False`` (and nothing written) when that
        bar was already decided, as after a restart that re-decides it."""
        row = {
            "bar_ts": int(bar_ts), "obs_hash": str(obs_hash), "raw_action": float(raw_action),
            "target": float(target), "clamped_target": float(clamped_target),
            "events": _dumps("events", list(events)),
        }  # fmt: skip
        with self._write() as conn:
            return self._add["decisions"].run(conn, row).rowcount == 1

    def decisions(self) -> list[dict]:
        with self._reader.connect() as conn:
            rows = conn.execute(select(decisions_table).order_by(decisions_table.c.bar_ts)).mappings().all()
        return [_decision(r) for r in rows]

    # -- orders and fills -------------------------------------------------------------------------

    def create_order(self, client_id: str, bar_ts: int, side: str, qty: float, reduce_only: bool,
                     price_hint: float | None, now_ms: int) -> bool:  # fmt: skip
        """Write an order as ``NEW`` before it is sent; ``False`` (and nothing written) when
        ``client_id`` exists already, so a restart never makes a second order for the same bar."""
        if side not in ("buy", "sell"):
            raise ValueError(f"order {client_id}: side={side!r} must be 'buy' or 'sell'")
        row = {
            "client_id": client_id, "bar_ts": int(bar_ts), "side": side, "qty": float(qty),
            "reduce_only": bool(reduce_only), "price_hint": None if price_hint is None else float(price_hint),
            "status": "NEW", "exchange_id": None, "filled": 0.0, "error": None,
            "created_ms": int(now_ms), "updated_ms": int(now_ms),
        }  # fmt: skip
        with self._write() as conn:
            return self._add["orders"].run(conn, row).rowcount == 1

    def update_order(self, client_id: str, status: str, now_ms: int, exchange_id: str | None = None,
                     filled: float | None = None, error: str | None = None,
                     via: tuple[str, ...] = ()) -> None:  # fmt: skip
        """Move an order to ``status`` (see :data:`TRANSITIONS`), recording what is given; through
        the states ``via`` first where it is not past them (``via=("SENT",)``: a paper order goes
        NEW -> SENT -> FILLED in one read and one write).

        ``filled`` is the cumulative filled quantity (unsigned). Repeating the order's current status
        with nothing new is a no-op (a restart replaying its last update); an unknown order or a move
        outside the table raises :class:`StateError`.
        """
        path = (*via, status)
        for name in path:
            if name not in ORDER_STATES:
                raise StateError(
                    f"order {client_id}: status {name!r} is not one of {', '.join(ORDER_STATES)}"
                )
        with self._write() as conn:
            cur = self._lock_order.run(conn, {"cid": client_id})
            found = cur.fetchone()
            if found is None:
                raise StateError(f"order {client_id} is not in state store {self.where}: create_order first")
            row = dict(zip([d[0] for d in cur.description], found, strict=True))
            old = row["status"]
            given = {
                "exchange_id": exchange_id,
                "filled": None if filled is None else float(filled),
                "error": error,
            }
            changes = {k: v for k, v in given.items() if v is not None}
            if status == old and all(row[k] == v for k, v in changes.items()):
                return
            at = old
            for step in path[via.index(old) + 1 :] if old in via else path:
                if step not in TRANSITIONS[at]:
                    allowed = ", ".join(TRANSITIONS[at]) or f"none, {at} is final"
                    raise StateError(
                        f"order {client_id}: {at} -> {step} is not a legal transition (from {at}: {allowed})"
                    )
                at = step
            new = {k: row[k] for k in ("exchange_id", "filled", "error")} | changes
            self._set_order.run(conn, {"cid": client_id, "status": status, "updated_ms": int(now_ms), **new})

    def order(self, client_id: str) -> dict | None:
        with self._reader.connect() as conn:
            row = conn.execute(self._get_order, {"cid": client_id}).mappings().first()
        return None if row is None else dict(row)

    def orders(self, statuses: tuple[str, ...] | None = None) -> list[dict]:
        """Orders, oldest first; only those in ``statuses`` when given."""
        with self._reader.connect() as conn:
            return self._orders(conn, statuses)

    def _orders(self, conn: Connection, statuses: tuple[str, ...] | None) -> list[dict]:
        stmt = select(orders_table).order_by(
            orders_table.c.created_ms, orders_table.c.bar_ts, orders_table.c.client_id
        )
        if statuses is not None:
            stmt = stmt.where(orders_table.c.status.in_(list(statuses)))
        return [dict(r) for r in conn.execute(stmt).mappings().all()]

    def record_fill(
        self, client_id: str, trade_id: str, ts_ms: int, qty: float, price: float, fee: float
    ) -> bool:
        """Record a fill (``qty`` signed: + buy, - sell); ``False`` (and nothing written) when
        ``(client_id, trade_id)`` was recorded already. ``client_id`` need not name an order: the paper
        broker's rebalances and liquidations have their own ids."""
        row = {"client_id": client_id, "trade_id": str(trade_id), "ts_ms": int(ts_ms), "qty": float(qty),
               "price": float(price), "fee": float(fee)}  # fmt: skip
        with self._write() as conn:
            return self._add["fills"].run(conn, row).rowcount == 1

    def fills(self, client_id: str | None = None) -> list[dict]:
        """Fills in time order; only ``client_id``'s when given."""
        c = fills_table.c
        stmt = select(fills_table).order_by(c.ts_ms, c.client_id, c.trade_id)
        if client_id is not None:
            stmt = stmt.where(c.client_id == client_id)
        with self._reader.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings().all()]

    # -- account, equity, risk events -------------------------------------------------------------

    def save_account(self, *, cash: float, position: float, entry: float, last_trade_ts: int | None,
                     ts_ms: int) -> None:  # fmt: skip
        """Replace the saved account (paper mode keeps the whole account here)."""
        last = None if last_trade_ts is None else int(last_trade_ts)
        row = {"id": 1, "cash": float(cash), "position": float(position), "entry": float(entry),
               "last_trade_ts": last, "ts_ms": int(ts_ms)}  # fmt: skip
        with self._write() as conn:
            self._put["account"].run(conn, row)

    def account(self) -> dict | None:
        with self._reader.connect() as conn:
            return self._account(conn)

    def _account(self, conn: Connection) -> dict | None:
        row = conn.execute(select(account_table)).mappings().first()
        return None if row is None else {k: v for k, v in row.items() if k != "id"}

    def record_equity(self, ts_ms: int, equity: float, position: float, cash: float, price: float) -> None:
        """Record the equity marked at ``ts_ms``, replacing a point already there."""
        row = {"ts_ms": int(ts_ms), "equity": float(equity), "position": float(position), "cash": float(cash),
               "price": float(price)}  # fmt: skip
        with self._write() as conn:
            self._put["equity"].run(conn, row)

    def equity_curve(self) -> list[dict]:
        with self._reader.connect() as conn:
            rows = conn.execute(select(equity_table).order_by(equity_table.c.ts_ms)).mappings().all()
        return [dict(r) for r in rows]

    def record_risk_event(self, ts_ms: int, kind: str, check: str, reason: str) -> None:
        with self._write() as conn:
            self._add_risk_event.run(
                conn, {"ts_ms": int(ts_ms), "kind": kind, "check": check, "reason": reason}
            )

    def risk_events(self) -> list[dict]:
        c = risk_events_table.c
        with self._reader.connect() as conn:
            rows = conn.execute(select(c.ts_ms, c.kind, c.check, c.reason).order_by(c.id)).mappings().all()
        return [dict(r) for r in rows]

    # -- operator commands ------------------------------------------------------------------------

    def push_command(self, command: str, now_ms: int) -> int:
        """Queue an operator command for the running bot; returns its id."""
        if command not in COMMANDS:
            raise StateError(f"command {command!r} is not one of {', '.join(COMMANDS)}")
        with self._write() as conn:
            result = conn.execute(commands_table.insert().values(command=command, created_ms=int(now_ms)))
        return int(result.inserted_primary_key[0])

    def take_commands(self, now_ms: int) -> list[str]:
        """The pending commands in the order they were pushed, marked done in the same statement, so
        two takers never both get one."""
        with self._write() as conn:
            rows = self._take_commands.run(conn, {"now": int(now_ms)}).fetchall()
        return [command for _, command in sorted(rows)]

    # -- status -----------------------------------------------------------------------------------

    def status(self) -> dict:
        """What an operator asks first, read as one snapshot: the run, the trading state keys, the
        account, open orders, the last decision and equity point, and how many rows of each kind."""
        with self._reader.connect() as conn:
            run = conn.execute(select(run_table)).mappings().first()
            last_decision = conn.execute(
                select(decisions_table).order_by(decisions_table.c.bar_ts.desc()).limit(1)
            ).mappings().first()  # fmt: skip
            last_equity = (
                conn.execute(select(equity_table).order_by(equity_table.c.ts_ms.desc()).limit(1))
                .mappings()
                .first()
            )
            counts = {
                t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (decisions_table, orders_table, fills_table, equity_table, risk_events_table)
            }
            counts["pending_commands"] = conn.execute(
                select(func.count()).select_from(commands_table).where(commands_table.c.done_ms.is_(None))
            ).scalar_one()  # fmt: skip
            return {
                "store": self.where,
                "run": None if run is None else {k: run[k] for k in RunMeta.__dataclass_fields__},
                "state": self._state(conn),
                "account": self._account(conn),
                "open_orders": self._orders(conn, OPEN_ORDER_STATES),
                "last_decision": None if last_decision is None else _decision(last_decision),
                "last_equity": None if last_equity is None else dict(last_equity),
                "counts": counts,
            }


def _decision(row: Any) -> dict:
    d = dict(row)
    d["events"] = json.loads(d["events"])
    return d


def _sqlite_setup(engine: Engine, autocheckpoint: bool) -> None:
    """WAL, ``synchronous=NORMAL`` and the busy timeout on every connection, and SQLAlchemy (not the
    sqlite3 driver) emitting BEGIN: ``BEGIN IMMEDIATE`` for writes so that a transaction that reads
    before it writes takes the write lock up front (and waits ``busy_timeout`` for it) rather than
    failing with "database is locked" when another process wrote in between; plain BEGIN for reads,
    which then see one snapshot."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver's own BEGIN handling is off; see _begin
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
            if not autocheckpoint:
                cur.execute("PRAGMA wal_autocheckpoint = 0")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # on the driver's cursor: through SQLAlchemy's execution this cost each bar ~0.1 ms
        conn.connection.cursor().execute(
            "BEGIN" if conn.get_execution_options().get("state_read") else "BEGIN IMMEDIATE"
        )


def _sqlite_survey(path: Path, where: str) -> tuple[set[str], int | None] | None:
    """The tables of a SQLite file and the schema version its ``klinegym_store`` row gives, read
    without writing a byte (``None`` when there is no file): read-only, and with no WAL beside the
    file also immutable, so that SQLite makes no ``-wal`` or ``-shm`` file beside another
    program's database."""
    if not path.exists():
        return None
    if path.is_dir():
        raise StateError(f"cannot open state store {where}: it is a folder; give a file path")
    wal = path.with_name(path.name + "-wal").exists()
    unreadable = f"cannot open state store {where}: %s; check the path and its permissions"
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro{'' if wal else '&immutable=1'}", uri=True)
    except sqlite3.Error as exc:
        raise StateError(unreadable % exc) from exc
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = None
        if store_table.name in names:
            version = conn.execute(f"SELECT max(schema_version) FROM {store_table.name}").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise StateError(
                f"{where} is not a SQLite database (corrupt?): nothing was written to it; move it aside, or "
                "point state= at a new file"
            ) from exc
        raise StateError(unreadable % exc) from exc
    finally:
        conn.close()
    return {n for n in names if not n.startswith("sqlite_")}, version


def _admit(names: set[str], version: int | None, *, where: str, create: bool) -> bool:
    """Whether a database holding ``names`` (with the store row's ``version``) is made into a store
    (``True``), is one of ours at this schema (``False``), or is refused (:class:`StateError`)."""
    if not names:
        if not create:
            raise StateError(f"no state store at {where}: the bot has not run yet (or give state=)")
        return True
    if store_table.name in names:
        if version == SCHEMA_VERSION:
            return False
        if version is None:
            raise StateError(f"state store {where} is damaged (no klinegym_store row): move it aside")
        newer = "a newer klinegym: upgrade to use it" if version > SCHEMA_VERSION else "an older klinegym"
        raise StateError(
            f"state store {where} has schema version {version}, written by {newer}; this one reads version "
            f"{SCHEMA_VERSION} (or start from a new state=)"
        )
    if {t.name for t in _meta.sorted_tables if t is not store_table} <= names:
        raise StateError(
            f"state store {where} was written by an older klinegym (schema version 1, before a store was "
            "tied to its bundle): finish that bot with the version that wrote it, or start from a new state="
        )
    shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
    raise StateError(
        f"{where} is not a klinegym state store (it holds tables {shown}): nothing was written to it; point "
        "state= at a new file or an empty database"
    )
