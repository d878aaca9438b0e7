"""Durable state of qbq: processes, batches, attempt errors and the delivery outbox.

`Store` owns the engine, migrations and transactions; the repository functions take a session
and never commit.
"""

from __future__ import annotations

from qbq.errors import StoreStateError
from qbq.store.engine import Store, describe_store, sqlite_file
from qbq.store.leases import (
    BatchClaim,
    acquire_batch_lease,
    acquire_outbox_lease,
    new_owner_id,
    owner_is_dead,
    renew_batch_lease,
)
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
    complete_process,
    ensure_batches,
    ensure_process,
    get_batches,
    get_outbox,
    get_process,
    list_attempt_errors,
    list_outbox,
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
    "BatchClaim",
    "BatchRow",
    "BatchSpec",
    "BatchStatus",
    "OutboxRow",
    "OutboxStatus",
    "ProcessRow",
    "ProcessStatus",
    "Store",
    "StoreStateError",
    "acquire_batch_lease",
    "acquire_outbox_lease",
    "complete_process",
    "describe_store",
    "ensure_batches",
    "ensure_process",
    "get_batches",
    "get_outbox",
    "get_process",
    "list_attempt_errors",
    "list_outbox",
    "mark_delivered",
    "mark_delivery_failed",
    "new_owner_id",
    "owner_is_dead",
    "pending_outbox",
    "purge_raw_responses",
    "record_attempt_error",
    "record_batch_failure",
    "record_batch_success",
    "renew_batch_lease",
    "set_process_status",
    "sqlite_file",
    "utcnow",
]
