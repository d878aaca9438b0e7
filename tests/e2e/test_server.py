"""qbq deployed on a real Prefect server (PostgreSQL) and run by a process worker.

Runs are triggered the ways production triggers them: the REST API the school platform calls,
`run_deployment`, and the exam-session schedule firing over an intake folder.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from blocks import GradingPolicyBlock, OpenAIProvider, ResultsAPI
from qbq.receiver import create_app as create_receiver
from qbq.sample import truth_of, write_sample
from qbq.simulator import BackgroundServer, SimConfig, create_app
from tests.e2e.conftest import MAX_STUDENTS_PER_BATCH, PrefectStack

pytestmark = [pytest.mark.server, pytest.mark.postgres]


def _marks(payload: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {s["ref"]: {a["question_number"]: a["mark"] for a in s["answers"]}
            for s in payload["students"]}


def _assessment_id(request: Path) -> str:
    return str(json.loads(request.read_text())["assessment_id"])


def test_rest_api_trigger_grades_and_delivers_once(prefect_stack: PrefectStack,
                                                   tmp_path: Path) -> None:
    request = write_sample(tmp_path / "rest", students=5, pages=1, questions=3, seed=101)
    deployment_id = prefect_stack.deployments["grade-assessment"]
    body = {"parameters": {"request_path": str(request)}, "idempotency_key": "platform-req-101"}

    with prefect_stack.api() as api:
        first = api.post(f"/deployments/{deployment_id}/create_flow_run", json=body)
        again = api.post(f"/deployments/{deployment_id}/create_flow_run", json=body)
    assert first.status_code == 201, first.text
    run_id = first.json()["id"]
    assert again.json()["id"] == run_id  # a repeated platform call is the same run

    run = prefect_stack.wait_for_run(run_id)

    assert run["state"]["type"] == "COMPLETED", prefect_stack.diagnostics()
    payloads = prefect_stack.payloads(assessment_id=_assessment_id(request))
    assert len(payloads) == 1
    assert payloads[0]["status"] == "success"
    assert _marks(payloads[0]) == truth_of(request)
    assert payloads[0]["summary"]["batches"] == math.ceil(5 / MAX_STUDENTS_PER_BATCH)


@pytest.fixture
def block_targets(prefect_stack: PrefectStack,
                  tmp_path: Path) -> Iterator[tuple[BackgroundServer, BackgroundServer]]:
    """A second simulator and a token-protected receiver that only saved blocks point at."""
    with BackgroundServer(create_app(SimConfig())) as sim, \
            BackgroundServer(create_receiver(tmp_path / "block-receiver.db",
                                             token="block-token")) as receiver:
        with temporary_settings({PREFECT_API_URL: prefect_stack.api_url}):
            OpenAIProvider(api_key="sk-test-block", base_url=f"{sim.url}/v1", rpm=6000,
                           tpm=100_000_000).save("e2e-provider", overwrite=True)
            ResultsAPI(url=f"{receiver.url}/results",
                       token="block-token").save("e2e-results", overwrite=True)
            GradingPolicyBlock(max_students_per_batch=2).save("e2e-policy", overwrite=True)
        yield sim, receiver


def test_run_deployment_with_blocks(prefect_stack: PrefectStack, tmp_path: Path,
                                    block_targets: tuple[BackgroundServer, BackgroundServer]
                                    ) -> None:
    block_sim, block_receiver = block_targets
    request = write_sample(tmp_path / "blocks", students=5, pages=1, questions=2, seed=102)

    with temporary_settings({PREFECT_API_URL: prefect_stack.api_url}):
        run = run_deployment("grade-assessment/grade-assessment", timeout=150, poll_interval=1,
                             parameters={"request_path": str(request),
                                         "provider_block": "e2e-provider",
                                         "results_block": "qbq-results-api/e2e-results",
                                         "policy_block": "e2e-policy"})

    assert run.state is not None and run.state.is_completed(), prefect_stack.diagnostics()
    # the blocks, not the worker's environment, chose the provider, the receiver and the policy
    payloads = prefect_stack.payloads(block_receiver, assessment_id=_assessment_id(request),
                                      token="block-token")
    assert len(payloads) == 1
    assert _marks(payloads[0]) == truth_of(request)
    assert payloads[0]["summary"]["batches"] == 3  # 5 students, at most 2 per batch
    assert httpx.get(f"{block_sim.url}/_sim/stats", timeout=10).json()["requests"] == 3
    assert prefect_stack.payloads(assessment_id=_assessment_id(request)) == []


def test_missing_block_fails_the_run_with_a_clear_message(prefect_stack: PrefectStack,
                                                          tmp_path: Path) -> None:
    request = write_sample(tmp_path / "noblock", students=1, pages=1, questions=1, seed=103)
    with temporary_settings({PREFECT_API_URL: prefect_stack.api_url}):
        run = run_deployment("grade-assessment/grade-assessment", timeout=150, poll_interval=1,
                             parameters={"request_path": str(request),
                                         "policy_block": "no-such-policy"})
    assert run.state is not None and run.state.is_failed()
    assert "ConfigurationError" in (run.state.message or "")
    assert "no-such-policy" in (run.state.message or "")


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def test_exam_session_schedule_grades_an_intake_request_exactly_once(
        prefect_stack: PrefectStack, tmp_path: Path) -> None:
    intake = tmp_path / "intake"
    request = write_sample(intake / "exam-a", students=4, pages=1, questions=2, seed=104)
    truth = truth_of(intake / "exam-a" / "request.json")
    deployment_id = prefect_stack.deployments["exam-session"]
    before = prefect_stack.sim_stats()

    with prefect_stack.api() as api:
        created = api.post(f"/deployments/{deployment_id}/schedules", json=[{
            "schedule": {"interval": 3}, "active": True,
            "parameters": {"intake_dir": str(intake)},
        }]).raise_for_status().json()
        schedule_id = created[0]["id"]
        try:
            done = intake / "done" / "exam-a"
            runs = _wait_for_scheduled_runs(prefect_stack, api, deployment_id, done)
        finally:
            api.delete(f"/deployments/{deployment_id}/schedules/{schedule_id}")

    payloads = prefect_stack.payloads(assessment_id=_assessment_id(done / "request.json"))
    assert len(payloads) == 1 and _marks(payloads[0]) == truth
    assert not request.exists() and (done / "request.json").is_file()
    assert list((intake / "processing").iterdir()) == []
    batches = math.ceil(4 / MAX_STUDENTS_PER_BATCH)
    # the exam-session deployment runs in batch mode (prefect.yaml): every planned request goes
    # through one Batch API job, none as a chat completion
    after = prefect_stack.sim_stats()
    assert after["batch_requests"] - before["batch_requests"] == batches
    assert after["batches"] - before["batches"] == 1
    assert after["requests"] == before["requests"]
    ran = [r for r in runs if r["start_time"] is not None and r["state"]["type"] != "CANCELLED"]
    assert len(ran) >= 1 and all(r["state"]["type"] == "COMPLETED" for r in ran)
    spans = sorted((_parse(r["start_time"]), _parse(r["end_time"])) for r in ran)
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    for r in runs:
        if r["state"]["type"] == "CANCELLED":
            assert "concurrency limit" in (r["state"]["message"] or "").lower()


def _wait_for_scheduled_runs(stack: PrefectStack, api: httpx.Client, deployment_id: str,
                             done: Path, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """Runs of the test schedule (interval 3 s) once the request is done and 2+ runs ended."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = api.post("/flow_runs/filter", json={
            "deployments": {"id": {"any_": [deployment_id]}}}).raise_for_status().json()
        mine = [r for r in runs if r["parameters"].get("intake_dir") == str(done.parent.parent)]
        ended = [r for r in mine if r["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED",
                                                             "CANCELLED"}]
        if done.exists() and len(ended) >= 2 and len(ended) == len(
                [r for r in mine if r["state"]["type"] != "SCHEDULED"]):
            return ended
        if time.monotonic() > deadline:
            states = [(r["name"], r["state"]["type"]) for r in mine]
            pytest.fail(f"exam-session schedule: {states}, done={done.exists()}\n"
                        f"{stack.diagnostics()}")
        time.sleep(1.0)


def test_deliver_results_deployment_runs(prefect_stack: PrefectStack) -> None:
    with temporary_settings({PREFECT_API_URL: prefect_stack.api_url}):
        run = run_deployment("deliver-results/deliver-results", timeout=120, poll_interval=1)
    assert run.state is not None and run.state.is_completed(), prefect_stack.diagnostics()


def test_two_workers_grading_at_once_share_the_provider_limit(prefect_stack: PrefectStack,
                                                              tmp_path: Path) -> None:
    """A second worker joins; four requests are triggered together against a provider that
    allows 60 requests a minute. Every flow run is its own process, on either worker, and all
    pace through one limiter: the simulator's timeline never shows more than the limit (plus
    qbq's one-second burst) in any window, and no request is refused."""
    from tests.e2e.conftest import POOL, _Process

    rpm = 60
    with BackgroundServer(create_app(SimConfig(rpm=rpm, latency_ms=300))) as sim:
        with temporary_settings({PREFECT_API_URL: prefect_stack.api_url}):
            OpenAIProvider(api_key="sk-test-paced", base_url=f"{sim.url}/v1", rpm=rpm,
                           tpm=100_000_000).save("e2e-paced", overwrite=True)
            GradingPolicyBlock(max_students_per_batch=1).save("e2e-one", overwrite=True)
        second = _Process([str(Path(prefect_stack.worker.args[0])), "worker", "start", "--pool",
                           POOL, "--name", "e2e-worker-2"], prefect_stack.worker_env,
                          tmp_path / "worker-2.log", Path(__file__).resolve().parents[2])
        try:
            requests = [write_sample(tmp_path / f"paced-{i}", students=3, pages=1, questions=2,
                                     seed=200 + i) for i in range(4)]
            deployment_id = prefect_stack.deployments["grade-assessment"]
            with prefect_stack.api() as api:
                run_ids = [api.post(f"/deployments/{deployment_id}/create_flow_run", json={
                    "parameters": {"request_path": str(r), "provider_block": "e2e-paced",
                                   "policy_block": "e2e-one"}}).raise_for_status().json()["id"]
                    for r in requests]
            runs = [prefect_stack.wait_for_run(run_id, timeout_s=240) for run_id in run_ids]
        finally:
            second.stop()
        stats = httpx.get(f"{sim.url}/_sim/stats", timeout=10).json()

    assert all(r["state"]["type"] == "COMPLETED" for r in runs), prefect_stack.diagnostics()
    assert stats["requests"] == 12 and stats["by_status"] == {"200": 12}  # 4 × 3 batches, no 429
    started = [s["started"] for s in stats["timeline"]]
    # 60 a minute is one a second; qbq may add its one-second burst (one request)
    for width in (1, 5, 10):
        most = max(sum(started[i:i + width]) for i in range(max(1, len(started) - width + 1)))
        assert most <= width * rpm / 60 + 1, (width, started)
    assert len(started) >= 11  # 12 requests at one a second took at least 11 s
