"""Shared benchmark plumbing: a real Prefect server, throwaway PostgreSQL databases, free ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from qbq.prompts import student_refs

Receive = Callable[[], Awaitable[dict[str, Any]]]

__all__ = ["batch_refs", "buffer_body", "free_port", "pg_database", "prefect_server"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def prefect_server(home: Path, database_url: str | None) -> Iterator[str]:
    """`prefect server start` on loopback (its database on PostgreSQL when given); yields the
    API URL and stops the server afterwards."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_UI_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host",
                             "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited: {(home / 'server.log').read_text()}")
            time.sleep(0.5)
        else:
            raise RuntimeError("prefect server did not start within 120 s")
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def pg_database() -> tuple[str, Callable[[], None]] | None:
    """A fresh database on the local PostgreSQL and its drop function, or None if unreachable."""
    try:
        import psycopg

        admin = "postgresql://postgres@127.0.0.1:5432/test"
        name = f"qbq_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception:  # noqa: BLE001 - optional: callers fall back to SQLite
        return None

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return name, drop


async def buffer_body(receive: Receive) -> tuple[bytes, Receive]:
    """For ASGI middleware: read a request's whole body, and a `receive` that replays it."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> dict[str, Any]:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return body, replay


def batch_refs(body: bytes) -> tuple[str, ...]:
    """The student refs a chat-completions request body grades (from its student labels)."""
    try:
        return tuple(student_refs(json.loads(body)["messages"]))
    except (KeyError, TypeError, ValueError):
        return ()
