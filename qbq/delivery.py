"""Outbox delivery: POST each pending payload revision once, mark it delivered, back off on
failure. A failed row stays pending for the next drain, at the URL recorded when it was queued."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

from qbq.backoff import backoff_ceiling
from qbq.errors import DeliveryError
from qbq.http import HttpClient, lookup_results, post_results
from qbq.store import Store, acquire_outbox_lease, new_owner_id
from qbq.store import repository as repo

__all__ = ["DeliveryReport", "drain_outbox"]

_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)
#: Longest wait before re-sending a failed delivery (seconds).
_BACKOFF_MAX_S = 3600.0


@dataclass(frozen=True)
class DeliveryReport:
    delivered: int
    failed: int
    last_error: str | None


def drain_outbox(store: Store, client: HttpClient, *, process_id: str | None = None,
                 backoff_s: float = 30.0, lease_s: float = 120.0, lookup_url: str | None = None,
                 ignore_backoff: bool = False, deadline_s: float | None = None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> DeliveryReport:
    """Deliver due outbox rows (one process's, or all); failures back off.

    `deadline_s` bounds each POST and lookup as a whole (seconds; None: only the client's
    per-read timeout). Redirects are never followed (`qbq.http.post_results`).

    Each row is leased while it is sent, so concurrent drains never POST the same payload. A
    row whose previous sender died mid-send is first looked up at `lookup_url` (when the results
    API offers one): if the payload arrived, it is marked delivered without a second POST.
    `ignore_backoff` sends rows that are waiting out a backoff too (a user's explicit rerun).
    """
    delivered = failed = 0
    last_error: str | None = None
    owner = new_owner_id()
    # Every store call goes through `Store.run`: replayed when a connection drops mid-way.
    rows = store.run(lambda session: [
        (r.id, r.target_url, r.payload, r.idempotency_key, r.attempts)
        for r in repo.pending_outbox(session, now=_FAR_FUTURE if ignore_backoff else now())
        if process_id is None or r.process_id == process_id])
    for row_id, url, payload, key, attempts in rows:
        claim = store.run(partial(acquire_outbox_lease, outbox_id=row_id, owner=owner,
                                  now=now(), lease_s=lease_s))
        if claim == "busy":
            continue
        try:
            if not (claim == "taken_over" and lookup_url
                    and lookup_results(client, lookup_url, key, deadline_s=deadline_s)):
                post_results(client, url, payload, key, deadline_s=deadline_s)
        except DeliveryError as exc:
            failed += 1
            last_error = exc.message
            delay = backoff_ceiling(attempts + 1, base_s=backoff_s, max_s=_BACKOFF_MAX_S)
            store.run(partial(repo.mark_delivery_failed, outbox_id=row_id, error=exc.message,
                              next_attempt_at=now() + timedelta(seconds=delay)))
            continue
        delivered += 1
        store.run(partial(repo.mark_delivered, outbox_id=row_id, at=now()))
    return DeliveryReport(delivered, failed, last_error)
