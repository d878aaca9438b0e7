"""A real, self-hosted Prefect stack for the e2e tests, started once per session.

`prefect server start` on a fresh PostgreSQL database, the block types registered, the work
pool created, `prefect deploy --all --no-prompt` run from this checkout, and a
`prefect worker start --pool qbq-process` whose flow runs grade against the simulator and
deliver to a receiver, both on loopback in this process. Everything is torn down at the end:
the subprocesses (by their process group) and the databases.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from qbq.receiver import create_app as create_receiver
from qbq.simulator import BackgroundServer, SimConfig, create_app
from tests.support import PgServer, require_pg

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL = "qbq-process"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
MAX_STUDENTS_PER_BATCH = 3


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "server: starts a real Prefect server, worker and "
                            "deployments (PostgreSQL)")
    config.addinivalue_line("markers", "ui: drives the Prefect UI in headless Chromium")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Process:
    """A subprocess in its own process group, with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path) -> None:
        self.args, self.log = args, log
        self._out = log.open("wb")
        self.popen = subprocess.Popen(args, env=env, cwd=cwd, stdout=self._out,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        """SIGINT (Prefect's CLI shuts down cleanly on it), then SIGTERM, then SIGKILL."""
        pgid = self.popen.pid
        for sig, wait_s in ((signal.SIGINT, 15.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(wait_s)
                # the leader is gone; its children (flow runs, uvicorn) may not be
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                break
        self._out.close()


@dataclass
class PrefectStack:
    """Handles on the running stack, with the few helpers the tests share."""

    api_url: str
    ui_url: str
    cli_env: dict[str, str]
    simulator: BackgroundServer
    receiver: BackgroundServer
    work_dir: Path
    server: _Process
    worker: _Process
    deployments: dict[str, str] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, timeout=30)

    def wait_for_run(self, run_id: str, timeout_s: float = 150.0) -> dict[str, Any]:
        """The flow run once its state is final (fails the test on timeout)."""
        deadline = time.monotonic() + timeout_s
        with self.api() as api:
            while True:
                run: dict[str, Any] = api.get(f"/flow_runs/{run_id}").raise_for_status().json()
                if run["state"]["type"] in TERMINAL:
                    return run
                if time.monotonic() > deadline:
                    pytest.fail(f"flow run {run_id} still {run['state']['type']} after "
                                f"{timeout_s:.0f} s\n{self.diagnostics()}")
                time.sleep(1.0)

    def payloads(self, receiver: BackgroundServer | None = None,
                 assessment_id: str | None = None,
                 token: str | None = None) -> list[dict[str, Any]]:
        """Payloads the receiver holds (optionally only one assessment's)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        got = httpx.get(f"{(receiver or self.receiver).url}/results", headers=headers,
                        timeout=10).raise_for_status().json()
        return [p["payload"] for p in got["payloads"]
                if assessment_id is None or p["payload"].get("assessment_id") == assessment_id]

    def sim_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"{self.simulator.url}/_sim/stats", timeout=10).json()
        return stats

    def diagnostics(self) -> str:
        return (f"--- worker log ---\n{self.worker.tail()}\n"
                f"--- server log ---\n{self.server.tail(15)}")


def _cli(args: list[str], env: dict[str, str], timeout_s: float = 120.0) -> str:
    result = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=REPO, text=True,
                            capture_output=True, timeout=timeout_s, check=False)
    if result.returncode != 0:
        pytest.fail(f"prefect {' '.join(args)} exited {result.returncode}:\n"
                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def _wait_healthy(api_url: str, server: _Process, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            pytest.fail(f"prefect server exited while starting:\n{server.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"prefect server not healthy after {timeout_s:.0f} s:\n{server.tail()}")


def _wait_worker_online(stack_api: str, worker: _Process, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not worker.alive():
            pytest.fail(f"prefect worker exited while starting:\n{worker.tail()}")
        workers = httpx.post(f"{stack_api}/work_pools/{POOL}/workers/filter", json={},
                             timeout=10).json()
        if workers:
            return
        time.sleep(0.5)
    pytest.fail(f"no worker polled the pool within {timeout_s:.0f} s:\n{worker.tail()}")


@pytest.fixture(scope="session")
def prefect_stack(pg_server: PgServer | None,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectStack]:
    pg = require_pg(pg_server)
    work = tmp_path_factory.mktemp("prefect-stack")
    prefect_db = pg.create().replace("postgresql+psycopg://", "postgresql+asyncpg://")
    store_db = pg.create()
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"

    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "OPENAI_", "QBQ_"))}
    # keep the offline tiktoken cache and the page cache the session set up
    base.update({k: v for k, v in os.environ.items()
                 if k in ("QBQ_TIKTOKEN_CACHE_DIR", "QBQ_PAGE_CACHE_DIR")})
    cli_env = {
        **base,
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    }
    server_env = {
        **cli_env,
        "PREFECT_API_DATABASE_CONNECTION_URL": prefect_db,
        # a short-interval test schedule gets a few runs, not a hundred
        "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "3",
        "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": "1",
    }
    with BackgroundServer(create_app(SimConfig(batch_completion_s=2.0))) as simulator, \
            BackgroundServer(create_receiver(work / "receiver.db")) as receiver:
        server = _Process([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                           "--port", str(port)], server_env, work / "server.log", REPO)
        worker: _Process | None = None
        try:
            _wait_healthy(api_url, server)
            _cli(["block", "register", "-m", "blocks"], cli_env)
            _cli(["work-pool", "create", POOL, "--type", "process", "--overwrite"], cli_env)
            _cli(["deploy", "--all", "--no-prompt"], cli_env, timeout_s=180)
            worker_env = {
                **cli_env,
                "OPENAI_BASE_URL": f"{simulator.url}/v1",
                "OPENAI_API_KEY": "sk-test-simulated",
                "QBQ_RESULTS_API_URL": f"{receiver.url}/results",
                "QBQ_DATABASE_URL": store_db,
                "QBQ_MAX_STUDENTS_PER_BATCH": str(MAX_STUDENTS_PER_BATCH),
                "QBQ_RPM": "6000",
                "QBQ_TPM": "100000000",
                "QBQ_LIMITER_DIR": str(work / "limiter"),
                "PREFECT_WORKER_QUERY_SECONDS": "1",
                # the exam-session deployment grades through the Batch API: look often
                "QBQ_BATCH_POLL_S": "0.2",
                "QBQ_BATCH_POLL_MAX_S": "0.5",
            }
            worker = _Process([str(BIN / "prefect"), "worker", "start", "--pool", POOL,
                               "--name", "e2e-worker"], worker_env, work / "worker.log", REPO)
            _wait_worker_online(api_url, worker)
            with httpx.Client(base_url=api_url, timeout=30) as api:
                deployments = {d["name"]: d["id"] for d in
                               api.post("/deployments/filter", json={}).raise_for_status().json()}
                # prefect.yaml confines page paths to the checkout's intake folder; these tests
                # write their requests under the session's temporary folder, so that is the root
                roots = {"QBQ_PAGE_ROOTS": str(tmp_path_factory.getbasetemp())}
                for deployment_id in deployments.values():
                    api.patch(f"/deployments/{deployment_id}",
                              json={"job_variables": {"env": roots}}).raise_for_status()
            yield PrefectStack(api_url=api_url, ui_url=f"http://127.0.0.1:{port}",
                               cli_env=cli_env, simulator=simulator, receiver=receiver,
                               work_dir=work, server=server, worker=worker,
                               deployments=deployments, worker_env=worker_env)
        finally:
            if worker is not None:
                worker.stop()
            server.stop()
