"""Outbox delivery over `httpx.MockTransport`: one POST with its Idempotency-Key, back-off on
failure, and the lookup that stops a taken-over delivery from being sent twice."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import update

from qbq.delivery import drain_outbox
from qbq.store import OutboxRow, Store, complete_process, ensure_process, get_outbox
from qbq.testing.fakes import memory_store

URL = "https://platform.test/api/results"
LOOKUP = "https://platform.test/api/results/{key}"
PAYLOAD = {"assessment_id": "a1", "students": []}
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def store() -> Store:
    store = memory_store()
    with store.transaction() as s:
        ensure_process(s, process_id="p1", assessment_id="a1", model="gpt-4.1-mini",
                       request_hash="h", payload_format="native", n_students=1, n_batches=1)
        complete_process(s, "p1", status="completed", summary={}, payload=PAYLOAD,
                         target_url=URL, delivery_key="p1/results", now=NOW)
    return store


def client(handler: Callable[[httpx.Request], httpx.Response],
           seen: list[httpx.Request]) -> httpx.Client:
    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return httpx.Client(transport=httpx.MockTransport(record))


def outbox(store: Store) -> OutboxRow:
    with store.transaction() as s:
        row = get_outbox(s, "p1")
        assert row is not None
        return row


def test_a_payload_is_posted_once_with_its_idempotency_key(store: Store) -> None:
    seen: list[httpx.Request] = []
    report = drain_outbox(store, client(lambda r: httpx.Response(201), seen), now=lambda: NOW)
    assert (report.delivered, report.failed) == (1, 0)
    assert [(r.method, str(r.url)) for r in seen] == [("POST", URL)]
    assert seen[0].headers["Idempotency-Key"] == "p1/results"
    assert json.loads(seen[0].content) == PAYLOAD
    assert outbox(store).status == "delivered"
    # nothing is due any more: a second drain sends nothing
    assert drain_outbox(store, client(lambda r: httpx.Response(201), seen),
                        now=lambda: NOW).delivered == 0
    assert len(seen) == 1


def test_a_refused_delivery_backs_off_and_stays_in_the_outbox(store: Store) -> None:
    seen: list[httpx.Request] = []
    report = drain_outbox(store, client(lambda r: httpx.Response(503), seen), backoff_s=30,
                          now=lambda: NOW)
    assert (report.delivered, report.failed) == (0, 1) and "503" in (report.last_error or "")
    row = outbox(store)
    assert row.status != "delivered" and row.attempts == 1
    assert row.next_attempt_at == NOW + timedelta(seconds=30)
    # not due yet: skipped
    assert drain_outbox(store, client(lambda r: httpx.Response(201), seen),
                        now=lambda: NOW).delivered == 0
    assert len(seen) == 1


def _dead_sender_holds_the_row(store: Store) -> None:
    with store.transaction() as s:
        s.execute(update(OutboxRow).values(lease_owner="otherhost:1:dead",
                                           lease_expires_at=NOW - timedelta(seconds=1)))


def test_a_taken_over_delivery_that_arrived_is_not_sent_again(store: Store) -> None:
    _dead_sender_holds_the_row(store)
    seen: list[httpx.Request] = []
    found = client(lambda r: httpx.Response(200 if r.method == "GET" else 500), seen)
    report = drain_outbox(store, found, lookup_url=LOOKUP, now=lambda: NOW)
    assert report.delivered == 1
    assert [(r.method, str(r.url)) for r in seen] == [("GET", f"{URL}/p1%2Fresults")]
    assert outbox(store).status == "delivered"


def test_a_taken_over_delivery_that_never_arrived_is_sent(store: Store) -> None:
    _dead_sender_holds_the_row(store)
    seen: list[httpx.Request] = []
    missing = client(lambda r: httpx.Response(404 if r.method == "GET" else 201), seen)
    report = drain_outbox(store, missing, lookup_url=LOOKUP, now=lambda: NOW)
    assert report.delivered == 1
    assert [r.method for r in seen] == ["GET", "POST"]


def test_a_live_sender_keeps_its_row(store: Store) -> None:
    with store.transaction() as s:
        s.execute(update(OutboxRow).values(lease_owner="otherhost:1:alive",
                                           lease_expires_at=NOW + timedelta(minutes=5)))
    seen: list[httpx.Request] = []
    report = drain_outbox(store, client(lambda r: httpx.Response(201), seen), now=lambda: NOW)
    assert (report.delivered, report.failed, seen) == (0, 0, [])
