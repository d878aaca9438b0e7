"""Short chaos run: SIGKILL `qbq grade` mid-flight, duplicate runs, the receiver down for a while.

The full version is `python benchmarks/chaos.py --kills 50`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from qbq.receiver import create_app as create_receiver
from qbq.sample import truth_of, write_sample
from qbq.simulator import BackgroundServer, SimConfig, create_app
from qbq.testing.chaos import format_report, run_chaos
from qbq.testing.harness import prefect_server

Stack = tuple[dict[str, str], BackgroundServer, BackgroundServer]


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Prefect server for this module's `qbq grade` subprocesses (each run has its own
    store, simulator and receiver), so each test pays only for its own runs."""
    with prefect_server(tmp_path_factory.mktemp("prefect"), None) as api_url:
        yield api_url


@contextmanager
def _stack(tmp_path: Path, api_url: str, sim: SimConfig, env: dict[str, str]) -> Iterator[Stack]:
    """The simulator and a receiver on loopback: yields the environment a `qbq grade`
    subprocess grades against them and Prefect's `api_url` with (plus `env`), the simulator,
    the receiver."""
    with BackgroundServer(create_app(sim)) as simulator, \
            BackgroundServer(create_receiver(tmp_path / "r.db")) as receiver:
        yield ({**os.environ, "PREFECT_API_URL": api_url, "PREFECT_LOGGING_LEVEL": "WARNING",
                "OPENAI_BASE_URL": f"{simulator.url}/v1", "OPENAI_API_KEY": "sk-test-simulated",
                "QBQ_DATABASE_URL": f"sqlite:///{tmp_path / 'q.db'}",
                "QBQ_RESULTS_API_URL": f"{receiver.url}/results",
                "QBQ_MAX_STUDENTS_PER_BATCH": "2", "QBQ_RPM": "6000", "QBQ_TPM": "100000000",
                "QBQ_LIMITER_DIR": str(tmp_path / "limiter"), **env}, simulator, receiver)


def _grade(request: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "qbq", "grade", str(request)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _get(server: BackgroundServer, path: str) -> Any:
    return httpx.get(f"{server.url}{path}", timeout=10).raise_for_status().json()


def _marks(payload: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {s["ref"]: {a["question_number"]: a["mark"] for a in s["answers"]}
            for s in payload["students"]}


def test_kills_duplicates_and_outages_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    report = run_chaos(kills=3, seed=7, students=6,
                       scenarios=["kill", "duplicate", "receiver_down", "kill"],
                       work=tmp_path / "chaos")
    print(format_report(report))
    kills = sum(t.kills for t in report.by_scenario.values())
    assert kills >= 3
    assert report.by_scenario["duplicate"].runs >= 3
    assert report.by_scenario["receiver_down"].runs >= 2
    assert report.calls_for_completed_batches == 0
    assert report.rows_written_twice == 0
    assert report.payloads_more_than_once == 0
    assert report.students_lost == 0 and report.students >= 24
    assert all(t.failed_final_runs == 0 for t in report.by_scenario.values())


def test_two_runs_of_one_request_started_together_call_the_model_once_per_batch(
        tmp_path: Path, prefect_api: str) -> None:
    """Two `qbq grade` processes (as two workers would run them) on the same request at the
    same moment: each batch is graded by whichever run leases it; the other waits for it."""
    request = write_sample(tmp_path / "s", students=8, pages=1, questions=2, seed=21)
    with _stack(tmp_path, prefect_api, SimConfig(latency_ms=2500),
                {"QBQ_MAX_IN_FLIGHT": "2", "QBQ_LEASE_POLL_S": "0.1"}) as (env, sim, receiver):
        runs = [_grade(request, env) for _ in range(2)]
        codes = [run.wait(300) for run in runs]
        stats = _get(sim, "/_sim/stats")
        got = _get(receiver, "/results")

    assert codes == [0, 0]
    assert stats["requests"] == 4  # 8 students in batches of 2: one call per batch in all
    assert len(got["payloads"]) == 1
    assert _marks(got["payloads"][0]["payload"]) == truth_of(request)


def test_a_batch_mode_run_killed_while_it_waits_is_resumed_by_the_rerun(
        tmp_path: Path, prefect_api: str) -> None:
    """`qbq grade` in batch mode SIGKILLed once its Batch API job exists: the rerun finds the
    stored batch id and collects that job, submitting nothing again and calling the
    synchronous API for nothing."""
    request = write_sample(tmp_path / "s", students=4, pages=1, questions=2, seed=23,
                           page_size=(400, 560))
    # The batch takes 6 s once created: the first run is still waiting when it is killed
    # (within a poll of the batch's creation); the rerun's start-up overlaps the rest.
    sim = SimConfig(batch_validation_s=1.0, batch_completion_s=4.0, batch_finalizing_s=1.0)
    with _stack(tmp_path, prefect_api, sim, {"QBQ_MODE": "batch", "QBQ_BATCH_POLL_S": "0.2",
                                "QBQ_BATCH_POLL_MAX_S": "0.5"}) as (env, simulator, receiver):
        first = _grade(request, env)
        deadline = time.monotonic() + 120
        while _get(simulator, "/_sim/stats")["batches"] < 1:
            if first.poll() is not None or time.monotonic() > deadline:
                first.kill()
                pytest.fail(f"no batch submitted: {first.communicate()[1].decode()[-3000:]}")
            time.sleep(0.1)
        os.kill(first.pid, signal.SIGKILL)
        _, first_err = first.communicate(timeout=30)
        assert first.returncode == -signal.SIGKILL, first_err.decode()[-3000:]
        assert _get(receiver, "/results")["payloads"] == []  # killed before it delivered

        rerun = _grade(request, env)
        _, err = rerun.communicate(timeout=300)
        stats = _get(simulator, "/_sim/stats")
        got = _get(receiver, "/results")

    assert rerun.returncode == 0, err.decode()[-3000:]
    assert (stats["batches"], stats["batch_requests"], stats["requests"]) == (1, 2, 0)
    assert len(got["payloads"]) == 1
    payload = got["payloads"][0]["payload"]
    assert payload["summary"]["mode"] == "batch"
    assert _marks(payload) == truth_of(request)
