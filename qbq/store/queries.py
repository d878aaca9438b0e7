"""Reporting reads over a process's rows, the merge of report data into its summary, and purges.

Every function takes the session first and never commits: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Select, func, select, update
from sqlalchemy.orm import Session

from qbq.store.models import BatchAttemptRow, BatchRow, OutboxRow, ProcessRow

__all__ = [
    "PURGED_MARKER",
    "batch_status_counts",
    "merge_process_summary",
    "process_attempt_errors",
    "process_batches",
    "purge_delivered_payloads",
    "raw_response_count",
]

#: The key a purged outbox payload keeps (the column is non-null JSON: `{"purged_at": iso}`).
PURGED_MARKER = "purged_at"


def process_batches(session: Session, process_id: str) -> list[BatchRow]:
    """The process's batches in plan order, fresh from the database."""
    stmt = select(BatchRow).where(BatchRow.process_id == process_id).order_by(BatchRow.batch_index)
    return list(session.scalars(_fresh(stmt)))


def process_attempt_errors(session: Session, process_id: str) -> list[BatchAttemptRow]:
    """Every failed attempt of the process's batches, oldest first."""
    stmt = (
        select(BatchAttemptRow)
        .join(BatchRow, BatchRow.idempotency_key == BatchAttemptRow.idempotency_key)
        .where(BatchRow.process_id == process_id)
        .order_by(BatchAttemptRow.id)
    )
    return list(session.scalars(_fresh(stmt)))


def batch_status_counts(session: Session, process_id: str) -> dict[str, int]:
    """How many of the process's batches are in each status."""
    stmt = (
        select(BatchRow.status, func.count())
        .where(BatchRow.process_id == process_id)
        .group_by(BatchRow.status)
    )
    return {status: int(n) for status, n in session.execute(stmt)}


def raw_response_count(session: Session, process_id: str | None = None) -> int:
    """How many batches (of the process, or all) still hold a raw model reply."""
    stmt = select(func.count()).select_from(BatchRow).where(BatchRow.raw_response.is_not(None))
    if process_id is not None:
        stmt = stmt.where(BatchRow.process_id == process_id)
    return int(session.scalar(stmt) or 0)


def merge_process_summary(session: Session, process_id: str, parts: Mapping[str, Any]) -> bool:
    """Set top-level keys of the process's summary JSON (others kept); False if no process.

    The row is locked on PostgreSQL so a concurrent completion's summary is not lost.
    """
    stmt = select(ProcessRow.summary).where(ProcessRow.id == process_id)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    found = session.execute(stmt).first()
    if found is None:
        return False
    summary = dict(found[0] or {})
    summary.update(parts)
    session.execute(update(ProcessRow).where(ProcessRow.id == process_id).values(summary=summary))
    return True


def purge_delivered_payloads(session: Session, *, older_than: datetime, now: datetime) -> int:
    """Replace payloads delivered before `older_than` with `{"purged_at": now}`; returns how many.

    Pending and failed deliveries keep their payload (it has not reached its target yet); the
    row itself (status, attempts, times, last error) stays as the delivery record.
    """
    stmt = (
        update(OutboxRow)
        .where(
            OutboxRow.status == "delivered",
            OutboxRow.delivered_at < older_than,
            OutboxRow.payload[PURGED_MARKER].as_string().is_(None),
        )
        .values(payload={PURGED_MARKER: now.isoformat()})
        .execution_options(synchronize_session=False)
    )
    return cast(CursorResult[Any], session.execute(stmt)).rowcount


def _fresh(stmt: Select[Any]) -> Select[Any]:
    return stmt.execution_options(populate_existing=True)
