"""Repository functions for requests stored by `qbq submit` (`submitted_requests`).

They take a session and never commit, like `qbq.store.repository`.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from qbq.store.models import SubmittedRequestRow, utcnow
from qbq.store.sql import insert_ignore

__all__ = ["get_submitted", "store_submitted"]


def store_submitted(session: Session, request_id: str, body: str, base_dir: str) -> None:
    """Insert the request unless its id is there already (same id, same request)."""
    insert_ignore(session, SubmittedRequestRow, [
        {"id": request_id, "body": body, "base_dir": base_dir, "created_at": utcnow()}
    ], conflict=["id"])


def get_submitted(session: Session, request_id: str) -> SubmittedRequestRow | None:
    """The stored request, or None."""
    return session.scalars(select(SubmittedRequestRow).where(
        SubmittedRequestRow.id == request_id)).one_or_none()
