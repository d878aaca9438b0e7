"""Tests of reduce: stored batch results become one payload where every student is accounted for."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qbq.catalog import get_model_spec
from qbq.domain import GradingRequest, LegacyContext, Page, Question, Student
from qbq.payload import LegacyPayload, NativePayload
from qbq.planning import BatchPlan, PlannedBatch, plan_batches
from qbq.reduce import StoredBatch, reduce_results, to_legacy
from qbq.settings import GradingPolicy
from qbq.usage import Usage

QUESTIONS = (Question("1", 2.0), Question("2b", 5.0), Question("10", 3.0))


def make_request(n_students: int = 4, **over: Any) -> GradingRequest:
    students = tuple(
        Student(f"S{i:03d}", tuple(
            Page(f"img-{i}-{j}", "url", f"https://img.example/{i}/{j}.png", 800, 1000, 1000)
            for j in range(2)))
        for i in range(1, n_students + 1)
    )
    fields: dict[str, Any] = {
        "assessment_id": "exam-9",
        "model": "gpt-4o",
        "spec": get_model_spec("gpt-4o"),
        "instructions": None,
        "questions": QUESTIONS,
        "model_answer_pages": (),
        "students": students,
    }
    fields.update(over)
    return GradingRequest(**fields)


def make_plan(request: GradingRequest, per_batch: int = 2) -> BatchPlan:
    return plan_batches(request, GradingPolicy(max_students_per_batch=per_batch))


def answer(qnum: str, mark: float, confidence: str = "high", status: str = "answered") -> dict[str, Any]:
    return {"question_number": qnum, "mark": mark, "feedback": f"feedback {qnum}",
            "confidence": confidence, "status": status}


def graded(ref: str, *, name: dict[str, str] | None = None,
           answers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    # Answers deliberately not in question order: reduce must restore the request's order.
    return {"ref": ref, "name": name,
            "answers": answers or [answer("10", 1), answer("1", 2), answer("2b", 4.5)]}


def succeeded(batch: PlannedBatch, *, simulated: bool = False,
              overrides: dict[str, dict[str, Any]] | None = None, tokens: int = 1000) -> StoredBatch:
    overrides = overrides or {}
    students = {s.ref: overrides.get(s.ref, graded(s.ref)) for s in batch.students}
    return StoredBatch(status="succeeded",
                       result={"students": students, "failures": {}, "simulated": simulated,
                               "model_calls": 1},
                       error_type=None, error_detail=None,
                       usage=Usage(replies=1, prompt_tokens=tokens, cached_tokens=tokens // 4,
                                   completion_tokens=200))


def failed(batch: PlannedBatch, *, reason: str = "the model refused: no",
           error_type: str = "RefusalError", needs_review: bool = False,
           keep: set[str] | None = None) -> StoredBatch:
    keep = keep or set()
    return StoredBatch(
        status="failed",
        result={
            "students": {r: graded(r) for r in batch.refs if r in keep},
            "failures": {r: {"reason": reason, "error_type": error_type,
                             "needs_review": needs_review}
                         for r in batch.refs if r not in keep},
            "simulated": False,
            "model_calls": 3,
        },
        error_type=error_type, error_detail=reason,
        usage=Usage(replies=3, prompt_tokens=3000, completion_tokens=100),
    )


def reduce(request: GradingRequest, plan: BatchPlan, stored: dict[str, StoredBatch],
           policy: GradingPolicy | None = None) -> NativePayload:
    payload = reduce_results(request, plan, stored, policy or GradingPolicy())
    # Whatever happened, the payload is valid and accounts for every student, in request order.
    NativePayload.model_validate(payload.model_dump())
    assert [s.ref for s in payload.students] == [s.ref for s in request.students]
    return payload


# --- all graded ---------------------------------------------------------------------------------


def test_all_graded_is_success_with_answers_in_question_order() -> None:
    request = make_request(4)
    plan = make_plan(request)
    assert len(plan.batches) == 2
    stored = {b.idempotency_key: succeeded(b, tokens=1000 + b.index) for b in plan.batches}
    payload = reduce(request, plan, stored)

    assert payload.status == "success"
    assert payload.assessment_id == "exam-9"
    assert payload.process_id == request.process_id()
    assert payload.failures == []
    for s, student in zip(payload.students, request.students, strict=True):
        assert s.status == "graded"
        assert s.image_ids == student.image_ids
        assert [a.question_number for a in s.answers] == ["1", "2b", "10"]
        assert [a.mark for a in s.answers] == [2, 4.5, 1]
        assert not s.needs_review
    summary = payload.summary
    assert (summary.students, summary.graded, summary.failed, summary.coverage) == (4, 4, 0, 1.0)
    assert (summary.batches, summary.batches_failed, summary.model_calls) == (2, 0, 2)
    assert (summary.prompt_tokens, summary.cached_tokens, summary.completion_tokens) == (
        2001, 500, 400)
    spec = request.spec
    expected_cost = ((2001 - 500) * spec.price_input_per_m + 500 * spec.price_cached_input_per_m
                     + 400 * spec.price_output_per_m) / 1e6
    assert summary.estimated_cost_usd == pytest.approx(expected_cost, abs=1e-6)
    assert summary.model == "gpt-4o"
    assert summary.simulated is False


def test_names_and_simulated_flag_are_carried() -> None:
    request = make_request(2)
    plan = make_plan(request)
    [batch] = plan.batches
    stored = {batch.idempotency_key: succeeded(
        batch, simulated=True,
        overrides={"S001": graded("S001", name={"first": "Ada", "last": "Lovelace"})})}
    payload = reduce(request, plan, stored)
    assert payload.students[0].name is not None
    assert (payload.students[0].name.first, payload.students[0].name.last) == ("Ada", "Lovelace")
    assert payload.students[1].name is None
    assert payload.summary.simulated is True


# --- failures -----------------------------------------------------------------------------------


def test_failed_batch_lists_its_students_with_the_reason() -> None:
    request = make_request(4)
    plan = make_plan(request)
    first, second = plan.batches
    stored = {first.idempotency_key: succeeded(first),
              second.idempotency_key: failed(second, reason="reply breaks the rules: S003 missing",
                                             error_type="ResponseRuleError")}
    payload = reduce(request, plan, stored)
    assert payload.status == "failed"  # min_coverage defaults to 1.0
    assert [(f.ref, f.reason, f.error_type) for f in payload.failures] == [
        ("S003", "reply breaks the rules: S003 missing", "ResponseRuleError"),
        ("S004", "reply breaks the rules: S003 missing", "ResponseRuleError"),
    ]
    assert [s.status for s in payload.students] == ["graded", "graded", "failed", "failed"]
    assert payload.students[2].answers == [] and payload.students[2].image_ids == ["img-3-0",
                                                                                   "img-3-1"]
    summary = payload.summary
    assert (summary.graded, summary.failed, summary.coverage, summary.batches_failed) == (
        2, 2, 0.5, 1)
    assert summary.model_calls == 4 and summary.prompt_tokens == 4000


@pytest.mark.parametrize(("min_coverage", "status"), [(0.5, "success"), (0.4, "success"),
                                                      (0.51, "failed"), (1.0, "failed")])
def test_min_coverage_decides_the_status(min_coverage: float, status: str) -> None:
    request = make_request(4)
    plan = make_plan(request)
    first, second = plan.batches
    stored = {first.idempotency_key: succeeded(first), second.idempotency_key: failed(second)}
    payload = reduce(request, plan, stored, GradingPolicy(min_coverage=min_coverage))
    assert payload.status == status
    assert payload.summary.min_coverage == min_coverage
    assert len(payload.failures) == 2  # failures are listed whatever the status


def test_partly_valid_batch_keeps_the_valid_students() -> None:
    request = make_request(2)
    plan = make_plan(request)
    [batch] = plan.batches
    stored = {batch.idempotency_key: failed(batch, keep={"S002"}, reason="S001: question 1 mark 9 "
                                            "outside 0..2.0", error_type="ResponseRuleError")}
    payload = reduce(request, plan, stored, GradingPolicy(min_coverage=0.5))
    assert [s.status for s in payload.students] == ["failed", "graded"]
    assert [f.ref for f in payload.failures] == ["S001"]
    assert payload.status == "success"
    assert payload.summary.batches_failed == 1


def test_batch_missing_from_the_store_is_not_graded() -> None:
    request = make_request(4)
    plan = make_plan(request)
    first, _ = plan.batches
    payload = reduce(request, plan, {first.idempotency_key: succeeded(first)})
    assert [(f.ref, f.error_type) for f in payload.failures] == [("S003", "NotGraded"),
                                                                ("S004", "NotGraded")]
    assert all("not graded" in f.reason for f in payload.failures)
    assert payload.summary.batches_failed == 1
    assert payload.summary.model_calls == 1


@pytest.mark.parametrize("status", ["pending", "running"])
def test_unfinished_batch_is_not_graded(status: str) -> None:
    request = make_request(2)
    plan = make_plan(request)
    [batch] = plan.batches
    stored = {batch.idempotency_key: StoredBatch(status, None, None, None)}
    payload = reduce(request, plan, stored)
    assert [f.error_type for f in payload.failures] == ["NotGraded", "NotGraded"]
    assert payload.status == "failed"


def test_failed_batch_without_per_student_result_uses_the_batch_error() -> None:
    request = make_request(2)
    plan = make_plan(request)
    [batch] = plan.batches
    stored = {batch.idempotency_key: StoredBatch("failed", None, "ProviderUnavailableError",
                                                 "HTTP 503 after 4 attempts", Usage(replies=4))}
    payload = reduce(request, plan, stored)
    assert [(f.ref, f.reason, f.error_type) for f in payload.failures] == [
        ("S001", "HTTP 503 after 4 attempts", "ProviderUnavailableError"),
        ("S002", "HTTP 503 after 4 attempts", "ProviderUnavailableError"),
    ]


def test_nothing_stored_at_all_fails_every_student() -> None:
    request = make_request(3)
    plan = make_plan(request)
    payload = reduce(request, plan, {})
    assert [s.status for s in payload.students] == ["failed"] * 3
    assert [f.ref for f in payload.failures] == ["S001", "S002", "S003"]
    assert payload.summary.coverage == 0.0 and payload.summary.graded == 0
    assert payload.summary.batches_failed == len(plan.batches) == 2
    assert payload.status == "failed"


# --- review flags -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("confidence", "status", "review"),
    [("high", "answered", False), ("medium", "answered", False), ("medium", "blank", False),
     ("low", "answered", True), ("high", "unreadable", True), ("low", "blank", True)],
)
def test_needs_review(confidence: str, status: str, review: bool) -> None:
    request = make_request(2)
    plan = make_plan(request)
    [batch] = plan.batches
    odd = graded("S002", answers=[answer("1", 0, confidence, status), answer("2b", 1),
                                  answer("10", 1)])
    payload = reduce(request, plan, {batch.idempotency_key: succeeded(batch,
                                                                      overrides={"S002": odd})})
    assert [s.needs_review for s in payload.students] == [False, review]
    assert payload.summary.needs_review == int(review)


def test_refused_student_needs_review() -> None:
    request = make_request(2)
    plan = make_plan(request)
    [batch] = plan.batches
    stored = {batch.idempotency_key: failed(batch, needs_review=True)}
    payload = reduce(request, plan, stored)
    assert [s.needs_review for s in payload.students] == [True, True]
    assert payload.summary.needs_review == 2


# --- no student is ever dropped -----------------------------------------------------------------

OUTCOMES = st.sampled_from(["missing", "succeeded", "failed", "partial", "running"])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 4), st.data())
def test_every_student_is_graded_or_failed_exactly_once(n: int, per_batch: int,
                                                        data: st.DataObject) -> None:
    request = make_request(n)
    plan = make_plan(request, per_batch)
    stored: dict[str, StoredBatch] = {}
    expect_graded: set[str] = set()
    for b in plan.batches:
        outcome = data.draw(OUTCOMES)
        if outcome == "succeeded":
            stored[b.idempotency_key] = succeeded(b)
            expect_graded |= set(b.refs)
        elif outcome in ("failed", "partial"):
            keep = set(data.draw(st.sets(st.sampled_from(b.refs)))) if outcome == "partial" else set()
            stored[b.idempotency_key] = failed(b, keep=keep)
            expect_graded |= keep
        elif outcome == "running":
            stored[b.idempotency_key] = StoredBatch("running", None, None, None)
    min_coverage = data.draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))
    payload = reduce(request, plan, stored, GradingPolicy(min_coverage=min_coverage))

    by_status = {s.ref: s.status for s in payload.students}
    assert {r for r, st_ in by_status.items() if st_ == "graded"} == expect_graded
    failed_refs = [f.ref for f in payload.failures]
    assert sorted(failed_refs) == sorted(r for r, st_ in by_status.items() if st_ == "failed")
    assert len(failed_refs) == len(set(failed_refs))
    assert all(f.reason and f.error_type for f in payload.failures)
    summary = payload.summary
    assert summary.graded + summary.failed == summary.students == n
    coverage = len(expect_graded) / n
    assert summary.coverage == pytest.approx(coverage, abs=1e-6)
    assert payload.status == ("success" if coverage >= min_coverage else "failed")
    assert summary.batches_failed == sum(
        1 for b in plan.batches
        if b.idempotency_key not in stored or stored[b.idempotency_key].status != "succeeded")


# --- legacy payload -----------------------------------------------------------------------------


def test_to_legacy_from_a_legacy_request() -> None:
    request = make_request(
        4, assessment_id="77", source_format="legacy", legacy=LegacyContext(77, 88, 99),
        model="gpt-4.1-mini", spec=get_model_spec("gpt-4.1-mini"))
    plan = make_plan(request)
    first, second = plan.batches
    stored = {
        first.idempotency_key: succeeded(first, overrides={
            "S001": graded("S001", name={"first": "Grace", "last": "Hopper"})}),
        second.idempotency_key: failed(second, reason="HTTP 503", error_type="ProviderUnavailableError"),
    }
    native = reduce(request, plan, stored)
    legacy = to_legacy(native, request)
    LegacyPayload.model_validate(legacy.model_dump())
    dumped = legacy.model_dump()
    assert (dumped["assessment_id"], dumped["assessment_settings_id"]) == (77, 88)
    assert dumped["status"] == "failed"
    assert dumped["process_id"] == native.process_id
    rows = dumped["data"]  # graded students only, as the old system sent
    assert [(r["first_name"], r["last_name"]) for r in rows] == [("Grace", "Hopper"), ("", "")]
    assert [r["image_ids"] for r in rows] == [s.image_ids for s in request.students[:2]]
    assert rows[0]["answers"] == [
        {"question_number": "1", "mark": 2.0, "feedback": "feedback 1"},
        {"question_number": "2b", "mark": 4.5, "feedback": "feedback 2b"},
        {"question_number": "10", "mark": 1.0, "feedback": "feedback 10"},
    ]
    assert [(f["ref"], f["reason"], f["error_type"]) for f in dumped["failures"]] == [
        ("S003", "HTTP 503", "ProviderUnavailableError"),
        ("S004", "HTTP 503", "ProviderUnavailableError")]
    # The legacy core fields are all there; qbq's extras ride alongside.
    for key in ("assessment_id", "assessment_settings_id", "status", "data"):
        assert key in dumped


def test_to_legacy_from_a_native_request_keeps_the_native_id() -> None:
    request = make_request(2)
    plan = make_plan(request)
    [batch] = plan.batches
    native = reduce(request, plan, {batch.idempotency_key: succeeded(batch, simulated=True)})
    legacy = to_legacy(native, request)
    assert legacy.assessment_id == "exam-9"
    assert legacy.assessment_settings_id is None
    assert legacy.status == "success"
    assert legacy.simulated is True
    assert [d.ref for d in legacy.data] == ["S001", "S002"]


def test_reduce_does_not_depend_on_unrelated_stored_batches() -> None:
    request = make_request(2)
    plan = make_plan(request)
    [batch] = plan.batches
    other = dataclasses.replace(batch, idempotency_key="f" * 64)
    stored = {batch.idempotency_key: succeeded(batch), other.idempotency_key: failed(other)}
    payload = reduce(request, plan, stored)
    assert payload.status == "success" and payload.summary.model_calls == 1
