"""The results-API adapter: POST a payload with an `Idempotency-Key`, drain the outbox.

This is the only module that imports `httpx`. The client is injected, so tests can hand it a
transport; the receiver answers a repeated key without storing twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from qbq.errors import DeliveryError, ImageError
from qbq.store import Store
from qbq.store import repository as repo

__all__ = ["DeliveryReport", "drain_outbox", "fetch_image", "make_http_client", "post_results"]


def make_http_client(*, timeout_s: float, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(timeout=timeout_s, headers=headers, follow_redirects=True)


def fetch_image(client: httpx.Client) -> Callable[[str], bytes]:
    """A `Fetcher` for request loading: the bytes behind a page URL, or `ImageError`."""

    def fetch(url: str) -> bytes:
        try:
            response = client.get(url)
        except httpx.HTTPError as exc:
            raise ImageError(f"cannot download {_safe(url)}: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise ImageError(f"cannot download {_safe(url)}: HTTP {response.status_code}")
        return response.content

    return fetch


def _safe(url: str) -> str:
    """A URL without its query string (presigned URLs carry credentials there)."""
    return url.split("?", 1)[0]


def post_results(client: httpx.Client, url: str, payload: dict[str, Any],
                 idempotency_key: str) -> int:
    """POST the payload once; return the status code (2xx) or raise `DeliveryError`."""
    try:
        response = client.post(url, content=json.dumps(payload).encode(),
                               headers={"Idempotency-Key": idempotency_key,
                                        "Content-Type": "application/json"})
    except httpx.HTTPError as exc:
        raise DeliveryError(f"results API unreachable at {_safe(url)}: {type(exc).__name__}") from exc
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"results API answered {response.status_code}",
                            status_code=response.status_code)
    return response.status_code


@dataclass(frozen=True)
class DeliveryReport:
    delivered: int
    failed: int
    last_error: str | None


def drain_outbox(store: Store, client: httpx.Client, *, process_id: str | None = None,
                 backoff_s: float = 30.0, now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 ) -> DeliveryReport:
    """Deliver pending outbox rows (one process's, or all due ones); failures back off."""
    delivered = failed = 0
    last_error: str | None = None
    with store.transaction() as session:
        rows = [(r.id, r.target_url, r.payload, r.idempotency_key, r.attempts)
                for r in repo.pending_outbox(session, now=now())
                if process_id is None or r.process_id == process_id]
    for row_id, url, payload, key, attempts in rows:
        try:
            post_results(client, url, payload, key)
        except DeliveryError as exc:
            failed += 1
            last_error = exc.message
            delay = min(backoff_s * 2 ** attempts, 3600.0)
            with store.transaction() as session:
                repo.mark_delivery_failed(session, row_id, error=exc.message,
                                          next_attempt_at=now() + timedelta(seconds=delay))
            continue
        delivered += 1
        with store.transaction() as session:
            repo.mark_delivered(session, row_id, at=now())
    return DeliveryReport(delivered, failed, last_error)
