"""The grade-assessment flow end to end: Prefect, the simulator over HTTP, a real store, delivery."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flows.grade_assessment import grade_assessment
from qbq.resources import open_store
from qbq.sample import truth_of, write_legacy_sample, write_sample
from qbq.settings import get_settings
from qbq.simulator import BackgroundServer
from qbq.submission import submit_request
from tests.integration.conftest import received

pytestmark = pytest.mark.usefixtures("prefect_server")


def _marks(payload: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {s["ref"]: {a["question_number"]: a["mark"] for a in s["answers"]}
            for s in payload["students"]}


def test_flow_grades_every_student_on_the_right_marks_and_delivers_once(
    tmp_path: Path, grading_env: str, receiver: BackgroundServer, sim_stats: Any
) -> None:
    request = write_sample(tmp_path / "sample", students=10, pages=2, questions=3, seed=3)

    result = grade_assessment(request_path=str(request))

    summary = result.summary
    assert result.status == "success"
    assert summary.graded == 10 and summary.failed == 0
    assert summary.batches == 4  # 10 students, at most 3 per batch
    assert summary.simulated is True
    stats = sim_stats()
    assert stats["requests"] == 4 and stats["by_status"] == {"200": 4}
    assert summary.prompt_tokens == stats["prompt_tokens"]
    assert summary.completion_tokens == stats["completion_tokens"]
    assert result.delivery is not None and result.delivery.delivered == 1
    got = received(receiver)
    assert len(got["payloads"]) == 1
    payload = got["payloads"][0]["payload"]
    assert payload["process_id"] == result.process_id
    assert payload == json.loads(result.payloads.outgoing.model_dump_json())
    assert _marks(payload) == truth_of(request)
    assert [s["ref"] for s in payload["students"]] == [f"S{i:03d}" for i in range(1, 11)]
    assert all(len(s["image_ids"]) == 2 for s in payload["students"])
    assert all(a["feedback"].startswith("[simulated]")
               for s in payload["students"] for a in s["answers"])


def test_second_run_makes_no_model_call_and_delivers_nothing_new(
    tmp_path: Path, grading_env: str, receiver: BackgroundServer, sim_stats: Any
) -> None:
    request = write_sample(tmp_path / "sample", students=7, pages=1, questions=2, seed=4)
    first = grade_assessment(request_path=str(request))
    calls_after_first = sim_stats()["requests"]

    second = grade_assessment(request_path=str(request))

    assert calls_after_first == 3
    assert sim_stats()["requests"] == calls_after_first
    assert second.process_id == first.process_id
    assert second.status == "success" and second.summary.graded == 7
    got = received(receiver)
    assert len(got["payloads"]) == 1 and got["duplicates"] == 0


def test_submitted_request_by_id(
    tmp_path: Path, grading_env: str, receiver: BackgroundServer, sim_stats: Any
) -> None:
    path = write_sample(tmp_path / "sample", students=2, pages=1, questions=2, seed=5)
    store = open_store(get_settings())
    request_id = submit_request(store, path.read_text(), path.parent)  # relative paths kept
    store.dispose()

    result = grade_assessment(request_id=request_id)

    assert result.status == "success" and result.summary.graded == 2
    assert _marks(received(receiver)["payloads"][0]["payload"]) == truth_of(path)


def test_legacy_request_in_legacy_payload_out(
    grading_env: str, receiver: BackgroundServer, static_files: tuple[Path, str], sim_stats: Any
) -> None:
    root, base_url = static_files
    legacy = write_legacy_sample(root, base_url=base_url, students=4, pages=2, questions=3, seed=6)
    truth = truth_of(root / "request.json")

    result = grade_assessment(request_path=str(legacy))

    assert result.status == "success" and result.summary.graded == 4
    payload = received(receiver)["payloads"][0]["payload"]
    body = json.loads(legacy.read_text())
    assert payload["assessment_id"] == body["external_assessment_id"]
    assert payload["assessment_settings_id"] == body["external_assessment_settings_id"]
    assert payload["status"] == "success"
    assert len(payload["data"]) == 4
    image_ids = [im["id"] for im in body["images"]]  # integers, as the request gave them
    for i, entry in enumerate(payload["data"]):
        assert set(entry) >= {"first_name", "last_name", "answers", "image_ids"}
        assert entry["first_name"] and entry["last_name"]
        assert entry["image_ids"] == image_ids[2 * i : 2 * i + 2]
        marks = {a["question_number"]: a["mark"] for a in entry["answers"]}
        assert marks == truth[f"S{i + 1:03d}"]
        assert set(entry["answers"][0]) >= {"question_number", "mark", "feedback"}


def test_coverage_below_and_above_the_threshold(
    tmp_path: Path, grading_env: str, receiver: BackgroundServer, simulator: BackgroundServer,
    sim_stats: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model refuses one of two batches: its 3 students fail with the reason and a review
    flag. Under the default 100% threshold the run fails; at 50% it succeeds, still listing
    them."""
    import httpx

    request = write_sample(tmp_path / "sample", students=6, pages=1, questions=2, seed=8)
    httpx.post(f"{simulator.url}/_sim/config", json={"fault_script": ["refusal"]}, timeout=10)
    try:
        strict = grade_assessment(request_path=str(request))
    finally:
        httpx.post(f"{simulator.url}/_sim/config", json={"fault_script": []}, timeout=10)

    assert strict.status == "failed"
    assert strict.summary.graded == 3 and strict.summary.failed == 3
    payload = received(receiver)["payloads"][0]["payload"]
    assert payload["status"] == "failed"
    failed = {f["ref"]: f for f in payload["failures"]}
    assert len(failed) == 3
    assert all(f["error_type"] == "RefusalError" and "refused" in f["reason"]
               for f in failed.values())
    students = {s["ref"]: s for s in payload["students"]}
    assert len(students) == 6  # nobody dropped
    assert all(students[r]["status"] == "failed" and students[r]["needs_review"] for r in failed)

    lenient = write_sample(tmp_path / "lenient", students=6, pages=1, questions=2, seed=9)
    monkeypatch.setenv("QBQ_MIN_COVERAGE", "0.5")
    httpx.post(f"{simulator.url}/_sim/config", json={"fault_script": ["refusal"]}, timeout=10)
    try:
        relaxed = grade_assessment(request_path=str(lenient))
    finally:
        httpx.post(f"{simulator.url}/_sim/config", json={"fault_script": []}, timeout=10)
    assert relaxed.status == "success" and relaxed.summary.graded == 3
    second = received(receiver)["payloads"][1]["payload"]
    assert second["status"] == "success" and len(second["failures"]) == 3


def test_results_api_down_then_up_gets_the_payload_once(
    tmp_path: Path, grading_env: str, receiver: BackgroundServer, sim_stats: Any,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    import httpx

    from flows.deliver_results import deliver_results

    monkeypatch.setenv("QBQ_DELIVERY_BACKOFF_S", "0.2")
    request = write_sample(tmp_path / "sample", students=4, pages=1, questions=2, seed=10)
    httpx.post(f"{receiver.url}/_control", json={"refuse_next": 1000}, timeout=10)

    result = grade_assessment(request_path=str(request))

    assert result.status == "success"
    assert result.delivery is not None and result.delivery.delivered == 0
    assert "503" in (result.delivery.last_error or "")
    assert received(receiver)["payloads"] == []
    with pytest.raises(Exception, match="not delivered"):
        deliver_results()  # still down: the scheduled drain fails loudly, the row stays
    httpx.post(f"{receiver.url}/_control", json={"refuse_next": 0}, timeout=10)
    time.sleep(1.0)  # past the back-off

    assert deliver_results()["delivered"] == 1
    assert deliver_results()["delivered"] == 0  # nothing left to send
    got = received(receiver)
    assert len(got["payloads"]) == 1 and got["duplicates"] == 0
    assert got["refused"] >= 2
    assert _marks(got["payloads"][0]["payload"]) == truth_of(request)


def test_a_run_that_raised_mid_way_leaves_fresh_guards_to_the_next_run(
    tmp_path: Path, grading_env: str, receiver: BackgroundServer, sim_stats: Any,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow raises after grading (finalize fails); the next run in this process gets new
    resources — a fresh retry budget and a closed breaker — and the first run's are closed."""
    from qbq import pipeline
    from qbq.resources import RunResources

    built: list[RunResources] = []
    real_build = RunResources.build

    def spy(ref: Any) -> RunResources:
        built.append(real_build(ref))
        return built[-1]

    monkeypatch.setattr(RunResources, "build", staticmethod(spy))
    real_finalize = pipeline.finalize

    def broken(*args: Any, **kwargs: Any) -> Any:
        built[0].guards.budget.spend(1)  # the first run had spent some budget...
        built[0].guards.breaker.record_failure()  # ...and seen the provider fail
        raise RuntimeError("the store went away")

    monkeypatch.setattr(pipeline, "finalize", broken)
    request = write_sample(tmp_path / "sample", students=4, pages=1, questions=2, seed=11)
    with pytest.raises(RuntimeError, match="store went away"):
        grade_assessment(request_path=str(request))
    monkeypatch.setattr(pipeline, "finalize", real_finalize)

    result = grade_assessment(request_path=str(request))

    assert result.status == "success"
    assert len(built) == 2 and built[1] is not built[0]
    assert built[0].http.is_closed  # released although the flow raised
    assert built[1].guards.budget.retries == 0 and built[1].guards.breaker.failures == 0
    assert built[1].ref.token != built[0].ref.token


def test_a_request_prepared_by_the_caller_is_not_prepared_again(
    tmp_path: Path, grading_env: str, receiver: BackgroundServer, sim_stats: Any,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """`qbq grade` validates, measures and plans before Prefect starts and hands the result
    over; the flow run uses it instead of reading and measuring every page again."""
    import tasks.grading
    from qbq.preparation import handing_over, prepare
    from qbq.settings import GradingPolicy, get_settings

    request = write_sample(tmp_path / "sample", students=4, pages=1, questions=2, seed=12)
    settings, policy = get_settings(), GradingPolicy()
    prepared = prepare(request, settings=settings, policy=policy)

    def again(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("prepared twice")

    monkeypatch.setattr(tasks.grading, "prepare", again)
    with handing_over(request, prepared, settings=settings, policy=policy):
        result = grade_assessment(request_path=str(request))
    assert result.status == "success" and result.process_id == prepared.plan.process_id

    other = write_sample(tmp_path / "other", students=2, pages=1, questions=2, seed=13)
    with handing_over(request, prepared, settings=settings, policy=policy), \
            pytest.raises(AssertionError, match="prepared twice"):
        grade_assessment(request_path=str(other))  # another file is prepared by the flow
