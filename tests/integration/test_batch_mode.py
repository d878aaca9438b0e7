"""Batch mode against the simulator's Batch API: every mark right without one chat-completion
call, a run killed while it waits resumes the same batch instead of submitting again, and an
expired or cancelled batch's unanswered lines are graded synchronously."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from qbq import pipeline
from qbq.batch_api import OpenAIBatchAPI
from qbq.batch_mode import grade_in_batch_mode
from qbq.preparation import Prepared, prepare
from qbq.provider import OpenAIChatProvider, make_openai_client
from qbq.sample import truth_of, write_sample
from qbq.settings import GradingPolicy, QbqSettings
from qbq.simulator import BackgroundServer, SimConfig, create_app
from qbq.store import Store, batch_jobs
from qbq.testing.fakes import FakeClock, fake_run, memory_store

#: Simulated time 1,000x faster: a batch takes ~30 ms of wall time.
FAST = SimConfig(time_scale=1000.0, batch_validation_s=1.0, batch_completion_s=30.0,
                 batch_finalizing_s=1.0)
#: Simulated time 100x faster, lines 1 s of wall time apart (3 lines, 300 simulated seconds).
SLOW = SimConfig(time_scale=100.0, batch_validation_s=1.0, batch_completion_s=300.0,
                 batch_finalizing_s=1.0, batch_cancel_s=1.0)
#: SLOW with a window that closes after the first line (due ~101 s) and before the second
#: (~201 s): the batch ends `expired` with one line answered.
EXPIRING = SLOW.model_copy(update={"batch_window_s": 150.0})
POLICY = GradingPolicy(mode="batch", max_students_per_batch=2, batch_poll_s=0.01,
                       batch_poll_max_s=0.05)


class KilledWhileWaiting(Exception):
    """Stands in for a SIGKILL of the run while it waits for its batch."""


@pytest.fixture(scope="module")
def sim() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(FAST)) as server:
        yield server


@pytest.fixture(scope="module")
def exam(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Prepared]:
    request = write_sample(tmp_path_factory.mktemp("batch"), students=5, pages=1, questions=2,
                           seed=7, page_size=(400, 560))
    return request, prepare(request, settings=QbqSettings(), policy=POLICY)


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(SLOW)) as server:
        yield server


@pytest.fixture(scope="module")
def expiring_sim() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(EXPIRING)) as server:
        yield server


def _stats(sim: BackgroundServer) -> dict[str, Any]:
    return dict(httpx.get(f"{sim.url}/_sim/stats", timeout=10).json())


def _run(sim: BackgroundServer, prepared: Prepared, store: Store, key: str,
         sleep: Any = time.sleep) -> list[Any]:
    """One run; `key` is the API key (batches belong to a key, so each test has its own)."""
    client = make_openai_client(api_key=key, base_url=f"{sim.url}/v1", loopback_only=True)
    provider = OpenAIChatProvider(client)
    deps = fake_run(store, provider, FakeClock(), policy=POLICY).deps
    try:
        return grade_in_batch_mode(prepared, deps, OpenAIBatchAPI(client), sleep=sleep)
    finally:
        provider.close()


def _fresh(sim: BackgroundServer, prepared: Prepared) -> Store:
    """Zeroed simulator counters and a new store holding the registered process."""
    httpx.post(f"{sim.url}/_sim/reset", timeout=10).raise_for_status()
    store = memory_store()
    pipeline.register(store, prepared, QbqSettings(database_url="sqlite://"))
    return store


def _marks(prepared: Prepared, store: Store) -> dict[str, dict[str, float]]:
    native, _ = pipeline.build_payload(prepared, pipeline.collect(store, prepared.plan),
                                       policy=POLICY, settings=QbqSettings())
    assert native.summary.mode == "batch"
    return {s.ref: {a.question_number: a.mark for a in s.answers} for s in native.students}


def _assert_all_right(outcomes: list[Any], prepared: Prepared, store: Store,
                      request_path: Path) -> None:
    """Every batch graded, every mark the sample's truth."""
    assert all(o.status == "succeeded" for o in outcomes)
    assert _marks(prepared, store) == truth_of(request_path)


def test_batch_mode_grades_every_mark_right_without_chat_completion_calls(
        sim: BackgroundServer, exam: tuple[Path, Prepared]) -> None:
    request_path, prepared = exam
    store = _fresh(sim, prepared)
    outcomes = _run(sim, prepared, store, "sk-one-run")
    assert len(outcomes) == 3
    _assert_all_right(outcomes, prepared, store, request_path)
    stats = _stats(sim)
    assert (stats["requests"], stats["batches"], stats["batch_requests"]) == (0, 1, 3)


def test_a_run_killed_while_waiting_resumes_the_same_batch(
        sim: BackgroundServer, exam: tuple[Path, Prepared]) -> None:
    request_path, prepared = exam
    store = _fresh(sim, prepared)

    def killed(_: float) -> None:
        raise KilledWhileWaiting

    with pytest.raises(KilledWhileWaiting):
        _run(sim, prepared, store, "sk-killed", sleep=killed)
    assert _stats(sim)["batches"] == 1  # submitted, then the run died waiting
    pipeline.register(store, prepared, QbqSettings(database_url="sqlite://"))  # the rerun
    outcomes = _run(sim, prepared, store, "sk-killed")
    _assert_all_right(outcomes, prepared, store, request_path)
    stats = _stats(sim)
    assert (stats["batches"], stats["batch_requests"], stats["requests"]) == (1, 3, 0)


@pytest.mark.usefixtures("prefect_server")
def test_the_flow_in_batch_mode_grades_through_one_batch_and_delivers(
        tmp_path: Path, grading_env: str, sim: BackgroundServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.grade_assessment import grade_assessment

    monkeypatch.setenv("OPENAI_BASE_URL", f"{sim.url}/v1")  # the fast Batch API
    monkeypatch.setenv("QBQ_BATCH_POLL_S", "0.01")
    monkeypatch.setenv("QBQ_BATCH_POLL_MAX_S", "0.05")
    httpx.post(f"{sim.url}/_sim/reset", timeout=10).raise_for_status()
    # A request of its own per database: the Batch API job is found again by its process id
    # (content-derived), so the second dialect's run would reuse the first one's batch.
    seed = 5 if grading_env.startswith("sqlite") else 6
    request = write_sample(tmp_path / "s", students=4, pages=1, questions=2, seed=seed,
                           page_size=(400, 560))
    result = grade_assessment(request_path=str(request), mode="batch")
    assert result.status == "success" and result.summary.mode == "batch"
    assert result.delivery is not None and result.delivery.delivered == 1
    stats = _stats(sim)
    assert (stats["requests"], stats["batches"], stats["batch_requests"]) == (0, 1, 2)


def _provider_status(store: Store, prepared: Prepared) -> str | None:
    with store.transaction() as session:
        job = batch_jobs.job_for(session, prepared.plan.process_id)
        return None if job is None else job.provider_status


def test_an_expired_batch_uses_the_lines_it_answered_and_grades_the_rest_synchronously(
        expiring_sim: BackgroundServer, exam: tuple[Path, Prepared]) -> None:
    request_path, prepared = exam
    store = _fresh(expiring_sim, prepared)
    outcomes = _run(expiring_sim, prepared, store, "sk-expired")
    assert _provider_status(store, prepared) == "expired"
    _assert_all_right(outcomes, prepared, store, request_path)
    stats = _stats(expiring_sim)
    # one line answered before the window closed; the other two asked synchronously, once each
    assert (stats["batches"], stats["batch_requests"], stats["requests"]) == (1, 1, 2)


def test_a_cancelled_batch_uses_the_lines_it_answered_and_grades_the_rest_synchronously(
        slow_sim: BackgroundServer, exam: tuple[Path, Prepared]) -> None:
    request_path, prepared = exam
    store = _fresh(slow_sim, prepared)
    key = "sk-cancelled"

    def cancel_after_the_first_line(seconds: float) -> None:
        """The first wait: once a line is answered, someone cancels the batch (as from
        OpenAI's dashboard); then wait as asked."""
        if not cancelled:
            while _stats(slow_sim)["batch_requests"] < 1:
                time.sleep(0.01)
            auth = {"Authorization": f"Bearer {key}"}
            batch_id = httpx.get(f"{slow_sim.url}/v1/batches", headers=auth,
                                 timeout=10).json()["data"][0]["id"]
            httpx.post(f"{slow_sim.url}/v1/batches/{batch_id}/cancel", headers=auth,
                       timeout=10).raise_for_status()
            cancelled.append(batch_id)
        time.sleep(seconds)

    cancelled: list[str] = []
    outcomes = _run(slow_sim, prepared, store, key, sleep=cancel_after_the_first_line)
    assert cancelled and _provider_status(store, prepared) == "cancelled"
    _assert_all_right(outcomes, prepared, store, request_path)
    stats = _stats(slow_sim)
    answered = stats["batch_requests"]
    assert 1 <= answered < 3  # cancelled with lines answered and lines left
    assert (stats["batches"], stats["requests"]) == (1, 3 - answered)
