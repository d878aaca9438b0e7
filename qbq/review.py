"""The one rule for what needs a person: used by the payload, the metrics and `qbq review`.

An answer needs review when the model was not confident (`confidence` "low") or could not read
it (`status` "unreadable"). A blank answer does not: the model saw nothing written and gave 0
with its usual confidence; if it is unsure whether a page is blank it says "low". A student
who was not graded needs review when grading flagged it (a refusal: the model declined, so a
rerun will not help); other failures (an outage, an exhausted budget) are fixed by a rerun and
are listed as failures, not review items.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["REVIEW_CONFIDENCE", "REVIEW_STATUS", "answer_needs_review", "answers_need_review",
           "review_reason"]

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
