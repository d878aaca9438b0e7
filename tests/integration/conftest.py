"""Fixtures for integration tests: a Prefect test server, the simulator, a receiver, databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from qbq.receiver import create_app as create_receiver
from qbq.simulator import BackgroundServer, SimConfig, create_app
from tests.support import PgServer, require_pg

DIALECTS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One temporary Prefect API for the whole session (as Prefect's own tests do)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def simulator() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(SimConfig())) as server:
        yield server


@pytest.fixture
def sim_stats(simulator: BackgroundServer) -> Any:
    """Reset the simulator's counters; call the returned function to read them."""
    httpx.post(f"{simulator.url}/_sim/reset", timeout=10).raise_for_status()
    return lambda: httpx.get(f"{simulator.url}/_sim/stats", timeout=10).json()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_receiver(tmp_path / "receiver.db")) as server:
        yield server


def received(receiver: BackgroundServer) -> Any:
    return httpx.get(f"{receiver.url}/results", timeout=10).json()


@pytest.fixture
def static_files(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over loopback http (for URL pages): (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    app = FastAPI()
    app.mount("/", StaticFiles(directory=root))
    with BackgroundServer(app) as server:
        yield root, server.url


@pytest.fixture(params=DIALECTS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path,
                 pg_server: PgServer | None) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'qbq.db'}"
    return require_pg(pg_server).create()


def database_url_dir(url: str) -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="qbq-limiter-"))


@pytest.fixture
def grading_env(monkeypatch: pytest.MonkeyPatch, simulator: BackgroundServer,
                receiver: BackgroundServer, database_url: str) -> str:
    """Point qbq at the simulator, the receiver and a fresh database; returns the DB URL."""
    monkeypatch.setenv("OPENAI_BASE_URL", f"{simulator.url}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-simulated")
    monkeypatch.setenv("QBQ_RESULTS_API_URL", f"{receiver.url}/results")
    monkeypatch.setenv("QBQ_DATABASE_URL", database_url)
    monkeypatch.setenv("QBQ_MAX_STUDENTS_PER_BATCH", "3")
    monkeypatch.setenv("QBQ_RPM", "10000")
    monkeypatch.setenv("QBQ_TPM", "100000000")
    monkeypatch.setenv("QBQ_LIMITER_DIR", str(database_url_dir(database_url)))
    monkeypatch.setenv("QBQ_ALLOW_PRIVATE_URLS", "true")  # page URLs on loopback test servers
    return database_url


@pytest.fixture
def client(sim: BackgroundServer) -> Iterator[openai.OpenAI]:
    """The real SDK on the test module's own `sim` fixture (a simulator it configures), its
    counters and cache reset first."""
    httpx.post(sim.url + "/_sim/reset", timeout=10).raise_for_status()
    with openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-test", max_retries=0) as c:
        yield c
