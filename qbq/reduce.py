"""Reduce stored batch results into one validated payload (pure): every student graded or failed.

No student is dropped silently: a student whose batch never ran, failed, or whose reply was
invalid appears in `failures` with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from qbq.domain import GradingRequest
from qbq.payload import (
    LegacyAnswer,
    LegacyPayload,
    LegacyStudent,
    NativePayload,
    PayloadAnswer,
    PayloadFailure,
    PayloadStudent,
    RunSummary,
    StudentName,
)
from qbq.planning import BatchPlan
from qbq.settings import GradingPolicy

__all__ = ["StoredBatch", "reduce_results", "to_legacy"]


@dataclass(frozen=True)
class StoredBatch:
    """A batch as the store holds it, reduced to what `reduce_results` reads."""

    status: str
    result: Mapping[str, Any] | None
    error_type: str | None
    error_detail: str | None
    model_calls: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


def _needs_review(answers: list[PayloadAnswer]) -> bool:
    return any(a.confidence == "low" or a.status == "unreadable" for a in answers)


def reduce_results(request: GradingRequest, plan: BatchPlan, batches: Mapping[str, StoredBatch],
                   policy: GradingPolicy) -> NativePayload:
    students: list[PayloadStudent] = []
    failures: list[PayloadFailure] = []
    order = {q.question_number: i for i, q in enumerate(request.questions)}
    calls = prompt = cached = completion = 0
    simulated = False
    cost_in, cost_cached, cost_out = plan.cost_per_m
    for batch in plan.batches:
        stored = batches.get(batch.idempotency_key)
        result = (stored.result if stored else None) or {}
        graded: Mapping[str, Any] = result.get("students", {})
        failed: Mapping[str, Any] = result.get("failures", {})
        if stored is not None:
            calls += stored.model_calls
            prompt += stored.prompt_tokens
            cached += stored.cached_tokens
            completion += stored.completion_tokens
            simulated = simulated or bool(result.get("simulated"))
        for student in batch.students:
            reply = graded.get(student.ref)
            if reply is not None:
                answers = sorted(
                    (PayloadAnswer.model_validate({k: a[k] for k in PayloadAnswer.model_fields})
                     for a in reply["answers"]),
                    key=lambda a: order[a.question_number],
                )
                name = StudentName.model_validate(reply["name"]) if reply.get("name") else None
                students.append(PayloadStudent(ref=student.ref, image_ids=student.image_ids,
                                               status="graded", needs_review=_needs_review(answers),
                                               name=name, answers=answers))
                continue
            reason, error_type, review = _failure_reason(stored, failed.get(student.ref))
            failures.append(PayloadFailure(ref=student.ref, reason=reason, error_type=error_type))
            students.append(PayloadStudent(ref=student.ref, image_ids=student.image_ids,
                                           status="failed", needs_review=review, answers=[]))
    _add_intake_failures(request, students, failures)
    n = len(students)
    n_graded = n - len(failures)
    coverage = n_graded / n if n else 0.0
    summary = RunSummary(
        model=request.model,
        students=n,
        graded=n_graded,
        failed=len(failures),
        needs_review=sum(1 for s in students if s.needs_review),
        coverage=round(coverage, 6),
        min_coverage=policy.min_coverage,
        batches=len(plan.batches),
        batches_failed=sum(
            1 for b in plan.batches
            if (s := batches.get(b.idempotency_key)) is None or s.status != "succeeded"
        ),
        model_calls=calls,
        prompt_tokens=prompt,
        cached_tokens=cached,
        completion_tokens=completion,
        estimated_cost_usd=round(
            ((prompt - cached) * cost_in + cached * cost_cached + completion * cost_out) / 1e6, 6
        ),
        simulated=simulated,
    )
    status: Literal["success", "failed"] = (
        "success" if n and coverage >= policy.min_coverage else "failed"
    )
    return NativePayload(assessment_id=request.assessment_id, process_id=plan.process_id,
                         status=status, students=students, failures=failures, summary=summary)


def _add_intake_failures(request: GradingRequest, students: list[PayloadStudent],
                         failures: list[PayloadFailure]) -> None:
    """Students that failed at intake (never planned), put in request order among the rest."""
    for student in request.students:
        failure = student.intake_failure
        if failure is not None:
            failures.append(PayloadFailure(ref=student.ref, reason=failure.reason,
                                           error_type=failure.error_type))
            students.append(PayloadStudent(ref=student.ref, image_ids=student.image_ids,
                                           status="failed", needs_review=False, answers=[]))
    order = {s.ref: i for i, s in enumerate(request.students)}
    students.sort(key=lambda s: order[s.ref])
    failures.sort(key=lambda f: order[f.ref])


def _failure_reason(stored: StoredBatch | None,
                    failure: Mapping[str, Any] | None) -> tuple[str, str, bool]:
    if failure is not None:
        return str(failure["reason"]), str(failure["error_type"]), bool(failure.get("needs_review"))
    if stored is None or stored.status in ("pending", "running"):
        return "the batch was not graded in this run", "NotGraded", False
    return (stored.error_detail or "the batch failed", stored.error_type or "GradingFailedError",
            False)


def to_legacy(payload: NativePayload, request: GradingRequest) -> LegacyPayload:
    """The payload in the replaced system's shape (unknown extra fields are ignored there)."""
    reasons = {f.ref: f.reason for f in payload.failures}
    data = [
        LegacyStudent(
            first_name=s.name.first if s.name else "",
            last_name=s.name.last if s.name else "",
            image_ids=s.image_ids,
            answers=[LegacyAnswer(question_number=a.question_number, mark=a.mark,
                                  feedback=a.feedback) for a in s.answers],
            ref=s.ref,
            status=s.status,
            failure_reason=reasons.get(s.ref),
        )
        for s in payload.students
    ]
    legacy = request.legacy
    return LegacyPayload(
        assessment_id=legacy.assessment_id if legacy else payload.assessment_id,
        assessment_settings_id=legacy.assessment_settings_id if legacy else None,
        status=payload.status,
        data=data,
        process_id=payload.process_id,
        simulated=payload.summary.simulated,
    )
