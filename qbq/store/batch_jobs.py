"""Repository functions for Batch API jobs (batch mode): take the session first, never commit.

The order that makes a crash safe: `start_job` records the job before anything is uploaded;
`record_submission` stores the provider's batch id in its own transaction the moment the
batch exists; a rerun finds the job (`open_job`) and resumes it instead of submitting again.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from qbq.errors import StoreStateError
from qbq.store.models import BatchJobRow, utcnow

__all__ = ["finish_job", "job_for", "record_submission", "start_job"]


def job_for(session: Session, process_id: str) -> BatchJobRow | None:
    """The process's Batch API job (a process submits at most one), or None."""
    return session.scalars(select(BatchJobRow).where(BatchJobRow.process_id == process_id)
                           .order_by(BatchJobRow.created_at)).first()


def start_job(session: Session, job_key: str, process_id: str,
              batch_keys: list[str]) -> BatchJobRow:
    """Record a job about to be submitted (status "submitting"); returns the existing row when
    the key is already there."""
    row = session.get(BatchJobRow, job_key)
    if row is None:
        row = BatchJobRow(job_key=job_key, process_id=process_id, batch_keys=batch_keys,
                          status="submitting")
        session.add(row)
        session.flush()
    return row


def record_submission(session: Session, job_key: str, *, input_file_id: str | None,
                      provider_batch_id: str, provider_status: str | None) -> None:
    """Store the provider's batch id of a job (status "submitted"); StoreStateError when the
    job is missing or already carries another batch id."""
    row = session.get(BatchJobRow, job_key)
    if row is None:
        raise StoreStateError(f"batch job {job_key} is not recorded")
    if row.provider_batch_id not in (None, provider_batch_id):
        raise StoreStateError(f"batch job {job_key} already has batch {row.provider_batch_id}")
    row.input_file_id = input_file_id or row.input_file_id
    row.provider_batch_id = provider_batch_id
    row.provider_status = provider_status
    row.status = "submitted"
    row.updated_at = utcnow()


def finish_job(session: Session, job_key: str, provider_status: str) -> None:
    """Mark a job's results collected (its lines graded or handed to sync)."""
    row = session.get(BatchJobRow, job_key)
    if row is None:
        raise StoreStateError(f"batch job {job_key} is not recorded")
    row.status = "collected"
    row.provider_status = provider_status
    row.updated_at = utcnow()
