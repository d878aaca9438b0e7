"""Turn a parsed request into a `GradingRequest`: resolve paths, measure every page, pick the model.

All checks that need I/O happen here, before planning and before any model call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from qbq.catalog import get_model_spec
from qbq.domain import GradingRequest, LegacyContext, Page, Question, Student
from qbq.errors import ImageError, QbqError, RequestValidationError
from qbq.images import decode_data_uri, inspect_image
from qbq.request import (
    LegacyRequest,
    NativeRequest,
    PageIn,
    QuestionIn,
    StudentIn,
    parse_request_json,
)
from qbq.settings import QbqSettings

__all__ = ["Fetcher", "load_request", "load_request_file"]

#: Fetches the bytes behind an http(s) URL; raises `ImageError` when it cannot.
Fetcher = Callable[[str], bytes]

_DATA_URI_PREFIX = len("data:image/png;base64,")


@dataclass(frozen=True)
class _PageJob:
    where: str
    page: PageIn


def _b64_len(n: int) -> int:
    return 4 * ((n + 2) // 3) + _DATA_URI_PREFIX


def _resolve_page(job: _PageJob, base_dir: Path, fetch: Fetcher | None) -> Page:
    p = job.page
    if p.path is not None:
        path = Path(p.path)
        path = path if path.is_absolute() else base_dir / path
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise ImageError(f"{job.where}.path: file not found: {path}") from exc
        except OSError as exc:
            raise ImageError(f"{job.where}.path: cannot read {path}: {exc.strerror}") from exc
        info = inspect_image(data, what=f"{job.where}.path ({path})")
        return Page(p.id or f"sha256:{info.sha256}", "path", str(path.resolve()),
                    info.width, info.height, _b64_len(info.n_bytes))
    if p.data_uri is not None:
        data = decode_data_uri(p.data_uri, what=f"{job.where}.data_uri")
        info = inspect_image(data, what=f"{job.where}.data_uri")
        return Page(p.id or f"sha256:{info.sha256}", "data_uri", p.data_uri,
                    info.width, info.height, len(p.data_uri))
    assert p.url is not None
    if p.width is not None and p.height is not None and p.id is not None:
        return Page(p.id, "url", p.url, p.width, p.height, len(p.url))
    if fetch is None:
        raise ImageError(f"{job.where}.url: no width/height given and fetching is disabled")
    try:
        data = fetch(p.url)
    except ImageError as exc:
        raise ImageError(f"{job.where}.url: {exc.message}") from exc
    info = inspect_image(data, what=f"{job.where}.url")
    return Page(p.id or f"sha256:{info.sha256}", "url", p.url, info.width, info.height, len(p.url))


def _resolve_all(jobs: Sequence[_PageJob], base_dir: Path, fetch: Fetcher | None) -> list[Page]:
    """Measure every page (URLs concurrently) and report every bad page at once."""

    def one(job: _PageJob) -> Page | QbqError:
        try:
            return _resolve_page(job, base_dir, fetch)
        except QbqError as exc:
            return exc

    needs_io = sum(1 for j in jobs if j.page.url and (j.page.width is None or j.page.id is None))
    if needs_io > 4:
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(one, jobs))
    else:
        results = [one(j) for j in jobs]
    errors = [r.message for r in results if isinstance(r, QbqError)]
    if errors:
        raise ImageError("unusable page images:\n" + "\n".join(f"  - {e}" for e in errors))
    return [r for r in results if isinstance(r, Page)]


def _native(req: NativeRequest, base_dir: Path, settings: QbqSettings,
            fetch: Fetcher | None) -> GradingRequest:
    spec = get_model_spec(
        req.model,
        context_window=settings.model_context_window,
        max_output_tokens=settings.model_max_output_tokens,
    )
    jobs = [_PageJob(f"model_answer_pages[{j}]", p) for j, p in enumerate(req.model_answer_pages)]
    for i, s in enumerate(req.students):
        jobs.extend(_PageJob(f"students[{i}].pages[{j}]", p) for j, p in enumerate(s.pages))
    pages = iter(_resolve_all(jobs, base_dir, fetch))
    model_answers = tuple(next(pages) for _ in req.model_answer_pages)
    students = tuple(Student(s.ref, tuple(next(pages) for _ in s.pages)) for s in req.students)
    return GradingRequest(
        assessment_id=req.assessment_id,
        model=req.model,
        spec=spec,
        instructions=req.instructions,
        questions=tuple(Question(q.question_number, q.max_mark, q.rubric) for q in req.questions),
        model_answer_pages=model_answers,
        students=students,
    )


def legacy_to_native(req: LegacyRequest, model: str) -> NativeRequest:
    """The legacy request as a native one: students are consecutive groups of images."""
    n = req.pages_per_student
    groups = [req.images[i : i + n] for i in range(0, len(req.images), n)]
    width = max(3, len(str(len(groups))))
    students = [
        StudentIn.model_construct(
            ref=f"S{i + 1:0{width}d}",
            pages=[
                PageIn.model_construct(url=im.aws_path, id=str(im.id))
                for im in sorted(group, key=lambda im: im.page_number)
            ],
        )
        for i, group in enumerate(groups)
    ]
    model_answers = [
        PageIn.model_construct(data_uri=u) if u.startswith("data:") else PageIn.model_construct(url=u)
        for u in (req.model_assessment or [])
    ]
    return NativeRequest.model_construct(
        assessment_id=str(req.external_assessment_id),
        model=model,
        instructions=req.prompt,
        questions=[
            QuestionIn.model_construct(question_number=q.question_number, max_mark=q.max_mark)
            for q in req.question_list
        ],
        model_answer_pages=model_answers,
        students=students,
    )


def load_request(
    parsed: NativeRequest | LegacyRequest,
    *,
    base_dir: Path,
    settings: QbqSettings,
    fetch: Fetcher | None,
) -> GradingRequest:
    if isinstance(parsed, LegacyRequest):
        native = legacy_to_native(parsed, settings.default_model)
        loaded = _native(native, base_dir, settings, fetch)
        ctx = LegacyContext(
            parsed.external_assessment_id,
            parsed.external_assessment_settings_id,
            parsed.external_assessment_file_id,
        )
        return dataclasses.replace(loaded, source_format="legacy", legacy=ctx)
    return _native(parsed, base_dir, settings, fetch)


def load_request_file(path: Path, *, settings: QbqSettings, fetch: Fetcher | None) -> GradingRequest:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise RequestValidationError([f"request file {path}: {exc.strerror}"]) from exc
    return load_request(parse_request_json(text), base_dir=path.parent.resolve(),
                        settings=settings, fetch=fetch)
