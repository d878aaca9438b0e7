"""Outbox delivery over `httpx.MockTransport`: one POST with its Idempotency-Key, back-off on
failure, and the lookup that stops a taken-over delivery from being sent twice."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import typer
from sqlalchemy import update
from typer.testing import CliRunner

from qbq.cli_reports import register
from qbq.delivery import drain_outbox
from qbq.http import make_http_client
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


# --- redirects are never followed; every exchange has a deadline ---------------------------------

OTHER = "http://127.0.0.1:8799/results"


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_a_failed_delivery_and_nothing_goes_where_it_points(
        store: Store, code: int) -> None:
    seen: list[httpx.Request] = []

    def results_api(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if str(request.url) == URL:
            return httpx.Response(code, headers={"Location": f"{OTHER}?token=s3cret"})
        return httpx.Response(201)  # the other port would take anything

    client = make_http_client(timeout_s=5, transport=httpx.MockTransport(results_api))
    report = drain_outbox(store, client, now=lambda: NOW)

    assert (report.delivered, report.failed) == (0, 1)
    assert [str(r.url) for r in seen] == [URL]  # nothing reached the other port
    row = outbox(store)
    assert row.status == "pending" and row.delivered_at is None
    assert f"answered {code} redirecting to {OTHER};" in (row.last_error or "")
    assert "s3cret" not in (row.last_error or "")
    # retried at the configured URL only
    drain_outbox(store, client, ignore_backoff=True, now=lambda: NOW)
    assert [str(r.url) for r in seen] == [URL, URL]


def test_a_lookup_that_redirects_is_not_followed(store: Store) -> None:
    _dead_sender_holds_the_row(store)
    seen: list[httpx.Request] = []

    def results_api(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(302, headers={"Location": OTHER})

    client = make_http_client(timeout_s=5, transport=httpx.MockTransport(results_api))
    report = drain_outbox(store, client, lookup_url=LOOKUP, now=lambda: NOW)
    assert report.failed == 1 and "lookup" in (report.last_error or "")
    assert [r.method for r in seen] == ["GET"]  # neither followed nor POSTed blind
    assert outbox(store).status == "pending"


def test_a_results_api_that_never_finishes_answering_hits_the_deadline(store: Store) -> None:
    release = threading.Event()

    def stalled(request: httpx.Request) -> httpx.Response:
        release.wait(10)
        return httpx.Response(201)

    client = make_http_client(timeout_s=30, transport=httpx.MockTransport(stalled))
    try:
        report = drain_outbox(store, client, deadline_s=0.05, now=lambda: NOW)
    finally:
        release.set()
    assert (report.delivered, report.failed) == (0, 1)
    assert "deadline" in (report.last_error or "")
    assert outbox(store).status == "pending"


# --- qbq status: every revision, where it went, delivered or not and why --------------------------


def test_status_shows_each_revision_and_why_it_was_not_delivered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "qbq.db"
    monkeypatch.setenv("QBQ_DATABASE_URL", f"sqlite:///{db}")
    store = Store(f"sqlite:///{db}")
    store.migrate()
    with store.transaction() as s:
        ensure_process(s, process_id="p1", assessment_id="a1", model="gpt-4.1-mini",
                       request_hash="h", payload_format="native", n_students=1, n_batches=1)
        complete_process(s, "p1", status="failed", summary={}, payload=PAYLOAD,
                         target_url=f"{URL}?sig=abc", delivery_key="p1/r1-aaaa", now=NOW)
    drain_outbox(store, client(lambda r: httpx.Response(201), []), now=lambda: NOW)
    with store.transaction() as s:
        complete_process(s, "p1", status="completed", summary={}, payload=PAYLOAD,
                         target_url=f"{URL}?sig=abc", delivery_key="p1/r2-bbbb", revision=2,
                         now=NOW)
    moved = make_http_client(timeout_s=5, transport=httpx.MockTransport(
        lambda r: httpx.Response(301, headers={"Location": OTHER})))
    drain_outbox(store, moved, now=lambda: NOW)
    store.dispose()
    app = typer.Typer()
    register(app)

    shown = CliRunner().invoke(app, ["status", "p1", "--json"])
    assert shown.exit_code == 0, shown.output
    body = json.loads(shown.stdout)
    assert body["store"] == str(db)
    assert [(d["revision"], d["status"], d["url"], d["idempotency_key"])
            for d in body["deliveries"]] == [(1, "delivered", URL, "p1/r1-aaaa"),
                                             (2, "pending", URL, "p1/r2-bbbb")]
    assert body["deliveries"][0]["why"] is None
    assert f"answered 301 redirecting to {OTHER}" in body["deliveries"][1]["why"]
    text = CliRunner().invoke(app, ["status", "p1"], terminal_width=200).stdout
    assert "revision 2" in text and "redirecting to" in text and "sig=abc" not in text


def test_store_reading_commands_name_the_store_and_never_create_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "elsewhere" / "qbq.db"
    monkeypatch.setenv("QBQ_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("COLUMNS", "300")  # the consoles are made when the command prints
    app = typer.Typer()
    register(app)
    for command in (["status", "qbq-x"], ["review", "qbq-x"], ["report", "qbq-x"], ["purge"]):
        result = CliRunner().invoke(app, command, terminal_width=300)
        assert result.exit_code == 2, command
        assert f"no qbq store at {db}" in " ".join(result.output.split())
    assert not db.parent.exists()
