"""The messages and strict JSON schema qbq sends for one batch (the wire protocol with the model).

The stable part comes first (schema, system, questions and rubric, model answers) and is
byte-identical in every batch of an assessment, so OpenAI's prompt cache serves it to every batch
after the first (https://platform.openai.com/docs/guides/prompt-caching); each student's pages
follow a text label carrying the student's ref. The schema does not pin the refs: they are
checked after the reply (`qbq.response.check_reply`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "MODEL_ANSWERS_LABEL",
    "PROMPT_VERSION",
    "QUESTIONS_LABEL",
    "STUDENT_LABEL",
    "PromptQuestion",
    "StudentPages",
    "build_messages",
    "correction_text",
    "image_owner",
    "prompt_cache_key",
    "questions_text",
    "response_format",
    "response_schema",
    "student_label",
    "student_refs",
]

#: Bumped whenever the messages or the schema change meaning; part of every idempotency key.
PROMPT_VERSION = "qbq-prompt-1/schema-2"

QUESTIONS_LABEL = "Assessment questions (JSON): "
MODEL_ANSWERS_LABEL = "Model answer pages follow (the expected answers, not a student's work)."
STUDENTS_LABEL = (
    "Student answer pages follow. Each student's pages come after a line 'Student ref: <ref>'; "
    "grade every student and every question exactly once."
)
STUDENT_LABEL = "Student ref: "

SYSTEM_PROMPT = (
    "You are a careful, fair examiner grading scanned handwritten answers question by question. "
    "For each student and each question give a mark between 0 and the question's max_mark "
    "(half marks allowed), short feedback addressed to the student (at most 40 words), your "
    "confidence (low, medium or high) and the answer's status: answered, blank (nothing written) "
    "or unreadable. Use status blank or unreadable with mark 0. If a name is written on the "
    "pages, report it as name.first and name.last; otherwise name is null. Grade only what is "
    "written on the student's own pages. Answer with JSON that follows the given schema."
)

#: Longest part of the rejection reason quoted back to the model in a re-ask (characters).
CORRECTION_QUOTE_MAX = 1500

Detail = Literal["low", "high", "auto"]


def correction_text(rejection: str) -> str:
    """The re-ask message sent after an invalid reply; `rejection` says what was wrong."""
    return (f"Your previous answer was rejected: {rejection[:CORRECTION_QUOTE_MAX]}. Answer again "
            "with JSON that follows the schema, with every listed student exactly once and every "
            "question exactly once, each mark between 0 and the question's max_mark.")


@dataclass(frozen=True)
class PromptQuestion:
    question_number: str
    max_mark: float
    rubric: str | None


@dataclass(frozen=True)
class StudentPages:
    """One student's ref and the image URLs (http(s) or data URIs) of their ordered pages."""

    ref: str
    image_urls: Sequence[str]


def questions_text(questions: Sequence[PromptQuestion]) -> str:
    body = [
        {"question_number": q.question_number, "max_mark": q.max_mark, "rubric": q.rubric}
        for q in questions
    ]
    return QUESTIONS_LABEL + json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def student_label(ref: str) -> str:
    return STUDENT_LABEL + ref


def student_refs(messages: Sequence[dict[str, Any]]) -> list[str]:
    """The refs of the students a message list asks about, in order (from their labels)."""
    refs: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            refs.extend(part["text"][len(STUDENT_LABEL):] for part in content
                        if isinstance(part, dict) and part.get("type") == "text"
                        and str(part.get("text", "")).startswith(STUDENT_LABEL))
    return refs


_PART_PARAM = re.compile(r"^messages\[(\d+)\]\.content\[(\d+)\]")


def image_owner(messages: Sequence[dict[str, Any]], param: str | None) -> tuple[str, int] | None:
    """The student ref and the 0-based page index of the image a provider error's `param` names
    (e.g. "messages[2].content[5].image_url.url"), or None when it names no student's image."""
    found = _PART_PARAM.match(param or "")
    if found is None:
        return None
    i, j = int(found[1]), int(found[2])
    content = messages[i].get("content") if i < len(messages) else None
    if not isinstance(content, list) or j >= len(content):
        return None
    if not (isinstance(content[j], dict) and content[j].get("type") == "image_url"):
        return None
    ref: str | None = None
    page = 0
    for part in content[:j]:
        text = str(part.get("text", "")) if isinstance(part, dict) else ""
        if isinstance(part, dict) and part.get("type") == "text" and text.startswith(STUDENT_LABEL):
            ref, page = text[len(STUDENT_LABEL):], 0
        elif isinstance(part, dict) and part.get("type") == "image_url" and ref is not None:
            page += 1
    return (ref, page) if ref is not None else None


def _image_part(url: str, detail: Detail) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, "detail": detail}}


def build_messages(
    *,
    instructions: str | None,
    questions: Sequence[PromptQuestion],
    model_answer_urls: Sequence[str],
    students: Sequence[StudentPages],
    detail: Detail = "high",
    correction: str | None = None,
) -> list[dict[str, Any]]:
    """Chat messages for one batch; `correction` asks again after an invalid reply."""
    system = SYSTEM_PROMPT if not instructions else f"{SYSTEM_PROMPT}\n\nInstructions: {instructions}"
    stable: list[dict[str, Any]] = [{"type": "text", "text": questions_text(questions)}]
    if model_answer_urls:
        stable.append({"type": "text", "text": MODEL_ANSWERS_LABEL})
        stable.extend(_image_part(u, detail) for u in model_answer_urls)
    work: list[dict[str, Any]] = [{"type": "text", "text": STUDENTS_LABEL}]
    for student in students:
        work.append({"type": "text", "text": student_label(student.ref)})
        work.extend(_image_part(u, detail) for u in student.image_urls)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system},
        {"role": "user", "content": stable},
        {"role": "user", "content": work},
    ]
    if correction:
        messages.append({"role": "user", "content": correction})
    return messages


def prompt_cache_key(assessment_id: str, prompt_fingerprint: str) -> str:
    """The `prompt_cache_key` of every request of one assessment (and prompt): 36 characters.

    OpenAI routes requests by a hash of the prompt's start combined with this key, so requests
    sharing a prefix and a key land on the same cache
    (https://platform.openai.com/docs/guides/prompt-caching). Hashed: the key is sent to the
    provider and need not carry the assessment id in clear.
    """
    canon = json.dumps([PROMPT_VERSION, assessment_id, prompt_fingerprint], ensure_ascii=False)
    return "qbq-" + hashlib.sha256(canon.encode()).hexdigest()[:32]


def response_schema(question_numbers: Sequence[str]) -> dict[str, Any]:
    """Strict schema pinning the assessment's question numbers (not the refs, so that it is the
    same for every batch of the assessment and stays in the cached prefix)."""
    name = {
        "anyOf": [
            {
                "type": "object",
                "properties": {"first": {"type": "string"}, "last": {"type": "string"}},
                "required": ["first", "last"],
                "additionalProperties": False,
            },
            {"type": "null"},
        ]
    }
    answer = {
        "type": "object",
        "properties": {
            "question_number": {"type": "string", "enum": list(question_numbers)},
            "mark": {"type": "number"},
            "feedback": {"type": "string"},
            "confidence": {"type": "string", "enum": ["low", "medium", "high"]},
            "status": {"type": "string", "enum": ["answered", "blank", "unreadable"]},
        },
        "required": ["question_number", "mark", "feedback", "confidence", "status"],
        "additionalProperties": False,
    }
    student = {
        "type": "object",
        "properties": {
            "ref": {"type": "string"},
            "name": name,
            "answers": {"type": "array", "items": answer},
        },
        "required": ["ref", "name", "answers"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"students": {"type": "array", "items": student}},
        "required": ["students"],
        "additionalProperties": False,
    }


def response_format(question_numbers: Sequence[str]) -> dict[str, Any]:
    """The `response_format` body field: `response_schema`, strict."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "grading_batch",
            "strict": True,
            "schema": response_schema(question_numbers),
        },
    }
