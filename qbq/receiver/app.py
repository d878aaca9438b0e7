"""A small FastAPI results endpoint that stores payloads in SQLite, idempotently by key.

It stands in for the school platform in tests and demos, and can be told to refuse requests.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

__all__ = ["create_app"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS results ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " idempotency_key TEXT NOT NULL UNIQUE,"
    " payload TEXT NOT NULL,"
    " received_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


class _Store:
    """SQLite storage; one short-lived connection per call, serialised by a lock."""

    def __init__(self, db_path: Path) -> None:
        self._path = db_path
        self._lock = threading.Lock()
        db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._tx() as conn:
            for stmt in _SCHEMA:
                conn.execute(stmt)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = sqlite3.connect(self._path, timeout=30)
            try:
                with conn:  # commit on success, roll back on error
                    yield conn
            finally:
                conn.close()

    @staticmethod
    def _bump(conn: sqlite3.Connection, name: str) -> None:
        conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, 1)"
            " ON CONFLICT(name) DO UPDATE SET value = value + 1",
            (name,),
        )

    def put(self, key: str, payload: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """Store `payload` under `key` unless present; returns (stored_now, stored_record)."""
        now = datetime.now(UTC).isoformat()
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO results (idempotency_key, payload, received_at)"
                " VALUES (?, ?, ?)",
                (key, text, now),
            )
            stored = cur.rowcount == 1
            if not stored:
                self._bump(conn, "duplicates")
            row = conn.execute(
                "SELECT payload, received_at FROM results WHERE idempotency_key = ?", (key,)
            ).fetchone()
        record = {"idempotency_key": key, "payload": json.loads(row[0]), "received_at": row[1]}
        return stored, record

    def count_refused(self) -> None:
        with self._tx() as conn:
            self._bump(conn, "refused")

    def get(self, key: str) -> dict[str, Any] | None:
        with self._tx() as conn:
            row = conn.execute(
                "SELECT payload, received_at FROM results WHERE idempotency_key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        return {"idempotency_key": key, "payload": json.loads(row[0]), "received_at": row[1]}

    def dump(self) -> dict[str, Any]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT idempotency_key, payload, received_at FROM results ORDER BY seq"
            ).fetchall()
            counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        return {
            "payloads": [
                {"idempotency_key": k, "payload": json.loads(p), "received_at": t}
                for k, p, t in rows
            ],
            "duplicates": int(counters.get("duplicates", 0)),
            "refused": int(counters.get("refused", 0)),
        }


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def create_app(db_path: str | Path, token: str | None = None) -> FastAPI:
    """The results API storing into the SQLite file `db_path`; `token` enables bearer auth.

    Endpoints: `POST /results` (header `Idempotency-Key`, JSON object body; 201 first time,
    200 with the stored record on a repeat), `GET /results`, `POST /_control`
    (`{"refuse_next": N, "status": 503}`: the next N `POST /results` get that status) and
    `GET /healthz`. With a token, every endpoint but `/healthz` needs `Authorization: Bearer`.
    """
    # Long: the routes are closures over this app's own database and token, so they stay here.
    store = _Store(Path(db_path))
    faults_lock = threading.Lock()
    faults: dict[str, int] = {"refuse_next": 0, "status": 503}
    app = FastAPI(title="qbq reference results API")

    def unauthorised(request: Request) -> JSONResponse | None:
        if token is None:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            given.strip().encode(), token.encode()
        ):
            return JSONResponse(
                {"detail": "missing or wrong bearer token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None

    def take_refusal() -> int | None:
        with faults_lock:
            if faults["refuse_next"] <= 0:
                return None
            faults["refuse_next"] -= 1
            return faults["status"]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/results")
    async def post_result(request: Request) -> JSONResponse:
        if (denied := unauthorised(request)) is not None:
            return denied
        refusal = take_refusal()
        if refusal is not None:
            await run_in_threadpool(store.count_refused)
            return _error(refusal, "refused on purpose (fault control)")
        key = request.headers.get("idempotency-key", "").strip()
        if not key:
            return _error(400, "header Idempotency-Key is required")
        raw = await request.body()
        try:
            payload = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "body is not valid JSON")
        if not isinstance(payload, dict):
            return _error(422, "body must be a JSON object")
        stored, record = await run_in_threadpool(store.put, key, payload)
        if stored:
            return JSONResponse({"idempotency_key": key, "stored": True}, status_code=201)
        return JSONResponse(
            {**record, "stored": False, "same_payload": record["payload"] == payload},
            status_code=200,
        )

    @app.get("/results")
    async def get_results(request: Request) -> JSONResponse:
        if (denied := unauthorised(request)) is not None:
            return denied
        return JSONResponse(await run_in_threadpool(store.dump))

    @app.get("/results/{key:path}")
    async def get_result(key: str, request: Request) -> JSONResponse:
        """Look up one delivery by its idempotency key (404 if it never arrived)."""
        if (denied := unauthorised(request)) is not None:
            return denied
        record = await run_in_threadpool(store.get, key)
        if record is None:
            return _error(404, f"no result with idempotency key {key!r}")
        return JSONResponse(record)

    @app.post("/_control")
    async def control(request: Request) -> JSONResponse:
        if (denied := unauthorised(request)) is not None:
            return denied
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "body is not valid JSON")
        if not isinstance(body, dict):
            return _error(422, "body must be a JSON object")
        n = body.get("refuse_next", 0)
        status = body.get("status", 503)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            return _error(422, "refuse_next must be a non-negative integer")
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            return _error(422, "status must be an HTTP error status (400-599)")
        with faults_lock:
            faults["refuse_next"] = n
            faults["status"] = status
        return JSONResponse({"refuse_next": n, "status": status})

    return app
