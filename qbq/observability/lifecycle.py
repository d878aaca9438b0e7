"""Data lifecycle: drop raw model replies after reduce, purge old replies and delivered payloads.

Kept for good: processes (status, times, summary with counts, cost and metrics), batches
(marks, feedback and review flags in `result`, token usage, latency, attempts, error type and
detail), attempt errors, and the outbox row of each delivery (status, attempts, times, last
error). Dropped: `batches.raw_response` (the model's reply text, which may quote a student) and,
once delivered, `outbox.payload` (replaced by `{"purged_at": ...}`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from qbq.settings import get_settings
from qbq.store import Store, queries, utcnow
from qbq.store import repository as repo

__all__ = ["PurgeReport", "parse_age", "purge", "purge_after_reduce"]

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s`, `2w` as a timedelta; ValueError otherwise."""
    found = _AGE.match(text)
    if found is None:
        raise ValueError(f"not an age: {text!r} (use a number and s, m, h, d or w, e.g. 30d)")
    return timedelta(seconds=float(found.group(1)) * _UNIT_SECONDS[found.group(2).lower()])


@dataclass(frozen=True)
class PurgeReport:
    """What a purge removed, and the cutoff it used."""

    cutoff: datetime
    raw_responses: int
    outbox_payloads: int


def purge(store: Store, older_than: timedelta, *, now: datetime | None = None) -> PurgeReport:
    """Drop raw replies of batches last written before now − `older_than`, and the payloads of
    deliveries made before then; marks, usage and errors stay. One transaction."""
    at = now or utcnow()
    cutoff = at - older_than
    with store.transaction() as session:
        raw = repo.purge_raw_responses(session, older_than=cutoff)
        payloads = queries.purge_delivered_payloads(session, older_than=cutoff, now=at)
    return PurgeReport(cutoff=cutoff, raw_responses=raw, outbox_payloads=payloads)


def purge_after_reduce(store: Store, keys: Sequence[str], *, keep: bool | None = None) -> int:
    """Drop the raw replies of these batches now that reduce has read their results, unless
    retention is on (`keep`, default `QBQ_KEEP_RAW_RESPONSES`). Returns how many were dropped."""
    if keep is None:
        keep = get_settings().keep_raw_responses
    if keep or not keys:
        return 0
    with store.transaction() as session:
        return repo.purge_raw_responses(session, keys)
