"""Short chaos run: SIGKILL `qbq grade` mid-flight, duplicate runs, the receiver down for a while;
two `qbq grade` processes at once, on one request or on two sharing the key's limits; a batch-mode
run SIGKILLed while it waits.

The full version is `python benchmarks/chaos.py --kills 50`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from qbq.receiver import create_app as create_receiver
from qbq.sample import truth_of, write_sample
from qbq.simulator import BackgroundServer, SimConfig, create_app
from qbq.testing.chaos import format_report, run_chaos
from qbq.testing.harness import prefect_server


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


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Prefect server for the tests below that run `qbq grade` as processes."""
    with prefect_server(tmp_path_factory.mktemp("prefect"), None) as api_url:
        yield api_url


def _grade_env(tmp_path: Path, api_url: str, sim: BackgroundServer,
               receiver: BackgroundServer, **settings: str) -> dict[str, str]:
    """The environment of a `qbq grade` process: no rate limits set, whatever the session has
    (a local simulator needs none: qbq learns the ones it states, or it states none)."""
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("QBQ_RPM", "QBQ_TPM", "QBQ_UNTHROTTLED")}
    return {**inherited, "PREFECT_API_URL": api_url, "PREFECT_LOGGING_LEVEL": "WARNING",
            "OPENAI_BASE_URL": f"{sim.url}/v1", "OPENAI_API_KEY": "sk-test-simulated",
            "QBQ_DATABASE_URL": f"sqlite:///{tmp_path / 'q.db'}",
            "QBQ_RESULTS_API_URL": f"{receiver.url}/results",
            "QBQ_LIMITER_DIR": str(tmp_path / "limiter"), "QBQ_LEASE_POLL_S": "0.1",
            **settings}


def _grade(request: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "qbq", "grade", str(request)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _get(server: BackgroundServer, path: str) -> Any:
    return httpx.get(f"{server.url}{path}", timeout=10).raise_for_status().json()


def _grade_together(requests: list[Path], env: dict[str, str]) -> list[int]:
    """Start one `qbq grade` per request at the same moment; their exit codes."""
    runs = [_grade(request, env) for request in requests]
    codes = []
    for run in runs:
        _, err = run.communicate(timeout=300)
        if run.returncode:
            print(err.decode(errors="replace")[-3000:])
        codes.append(run.returncode)
    return codes


def _marks(payload: dict[str, object]) -> dict[str, dict[int, float]]:
    students = payload["students"]
    assert isinstance(students, list)
    return {s["ref"]: {a["question_number"]: a["mark"] for a in s["answers"]} for s in students}


def test_two_runs_of_one_request_started_together_call_the_model_once_per_batch(
        tmp_path: Path, prefect_api: str) -> None:
    """Two `qbq grade` processes (as two workers would run them) on the same request at the
    same moment: each batch is graded by whichever run leases it; the other waits for it."""
    request = write_sample(tmp_path / "s", students=8, pages=1, questions=2, seed=21)
    with BackgroundServer(create_app(SimConfig(latency_ms=2500))) as sim, \
            BackgroundServer(create_receiver(tmp_path / "r.db")) as receiver:
        env = _grade_env(tmp_path, prefect_api, sim, receiver,
                         QBQ_MAX_STUDENTS_PER_BATCH="2", QBQ_MAX_IN_FLIGHT="2")
        codes = _grade_together([request, request], env)
        stats = httpx.get(f"{sim.url}/_sim/stats", timeout=10).json()
        got = httpx.get(f"{receiver.url}/results", timeout=10).json()

    assert codes == [0, 0]
    assert stats["requests"] == 4  # 8 students in batches of 2: one call per batch in all
    assert len(got["payloads"]) == 1
    assert _marks(got["payloads"][0]["payload"]) == truth_of(request)


RPM = 120  # 2 a second: after the probe a burst of 2, then one every 0.5 s
TPM = 2_000_000
STUDENTS = 8  # per request, one per batch


def test_two_processes_on_two_requests_pace_together_at_the_limits_the_simulator_states(
        tmp_path: Path, prefect_api: str) -> None:
    """Two `qbq grade` processes on two different requests, one API key and one limiter
    folder, no QBQ_RPM/QBQ_TPM: the first request of the key probes alone, then both pace at
    the limits the simulator states in its x-ratelimit-limit-* headers, together."""
    requests = [write_sample(tmp_path / name, students=STUDENTS, pages=1, questions=2,
                             seed=seed, assessment_id=name)
                for name, seed in (("first", 31), ("second", 32))]
    with BackgroundServer(create_app(SimConfig(rpm=RPM, tpm=TPM, latency_ms=200))) as sim, \
            BackgroundServer(create_receiver(tmp_path / "r.db")) as receiver:
        env = _grade_env(tmp_path, prefect_api, sim, receiver,
                         QBQ_MAX_STUDENTS_PER_BATCH="1", QBQ_MAX_IN_FLIGHT="4")
        codes = _grade_together(requests, env)
        stats = httpx.get(f"{sim.url}/_sim/stats", timeout=10).json()
        got = httpx.get(f"{receiver.url}/results", timeout=10).json()

    assert codes == [0, 0]
    total = 2 * STUDENTS
    assert stats["requests"] == total  # both really sent: one call per batch of each request
    assert stats["by_status"] == {"200": total}  # 0 × 429
    timeline = stats["timeline"]
    starts = [s["started"] for s in timeline]
    tokens = [s["tokens"] for s in timeline]
    assert sum(starts) == total
    # within the stated limits in every 60 s window of the timeline
    assert all(sum(starts[i:i + 60]) <= RPM for i in range(len(starts)))
    assert all(sum(tokens[i:i + 60]) <= TPM for i in range(len(tokens)))
    # paced at the learned 2 a second by both processes together: no second holds more than
    # the probe, a burst of 2, 2 a second and one more (two probes or an unpaced process
    # would start up to 8 at once); sharing the pace takes at least (total - 3) / 2 seconds
    # (two processes pacing alone would take half that)
    assert max(starts) <= 1 + 2 + 2 + 1
    assert len(timeline) >= (total - 1 - 2) // 2
    by_assessment = {g["payload"]["assessment_id"]: g["payload"] for g in got["payloads"]}
    assert {name: _marks(p) for name, p in by_assessment.items()} == {
        "first": truth_of(requests[0]), "second": truth_of(requests[1])}


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
    with BackgroundServer(create_app(sim)) as simulator, \
            BackgroundServer(create_receiver(tmp_path / "r.db")) as receiver:
        env = _grade_env(tmp_path, prefect_api, simulator, receiver, QBQ_MODE="batch",
                         QBQ_MAX_STUDENTS_PER_BATCH="2", QBQ_BATCH_POLL_S="0.2",
                         QBQ_BATCH_POLL_MAX_S="0.5")
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
