"""Reduce stored batch results into one validated payload (pure): every student graded or failed.

No student is dropped silently: a student whose batch never ran, failed, or whose reply was
invalid appears in `failures` with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from qbq.cost import result_mode, usage_by_mode, usage_cost_usd
from qbq.domain import GradingRequest, Student
from qbq.payload import (
    LegacyAnswer,
    LegacyFailure,
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
from qbq.review import answers_need_review
from qbq.settings import GradingPolicy
from qbq.usage import Usage

__all__ = ["StoredBatch", "reduce_results", "to_legacy"]


@dataclass(frozen=True)
class StoredBatch:
    """A batch as the store holds it, reduced to what `reduce_results` reads."""

    status: str
    result: Mapping[str, Any] | None
    error_type: str | None
    error_detail: str | None
    usage: Usage = field(default_factory=Usage)


def reduce_results(request: GradingRequest, plan: BatchPlan, batches: Mapping[str, StoredBatch],
                   policy: GradingPolicy) -> NativePayload:
    """The payload of a run: every planned student graded or failed with its reason, in plan
    order, and the run summary (usage summed over the stored batches)."""
    students: list[PayloadStudent] = []
    failures: list[PayloadFailure] = []
    order = {q.question_number: i for i, q in enumerate(request.questions)}
    for batch in plan.batches:
        stored = batches.get(batch.idempotency_key)
        result = (stored.result if stored else None) or {}
        graded: Mapping[str, Any] = result.get("students", {})
        failed: Mapping[str, Any] = result.get("failures", {})
        for student in batch.students:
            reply = graded.get(student.ref)
            if reply is not None:
                students.append(_graded_student(student, reply, order))
                continue
            reason, error_type, review = _failure_reason(stored, failed.get(student.ref))
            failures.append(PayloadFailure(ref=student.ref, reason=reason, error_type=error_type))
            students.append(PayloadStudent(ref=student.ref, image_ids=student.image_ids,
                                           status="failed", needs_review=review, answers=[]))
    _add_intake_failures(request, students, failures)
    summary = _summary(request, plan, batches, policy, students, failures)
    coverage = (len(students) - len(failures)) / len(students) if students else 0.0
    status: Literal["success", "failed"] = (
        "success" if students and coverage >= policy.min_coverage else "failed"
    )
    return NativePayload(assessment_id=request.assessment_id, process_id=plan.process_id,
                         status=status, students=students, failures=failures, summary=summary)


def _graded_student(student: Student, reply: Mapping[str, Any],
                    order: Mapping[str, int]) -> PayloadStudent:
    answers = sorted(
        (PayloadAnswer.model_validate({k: a[k] for k in PayloadAnswer.model_fields})
         for a in reply["answers"]),
        key=lambda a: order[a.question_number],
    )
    name = StudentName.model_validate(reply["name"]) if reply.get("name") else None
    return PayloadStudent(ref=student.ref, image_ids=student.image_ids, status="graded",
                          needs_review=student.review_note is not None
                          or answers_need_review((a.confidence, a.status) for a in answers),
                          name=name, answers=answers)


def _summary(request: GradingRequest, plan: BatchPlan, batches: Mapping[str, StoredBatch],
             policy: GradingPolicy, students: list[PayloadStudent],
             failures: list[PayloadFailure]) -> RunSummary:
    stored = [s for b in plan.batches if (s := batches.get(b.idempotency_key)) is not None]
    usage = sum((s.usage for s in stored), Usage())
    n, n_graded = len(students), len(students) - len(failures)
    return RunSummary(
        model=request.model,
        students=n,
        graded=n_graded,
        failed=len(failures),
        needs_review=sum(1 for s in students if s.needs_review),
        coverage=round(n_graded / n if n else 0.0, 6),
        min_coverage=policy.min_coverage,
        batches=len(plan.batches),
        batches_failed=len(plan.batches) - sum(1 for s in stored if s.status == "succeeded"),
        model_calls=usage.replies,
        prompt_tokens=usage.prompt_tokens,
        cached_tokens=usage.cached_tokens,
        completion_tokens=usage.completion_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        estimated_cost_usd=round(_cost_usd(plan, usage, stored), 6),
        mode=policy.mode,
        simulated=any(bool((s.result or {}).get("simulated")) for s in stored),
    )


def _cost_usd(plan: BatchPlan, usage: Usage, stored: list[StoredBatch]) -> float:
    """What the stored batches' replies cost, each at the prices of the mode it ran in."""
    if plan.spec is None:
        cost_in, cost_cached, cost_out = plan.cost_per_m
        return ((usage.prompt_tokens - usage.cached_tokens) * cost_in
                + usage.cached_tokens * cost_cached + usage.completion_tokens * cost_out) / 1e6
    by_mode = usage_by_mode((result_mode(s.result), s.usage) for s in stored)
    return sum(usage_cost_usd(plan.spec, used, mode) for mode, used in by_mode.items())


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
    """The payload in the replaced system's shape (unknown extra fields are ignored there):
    `data` holds the graded students only, `failures` the others; image ids are integers again
    for a legacy request (its ids were integers)."""

    def ids(image_ids: list[str]) -> list[int] | list[str]:
        legacy_ids = request.source_format == "legacy" and all(i.isdigit() for i in image_ids)
        return [int(i) for i in image_ids] if legacy_ids else image_ids

    by_ref = {s.ref: s for s in payload.students}
    data = [
        LegacyStudent(
            first_name=s.name.first if s.name else "",
            last_name=s.name.last if s.name else "",
            image_ids=ids(s.image_ids),
            answers=[LegacyAnswer(question_number=a.question_number, mark=a.mark,
                                  feedback=a.feedback) for a in s.answers],
            ref=s.ref,
            needs_review=s.needs_review,
        )
        for s in payload.students if s.status == "graded"
    ]
    failures = [LegacyFailure(ref=f.ref, image_ids=ids(by_ref[f.ref].image_ids), reason=f.reason,
                              error_type=f.error_type) for f in payload.failures]
    legacy = request.legacy
    return LegacyPayload(
        assessment_id=legacy.assessment_id if legacy else payload.assessment_id,
        assessment_settings_id=legacy.assessment_settings_id if legacy else None,
        status=payload.status,
        data=data,
        failures=failures,
        process_id=payload.process_id,
        simulated=payload.summary.simulated,
    )
