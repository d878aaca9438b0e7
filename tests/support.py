"""Shared test helpers: throwaway PostgreSQL databases, servers on loopback, sample requests."""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest

PG_ADMIN_URL = os.environ.get("QBQ_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")


class PgServer:
    """Creates and drops throwaway databases on the test server."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def create(self) -> str:
        name = f"qbq_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        info = psycopg.conninfo.conninfo_to_dict(self.admin_url)
        host, port, user = info.get("host"), info.get("port", 5432), info.get("user")
        return f"postgresql+psycopg://{user}@{host}:{port}/{name}"

    def drop_all(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def connect_pg_server() -> PgServer | None:
    """The test server, or None when unreachable — which fails the run under CI."""
    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL must be reachable under CI at {PG_ADMIN_URL}: {exc}")
        return None
    return PgServer(PG_ADMIN_URL)


def require_pg(server: PgServer | None) -> PgServer:
    if server is None:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}")
    return server
