"""The validated, measured request that planning, grading and reduce work on (no I/O here)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from qbq.catalog import ModelSpec

__all__ = [
    "GradingRequest",
    "LegacyContext",
    "Page",
    "Question",
    "Student",
]

PageSource = Literal["path", "url", "data_uri"]


@dataclass(frozen=True, slots=True)
class Page:
    """A page image as qbq knows it: a stable id (declared, or the content hash) and its size.

    `location` is an absolute file path, an http(s) URL or a data URI; it is never hashed into a
    key. `n_bytes` is what the page adds to a request body (base64 for inline images).
    """

    image_id: str
    source: PageSource
    location: str
    width: int
    height: int
    n_bytes: int


@dataclass(frozen=True, slots=True)
class Question:
    question_number: str
    max_mark: float
    rubric: str | None = None


@dataclass(frozen=True, slots=True)
class Student:
    ref: str
    pages: tuple[Page, ...]

    @property
    def image_ids(self) -> list[str]:
        return [p.image_id for p in self.pages]


@dataclass(frozen=True)
class LegacyContext:
    """The ids a legacy request carried, echoed in the legacy payload."""

    assessment_id: int
    assessment_settings_id: int
    assessment_file_id: int


@dataclass(frozen=True)
class GradingRequest:
    """A request that passed validation, with every page measured and the model resolved."""

    assessment_id: str
    model: str
    spec: ModelSpec
    instructions: str | None
    questions: tuple[Question, ...]
    model_answer_pages: tuple[Page, ...]
    students: tuple[Student, ...]
    source_format: Literal["native", "legacy"] = "native"
    legacy: LegacyContext | None = None

    @property
    def max_marks(self) -> dict[str, float]:
        return {q.question_number: q.max_mark for q in self.questions}

    @cached_property
    def prompt_fingerprint(self) -> str:
        """Hash of what shapes every batch's prompt besides the students (instructions, rubric,
        model answers); part of each idempotency key so a changed rubric is graded anew."""
        body = {
            "instructions": self.instructions,
            "questions": [[q.question_number, q.max_mark, q.rubric] for q in self.questions],
            "model_answers": [p.image_id for p in self.model_answer_pages],
        }
        canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canon.encode()).hexdigest()

    @cached_property
    def _request_hash(self) -> str:
        """Identity of the whole grading job: same request → same hash → same process."""
        body = {
            "assessment_id": self.assessment_id,
            "model": self.model,
            "prompt": self.prompt_fingerprint,
            "students": [[s.ref, s.image_ids] for s in self.students],
        }
        canon = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canon.encode()).hexdigest()

    def request_hash(self) -> str:
        return self._request_hash

    def process_id(self) -> str:
        return "qbq-" + self._request_hash[:24]
