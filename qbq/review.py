"""The one rule for what needs a person: used by the payload, the metrics and `qbq review`.

An answer needs review when the model was not confident (`confidence` "low") or could not read
it (`status` "unreadable"). A blank answer does not: the model saw nothing written and gave 0
with its usual confidence; if it is unsure whether a page is blank it says "low". The payload
flags a student who was not graded (`needs_review`) when a rerun will not help (the model
declined, the provider refused a page); other failures (an outage, an exhausted budget, an
expired link) may be fixed by a rerun.

The review queue (`review_items`, shown by `qbq review`) is read off the payload: every answer
that needs review, every graded student the payload flags without a flagged answer (e.g. a
legacy short last group), and every student not graded — whatever the cause, a person has to
grade it or fix its pages and rerun.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qbq.domain import GradingRequest
    from qbq.payload import NativePayload

__all__ = ["REVIEW_CONFIDENCE", "REVIEW_STATUS", "answer_needs_review", "answers_need_review",
           "review_items", "review_reason"]

#: Confidence values that send an answer to review.
REVIEW_CONFIDENCE = frozenset({"low"})
#: Answer statuses that send an answer to review.
REVIEW_STATUS = frozenset({"unreadable"})


def answer_needs_review(confidence: str | None, status: str | None) -> bool:
    """Whether one answer needs a person (see the module docstring)."""
    return confidence in REVIEW_CONFIDENCE or status in REVIEW_STATUS


def answers_need_review(answers: Iterable[tuple[str | None, str | None]]) -> bool:
    """Whether any of a graded student's `(confidence, status)` pairs needs a person."""
    return any(answer_needs_review(confidence, status) for confidence, status in answers)


def review_reason(confidence: str | None, status: str | None) -> str:
    """Why an answer needs review, in words ("unreadable", "low confidence")."""
    if status in REVIEW_STATUS:
        return str(status)
    return f"{confidence} confidence"


#: The question a whole-student row of the review queue names.
ALL_QUESTIONS = "all"


def review_items(payload: NativePayload, request: GradingRequest) -> list[dict[str, Any]]:
    """The review queue of a run, in request order: rows of `ref`, `question_number`, `mark`,
    `max_mark` (the question's, or the paper's total for a whole student, question "all"),
    `confidence`, `status` and `reason` (in full)."""
    max_marks = request.max_marks
    total = sum(max_marks.values())
    notes = {s.ref: s.review_note for s in request.students}
    failures = {f.ref: f for f in payload.failures}
    items: list[dict[str, Any]] = []

    def whole(ref: str, mark: float | None, reason: str) -> dict[str, Any]:
        return {"ref": ref, "question_number": ALL_QUESTIONS, "mark": mark, "max_mark": total,
                "confidence": None, "status": None, "reason": reason}

    for student in payload.students:
        if student.status != "graded":
            failure = failures.get(student.ref)
            why = f"not graded ({failure.error_type}): {failure.reason}" if failure else \
                "not graded"
            items.append(whole(student.ref, None, why))
            continue
        flagged = [a for a in student.answers if answer_needs_review(a.confidence, a.status)]
        items.extend({"ref": student.ref, "question_number": a.question_number, "mark": a.mark,
                      "max_mark": max_marks.get(a.question_number), "confidence": a.confidence,
                      "status": a.status, "reason": review_reason(a.confidence, a.status)}
                     for a in flagged)
        if student.needs_review and not flagged:
            items.append(whole(student.ref, sum(a.mark for a in student.answers),
                               notes.get(student.ref) or "flagged for review"))
    return items
