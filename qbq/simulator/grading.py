"""The simulated examiner: reads qbq's prompt protocol and marks pages from their embedded truth.

Marks come from each student's `qbq:truth` PNG chunk where present, else from a hash of the
student's page bytes, so the same pages always get the same marks.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from qbq.prompts import MODEL_ANSWERS_LABEL, QUESTIONS_LABEL, STUDENT_LABEL
from qbq.simulator.images import read_truth  # the PNG chunk, else the page's QR code

__all__ = [
    "FEEDBACK_PREFIX",
    "ParsedPrompt",
    "SimQuestion",
    "conform",
    "dump_content",
    "fit_answer",
    "grade",
    "parse_prompt",
    "reply_content",
    "simulated_mark",
]

FEEDBACK_PREFIX = "[simulated] "


@dataclass(frozen=True)
class SimQuestion:
    question_number: str
    max_mark: float


@dataclass
class ParsedPrompt:
    """What the simulator understood of a qbq prompt: questions and each student's page URLs."""

    questions: list[SimQuestion] = field(default_factory=list)
    model_answer_urls: list[str] = field(default_factory=list)
    #: ref → page URLs, in the order the student labels appear.
    students: dict[str, list[str]] = field(default_factory=dict)


def _parse_questions(text: str) -> list[SimQuestion]:
    try:
        raw = json.loads(text[len(QUESTIONS_LABEL) :])
    except json.JSONDecodeError:
        return []
    questions: list[SimQuestion] = []
    if not isinstance(raw, list):
        return questions
    for item in raw:
        if not isinstance(item, dict) or "question_number" not in item:
            continue
        max_mark = item.get("max_mark")
        mark = float(max_mark) if _is_number(max_mark) else 0.0
        questions.append(SimQuestion(str(item["question_number"]), mark))
    return questions


def parse_prompt(messages: Sequence[Mapping[str, Any]]) -> ParsedPrompt:
    """Questions, model-answer pages and students of a prompt built by `qbq.prompts`.

    Images belong to the most recent label before them: a student label, the model-answer
    label, or none (other text parts end a student's pages).
    """
    parsed = ParsedPrompt()
    for message in messages:
        if message.get("role") != "user" or not isinstance(message.get("content"), list):
            continue
        current: list[str] | None = None
        for part in message["content"]:
            if part.get("type") == "text":
                text = part["text"]
                if text.startswith(QUESTIONS_LABEL) and not parsed.questions:
                    parsed.questions = _parse_questions(text)
                    current = None
                elif text == MODEL_ANSWERS_LABEL:
                    current = parsed.model_answer_urls
                elif text.startswith(STUDENT_LABEL):
                    ref = text[len(STUDENT_LABEL) :]
                    current = parsed.students.setdefault(ref, [])
                else:
                    current = None
            elif part.get("type") == "image_url" and current is not None:
                current.append(part["image_url"]["url"])
    return parsed


def simulated_mark(pages: Sequence[bytes], question_number: str, max_mark: float) -> float:
    """A deterministic mark for pages without truth: a multiple of 0.5 in [0, max_mark].

    Taken from sha256 of the student's page bytes (in order) followed by the question number.
    """
    digest = hashlib.sha256()
    for page in pages:
        digest.update(page)
    digest.update(question_number.encode("utf-8"))
    steps = max(0, math.floor(max_mark * 2))
    return (int.from_bytes(digest.digest()[:8], "big") % (steps + 1)) / 2


def _truth_of(pages: Sequence[bytes]) -> tuple[dict[str, Any], dict[str, str] | None]:
    """Marks and name from the pages' truth chunks; earlier pages win."""
    marks: dict[str, Any] = {}
    name: dict[str, str] | None = None
    for page in pages:
        truth = read_truth(page)
        if truth is None:
            continue
        page_marks = truth.get("marks")
        if isinstance(page_marks, dict):
            for qnum, mark in page_marks.items():
                marks.setdefault(str(qnum), mark)
        page_name = truth.get("name")
        if name is None and isinstance(page_name, dict):
            name = {
                "first": str(page_name.get("first") or ""),
                "last": str(page_name.get("last") or ""),
            }
    return marks, name


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def grade(prompt: ParsedPrompt, page_bytes: Callable[[str], bytes]) -> dict[str, Any]:
    """The simulated grading of every student in label order, as `{"students": [...]}`."""
    students: list[dict[str, Any]] = []
    for ref, urls in prompt.students.items():
        pages = [page_bytes(url) for url in urls]
        truth_marks, name = _truth_of(pages)
        answers: list[dict[str, Any]] = []
        for question in prompt.questions:
            qnum = question.question_number
            truth_mark = truth_marks.get(qnum)
            if _is_number(truth_mark):
                mark = truth_mark
                source, confidence = "ground truth", "high"
            else:
                mark = simulated_mark(pages, qnum, question.max_mark)
                source, confidence = "page hash", "medium"
            answers.append(
                {
                    "question_number": qnum,
                    "mark": mark,
                    "feedback": f"{FEEDBACK_PREFIX}Question {qnum}: {mark:g} of "
                    f"{question.max_mark:g} marks (from the {source}).",
                    "confidence": confidence,
                    "status": "answered",
                }
            )
        students.append({"ref": ref, "name": name, "answers": answers})
    return {"students": students}


# --- fitting a reply to the requested schema --------------------------------------------------


def _resolve(schema: Any, root: Mapping[str, Any]) -> Any:
    seen = 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < 32:
        ref: str = schema["$ref"]
        target: Any = root
        if ref != "#":
            if not ref.startswith("#/"):
                return {}
            for key in ref[2:].split("/"):
                target = target.get(key) if isinstance(target, dict) else None
        schema = target if isinstance(target, dict) else {}
        seen += 1
    return schema


def _types(schema: Mapping[str, Any]) -> list[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [k for k in kind if isinstance(k, str)]
    if "properties" in schema:
        return ["object"]
    if "items" in schema:
        return ["array"]
    return []


def _fits_type(value: Any, kind: str) -> bool:
    checks: dict[str, Callable[[Any], bool]] = {
        "null": lambda v: v is None,
        "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: _is_number(v) and float(v).is_integer(),
        "number": _is_number,
        "string": lambda v: isinstance(v, str),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
    }
    check = checks.get(kind)
    return check(value) if check is not None else True


def _default(kind: str) -> Any:
    return {
        "null": None,
        "boolean": False,
        "integer": 0,
        "number": 0,
        "string": FEEDBACK_PREFIX.strip(),
        "array": [],
        "object": {},
    }.get(kind)


def conform(value: Any, schema: Any, root: Mapping[str, Any] | None = None) -> Any:
    """`value` fitted to `schema`: the schema's keys only, enums and types respected.

    Parts that do not fit are replaced by a plain default (first enum value, 0, "[simulated]",
    empty array, null), so the result is always valid for a strict schema.
    """
    if root is None:
        root = schema if isinstance(schema, dict) else {}
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return value
    if "const" in schema:
        return schema["const"]
    any_of = schema.get("anyOf")
    if isinstance(any_of, list) and any_of:
        branches = [_resolve(b, root) for b in any_of]
        for branch in branches:
            if isinstance(branch, dict) and any(_fits_type(value, k) for k in _types(branch)):
                return conform(value, branch, root)
        return conform(value, branches[0], root)
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return value if value in enum else enum[0]
    kinds = _types(schema)
    if not kinds:
        return value
    kind = next((k for k in kinds if _fits_type(value, k)), None)
    if kind is None:
        kind = next((k for k in kinds if k != "null"), kinds[0])
        value = _default(kind)
    if kind == "object":
        source = value if isinstance(value, dict) else {}
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            return {}
        required = schema.get("required", list(properties))
        return {
            key: conform(source.get(key), sub, root)
            for key, sub in properties.items()
            if key in source or key in required
        }
    if kind == "array":
        items = schema.get("items")
        return [conform(v, items, root) for v in value] if items is not None else list(value)
    if kind == "integer":
        return int(value)
    return value


def fit_answer(answer: dict[str, Any], response_format: Mapping[str, Any] | None) -> Any:
    """`answer` fitted to the requested json_schema, if one was asked; else unchanged."""
    kind = response_format.get("type") if response_format is not None else "text"
    if kind == "json_schema" and response_format is not None:
        return conform(answer, response_format["json_schema"]["schema"])
    return answer


def dump_content(answer: Any, response_format: Mapping[str, Any] | None) -> str:
    """`answer` as compact JSON; without a JSON response format the text starts "[simulated] "."""
    kind = response_format.get("type") if response_format is not None else "text"
    dumped = json.dumps(answer, ensure_ascii=False, separators=(",", ":"))
    return dumped if kind in ("json_schema", "json_object") else FEEDBACK_PREFIX + dumped


def reply_content(answer: dict[str, Any], response_format: Mapping[str, Any] | None) -> str:
    """The message content: `answer` as compact JSON, fitted to a json_schema if one was asked.

    Without a JSON response format the text starts with "[simulated] ".
    """
    return dump_content(fit_answer(answer, response_format), response_format)
