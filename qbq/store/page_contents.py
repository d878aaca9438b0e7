"""Repository functions for the content seen under each declared page id (`page_contents`).

They take a session and never commit, like `qbq.store.repository`.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from qbq.store.models import PageContentRow, utcnow
from qbq.store.sql import chunks, insert_ignore

__all__ = ["page_content_conflicts", "remember_page_contents"]


def page_content_conflicts(session: Session, assessment_id: str,
                           contents: Mapping[str, str]) -> list[str]:
    """The page ids of `contents` (page id → content sha256) first seen under `assessment_id`
    with other content, sorted."""
    stored: dict[str, str] = {}
    for chunk in chunks(list(contents)):
        rows = session.execute(select(PageContentRow.page_id, PageContentRow.content_sha).where(
            PageContentRow.assessment_id == assessment_id, PageContentRow.page_id.in_(chunk)))
        stored.update({page_id: sha for page_id, sha in rows})
    return sorted(pid for pid, sha in contents.items() if stored.get(pid, sha) != sha)


def remember_page_contents(session: Session, assessment_id: str, contents: Mapping[str, str],
                           process_id: str) -> None:
    """Record the content of each page id not seen before (the first content stays)."""
    if not contents:
        return
    now = utcnow()
    insert_ignore(session, PageContentRow, [
        {"assessment_id": assessment_id, "page_id": pid, "content_sha": sha,
         "process_id": process_id, "created_at": now} for pid, sha in contents.items()
    ], conflict=["assessment_id", "page_id"])
