"""The store's engine and transactions: SQLite (WAL, one writer at a time) or PostgreSQL.

`Store.migrate()` brings the schema to the newest Alembic revision; `Store.transaction()` is the
one place a transaction is committed.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from qbq.errors import StoreUnavailableError
from qbq.settings import QbqSettings
from qbq.store.models import StoreMetaRow
from qbq.store.outage import classify, outage_cause, persistent_cause

__all__ = ["MIGRATION_LOCK_ID", "Store", "alembic_config", "describe_store", "migration_connection",
           "sqlite_file"]

#: PostgreSQL advisory lock key that serialises concurrent migrations ("qbq" + 0x0001).
MIGRATION_LOCK_ID = 0x71627100_0001

_HERE = Path(__file__).resolve().parent
_SQLITE_BUSY_TIMEOUT_S = 30.0
#: Longest wait between two tries to reach a store that is down (seconds).
_OUTAGE_BACKOFF_MAX_S = 2.0
_T = TypeVar("_T")


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations (no ini file needed)."""
    cfg = Config(str(_HERE / "alembic.ini"))
    cfg.set_main_option("script_location", str(_HERE / "migrations"))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@contextmanager
def migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that holds the migration lock; commits on success.

    PostgreSQL: a transaction-scoped advisory lock, so concurrent callers wait their turn and
    then find the schema current. SQLite: `BEGIN IMMEDIATE` already excludes other writers;
    foreign keys are off meanwhile, as batch-mode table rebuilds need.
    """
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            _sqlite_pragma(conn, "PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_ID)))
                yield conn
        finally:
            if sqlite:
                _sqlite_pragma(conn, "PRAGMA foreign_keys=ON")


def _sqlite_pragma(conn: Connection, pragma: str) -> None:
    """Run a pragma on the driver connection, outside any SQLAlchemy transaction."""
    driver = conn.connection.driver_connection
    if driver is None:  # pragma: no cover - a checked-out connection always has one
        raise RuntimeError("no driver connection")
    driver.execute(pragma)


class Store:
    """The database behind qbq: an engine, a session factory, migrations and transactions."""

    def __init__(self, url: str, *, outage_s: float = 120.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.url = url
        #: How long `transaction()` waits for the database to come back (QBQ_DB_OUTAGE_S).
        self.outage_s = outage_s
        self._sleep = sleep
        self.engine = _create_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._instance_id: str | None = None
        self._sqlite_writes = threading.Lock()
        #: The error that stopped this store (a persistent error, or an outage longer than
        #: `outage_s`): every later `transaction()` and `run()` raises it again at once, so a
        #: run stops once instead of every batch meeting it on its own.
        self.stopped: StoreUnavailableError | None = None
        self._stopping = threading.Lock()

    @classmethod
    def from_settings(cls, settings: QbqSettings) -> Store:
        """The store named by `settings.database_url`, riding out `settings.db_outage_s`."""
        return cls(settings.database_url, outage_s=settings.db_outage_s)

    @property
    def label(self) -> str:
        """Which store this is, for people and messages (`describe_store`: the SQLite file's
        absolute path, or the URL without its password)."""
        return describe_store(self.url)

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self.engine.dialect.name

    def migrate(self) -> None:
        """Upgrade the schema to the newest revision; idempotent and safe to call concurrently.

        A migration that meets a transient error (SQLite busy when several processes migrate
        one file at once, a dropped connection) is run again, as `run` replays a transaction.
        """
        cfg = alembic_config()

        def once() -> None:
            with migration_connection(self.engine) as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")

        self._riding_out(once)

    def instance_id(self) -> str:
        """The random id this database got when it was created (survives restarts)."""
        if self._instance_id is None:
            with self.transaction() as session:
                self._instance_id = session.scalars(select(StoreMetaRow.instance_id)).one()
        return self._instance_id

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction: committed when the block ends, rolled back on error.

        Rows read inside stay readable after the block (no expiry on commit). The database is
        reached before the block starts, waiting out an outage (`wait_until_reachable`); a
        persistent store error raised inside becomes `StoreUnavailableError`.
        """
        self._raise_if_stopped()
        self.wait_until_reachable()
        # SQLite takes its write lock at BEGIN; threads of this process queue on a Python lock
        # instead of in SQLite's busy handler, which sleeps in growing steps (up to 100 ms).
        guard = self._sqlite_writes if self.dialect == "sqlite" else contextlib.nullcontext()
        try:
            with guard, self._sessions() as session, session.begin():
                yield session
        except DBAPIError as exc:
            if classify(exc) == "persistent":
                raise self._stop(f"the store {self.label} failed: {persistent_cause(exc)}") \
                    from None
            raise

    def _stop(self, message: str) -> StoreUnavailableError:
        with self._stopping:
            if self.stopped is None:
                self.stopped = StoreUnavailableError(message)
        return StoreUnavailableError(self.stopped.message)

    def _raise_if_stopped(self) -> None:
        if self.stopped is not None:
            raise StoreUnavailableError(self.stopped.message)

    def wait_until_reachable(self) -> None:
        """Return once a pooled connection answers; retry transient failures (connection
        refused or lost, server restarting) with backoff for up to `outage_s` seconds.

        Raises `StoreUnavailableError` naming the store and the cause when the outage lasts
        longer, or at once for a persistent error.
        """
        if self.dialect == "sqlite":
            return  # a file: busy_timeout already waits for other writers

        def ping() -> None:
            with self.engine.connect():  # pool_pre_ping checks the connection
                pass

        self._riding_out(ping)

    def run(self, work: Callable[[Session], _T]) -> _T:
        """`work(session)` in one transaction, the whole transaction replayed when a transient
        error (connection lost mid-way, server restarting, serialization failure, deadlock)
        ends it, for up to `outage_s` seconds — so a write that must not be lost (a paid model
        reply) is held until the store is back. `work` must be safe to replay.

        Raises `StoreUnavailableError` as `transaction()` does.
        """

        def once() -> _T:
            with self.transaction() as session:
                return work(session)

        return self._riding_out(once)

    def _riding_out(self, work: Callable[[], _T]) -> _T:
        started = time.monotonic()
        for attempt in itertools.count():
            try:
                return work()
            except DBAPIError as exc:
                kind = classify(exc)
                waited = time.monotonic() - started
                if kind == "persistent":
                    raise self._stop(f"the store {self.label} failed: "
                                     f"{persistent_cause(exc)}") from None
                if kind is None:
                    raise
                if waited >= self.outage_s:
                    raise self._stop(
                        f"the store {self.label} was unreachable for {waited:.0f} s "
                        f"(QBQ_DB_OUTAGE_S={self.outage_s:g}): {outage_cause(exc)}"
                    ) from None
                self._sleep(min(_OUTAGE_BACKOFF_MAX_S, 0.05 * 2**attempt,
                                max(0.0, self.outage_s - waited)))
        raise AssertionError("unreachable")  # pragma: no cover - itertools.count is endless

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Store({self.label!r})"


def sqlite_file(url: str) -> Path | None:
    """The absolute path of the SQLite file `url` names; None for PostgreSQL or in-memory."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") \
            or "mode=memory" in database or database.startswith("file:"):
        return None
    return Path(database).expanduser().resolve()


def describe_store(url: str) -> str:
    """The store `url` names, for people: the SQLite file's absolute path, or the URL without
    its password."""
    path = sqlite_file(url)
    return str(path) if path is not None else make_url(url).render_as_string(hide_password=True)


def _create_engine(url: str) -> Engine:
    # hide_parameters: a failed statement's error would otherwise quote its parameters (batch
    # results with names and feedback) into logs, Prefect states and events (issue 15).
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, hide_parameters=True)

    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or "mode=memory" in database
    kwargs: dict[str, Any] = {
        "connect_args": {"check_same_thread": False, "timeout": _SQLITE_BUSY_TIMEOUT_S},
    }
    if in_memory:
        kwargs["poolclass"] = StaticPool
    elif not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, hide_parameters=True, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module: SQLAlchemy emits BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(_SQLITE_BUSY_TIMEOUT_S * 1000)}")
            # WAL + NORMAL: commits survive a process crash (SIGKILL), only an OS crash or power
            # loss can drop the last transactions; a fsync per commit costs ms per batch.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front, so two writers queue on busy_timeout
        # instead of failing when a read lock cannot be upgraded.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
