"""Which store errors are an outage to ride out and which stop the run, decided by one table.

Decisions key on error types and codes — PostgreSQL's SQLSTATE
(https://www.postgresql.org/docs/current/errcodes-appendix.html) and SQLite's result codes
(https://www.sqlite.org/rescode.html) — never on message text.
"""

from __future__ import annotations

import sqlite3
from typing import Final, Literal

from sqlalchemy.exc import DBAPIError

__all__ = ["PERSISTENT", "TRANSIENT", "StoreErrorKind", "classify", "outage_cause",
           "persistent_cause"]

StoreErrorKind = Literal["transient", "persistent"]

#: SQLSTATEs of a connection lost or refused, a server shutting down or starting, and
#: serialization failures or deadlocks: retried.
TRANSIENT: Final = frozenset({
    "08000", "08001", "08003", "08004", "08006",  # connection exception
    "57P01", "57P02", "57P03",  # admin / crash shutdown, cannot connect now
    "40001", "40P01",  # serialization failure, deadlock detected
})
#: SQLSTATEs that waiting will not fix, with the words a person reads.
PERSISTENT: Final = {
    "53100": "the disk is full", "53200": "out of memory", "25006": "read-only transaction",
    "42501": "permission denied", "3D000": "the database does not exist",
    "28P01": "password authentication failed", "28000": "authorization refused",
}
# SQLite primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF).
_SQLITE_TRANSIENT: Final = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
_SQLITE_PERSISTENT: Final = {
    8: "the database is read-only", 10: "disk I/O error", 13: "the disk is full",
    14: "the database file cannot be opened", 11: "the database file is corrupt",
}


def _sqlstate(orig: BaseException) -> str | None:
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code if isinstance(code, str) else None


def classify(exc: BaseException) -> StoreErrorKind | None:
    """`transient` (retry), `persistent` (stop the run) or None (a bug or a state error:
    neither)."""
    if not isinstance(exc, DBAPIError):
        return None
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", 0) & 0xFF
        if code in _SQLITE_TRANSIENT:
            return "transient"
        return "persistent" if code in _SQLITE_PERSISTENT else None
    state = _sqlstate(orig) if orig is not None else None
    if state in TRANSIENT or (state is None and exc.connection_invalidated):
        return "transient"
    if state in PERSISTENT:
        return "persistent"
    # A driver error with no SQLSTATE at all is a connection that failed or dropped.
    if state is None and type(orig).__name__ == "OperationalError":
        return "transient"
    return None


def _driver_error(exc: BaseException) -> BaseException | None:
    """The driver's own error under SQLAlchemy's wrapper (or `exc` itself)."""
    return exc.orig if isinstance(exc, DBAPIError) else exc


def persistent_cause(exc: BaseException) -> str:
    """The words for a persistent store error (its code's meaning, or its type)."""
    orig = _driver_error(exc)
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", 0) & 0xFF
        return _SQLITE_PERSISTENT.get(code, type(orig).__name__)
    state = _sqlstate(orig) if orig is not None else None
    return PERSISTENT.get(state or "", type(orig).__name__)


def outage_cause(exc: BaseException) -> str:
    """The words for a connection failure ridden out too long: the driver's error type and the
    first line of its message (e.g. `OperationalError: connection failed: connection to server
    at "127.0.0.1", port 5432 failed: Connection refused`), at most 200 characters. A connection
    error carries no statement parameters, and the URL's password is never in it."""
    orig = _driver_error(exc)
    name = type(orig).__name__
    text = str(orig).strip()
    first = text.splitlines()[0].strip() if text else ""
    return f"{name}: {first[:200]}" if first else name
