"""Turn a parsed request into a `GradingRequest`: read, fetch and normalise every page, pick the model.

All checks that need I/O happen here, before planning and before any model call. Problems with
the request itself (a missing file, an unreadable image, a bad data URI or URL) are reported
together as one `ImageError`; a student page URL that cannot be fetched or read fails only that
student (`Student.intake_failure`), and the others are graded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from qbq.catalog import get_model_spec
from qbq.domain import (
    ClassScanSplit,
    GradingRequest,
    IntakeFailure,
    LegacyContext,
    Page,
    Question,
    Student,
)
from qbq.errors import ConfigurationError, ImageError, QbqError, RequestValidationError
from qbq.intake.cache import PageCache
from qbq.intake.class_scan import default_refs, split_problems
from qbq.intake.files import PageFiles
from qbq.intake.reader import Fetcher, PageReader, SourceBytes, StudentPageError, page_id
from qbq.request import (
    ClassScanIn,
    LegacyRequest,
    NativeRequest,
    PageIn,
    QuestionIn,
    StudentIn,
    parse_request_json,
)
from qbq.settings import QbqSettings

__all__ = ["Fetcher", "legacy_to_native", "load_request", "load_request_file"]

#: Pages read, fetched and normalised at once (downloads wait on the network; decoding is
#: bounded separately by the reader).
_WORKERS: Final = 8


@dataclass(frozen=True)
class _PageJob:
    where: str
    page: PageIn
    student: int | None  # index of the student; None for a model-answer page


def _read(job: _PageJob, reader: PageReader, pass_urls: bool) -> list[Page]:
    p = job.page
    if p.path is not None:
        return reader.pages(reader.read_path(p.path, job.where), page_id(p.id))
    if p.data_uri is not None:
        return reader.pages(reader.read_data_uri(p.data_uri, job.where), page_id(p.id))
    assert p.url is not None
    if pass_urls:
        return [reader.passed_url(p.url, job.where, p.id or job.where, p.width, p.height)]
    reader.check_url(p.url, job.where)
    src: SourceBytes | None = None
    try:
        src = reader.read_url(p.url, job.where, p.id)
        return reader.pages(src, page_id(p.id))
    except ImageError as exc:
        if job.student is None:
            raise
        # The URL was fine but its content is not: a download or a file the school cannot fix
        # from here fails this student only.
        raise StudentPageError(exc) from exc


def _resolve_all(jobs: Sequence[_PageJob], reader: PageReader,
                 pass_urls: bool) -> list[list[Page] | StudentPageError]:
    """Every job's pages, or its student's failure; every request error reported at once."""

    def one(job: _PageJob) -> list[Page] | StudentPageError | QbqError:
        try:
            return _read(job, reader, pass_urls)
        except StudentPageError as exc:
            return exc
        except ConfigurationError:
            raise  # the host's problem (e.g. the page cache), not the page's
        except QbqError as exc:
            return exc

    if len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=min(_WORKERS, len(jobs))) as pool:
            results = list(pool.map(one, jobs))
    else:
        results = [one(j) for j in jobs]
    errors = [r.message for r in results if isinstance(r, QbqError)]
    if errors:
        raise ImageError("unusable page images:\n" + "\n".join(f"  - {e}" for e in errors))
    return [r for r in results if not isinstance(r, QbqError)]


def _student(ref: str, pages_in: Sequence[PageIn],
             results: Sequence[list[Page] | StudentPageError]) -> Student:
    failures = [r for r in results if isinstance(r, StudentPageError)]
    if not failures:
        return Student(ref, tuple(p for r in results if isinstance(r, list) for p in r))
    ids: list[str] = []
    for page, result in zip(pages_in, results, strict=True):
        if isinstance(result, list):
            ids.extend(p.image_id for p in result)
        else:
            ids.append(page.id or "?")
    first = failures[0].error
    reason = "; ".join(f.error.message for f in failures)
    return Student(ref, (), IntakeFailure(reason[:1000], first.error_type, tuple(ids)))


def _class_scan(scan: ClassScanIn, reader: PageReader) -> tuple[tuple[Student, ...], ClassScanSplit]:
    """The scan cut into students of `pages_per_student` consecutive pages (a class scan is
    always read and normalised, also with QBQ_PAGE_URLS=pass: it must be cut into pages)."""
    where = "class_scan"
    if scan.path is not None:
        src = reader.read_path(scan.path, where)
        name = reader.files.display(scan.path)
    elif scan.data_uri is not None:
        src, name = reader.read_data_uri(scan.data_uri, where), "data URI"
    else:
        assert scan.url is not None
        try:
            src = reader.read_url(scan.url, where, None)
        except ImageError as exc:  # one file holds every student: nothing can be graded
            raise ImageError(f"{where}.url: {exc.message}") from exc
        name = "URL"
    sha, images = reader.normalised(src)
    count = len(images)
    problems = split_problems(count, scan.pages_per_student, scan.refs)
    if problems:
        raise RequestValidationError(problems)
    pages = reader.pages(src, lambda sha, n, _count: f"{sha[:16]}#p{n}")
    per = scan.pages_per_student
    refs = tuple(scan.refs or default_refs(count // per))
    students = tuple(Student(ref, tuple(pages[i * per : (i + 1) * per]))
                     for i, ref in enumerate(refs))
    return students, ClassScanSplit(name, sha[:16], count, per, refs)


def _native(req: NativeRequest, base_dir: Path, settings: QbqSettings, fetch: Fetcher | None,
            cache: PageCache | None) -> GradingRequest:
    spec = get_model_spec(
        req.model,
        context_window=settings.model_context_window,
        max_output_tokens=settings.model_max_output_tokens,
    )
    reader = PageReader(base_dir=base_dir, settings=settings, spec=spec, fetch=fetch, cache=cache)
    reader.cache.prune()
    pass_urls = settings.page_urls == "pass"
    jobs = [_PageJob(f"model_answer_pages[{j}]", p, None)
            for j, p in enumerate(req.model_answer_pages)]
    for i, s in enumerate(req.students):
        jobs.extend(_PageJob(f"students[{i}].pages[{j}]", p, i) for j, p in enumerate(s.pages))
    results = iter(_resolve_all(jobs, reader, pass_urls))
    model_answers = tuple(p for _ in req.model_answer_pages for p in _as_pages(next(results)))
    students = tuple(_student(s.ref, s.pages, [next(results) for _ in s.pages])
                     for s in req.students)
    split = None
    if req.class_scan is not None:
        students, split = _class_scan(req.class_scan, reader)
    return GradingRequest(
        assessment_id=req.assessment_id,
        model=req.model,
        spec=spec,
        instructions=req.instructions,
        questions=tuple(Question(q.question_number, q.max_mark, q.rubric) for q in req.questions),
        model_answer_pages=model_answers,
        students=students,
        class_scan=split,
        regrade=req.regrade,
    )


def _as_pages(result: list[Page] | StudentPageError) -> list[Page]:
    assert isinstance(result, list)  # model-answer failures raise in _read
    return result


def legacy_to_native(req: LegacyRequest, model: str) -> NativeRequest:
    """The legacy request as a native one: students are consecutive groups of images."""
    n = req.pages_per_student
    groups = [req.images[i : i + n] for i in range(0, len(req.images), n)]
    students = [
        StudentIn.model_construct(
            ref=ref,
            pages=[
                PageIn.model_construct(url=im.aws_path, id=str(im.id))
                for im in sorted(group, key=lambda im: im.page_number)
            ],
        )
        for ref, group in zip(default_refs(len(groups)), groups, strict=True)
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
        class_scan=None,
        regrade=req.regrade,
    )


def load_request(
    parsed: NativeRequest | LegacyRequest,
    *,
    base_dir: Path,
    settings: QbqSettings,
    fetch: Fetcher | None,
    cache: PageCache | None = None,
) -> GradingRequest:
    """Read, fetch and normalise every page of `parsed` (relative paths against `base_dir`)."""
    if isinstance(parsed, LegacyRequest):
        native = legacy_to_native(parsed, settings.default_model)
        loaded = _native(native, base_dir, settings, fetch, cache)
        ctx = LegacyContext(
            parsed.external_assessment_id,
            parsed.external_assessment_settings_id,
            parsed.external_assessment_file_id,
        )
        return dataclasses.replace(loaded, source_format="legacy", legacy=ctx,
                                   students=_flag_short_last_group(parsed, loaded.students))
    return _native(parsed, base_dir, settings, fetch, cache)


def _flag_short_last_group(req: LegacyRequest,
                           students: tuple[Student, ...]) -> tuple[Student, ...]:
    """The replaced system allowed a short last group: that student has fewer pages, and a
    person should check nothing is missing."""
    short = len(req.images) % req.pages_per_student
    if not short or not students:
        return students
    note = (f"short last group: {short} of pages_per_student={req.pages_per_student} pages; "
            "check that no page is missing")
    return (*students[:-1], dataclasses.replace(students[-1], review_note=note))


def load_request_file(path: Path, *, settings: QbqSettings, fetch: Fetcher | None,
                      cache: PageCache | None = None) -> GradingRequest:
    """Load the request JSON at `path`; its relative page paths resolve against its folder.

    With QBQ_PAGE_ROOTS set, the request file must lie inside the roots too.
    """
    files = PageFiles(Path.cwd(), roots=settings.page_roots, max_bytes=settings.max_page_bytes)
    try:
        files.check_inside_roots(str(path), "request file")
    except ImageError as exc:
        raise RequestValidationError([exc.message]) from exc
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise RequestValidationError([f"request file {path}: {exc.strerror}"]) from exc
    return load_request(parse_request_json(text), base_dir=path.parent.resolve(),
                        settings=settings, fetch=fetch, cache=cache)

