"""The validated, measured request that planning, grading and reduce work on (no I/O here)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from qbq.catalog import ModelSpec

__all__ = [
    "ClassScanSplit",
    "GradingRequest",
    "IntakeFailure",
    "LegacyContext",
    "Page",
    "Question",
    "Student",
]

PageSource = Literal["path", "url", "data_uri"]


@dataclass(frozen=True, slots=True)
class Page:
    """A page image as qbq knows it: a stable id (declared, or the original content's hash) and
    the size at which the model sees it.

    `source` says where the page came from. A normalised page (`digest` set) has `location` =
    the absolute path of its normalised image in the page cache and `width`×`height` = that
    image's pixels; a URL passed to the provider as is (QBQ_PAGE_URLS=pass) has `digest` None and
    `location` = the URL. `location` is never hashed into a key. `n_bytes` is what the page adds
    to a request body (its data URI, or the URL). `original_*` describe the file as received
    (bytes of the whole file, upright pixels of this page; 0 when unknown).
    """

    image_id: str
    source: PageSource
    location: str
    width: int
    height: int
    n_bytes: int
    digest: str | None = None
    original_bytes: int = 0
    original_width: int = 0
    original_height: int = 0
    #: sha256 of the original file (`#p<n>` appended for page n of several); None for a URL
    #: passed on unread. Kept per declared page id in the store (reused ids, issue 15).
    content_sha: str | None = None


@dataclass(frozen=True, slots=True)
class Question:
    question_number: str
    max_mark: float
    rubric: str | None = None


@dataclass(frozen=True, slots=True)
class IntakeFailure:
    """Why a student could not be prepared (a page URL that could not be fetched or read): the
    student is not sent to the model and is listed in the payload's failures with this."""

    reason: str
    error_type: str
    image_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Student:
    """A student's ref and pages in order; `intake_failure` set when it failed at intake;
    `review_note` says why a person should check this student even when graded (a legacy
    request's short last group: fewer pages than the others)."""

    ref: str
    pages: tuple[Page, ...]
    intake_failure: IntakeFailure | None = None
    review_note: str | None = None

    @property
    def image_ids(self) -> list[str]:
        if self.intake_failure is not None:
            return list(self.intake_failure.image_ids)
        return [p.image_id for p in self.pages]


@dataclass(frozen=True)
class ClassScanSplit:
    """How a class scan was cut into students: `n_pages` pages of the file named `name`
    (sha256 starting `sha16`), `pages_per_student` pages each, refs in scan order."""

    name: str
    sha16: str
    n_pages: int
    pages_per_student: int
    refs: tuple[str, ...]


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
    class_scan: ClassScanSplit | None = None
    #: The request asked to regrade: pages are identified by content as well as by id, so new
    #: content under ids seen before is a new process with new batches.
    regrade: bool = False

    @property
    def declared_contents(self) -> dict[str, str]:
        """Declared page id → content sha256 of every page whose content is known (ids made
        from content, `sha256:...`, cannot be reused with other content)."""
        pages = [*self.model_answer_pages, *(p for s in self.students for p in s.pages)]
        return {p.image_id: p.content_sha for p in pages
                if p.content_sha is not None and not p.image_id.startswith("sha256:")}

    def content_key(self, students: Sequence[Student]) -> list[list[str | None]] | None:
        """What a regrade adds to the process and batch identities: each page's content."""
        if not self.regrade:
            return None
        return [[p.content_sha for p in s.pages] for s in students]

    @property
    def gradable_students(self) -> tuple[Student, ...]:
        """The students to send to the model: all but those that failed at intake."""
        return tuple(s for s in self.students if s.intake_failure is None)

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
        body: dict[str, object] = {
            "assessment_id": self.assessment_id,
            "model": self.model,
            "prompt": self.prompt_fingerprint,
            "students": [[s.ref, s.image_ids] for s in self.students],
        }
        content = self.content_key(self.students)
        if content is not None:
            body["content"] = content
        canon = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canon.encode()).hexdigest()

    def request_hash(self) -> str:
        return self._request_hash

    def process_id(self) -> str:
        return "qbq-" + self._request_hash[:24]
