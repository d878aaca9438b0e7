"""Tests of request loading: paths, data URIs and URLs read and normalised into pages, models
resolved; a student page URL that cannot be fetched fails only its student."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from qbq.domain import GradingRequest, Page
from qbq.errors import ImageError, PageFetchError, RequestValidationError, UnknownModelError
from qbq.images import data_uri_length, encode_data_uri
from qbq.loading import Fetcher, load_request, load_request_file
from qbq.request import parse_request
from qbq.settings import QbqSettings
from tests.pages import png


def write_png(path: Path, width: int = 30, height: int = 40, color: int = 0) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = png(width, height, color)
    path.write_bytes(data)
    return data


def sha_id(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeFetch:
    """A dict-backed fetcher that records what it was asked for."""

    def __init__(self, images: dict[str, bytes]) -> None:
        self.images = images
        self.calls: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.calls.append(url)
        try:
            return self.images[url]
        except KeyError:
            raise PageFetchError("HTTP 404", 404) from None


def no_fetch(url: str) -> bytes:
    raise AssertionError(f"fetch must not be called, got {url}")


def native(students: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "assessment_id": "exam-1",
        "model": "gpt-4o",
        "questions": [{"question_number": "1", "max_mark": 3}],
        "students": students,
    }
    body.update(over)
    return body


def write_request(folder: Path, body: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "request.json"
    path.write_text(json.dumps(body))
    return path


SETTINGS = QbqSettings()


def load(body: dict[str, Any], base_dir: Path, fetch: Fetcher | None = None,
         settings: QbqSettings = SETTINGS) -> GradingRequest:
    return load_request(parse_request(body), base_dir=base_dir, settings=settings, fetch=fetch)


def image_error(body: dict[str, Any], base_dir: Path, fetch: Fetcher | None = None) -> str:
    with pytest.raises(ImageError) as info:
        load(body, base_dir, fetch)
    return info.value.message


def normalised_bytes(page: Page) -> bytes:
    """The normalised image a page sends (from the page cache), checked against its hash."""
    data = Path(page.location).read_bytes()
    assert hashlib.sha256(data).hexdigest() == page.digest
    return data


# --- local files --------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_request_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "exam"
    a = write_png(folder / "pages" / "a.png", 30, 40, color=10)
    b = write_png(folder / "pages" / "b.png", 50, 20, color=20)
    key = write_png(folder / "key.png", 60, 80, color=30)
    request_file = write_request(folder, native(
        [{"ref": "S1", "pages": [{"path": "pages/a.png"}, {"path": "pages/b.png", "id": "b"}]}],
        model_answer_pages=[{"path": "key.png"}],
    ))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_png(elsewhere / "pages" / "a.png", 999, 999)  # a decoy the cwd would find
    monkeypatch.chdir(elsewhere)

    req = load_request_file(request_file, settings=SETTINGS, fetch=no_fetch)

    [student] = req.students
    pa, pb = student.pages
    assert (pa.source, pa.width, pa.height, pa.original_bytes) == ("path", 30, 40, len(a))
    assert pa.image_id == sha_id(a)
    assert (pb.image_id, pb.width, pb.height, pb.original_bytes) == ("b", 50, 20, len(b))
    # A page is sent inline as its normalised image: it adds that data URI to the request body.
    for page in (pa, pb):
        data = normalised_bytes(page)
        assert page.n_bytes == data_uri_length(len(data), "image/png")
        assert Image.open(io.BytesIO(data)).size == (page.width, page.height)
    [ma] = req.model_answer_pages
    assert (ma.image_id, ma.width, ma.height) == (sha_id(key), 60, 80)
    assert req.source_format == "native" and req.legacy is None


def test_relative_request_file_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_png(tmp_path / "exam" / "p.png")
    write_request(tmp_path / "exam", native([{"ref": "S1", "pages": [{"path": "p.png"}]}]))
    monkeypatch.chdir(tmp_path)
    req = load_request_file(Path("exam/request.json"), settings=SETTINGS, fetch=None)
    assert req.students[0].pages[0].image_id == sha_id((tmp_path / "exam" / "p.png").read_bytes())


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    data = write_png(tmp_path / "abs" / "p.png", 12, 34)
    req = load(native([{"ref": "S1", "pages": [{"path": str(tmp_path / "abs" / "p.png")}]}]),
               tmp_path / "unrelated")
    page = req.students[0].pages[0]
    assert (page.width, page.height, page.image_id) == (12, 34, sha_id(data))


def test_missing_file_names_the_page(tmp_path: Path) -> None:
    write_png(tmp_path / "ok.png")
    body = native([
        {"ref": "S1", "pages": [{"path": "ok.png"}]},
        {"ref": "S2", "pages": [{"path": "ok.png"}, {"path": "missing.png"}]},
    ])
    message = image_error(body, tmp_path)
    # named relative to the request's folder, as the request names it
    assert "students[1].pages[1].path (missing.png): file not found" in message
    assert str(tmp_path) not in message
    assert "students[0]" not in message and "students[1].pages[0]" not in message


def test_every_bad_page_is_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    body = native([
        {"ref": "S1", "pages": [{"path": "gone.png"}]},
        {"ref": "S2", "pages": [{"path": "notes.txt"}]},
    ], model_answer_pages=[{"path": "key-gone.png"}])
    message = image_error(body, tmp_path)
    assert "model_answer_pages[0].path (key-gone.png): file not found" in message
    assert "students[0].pages[0].path (gone.png): file not found" in message
    assert "students[1].pages[0].path (notes.txt): not a recognised image or PDF" in message


def test_non_image_file_names_the_page(tmp_path: Path) -> None:
    write_png(tmp_path / "ok.png")
    (tmp_path / "answers.docx").write_bytes(b"PK\x03\x04 a word document")
    body = native([{"ref": "S1", "pages": [{"path": "ok.png"}, {"path": "answers.docx"}]}])
    message = image_error(body, tmp_path)
    assert "students[0].pages[1].path (answers.docx): a ZIP archive" in message


def test_damaged_pdf_names_the_page_and_the_type(tmp_path: Path) -> None:
    (tmp_path / "answers.pdf").write_bytes(b"%PDF-1.4 not really a PDF")
    message = image_error(native([{"ref": "S1", "pages": [{"path": "answers.pdf"}]}]), tmp_path)
    assert "students[0].pages[0].path (answers.pdf): a damaged or password-protected PDF" in message
    assert "object at 0x" not in message


def test_a_format_the_provider_does_not_take_is_converted(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "scan.bmp", format="BMP")
    page = load(native([{"ref": "S1", "pages": [{"path": "scan.bmp"}]}]), tmp_path).students[0].pages[0]
    assert Image.open(io.BytesIO(normalised_bytes(page))).format in ("PNG", "JPEG")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / "pages").mkdir()
    message = image_error(native([{"ref": "S1", "pages": [{"path": "pages"}]}]), tmp_path)
    assert "students[0].pages[0].path (pages): not a regular file (a folder)" in message


def test_missing_request_file_is_a_request_error(tmp_path: Path) -> None:
    with pytest.raises(RequestValidationError, match="request file"):
        load_request_file(tmp_path / "nope.json", settings=SETTINGS, fetch=None)


def test_malformed_request_file(tmp_path: Path) -> None:
    path = tmp_path / "request.json"
    path.write_text('{"assessment_id": ')
    with pytest.raises(RequestValidationError, match="malformed JSON"):
        load_request_file(path, settings=SETTINGS, fetch=None)


# --- data URIs ----------------------------------------------------------------------------------


def test_data_uri_page(tmp_path: Path) -> None:
    data = png(21, 13)
    uri = encode_data_uri(data, "image/png")
    req = load(native([{"ref": "S1", "pages": [{"data_uri": uri}]}]), tmp_path)
    page = req.students[0].pages[0]
    assert (page.source, page.width, page.height) == ("data_uri", 21, 13)
    assert page.image_id == sha_id(data)
    assert page.n_bytes == data_uri_length(len(normalised_bytes(page)), "image/png")


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("data:image/png;base64,@@not base64@@", "not valid base64 (a '@' at character 0)"),
        ("data:image/png;base64," + encode_data_uri(b"plain text", "x")[len("data:x;base64,"):],
         "not a recognised image or PDF"),
    ],
    ids=["bad-base64", "not-an-image"],
)
def test_bad_data_uri_names_the_page(tmp_path: Path, uri: str, problem: str) -> None:
    good = encode_data_uri(png(), "image/png")
    body = native([{"ref": "S1", "pages": [{"data_uri": good}]},
                   {"ref": "S2", "pages": [{"data_uri": good}, {"data_uri": uri}]}])
    message = image_error(body, tmp_path)
    assert "students[1].pages[1].data_uri" in message
    assert problem in message


# --- URLs ---------------------------------------------------------------------------------------


PASS = QbqSettings(page_urls="pass")


def test_passed_url_pages_with_declared_size_need_no_fetch(tmp_path: Path) -> None:
    pages = [{"url": f"https://bucket.example/p{j}.png?sig=x", "id": f"p{j}",
              "width": 1000 + j, "height": 1400} for j in range(6)]
    req = load(native([{"ref": "S1", "pages": pages}]), tmp_path, fetch=None, settings=PASS)
    got = [(p.image_id, p.source, p.location, p.width, p.height, p.digest)
           for p in req.students[0].pages]
    assert got == [(f"p{j}", "url", f"https://bucket.example/p{j}.png?sig=x", 1000 + j, 1400,
                    None) for j in range(6)]
    # Through the thread-pool path too, with a fetch that must not run.
    req = load(native([{"ref": "S1", "pages": pages}]), tmp_path, fetch=no_fetch, settings=PASS)
    assert [p.width for p in req.students[0].pages] == [1000 + j for j in range(6)]


def test_passed_url_pages_without_size_are_fetched_and_measured(tmp_path: Path) -> None:
    images = {f"https://bucket.example/{j}.png": png(10 + j, 20) for j in range(3)}
    fetch = FakeFetch(images)
    pages = [{"url": url, "id": f"id-{j}"} for j, url in enumerate(images)]
    req = load(native([{"ref": "S1", "pages": pages}]), tmp_path, fetch=fetch, settings=PASS)
    got = [(p.image_id, p.width, p.height, p.location) for p in req.students[0].pages]
    assert got == [(f"id-{j}", 10 + j, 20, url) for j, url in enumerate(images)]


@pytest.mark.parametrize("n_pages", [1, 7], ids=["inline", "thread-pool"])
def test_url_pages_are_fetched_and_normalised(tmp_path: Path, n_pages: int) -> None:
    images = {f"https://bucket.example/{j}.png?X-Amz-Signature=s{j}": png(10 + j, 20)
              for j in range(n_pages)}
    fetch = FakeFetch(images)
    pages = [{"url": url, "id": f"id-{j}", "width": 5000, "height": 5000}
             for j, url in enumerate(images)]
    req = load(native([{"ref": "S1", "pages": pages}]), tmp_path, fetch=fetch)
    got = [(p.image_id, p.source, p.width, p.height) for p in req.students[0].pages]
    # the declared size is not trusted: the page is what was downloaded
    assert got == [(f"id-{j}", "url", 10 + j, 20) for j in range(n_pages)]
    assert all("Signature" not in p.location and p.digest for p in req.students[0].pages)
    assert sorted(fetch.calls) == sorted(images)  # each URL fetched exactly once


def test_failed_fetch_fails_only_that_student(tmp_path: Path) -> None:
    fetch = FakeFetch({"https://bucket.example/a.png?sig=1": png(),
                       "https://bucket.example/c.png?sig=3": png()})
    body = native([
        {"ref": "S1", "pages": [{"url": "https://bucket.example/a.png?sig=1", "id": "a"}]},
        {"ref": "S2", "pages": [{"url": "https://bucket.example/a.png?sig=1", "id": "a2"},
                                {"url": "https://bucket.example/gone.png?sig=2", "id": "b"}]},
        {"ref": "S3", "pages": [{"url": "https://bucket.example/c.png?sig=3", "id": "c"}]},
    ])
    req = load(body, tmp_path, fetch=fetch)
    s1, s2, s3 = req.students
    assert s1.intake_failure is None and s3.intake_failure is None
    failure = s2.intake_failure
    assert failure is not None and s2.pages == ()
    assert failure.error_type == "PageFetchError"
    assert failure.reason == "page b: could not be fetched: HTTP 404 (host bucket.example)"
    assert s2.image_ids == ["a2", "b"]
    assert [s.ref for s in req.gradable_students] == ["S1", "S3"]


def test_fetched_bytes_that_are_not_an_image_fail_that_student(tmp_path: Path) -> None:
    fetch = FakeFetch({"https://bucket.example/a.png": b"<html>AccessDenied</html>",
                       "https://bucket.example/b.png": png()})
    body = native([{"ref": "S1", "pages": [{"url": "https://bucket.example/a.png", "id": "a"}]},
                   {"ref": "S2", "pages": [{"url": "https://bucket.example/b.png", "id": "b"}]}])
    [s1, s2] = load(body, tmp_path, fetch=fetch).students
    assert s1.intake_failure is not None and s2.intake_failure is None
    assert "page a (downloaded from host bucket.example): an HTML page" in s1.intake_failure.reason


def test_model_answer_that_cannot_be_fetched_fails_the_request(tmp_path: Path) -> None:
    fetch = FakeFetch({"https://bucket.example/a.png": png()})
    body = native([{"ref": "S1", "pages": [{"url": "https://bucket.example/a.png", "id": "a"}]}],
                  model_answer_pages=[{"url": "https://bucket.example/key.png?sig=k", "id": "k"}])
    message = image_error(body, tmp_path, fetch=fetch)
    assert "page k: could not be fetched: HTTP 404 (host bucket.example)" in message
    assert "sig=" not in message


# --- models -------------------------------------------------------------------------------------


def test_unknown_model_is_refused_before_any_page_is_read(tmp_path: Path) -> None:
    body = native([{"ref": "S1", "pages": [{"path": "missing.png"}]}], model="gpt-imaginary")
    with pytest.raises(UnknownModelError, match="gpt-imaginary"):
        load(body, tmp_path, fetch=no_fetch)


def test_unknown_model_with_one_limit_is_still_refused(tmp_path: Path) -> None:
    write_png(tmp_path / "p.png")
    body = native([{"ref": "S1", "pages": [{"path": "p.png"}]}], model="my-vision")
    with pytest.raises(UnknownModelError):
        load(body, tmp_path, settings=QbqSettings(model_context_window=64_000))


def test_unknown_model_works_with_limits_given(tmp_path: Path) -> None:
    write_png(tmp_path / "p.png")
    body = native([{"ref": "S1", "pages": [{"path": "p.png"}]}], model="my-vision")
    settings = QbqSettings(model_context_window=64_000, model_max_output_tokens=4_000)
    req = load(body, tmp_path, settings=settings)
    assert req.model == "my-vision"
    assert (req.spec.name, req.spec.context_window, req.spec.max_output_tokens) == (
        "my-vision", 64_000, 4_000)
    assert not req.spec.price_known


def test_known_model_limits_can_be_overridden(tmp_path: Path) -> None:
    write_png(tmp_path / "p.png")
    body = native([{"ref": "S1", "pages": [{"path": "p.png"}]}], model="gpt-4o")
    req = load(body, tmp_path, settings=QbqSettings(model_context_window=32_000))
    assert (req.spec.context_window, req.spec.max_output_tokens) == (32_000, 16_384)
    assert req.spec.price_known


# --- legacy -------------------------------------------------------------------------------------


def legacy(n_students: int, pages_per_student: int, **over: Any) -> dict[str, Any]:
    images = []
    for s in range(n_students):
        # Each student's pages given out of page order; ids are ints in the old system.
        for page_number in reversed(range(1, pages_per_student + 1)):
            images.append({"id": 1000 + s * 10 + page_number, "page_number": page_number,
                           "aws_path": f"https://s3.example/{s}/{page_number}.png"})
    body: dict[str, Any] = {
        "external_assessment_id": 77,
        "external_assessment_settings_id": 88,
        "external_assessment_file_id": 99,
        "pages_per_student": pages_per_student,
        "prompt": "Be fair.",
        "images": images,
        "model_assessment": None,
        "question_list": [{"question_number": "1", "max_mark": 2},
                          {"question_number": "2", "max_mark": 3}],
    }
    body.update(over)
    return body


def legacy_fetch(body: dict[str, Any], extra: dict[str, bytes] | None = None) -> FakeFetch:
    images = {im["aws_path"]: png(100 + im["page_number"], 200) for im in body["images"]}
    return FakeFetch({**images, **(extra or {})})


def test_legacy_request_becomes_students_grouped_by_pages_per_student(tmp_path: Path) -> None:
    body = legacy(3, 2)
    fetch = legacy_fetch(body)
    req = load(body, tmp_path, fetch=fetch)
    assert [s.ref for s in req.students] == ["S001", "S002", "S003"]
    assert [s.image_ids for s in req.students] == [["1001", "1002"], ["1011", "1012"],
                                                   ["1021", "1022"]]
    assert all(isinstance(i, str) for s in req.students for i in s.image_ids)
    first = req.students[0].pages
    assert [(p.width, p.height) for p in first] == [(101, 200), (102, 200)]
    assert req.source_format == "legacy"
    assert req.legacy is not None
    assert (req.legacy.assessment_id, req.legacy.assessment_settings_id,
            req.legacy.assessment_file_id) == (77, 88, 99)
    assert req.assessment_id == "77"
    assert req.model == SETTINGS.default_model
    assert req.instructions == "Be fair."
    assert [(q.question_number, q.max_mark, q.rubric) for q in req.questions] == [
        ("1", 2.0, None), ("2", 3.0, None)]


def test_legacy_model_answers_are_fetched_and_hashed(tmp_path: Path) -> None:
    key = png(300, 400, color=99)
    body = legacy(1, 1, model_assessment=["https://s3.example/key.png"])
    req = load(body, tmp_path, fetch=legacy_fetch(body, {"https://s3.example/key.png": key}))
    [ma] = req.model_answer_pages
    assert (ma.image_id, ma.width, ma.height) == (sha_id(key), 300, 400)


def test_legacy_model_uses_the_default_model_setting(tmp_path: Path) -> None:
    body = legacy(1, 1)
    req = load(body, tmp_path, fetch=legacy_fetch(body),
               settings=QbqSettings(default_model="gpt-4o"))
    assert req.model == "gpt-4o" and req.spec.context_window == 128_000


def test_legacy_refs_widen_past_999_students(tmp_path: Path) -> None:
    body = legacy(1000, 1)
    req = load(body, tmp_path, fetch=legacy_fetch(body))
    assert req.students[0].ref == "S0001" and req.students[-1].ref == "S1000"
    assert len({s.ref for s in req.students}) == 1000


def test_legacy_unreachable_image_names_student_and_page(tmp_path: Path) -> None:
    body = legacy(2, 2)
    fetch = legacy_fetch(body)
    del fetch.images["https://s3.example/1/2.png"]
    students = load(body, tmp_path, fetch=fetch).students
    assert students[0].intake_failure is None
    failure = students[1].intake_failure
    assert failure is not None and failure.reason.startswith("page 1012: could not be fetched")


def test_legacy_aws_path_gets_the_url_checks(tmp_path: Path) -> None:
    body = legacy(1, 1)
    body["images"][0]["aws_path"] = "file:///etc/passwd"
    message = image_error(body, tmp_path, fetch=no_fetch)
    assert "students[0].pages[0].url: URL scheme 'file' is not allowed" in message


def test_loading_a_legacy_request_twice_gives_the_same_process(tmp_path: Path) -> None:
    body = legacy(2, 2)
    req = load(body, tmp_path, fetch=legacy_fetch(body))
    again = load(body, tmp_path, fetch=legacy_fetch(body))
    assert again.process_id() == req.process_id()
