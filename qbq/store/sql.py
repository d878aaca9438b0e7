"""SQL helpers every store module shares: dialect-aware INSERT … ON CONFLICT DO NOTHING, row
counts and key chunks (SQLite and PostgreSQL both cap bound parameters per statement)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, Result
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from qbq.errors import StoreStateError

__all__ = ["CHUNK", "chunks", "dialect_of", "insert_ignore", "rowcount"]

#: Keys per `IN (…)` list: well under SQLite's 32,766 bound parameters and PostgreSQL's 65,535.
CHUNK = 500


def dialect_of(session: Session) -> str:
    """`sqlite` or `postgresql`: the dialect of the session's connection."""
    return session.get_bind().dialect.name


def insert_ignore(
    session: Session, model: type[Any], rows: list[dict[str, Any]], *, conflict: list[str] | None
) -> None:
    """INSERT ... ON CONFLICT DO NOTHING (on `conflict` columns, or any unique constraint).

    Raises `StoreStateError` for a database other than SQLite or PostgreSQL.
    """
    dialect = dialect_of(session)
    if dialect == "postgresql":
        pg_stmt = postgresql.insert(model).on_conflict_do_nothing(index_elements=conflict)
        session.execute(pg_stmt, rows)
    elif dialect == "sqlite":
        lite_stmt = sqlite.insert(model).on_conflict_do_nothing(index_elements=conflict)
        session.execute(lite_stmt, rows)
    else:
        raise StoreStateError(f"unsupported database {dialect!r}: use SQLite or PostgreSQL")


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched."""
    return cast(CursorResult[Any], result).rowcount


def chunks(keys: Sequence[str]) -> Iterator[Sequence[str]]:
    """`keys` without repeats, `CHUNK` at a time."""
    unique = list(dict.fromkeys(keys))
    for start in range(0, len(unique), CHUNK):
        yield unique[start : start + CHUNK]
