"""The reference results API: idempotent storage, auth, fault control and persistence."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from qbq.receiver import create_app


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(tmp_path / "results.db")) as c:
        yield c


def _post(c: TestClient, key: str | None, payload: object, **headers: str) -> Any:
    """POST /results; returns the test client's response (its httpx flavour varies)."""
    h = dict(headers)
    if key is not None:
        h["Idempotency-Key"] = key
    return c.post("/results", json=payload, headers=h)


def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_store_once(client: TestClient) -> None:
    r = _post(client, "k1", {"student": "S001", "marks": {"1": 2.5}})
    assert r.status_code == 201
    assert r.json() == {"idempotency_key": "k1", "stored": True}
    dump = client.get("/results").json()
    assert dump["duplicates"] == 0
    assert dump["refused"] == 0
    [rec] = dump["payloads"]
    assert rec["idempotency_key"] == "k1"
    assert rec["payload"] == {"student": "S001", "marks": {"1": 2.5}}
    assert "T" in rec["received_at"]


def test_duplicate_key_stored_once(client: TestClient) -> None:
    assert _post(client, "k1", {"a": 1}).status_code == 201
    r = _post(client, "k1", {"a": 1})
    assert r.status_code == 200
    body = r.json()
    assert body["stored"] is False
    assert body["payload"] == {"a": 1}
    assert body["same_payload"] is True
    r2 = _post(client, "k1", {"a": 2})
    assert r2.status_code == 200
    assert r2.json()["payload"] == {"a": 1}  # the first payload wins
    assert r2.json()["same_payload"] is False
    dump = client.get("/results").json()
    assert len(dump["payloads"]) == 1
    assert dump["duplicates"] == 2


def test_missing_key_is_400(client: TestClient) -> None:
    assert _post(client, None, {"a": 1}).status_code == 400
    assert _post(client, "  ", {"a": 1}).status_code == 400
    assert client.get("/results").json()["payloads"] == []


def test_body_must_be_json_object(client: TestClient) -> None:
    r = client.post("/results", content=b"not json", headers={"Idempotency-Key": "x"})
    assert r.status_code == 400
    assert _post(client, "y", [1, 2]).status_code == 422
    assert client.get("/results").json()["payloads"] == []


def test_token_enforced(tmp_path: Path) -> None:
    with TestClient(create_app(tmp_path / "r.db", token="s3cret")) as c:
        assert _post(c, "k", {"a": 1}).status_code == 401
        assert _post(c, "k", {"a": 1}, Authorization="Bearer wrong").status_code == 401
        assert _post(c, "k", {"a": 1}, Authorization="Basic s3cret").status_code == 401
        assert c.get("/results").status_code == 401
        assert c.get("/healthz").status_code == 200
        assert _post(c, "k", {"a": 1}, Authorization="Bearer s3cret").status_code == 201
        dump = c.get("/results", headers={"Authorization": "Bearer s3cret"}).json()
        assert len(dump["payloads"]) == 1


def test_refuse_next_then_store(client: TestClient) -> None:
    assert client.post("/_control", json={"refuse_next": 2}).status_code == 200
    assert _post(client, "k", {"a": 1}).status_code == 503
    assert _post(client, "k", {"a": 1}).status_code == 503
    assert _post(client, "k", {"a": 1}).status_code == 201
    dump = client.get("/results").json()
    assert dump["refused"] == 2
    assert len(dump["payloads"]) == 1
    assert dump["duplicates"] == 0


def test_refuse_with_custom_status(client: TestClient) -> None:
    client.post("/_control", json={"refuse_next": 1, "status": 429})
    assert _post(client, "k", {"a": 1}).status_code == 429
    assert client.post("/_control", json={"refuse_next": -1}).status_code == 422


def test_persists_across_app_instances(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    with TestClient(create_app(db)) as c1:
        assert _post(c1, "k1", {"a": 1}).status_code == 201
    with TestClient(create_app(db)) as c2:
        assert _post(c2, "k1", {"a": 1}).status_code == 200
        assert _post(c2, "k2", {"b": 2}).status_code == 201
        dump = c2.get("/results").json()
    assert [p["idempotency_key"] for p in dump["payloads"]] == ["k1", "k2"]
    assert dump["duplicates"] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_real_server_concurrent_same_key(tmp_path: Path) -> None:
    port = _free_port()
    config = uvicorn.Config(
        create_app(tmp_path / "r.db"), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        statuses: list[int] = []

        def send() -> None:
            r = httpx.post(f"{base}/results", json={"a": 1}, headers={"Idempotency-Key": "same"})
            statuses.append(r.status_code)

        workers = [threading.Thread(target=send) for _ in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert sorted(statuses) == [200] * 7 + [201]
        dump = httpx.get(f"{base}/results").json()
        assert len(dump["payloads"]) == 1
        assert dump["duplicates"] == 7
    finally:
        server.should_exit = True
        thread.join(timeout=10)
