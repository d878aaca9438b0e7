"""Grading requests on the wire: the native model and the legacy model of the replaced system.

Parsing is strict (`extra="forbid"`) and every problem is reported with the field it concerns;
`qbq.loading` turns a parsed request into a `GradingRequest` with measured pages.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationError,
    model_validator,
)

from qbq.errors import RequestValidationError
from qbq.field_limits import (
    MAX_EXTERNAL_ID,
    MAX_MARK,
    MAX_PAGE_SIDE,
    MAX_PAGES_PER_STUDENT,
    MAX_QUESTIONS,
    MAX_STUDENTS,
    MAX_URL_LENGTH,
    AssessmentId,
    Instructions,
    ModelName,
    PageId,
    PathText,
    QuestionNumber,
    Ref,
    Rubric,
    UrlText,
    json_depth_problem,
    nesting_problem,
    unprintable,
)
from qbq.images import data_uri_problem

__all__ = [
    "ClassScanIn",
    "LegacyImage",
    "LegacyQuestion",
    "LegacyRequest",
    "NativeRequest",
    "PageIn",
    "QuestionIn",
    "StudentIn",
    "parse_request",
    "parse_request_json",
    "request_problems",
]

_STRICT = ConfigDict(extra="forbid", str_strip_whitespace=True)
# Every field is bounded (qbq.field_limits, README "Request limits").
PageSide = Annotated[int, Field(gt=0, le=MAX_PAGE_SIDE)]
Mark = Annotated[FiniteFloat, Field(le=MAX_MARK)]  # JSON's Infinity would let any mark pass
ExternalId = Annotated[int, Field(ge=0, le=MAX_EXTERNAL_ID)]


def _url_unless_data_uri(value: str) -> str:
    if value.startswith("data:"):
        return value
    if len(value) > MAX_URL_LENGTH:
        raise ValueError(f"a URL of at most {MAX_URL_LENGTH:,} characters, got {len(value):,}")
    found = unprintable(value)
    if found is not None:
        raise ValueError(f"must not contain control or format characters (found {found})")
    return value


DataUriOrUrl = Annotated[str, AfterValidator(_url_unless_data_uri)]


class PageIn(BaseModel):
    """One page image: exactly one of a local path, an http(s) URL or a data URI."""

    model_config = _STRICT

    path: PathText | None = None
    url: UrlText | None = None
    data_uri: str | None = None  # bounded by QBQ_MAX_PAGE_BYTES (data_uri_problem)
    id: PageId | None = None
    width: PageSide | None = None
    height: PageSide | None = None

    @model_validator(mode="after")
    def _one_source(self) -> PageIn:
        _check_source(self.path, self.url, self.data_uri, "a page")
        if self.url is not None and self.id is None:
            raise ValueError(
                "a url page needs an id: URLs (often presigned) change between requests, "
                "so qbq keys batches on page ids, never on URLs"
            )
        if (self.width is None) != (self.height is None):
            raise ValueError("give both width and height, or neither")
        return self


def _check_source(path: str | None, url: str | None, data_uri: str | None, what: str) -> None:
    given = [k for k, v in (("path", path), ("url", url), ("data_uri", data_uri)) if v]
    if len(given) != 1:
        raise ValueError(f"{what} needs exactly one of path, url or data_uri")
    if url is not None and not url.lower().startswith(("http://", "https://")):
        raise ValueError("url must be http(s)")
    if data_uri is not None:
        problem = data_uri_problem(data_uri)
        if problem is not None:
            raise ValueError(f"data_uri: {problem}")


class ClassScanIn(BaseModel):
    """A whole class scanned into one file (PDF, multi-page TIFF, ...), cut into students of
    `pages_per_student` consecutive pages; `refs` name them in scan order (default S001, ...)."""

    model_config = _STRICT

    path: PathText | None = None
    url: UrlText | None = None
    data_uri: str | None = None
    pages_per_student: Annotated[int, Field(gt=0, le=MAX_PAGES_PER_STUDENT)]
    refs: Annotated[list[Ref], Field(max_length=MAX_STUDENTS)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ClassScanIn:
        _check_source(self.path, self.url, self.data_uri, "class_scan")
        if self.refs is not None:
            if not self.refs:
                raise ValueError("refs: give at least one ref, or null for S001, S002, ...")
            dupes = sorted({r for r in self.refs if self.refs.count(r) > 1})
            if dupes:
                raise ValueError(f"refs: duplicate refs {dupes}")
        return self


class QuestionIn(BaseModel):
    model_config = _STRICT

    question_number: QuestionNumber
    max_mark: Mark
    rubric: Rubric | None = None


class StudentIn(BaseModel):
    model_config = _STRICT

    ref: Ref
    pages: Annotated[list[PageIn], Field(max_length=MAX_PAGES_PER_STUDENT)]


class NativeRequest(BaseModel):
    """qbq's own request format."""

    model_config = _STRICT

    assessment_id: AssessmentId
    model: ModelName
    instructions: Instructions | None = None
    questions: Annotated[list[QuestionIn], Field(max_length=MAX_QUESTIONS)]
    model_answer_pages: Annotated[list[PageIn], Field(max_length=MAX_PAGES_PER_STUDENT)] = Field(
        default_factory=list)
    students: Annotated[list[StudentIn], Field(max_length=MAX_STUDENTS)] = Field(
        default_factory=list)
    class_scan: ClassScanIn | None = None
    #: Grade again though page ids were seen before with other content (a new process).
    regrade: bool = False


class LegacyImage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: ExternalId
    page_number: Annotated[int, Field(ge=0, le=MAX_PAGES_PER_STUDENT)]
    aws_path: Annotated[UrlText, Field(min_length=1)]


class LegacyQuestion(BaseModel):
    model_config = ConfigDict(extra="ignore")

    question_number: QuestionNumber
    max_mark: Mark


class LegacyRequest(BaseModel):
    """The request of the system qbq replaces (its images are ordered student by student)."""

    model_config = ConfigDict(extra="ignore")

    external_assessment_id: ExternalId
    external_assessment_settings_id: ExternalId
    external_assessment_file_id: ExternalId
    pages_per_student: Annotated[int, Field(gt=0, le=MAX_PAGES_PER_STUDENT)]
    prompt: Instructions | None = None
    images: Annotated[list[LegacyImage], Field(max_length=MAX_STUDENTS)]
    #: Model-answer pages: data URIs (bounded by QBQ_MAX_PAGE_BYTES) or URLs (like aws_path).
    model_assessment: Annotated[list[DataUriOrUrl], Field(max_length=MAX_PAGES_PER_STUDENT)] | None = (
        None)
    question_list: Annotated[list[LegacyQuestion], Field(max_length=MAX_QUESTIONS)]
    regrade: bool = False


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "request"


def _pydantic_problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        problems.append(f"{_loc(tuple(err['loc']))}: {msg}")
    return problems


def _duplicates(values: list[str]) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for i, value in enumerate(values):
        seen.setdefault(value, []).append(i)
    return {v: idx for v, idx in seen.items() if len(idx) > 1}


def request_problems(req: NativeRequest) -> list[str]:
    """Cross-field problems pydantic cannot see field by field."""
    problems: list[str] = []
    if req.class_scan is not None and req.students:
        problems.append("class_scan: give students or class_scan, not both")
    elif req.class_scan is None and not req.students:
        problems.append("students: no students to grade")
    if not req.questions:
        problems.append("questions: no questions")
    for i, q in enumerate(req.questions):
        if not q.max_mark > 0:
            problems.append(f"questions[{i}].max_mark: must be > 0, got {q.max_mark}")
    for qnum, idx in _duplicates([q.question_number for q in req.questions]).items():
        problems.append(f"questions: duplicate question_number {qnum!r} at positions {idx}")
    for ref, idx in _duplicates([s.ref for s in req.students]).items():
        problems.append(f"students: duplicate ref {ref!r} at positions {idx}")
    for i, s in enumerate(req.students):
        if not s.pages:
            problems.append(f"students[{i}].pages: student {s.ref!r} has no pages")
    ids = [
        (p.id, f"students[{i}].pages[{j}]")
        for i, s in enumerate(req.students)
        for j, p in enumerate(s.pages)
        if p.id is not None
    ]
    ids += [(p.id, f"model_answer_pages[{j}]") for j, p in enumerate(req.model_answer_pages) if p.id]
    first_seen: dict[str, str] = {}
    for page_id, where in ids:
        if page_id is None:
            continue
        if page_id in first_seen:
            problems.append(f"{where}.id: duplicate page id {page_id!r} (also {first_seen[page_id]})")
        else:
            first_seen[page_id] = where
    return problems


def legacy_problems(req: LegacyRequest) -> list[str]:
    """What the replaced system would also have refused. It allowed a short last group (a
    student with fewer pages) and `max_mark` 0, so qbq does too; images given page-major
    (every student's page 1, then every page 2) would be grouped into the wrong students, so
    the first group with a repeated `page_number` is refused."""
    problems: list[str] = []
    if not req.images:
        problems.append("images: no images, so no students to grade")
    if not req.question_list:
        problems.append("question_list: no questions")
    for i, q in enumerate(req.question_list):
        if not q.max_mark >= 0:
            problems.append(f"question_list[{i}].max_mark: must be >= 0, got {q.max_mark}")
    for qnum, idx in _duplicates([q.question_number for q in req.question_list]).items():
        problems.append(f"question_list: duplicate question_number {qnum!r} at positions {idx}")
    for page_id, idx in _duplicates([str(im.id) for im in req.images]).items():
        problems.append(f"images: duplicate image id {page_id} at positions {idx}")
    if (page_major := _page_major_group(req)) is not None:
        problems.append(page_major)
    return problems


def _page_major_group(req: LegacyRequest) -> str | None:
    """Why the first student group repeating a `page_number` is wrong, or None."""
    n = req.pages_per_student
    for k, start in enumerate(range(0, len(req.images), n)):
        group = req.images[start : start + n]
        repeated = _duplicates([str(im.page_number) for im in group])
        if repeated:
            number = next(iter(repeated))
            return (f"images[{start}:{start + len(group)}] (student {k + 1}): page_number "
                    f"{number} appears {len(repeated[number])} times in one student's group of "
                    f"pages_per_student={n}; the images look page-major (every student's page 1, "
                    "then every page 2): list them student by student")
    return None


def _is_legacy(data: dict[str, Any]) -> bool:
    return "external_assessment_id" in data or "question_list" in data


def parse_request(data: Any) -> NativeRequest | LegacyRequest:
    """Validate a decoded request (native or legacy); raise RequestValidationError listing all.

    A list holding exactly one legacy request is that request (the replaced system received
    its requests so).
    """
    if isinstance(data, list) and any(isinstance(d, dict) and _is_legacy(d) for d in data):
        if len(data) != 1:
            raise RequestValidationError(
                [f"request: a list body must hold exactly one request, got {len(data)}"])
        data = data[0]
    if not isinstance(data, dict):
        raise RequestValidationError([f"request: must be a JSON object, got {type(data).__name__}"])
    too_deep = nesting_problem(data)
    if too_deep is not None:
        raise RequestValidationError([too_deep])
    model: type[NativeRequest] | type[LegacyRequest] = (
        LegacyRequest if _is_legacy(data) else NativeRequest
    )
    try:
        req = model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(_pydantic_problems(exc)) from exc
    problems = legacy_problems(req) if isinstance(req, LegacyRequest) else request_problems(req)
    if problems:
        raise RequestValidationError(problems)
    return req


def parse_request_json(text: str | bytes) -> NativeRequest | LegacyRequest:
    """Decode and validate a request's JSON text; raise RequestValidationError listing all.

    Nesting is bounded before the text is decoded (`qbq.field_limits.MAX_JSON_DEPTH`).
    """
    too_deep = json_depth_problem(text)
    if too_deep is not None:
        raise RequestValidationError([too_deep])
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestValidationError([f"request: malformed JSON ({exc})"]) from exc
    except ValueError as exc:  # an integer of more than 4,300 digits (sys.int_info)
        raise RequestValidationError([f"request: unreadable JSON number ({exc})"]) from exc
    return parse_request(data)


RequestFormat = Literal["native", "legacy"]
