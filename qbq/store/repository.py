"""Reads and checked state changes of the store's rows; every function takes the session first.

None of them commits: the caller owns the transaction (see `Store.transaction`).

State rules, enforced by conditional UPDATEs so concurrent writers cannot break them:

* process: planned → grading → completed | failed; failed → grading again; completed is final.
* batch: pending → running → succeeded | failed; failed → running again; running → running
  (a claim after a crash); succeeded is final and never overwritten.
* outbox: pending → delivered | failed | superseded (a newer revision of the same process
  was queued before this one went out); superseded → delivered (a send already under way).
  Each process has one row per payload revision, 1, 2, ...
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, case, func, select, update
from sqlalchemy.orm import Session

from qbq.errors import DETAIL_MAX, StoreStateError, clip_detail
from qbq.store.models import (
    BatchAttemptRow,
    BatchRow,
    BatchStatus,
    OutboxRow,
    ProcessRow,
    ProcessStatus,
    utcnow,
)
from qbq.store.sql import chunks, dialect_of, insert_ignore, rowcount
from qbq.usage import Usage

__all__ = [
    "ATTEMPT_DETAIL_MAX",
    "BatchSpec",
    "complete_process",
    "ensure_batches",
    "ensure_process",
    "get_batches",
    "get_outbox",
    "get_process",
    "list_attempt_errors",
    "list_outbox",
    "mark_delivered",
    "mark_delivery_failed",
    "observed_reasoning_per_student",
    "pending_outbox",
    "purge_raw_responses",
    "record_attempt_error",
    "record_batch_failure",
    "record_batch_success",
    "set_process_status",
]

#: Longest `batch_attempts.detail` kept; longer details are cut.
ATTEMPT_DETAIL_MAX = DETAIL_MAX
_LAST_ERROR_MAX = 2000

#: For each target process status, the statuses it may be reached from.
_PROCESS_FROM: dict[ProcessStatus, tuple[ProcessStatus, ...]] = {
    "planned": ("planned",),
    "grading": ("planned", "grading", "failed"),
    "completed": ("planned", "grading", "failed", "completed"),
    "failed": ("planned", "grading", "failed"),
}
_CLAIMABLE: tuple[BatchStatus, ...] = ("pending", "running", "failed")
_FINISHABLE: tuple[BatchStatus, ...] = ("running", "failed")


@dataclass(frozen=True)
class BatchSpec:
    """What the planner decided about one batch, before any attempt."""

    idempotency_key: str
    batch_index: int
    student_refs: Sequence[str]
    planned_prompt_tokens: int
    max_completion_tokens: int
    model: str


# --- processes ---------------------------------------------------------------------------------


def ensure_process(
    session: Session,
    *,
    process_id: str,
    assessment_id: str,
    model: str,
    request_hash: str,
    payload_format: str,
    n_students: int,
    n_batches: int,
) -> ProcessRow:
    """Insert the process (status planned) unless it exists; return the stored row.

    An existing row is returned unchanged: compare its `request_hash` to detect a process id
    reused for a different request.
    """
    now = utcnow()
    row = {
        "id": process_id,
        "assessment_id": assessment_id,
        "model": model,
        "request_hash": request_hash,
        "status": "planned",
        "payload_format": payload_format,
        "n_students": n_students,
        "n_batches": n_batches,
        "created_at": now,
        "updated_at": now,
    }
    insert_ignore(session, ProcessRow, [row], conflict=["id"])
    process = get_process(session, process_id)
    if process is None:  # pragma: no cover - just inserted or already there
        raise StoreStateError(f"process {process_id!r} vanished after insert")
    return process


def get_process(session: Session, process_id: str) -> ProcessRow | None:
    """The process row, fresh from the database, or None."""
    return session.scalars(_fresh(select(ProcessRow).where(ProcessRow.id == process_id))).first()


def set_process_status(
    session: Session,
    process_id: str,
    status: ProcessStatus,
    *,
    summary: dict[str, Any] | None = None,
) -> None:
    """Move the process to `status` (and store `summary` if given); raise on a forbidden move.

    completed and failed stamp `completed_at` (kept when repeated); grading again clears it.
    """
    if status not in _PROCESS_FROM:
        raise StoreStateError(f"unknown process status {status!r}")
    finished_at: Any = None
    if status in ("completed", "failed"):
        # Repeating the same final status keeps the first completion time.
        finished_at = case(
            (ProcessRow.status == status, func.coalesce(ProcessRow.completed_at, utcnow())),
            else_=utcnow(),
        )
    values: dict[str, Any] = {"status": status, "completed_at": finished_at}
    if summary is not None:
        values["summary"] = summary
    stmt = (
        update(ProcessRow)
        .where(ProcessRow.id == process_id, ProcessRow.status.in_(_PROCESS_FROM[status]))
        .values(**values)
    )
    if rowcount(session.execute(stmt)) == 0:
        current = session.scalar(select(ProcessRow.status).where(ProcessRow.id == process_id))
        if current is None:
            raise StoreStateError(f"no process {process_id!r}")
        raise StoreStateError(f"process {process_id!r}: {current} → {status} is not allowed")


def complete_process(
    session: Session,
    process_id: str,
    *,
    status: ProcessStatus,
    summary: dict[str, Any],
    payload: dict[str, Any] | None,
    target_url: str | None,
    delivery_key: str,
    revision: int = 1,
    content_hash: str | None = None,
    now: datetime | None = None,
) -> OutboxRow | None:
    """Finish the process and, with a payload and target, queue `revision` of its payload;
    return the process's latest outbox row (None when it has none).

    Both writes belong to the caller's one transaction. The insert is ignored when the process
    already has this `revision` (or `delivery_key` exists), so a repeated completion queues
    nothing new. When it is inserted, older revisions still pending become `superseded`: the
    platform gets the newest payload only, never an old one after it.
    """
    if status not in ("completed", "failed"):
        raise ValueError(f"complete_process needs completed or failed, not {status!r}")
    set_process_status(session, process_id, status, summary=summary)
    if target_url is not None and payload is not None:
        at = now or utcnow()
        row = {
            "process_id": process_id,
            "revision": revision,
            "content_hash": content_hash,
            "idempotency_key": delivery_key,
            "target_url": target_url,
            "payload": payload,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": at,
            "created_at": at,
        }
        insert_ignore(session, OutboxRow, [row], conflict=None)
        queued = session.scalar(select(OutboxRow.process_id)
                                .where(OutboxRow.idempotency_key == delivery_key))
        if queued == process_id:
            session.execute(
                update(OutboxRow)
                .where(OutboxRow.process_id == process_id, OutboxRow.revision < revision,
                       OutboxRow.status == "pending")
                .values(status="superseded", lease_owner=None, lease_expires_at=None))
    return get_outbox(session, process_id)


# --- batches -----------------------------------------------------------------------------------


def ensure_batches(
    session: Session, process_id: str, specs: Sequence[BatchSpec]
) -> dict[str, BatchRow]:
    """Insert the batches whose idempotency key is new (pending); return all of them by key.

    A real upsert (INSERT ... ON CONFLICT DO NOTHING), safe when several runs plan at once.
    A key already stored under another process is a `StoreStateError`.
    """
    if not specs:
        return {}
    now = utcnow()
    rows = [
        {
            "idempotency_key": spec.idempotency_key,
            "process_id": process_id,
            "batch_index": spec.batch_index,
            "student_refs": list(spec.student_refs),
            "status": "pending",
            "attempts": 0,
            "planned_prompt_tokens": spec.planned_prompt_tokens,
            "max_completion_tokens": spec.max_completion_tokens,
            "model": spec.model,
            "created_at": now,
            "updated_at": now,
        }
        # One key order for every writer, so concurrent inserts cannot deadlock on PostgreSQL.
        for spec in sorted(specs, key=lambda s: s.idempotency_key)
    ]
    insert_ignore(session, BatchRow, rows, conflict=["idempotency_key"])
    batches = get_batches(session, [spec.idempotency_key for spec in specs])
    for key, batch in batches.items():
        if batch.process_id != process_id:
            raise StoreStateError(
                f"batch {key!r} belongs to process {batch.process_id!r}, not {process_id!r}"
            )
    return batches


def get_batches(session: Session, keys: Sequence[str]) -> dict[str, BatchRow]:
    """The stored batches among `keys`, fresh from the database, by idempotency key."""
    found: dict[str, BatchRow] = {}
    for chunk in chunks(keys):
        stmt = select(BatchRow).where(BatchRow.idempotency_key.in_(chunk))
        found.update((b.idempotency_key, b) for b in session.scalars(_fresh(stmt)))
    return found


def observed_reasoning_per_student(session: Session, process_id: str) -> float | None:
    """Reasoning tokens per student over the process's succeeded batches that reported any
    (every attempt of a batch counted, so re-asks make it err high); None before the first."""
    rows = session.execute(
        select(BatchRow.reasoning_tokens, BatchRow.student_refs).where(
            BatchRow.process_id == process_id, BatchRow.status == "succeeded",
            BatchRow.reasoning_tokens.is_not(None))).all()
    students = sum(len(refs) for _, refs in rows)
    if not students:
        return None
    return sum(tokens or 0 for tokens, _ in rows) / students


def record_batch_success(
    session: Session,
    key: str,
    *,
    result: dict[str, Any],
    usage: Usage,
    attempts: int,
    raw_response: str | None,
) -> bool:
    """Store the validated grades of a running (or failed) batch; returns whether it wrote.

    A batch that already succeeded is left as it is (False): a late duplicate never overwrites
    it. A batch that was never claimed is a `StoreStateError`.
    """
    stmt = (
        update(BatchRow)
        .where(BatchRow.idempotency_key == key, BatchRow.status.in_(_FINISHABLE))
        .values(
            status="succeeded",
            result=result,
            **_usage_columns(usage),
            attempts=attempts,
            raw_response=raw_response,
            error_type=None,
            error_stage=None,
            error_detail=None,
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    if rowcount(session.execute(stmt)) == 1:
        return True
    _require_batch_status(session, key, "succeeded", allowed_final="succeeded")
    return False


def record_batch_failure(
    session: Session,
    key: str,
    *,
    error_type: str,
    stage: str,
    detail: str,
    attempts: int,
    result: dict[str, Any] | None = None,
    usage: Usage | None = None,
    raw_response: str | None = None,
) -> bool:
    """Mark a running batch failed with its last error; returns whether it wrote.

    `result` keeps what was valid and each student's failure reason. A batch that already
    succeeded is never downgraded (False).
    """
    stmt = (
        update(BatchRow)
        .where(BatchRow.idempotency_key == key, BatchRow.status.in_(_FINISHABLE))
        .values(
            status="failed",
            error_type=error_type,
            error_stage=stage,
            error_detail=detail,
            attempts=attempts,
            result=result,
            **_usage_columns(usage),
            raw_response=raw_response,
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    if rowcount(session.execute(stmt)) == 1:
        return True
    _require_batch_status(session, key, "failed", allowed_final="succeeded")
    return False


def record_attempt_error(
    session: Session, key: str, *, attempt: int, error_type: str, stage: str, detail: str
) -> BatchAttemptRow:
    """Add one failed attempt of the batch to its history (detail cut to 500 characters)."""
    if session.scalar(select(BatchRow.id).where(BatchRow.idempotency_key == key)) is None:
        raise StoreStateError(f"no batch {key!r}")
    detail = clip_detail(detail, ATTEMPT_DETAIL_MAX)
    row = BatchAttemptRow(
        idempotency_key=key, attempt=attempt, error_type=error_type, stage=stage, detail=detail
    )
    session.add(row)
    session.flush()
    return row


def list_attempt_errors(session: Session, key: str) -> list[BatchAttemptRow]:
    """The failed attempts of the batch, oldest first."""
    stmt = (
        select(BatchAttemptRow)
        .where(BatchAttemptRow.idempotency_key == key)
        .order_by(BatchAttemptRow.attempt, BatchAttemptRow.id)
    )
    return list(session.scalars(_fresh(stmt)))


def purge_raw_responses(
    session: Session, keys: Sequence[str] | None = None, *, older_than: datetime | None = None
) -> int:
    """Forget raw model replies (results stay): of `keys`, or all; only rows updated before
    `older_than` if given. Returns how many batches lost their raw reply.
    """
    criteria: list[ColumnElement[bool]] = [BatchRow.raw_response.is_not(None)]
    if older_than is not None:
        criteria.append(BatchRow.updated_at < older_than)
    groups: Iterator[Sequence[str] | None] = iter([None]) if keys is None else chunks(keys)
    purged = 0
    for chunk in groups:
        where = criteria if chunk is None else [*criteria, BatchRow.idempotency_key.in_(chunk)]
        stmt = update(BatchRow).where(*where).values(raw_response=None)
        purged += rowcount(session.execute(stmt))
    return purged


# --- outbox ------------------------------------------------------------------------------------


def get_outbox(session: Session, process_id: str) -> OutboxRow | None:
    """The process's latest outbox row (highest revision), fresh from the database, or None."""
    stmt = (select(OutboxRow).where(OutboxRow.process_id == process_id)
            .order_by(OutboxRow.revision.desc()).limit(1))
    return session.scalars(_fresh(stmt)).first()


def list_outbox(session: Session, process_id: str) -> list[OutboxRow]:
    """Every outbox row (payload revision) of the process, oldest revision first."""
    stmt = (select(OutboxRow).where(OutboxRow.process_id == process_id)
            .order_by(OutboxRow.revision))
    return list(session.scalars(_fresh(stmt)))


def pending_outbox(session: Session, *, now: datetime, limit: int = 100) -> list[OutboxRow]:
    """Pending deliveries that are due, oldest due first.

    On PostgreSQL the rows are locked (FOR UPDATE SKIP LOCKED) until the caller's transaction
    ends, so concurrent senders never pick the same row.
    """
    stmt = (
        select(OutboxRow)
        .where(OutboxRow.status == "pending", OutboxRow.next_attempt_at <= now)
        .order_by(OutboxRow.next_attempt_at, OutboxRow.id)
        .limit(limit)
    )
    if dialect_of(session) == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return list(session.scalars(_fresh(stmt)))


def mark_delivered(session: Session, outbox_id: int, *, at: datetime) -> bool:
    """Mark a pending delivery done (attempts + 1); False if it was not pending.

    A row superseded while its POST was under way is marked delivered too: it did arrive.
    """
    stmt = (
        update(OutboxRow)
        .where(OutboxRow.id == outbox_id, OutboxRow.status.in_(("pending", "superseded")))
        .values(status="delivered", delivered_at=at, attempts=OutboxRow.attempts + 1,
                lease_owner=None, lease_expires_at=None)
    )
    return _outbox_written(session, outbox_id, rowcount(session.execute(stmt)))


def mark_delivery_failed(
    session: Session,
    outbox_id: int,
    *,
    error: str,
    next_attempt_at: datetime,
    give_up: bool = False,
) -> bool:
    """Count a failed delivery (attempts + 1) and schedule the next one; `give_up` marks it failed.

    False if the delivery was not pending.
    """
    stmt = (
        update(OutboxRow)
        .where(OutboxRow.id == outbox_id, OutboxRow.status == "pending")
        .values(
            status="failed" if give_up else "pending",
            last_error=error[:_LAST_ERROR_MAX],
            next_attempt_at=next_attempt_at,
            attempts=OutboxRow.attempts + 1,
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    return _outbox_written(session, outbox_id, rowcount(session.execute(stmt)))


# --- helpers -----------------------------------------------------------------------------------


def _usage_columns(usage: Usage | None) -> dict[str, Any]:
    """The batch columns that hold `usage` (all None when nothing was used or known)."""
    if usage is None:
        return dict.fromkeys(("prompt_tokens", "cached_tokens", "completion_tokens",
                              "reasoning_tokens", "latency_ms"))
    return {"prompt_tokens": usage.prompt_tokens, "cached_tokens": usage.cached_tokens,
            "completion_tokens": usage.completion_tokens,
            "reasoning_tokens": usage.reasoning_tokens, "latency_ms": usage.latency_ms}


def _fresh(stmt: Select[Any]) -> Select[Any]:
    """Overwrite rows already in the session with what the database holds now."""
    return stmt.execution_options(populate_existing=True)


def _require_batch_status(session: Session, key: str, target: str, *, allowed_final: str) -> None:
    """After an UPDATE matched nothing: fine if the batch is `allowed_final`, else raise."""
    current = session.scalar(select(BatchRow.status).where(BatchRow.idempotency_key == key))
    if current is None:
        raise StoreStateError(f"no batch {key!r}")
    if current != allowed_final:
        raise StoreStateError(f"batch {key!r}: {current} → {target} is not allowed")


def _outbox_written(session: Session, outbox_id: int, matched: int) -> bool:
    if matched == 1:
        return True
    if session.scalar(select(OutboxRow.id).where(OutboxRow.id == outbox_id)) is None:
        raise StoreStateError(f"no outbox row {outbox_id}")
    return False
