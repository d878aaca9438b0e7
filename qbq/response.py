"""The model's reply for one batch: parse it strictly and check it against the batch's rules."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from qbq.errors import (
    RefusalError,
    ResponseRuleError,
    ResponseSchemaError,
    ResponseShapeError,
    TruncatedResponseError,
)

__all__ = ["AnswerOut", "CheckedReply", "GradingReply", "NameOut", "StudentOut", "check_reply",
           "parse_reply", "rule_error"]

_STRICT = ConfigDict(extra="forbid")


class NameOut(BaseModel):
    model_config = _STRICT
    first: str
    last: str


class AnswerOut(BaseModel):
    model_config = _STRICT
    question_number: str
    mark: float
    feedback: str
    confidence: Literal["low", "medium", "high"]
    status: Literal["answered", "blank", "unreadable"]


class StudentOut(BaseModel):
    model_config = _STRICT
    ref: str
    name: NameOut | None
    answers: list[AnswerOut]


class GradingReply(BaseModel):
    model_config = _STRICT
    students: list[StudentOut]


def parse_reply(content: str | None, *, finish_reason: str | None,
                refusal: str | None) -> GradingReply:
    """Turn the reply text into a `GradingReply` or raise the precise `ResponseError`."""
    if refusal:
        raise RefusalError(f"the model refused: {refusal[:200]}", body=refusal)
    if finish_reason == "length":
        raise TruncatedResponseError("the reply was cut off at max_completion_tokens",
                                     body=content)
    if not content:
        raise ResponseShapeError(f"empty reply (finish_reason={finish_reason!r})", body=content)
    try:
        return GradingReply.model_validate_json(content)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            # Cut JSON under finish_reason "stop" happens too: treat it as truncation.
            if _is_cut_json(content):
                raise TruncatedResponseError("the reply JSON is cut off", body=content) from exc
            raise ResponseShapeError("the reply is not JSON", body=content) from exc
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise ResponseSchemaError(f"the reply breaks the schema: {problems}",
                                  body=content) from exc


def _is_cut_json(text: str) -> bool:
    """An object that opens but never closes: it ends inside a string or with brackets open.

    The last character cannot tell: a reply cut just after an inner object ends with "}", and
    complete JSON followed by chatter does not; so the brackets outside strings are tracked.
    """
    text = text.strip()
    if not text.startswith("{"):
        return False
    expected: list[str] = []
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            expected.append("}" if ch == "{" else "]")
        elif ch in "}]" and (not expected or expected.pop() != ch or not expected):
            return False  # closed out of turn, or the top-level object is complete
    return in_string or bool(expected)


@dataclass(frozen=True)
class CheckedReply:
    """The students whose answers passed every rule; `problems` explains the rest."""

    valid: dict[str, StudentOut]
    problems: dict[str, list[str]]


def check_reply(reply: GradingReply, refs: Sequence[str],
                max_marks: Mapping[str, float]) -> CheckedReply:
    """Every expected student exactly once, every question once, 0 ≤ mark ≤ max_mark."""
    problems: dict[str, list[str]] = {}
    expected = set(refs)
    counts = Counter(s.ref for s in reply.students)
    for ref in refs:
        if counts[ref] == 0:
            problems.setdefault(ref, []).append(f"student {ref} missing from the reply")
        elif counts[ref] > 1:
            problems.setdefault(ref, []).append(f"student {ref} appears {counts[ref]} times")
    unknown = sorted(r for r in counts if r not in expected)
    valid: dict[str, StudentOut] = {}
    for student in reply.students:
        if student.ref not in expected or counts[student.ref] != 1:
            continue
        issues = _answer_problems(student, max_marks)
        if issues:
            problems[student.ref] = issues
        else:
            valid[student.ref] = student
    if unknown:
        # Not one of ours: it cannot be kept, and it says nothing about the valid students.
        problems.setdefault(ResponseRuleError.GENERAL, []).append(
            f"unknown students in the reply: {unknown}")
    return CheckedReply(valid, problems)


def _answer_problems(student: StudentOut, max_marks: Mapping[str, float]) -> list[str]:
    issues = []
    counts = Counter(a.question_number for a in student.answers)
    for qnum in max_marks:
        if counts[qnum] != 1:
            issues.append(f"{student.ref}: question {qnum} answered {counts[qnum]} times")
    for qnum in sorted(set(counts) - set(max_marks)):
        issues.append(f"{student.ref}: unknown question {qnum}")
    for a in student.answers:
        top = max_marks.get(a.question_number)
        if top is not None and not 0 <= a.mark <= top:
            issues.append(f"{student.ref}: question {a.question_number} mark {a.mark} "
                          f"outside 0..{top}")
    return issues


def rule_error(checked: CheckedReply, body: str | None) -> ResponseRuleError | None:
    """The reply's broken rules as one error (per student ref), or None when it broke none."""
    if not checked.problems:
        return None
    return ResponseRuleError(checked.problems, body=body)
