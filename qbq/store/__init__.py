"""Durable state of qbq: processes, batches, attempt errors and the delivery outbox.

`Store` owns the engine, migrations and transactions; the repository functions take a session
and never commit.
"""

from __future__ import annotations

from qbq.store.engine import Store
from qbq.store.models import (
    BatchAttemptRow,
    BatchRow,
    BatchStatus,
    OutboxRow,
    OutboxStatus,
    ProcessRow,
    ProcessStatus,
    utcnow,
)
from qbq.store.repository import (
    BatchSpec,
    StoreStateError,
    claim_batch,
    complete_process,
    ensure_batches,
    ensure_process,
    get_batches,
    get_outbox,
    get_process,
    list_attempt_errors,
    mark_delivered,
    mark_delivery_failed,
    pending_outbox,
    purge_raw_responses,
    record_attempt_error,
    record_batch_failure,
    record_batch_success,
    set_process_status,
)

__all__ = [
    "BatchAttemptRow",
    "BatchRow",
    "BatchSpec",
    "BatchStatus",
    "OutboxRow",
    "OutboxStatus",
    "ProcessRow",
    "ProcessStatus",
    "Store",
    "StoreStateError",
    "claim_batch",
    "complete_process",
    "ensure_batches",
    "ensure_process",
    "get_batches",
    "get_outbox",
    "get_process",
    "list_attempt_errors",
    "mark_delivered",
    "mark_delivery_failed",
    "pending_outbox",
    "purge_raw_responses",
    "record_attempt_error",
    "record_batch_failure",
    "record_batch_success",
    "set_process_status",
    "utcnow",
]
