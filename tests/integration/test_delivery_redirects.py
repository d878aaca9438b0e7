"""A results API that answers 301 or 307 to another loopback port, over real sockets: qbq's
delivery client sends nothing there, and the payload stays in the outbox with the reason."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from qbq.delivery import drain_outbox
from qbq.http import make_http_client
from qbq.store import complete_process, ensure_process, get_outbox
from qbq.testing.fakes import memory_store

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


class _Server:
    """A loopback HTTP server that counts requests and answers `status` (+ `location`)."""

    def __init__(self, status: int, location: str | None = None) -> None:
        self.hits: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                outer.hits.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/results"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[_Server]:
    server = _Server(201)
    yield server
    server.close()


@pytest.mark.parametrize("code", [301, 307])
def test_nothing_reaches_the_port_a_redirect_names(elsewhere: _Server, code: int) -> None:
    moved = _Server(code, location=elsewhere.url)
    store = memory_store()
    try:
        with store.transaction() as s:
            ensure_process(s, process_id="p1", assessment_id="a1", model="gpt-4.1-mini",
                           request_hash="h", payload_format="native", n_students=1,
                           n_batches=1)
            complete_process(s, "p1", status="completed", summary={},
                             payload={"students": [{"ref": "S1", "name": "Ada"}]},
                             target_url=moved.url, delivery_key="p1/r1-x", now=NOW)
        with make_http_client(timeout_s=5) as client:
            report = drain_outbox(store, client, deadline_s=10, now=lambda: NOW)
    finally:
        moved.close()
    assert (report.delivered, report.failed) == (0, 1)
    assert moved.hits == [("POST", "/results")]
    assert elsewhere.hits == []
    with store.transaction() as s:
        row = get_outbox(s, "p1")
    assert row is not None and row.status == "pending"
    assert f"answered {code} redirecting to {elsewhere.url}" in (row.last_error or "")
