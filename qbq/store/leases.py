"""Leases on batch and outbox rows: the claim that keeps concurrent runs from doing a row twice.

A lease is an owner id (`host:pid:nonce`) and an expiry, set with a compare-and-swap UPDATE, so
it holds across processes and machines that share the database. A lease whose owner is a dead
process on this host is taken over at once; elsewhere it is taken over when it expires.
Functions take the session first and never commit.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from qbq.errors import StoreStateError
from qbq.store.models import BatchRow, OutboxRow
from qbq.store.sql import rowcount

__all__ = [
    "BatchClaim",
    "OutboxClaim",
    "acquire_batch_lease",
    "acquire_outbox_lease",
    "new_owner_id",
    "owner_is_dead",
    "renew_batch_lease",
]

BatchClaim = Literal["claimed", "done", "busy"]

_HOST = socket.gethostname()


def new_owner_id() -> str:
    """A lease owner id naming this host and process, unique per claim."""
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str | None) -> bool:
    """True when `owner` is a process of this host that no longer runs."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != _HOST or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:  # noqa: PTH123 - procfs, Linux only
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def acquire_batch_lease(session: Session, key: str, *, owner: str, now: datetime,
                        lease_s: float) -> BatchClaim:
    """Claim a batch for grading: `claimed` (it is ours now), `done` (it already succeeded) or
    `busy` (another live run holds it). Safe to replay: a lease `owner` already holds is
    `claimed` again."""
    expires = now + timedelta(seconds=lease_s)
    free = update(BatchRow).where(
        BatchRow.idempotency_key == key,
        or_(BatchRow.status.in_(("pending", "failed")),
            BatchRow.lease_owner.is_(None),
            BatchRow.lease_owner == owner,  # a replayed claim whose first commit went through
            BatchRow.lease_expires_at < now),
        BatchRow.status != "succeeded",
    ).values(status="running", lease_owner=owner, lease_expires_at=expires)
    if rowcount(session.execute(free)) == 1:
        return "claimed"
    row = session.execute(
        select(BatchRow.status, BatchRow.lease_owner).where(BatchRow.idempotency_key == key)
    ).one_or_none()
    if row is None:
        raise StoreStateError(f"no batch with idempotency key {key!r}")
    if row.status == "succeeded":
        return "done"
    if owner_is_dead(row.lease_owner):
        steal = update(BatchRow).where(
            BatchRow.idempotency_key == key, BatchRow.status == "running",
            BatchRow.lease_owner == row.lease_owner,
        ).values(lease_owner=owner, lease_expires_at=expires)
        if rowcount(session.execute(steal)) == 1:
            return "claimed"
    return "busy"


def renew_batch_lease(session: Session, key: str, *, owner: str, now: datetime,
                      lease_s: float) -> bool:
    """Extend our lease; False if it was taken over (then our result would be a duplicate)."""
    stmt = update(BatchRow).where(
        BatchRow.idempotency_key == key, BatchRow.lease_owner == owner,
        BatchRow.status == "running",
    ).values(lease_expires_at=now + timedelta(seconds=lease_s))
    return rowcount(session.execute(stmt)) == 1


OutboxClaim = Literal["claimed", "taken_over", "busy"]


def acquire_outbox_lease(session: Session, outbox_id: int, *, owner: str, now: datetime,
                         lease_s: float) -> OutboxClaim:
    """Claim a pending delivery for sending (the caller decides whether it is due).

    `claimed`: nobody was sending it. `taken_over`: a sender died or timed out while holding it,
    so its POST may or may not have arrived — check before sending again. `busy`: a live sender
    holds it, or it is no longer pending.
    """
    expires = now + timedelta(seconds=lease_s)
    current = session.execute(
        select(OutboxRow.status, OutboxRow.lease_owner, OutboxRow.lease_expires_at)
        .where(OutboxRow.id == outbox_id)
    ).one_or_none()
    if current is None or current.status != "pending":
        return "busy"
    previous = current.lease_owner
    if previous == owner:  # a replayed claim whose first commit went through
        return "claimed"
    if previous is not None:
        expired = current.lease_expires_at is not None and current.lease_expires_at < now
        if not (expired or owner_is_dead(previous)):
            return "busy"
    stmt = update(OutboxRow).where(
        OutboxRow.id == outbox_id, OutboxRow.status == "pending",
        OutboxRow.lease_owner.is_(None) if previous is None else OutboxRow.lease_owner == previous,
    ).values(lease_owner=owner, lease_expires_at=expires)
    if rowcount(session.execute(stmt)) != 1:
        return "busy"
    return "claimed" if previous is None else "taken_over"
