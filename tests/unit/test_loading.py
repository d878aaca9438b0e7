"""Tests of request loading: paths, data URIs and URLs measured into pages, models resolved."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from qbq.domain import GradingRequest
from qbq.errors import ImageError, RequestValidationError, UnknownModelError
from qbq.images import encode_data_uri
from qbq.loading import Fetcher, load_request, load_request_file
from qbq.request import parse_request
from qbq.settings import QbqSettings


def png(width: int = 30, height: int = 40, color: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


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
            raise ImageError(f"HTTP 404 for {url}") from None


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
    assert pa.location == str((folder / "pages" / "a.png").resolve())
    assert (pa.source, pa.width, pa.height) == ("path", 30, 40)
    assert pa.image_id == sha_id(a)
    assert (pb.image_id, pb.width, pb.height) == ("b", 50, 20)
    # A local file is sent inline, so it adds its base64 data URI to the request body.
    assert pa.n_bytes == len(encode_data_uri(a, "image/png"))
    assert pb.n_bytes == len(encode_data_uri(b, "image/png"))
    [ma] = req.model_answer_pages
    assert (ma.image_id, ma.width, ma.height) == (sha_id(key), 60, 80)
    assert req.source_format == "native" and req.legacy is None


def test_relative_request_file_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_png(tmp_path / "exam" / "p.png")
    write_request(tmp_path / "exam", native([{"ref": "S1", "pages": [{"path": "p.png"}]}]))
    monkeypatch.chdir(tmp_path)
    req = load_request_file(Path("exam/request.json"), settings=SETTINGS, fetch=None)
    assert req.students[0].pages[0].location == str((tmp_path / "exam" / "p.png").resolve())


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
    assert "students[1].pages[1].path: file not found" in message
    assert str(tmp_path / "missing.png") in message
    assert "students[0]" not in message and "students[1].pages[0]" not in message


def test_every_bad_page_is_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    body = native([
        {"ref": "S1", "pages": [{"path": "gone.png"}]},
        {"ref": "S2", "pages": [{"path": "notes.txt"}]},
    ], model_answer_pages=[{"path": "key-gone.png"}])
    message = image_error(body, tmp_path)
    assert "model_answer_pages[0].path: file not found" in message
    assert "students[0].pages[0].path: file not found" in message
    assert "students[1].pages[0].path" in message and "not a readable image" in message


def test_non_image_file_names_the_page(tmp_path: Path) -> None:
    write_png(tmp_path / "ok.png")
    (tmp_path / "answers.pdf").write_bytes(b"%PDF-1.4 not an image")
    body = native([{"ref": "S1", "pages": [{"path": "ok.png"}, {"path": "answers.pdf"}]}])
    message = image_error(body, tmp_path)
    assert "students[0].pages[1].path" in message
    assert "not a readable image" in message


def test_image_format_the_model_does_not_accept(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "scan.bmp", format="BMP")
    message = image_error(native([{"ref": "S1", "pages": [{"path": "scan.bmp"}]}]), tmp_path)
    assert "students[0].pages[0].path" in message and "BMP" in message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / "pages").mkdir()
    message = image_error(native([{"ref": "S1", "pages": [{"path": "pages"}]}]), tmp_path)
    assert "students[0].pages[0].path" in message


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
    assert (page.source, page.location, page.width, page.height) == ("data_uri", uri, 21, 13)
    assert page.image_id == sha_id(data)
    assert page.n_bytes == len(uri)


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("data:image/png;base64,@@not base64@@", "not valid base64"),
        ("data:image/png,rawbytes", "not a base64 data URI"),
        ("data:image/png;base64," + encode_data_uri(b"plain text", "x")[len("data:x;base64,"):],
         "not a readable image"),
    ],
    ids=["bad-base64", "not-base64-uri", "not-an-image"],
)
def test_bad_data_uri_names_the_page(tmp_path: Path, uri: str, problem: str) -> None:
    good = encode_data_uri(png(), "image/png")
    body = native([{"ref": "S1", "pages": [{"data_uri": good}]},
                   {"ref": "S2", "pages": [{"data_uri": good}, {"data_uri": uri}]}])
    message = image_error(body, tmp_path)
    assert "students[1].pages[1].data_uri" in message
    assert problem in message


# --- URLs ---------------------------------------------------------------------------------------


def test_url_pages_with_declared_size_need_no_fetch(tmp_path: Path) -> None:
    pages = [{"url": f"https://bucket.example/p{j}.png?sig=x", "id": f"p{j}",
              "width": 1000 + j, "height": 1400} for j in range(6)]
    req = load(native([{"ref": "S1", "pages": pages}]), tmp_path, fetch=None)
    got = [(p.image_id, p.source, p.location, p.width, p.height) for p in req.students[0].pages]
    assert got == [(f"p{j}", "url", f"https://bucket.example/p{j}.png?sig=x", 1000 + j, 1400)
                   for j in range(6)]
    # Through the thread-pool path too (more than a few URLs), with a fetch that must not run.
    req = load(native([{"ref": "S1", "pages": pages}]), tmp_path, fetch=no_fetch)
    assert [p.width for p in req.students[0].pages] == [1000 + j for j in range(6)]


@pytest.mark.parametrize("n_pages", [1, 7], ids=["inline", "thread-pool"])
def test_url_pages_without_size_are_fetched_and_measured(tmp_path: Path, n_pages: int) -> None:
    images = {f"https://bucket.example/{j}.png": png(10 + j, 20) for j in range(n_pages)}
    fetch = FakeFetch(images)
    pages = [{"url": url, "id": f"id-{j}"} for j, url in enumerate(images)]
    req = load(native([{"ref": "S1", "pages": pages}]), tmp_path, fetch=fetch)
    got = [(p.image_id, p.width, p.height, p.location) for p in req.students[0].pages]
    assert got == [(f"id-{j}", 10 + j, 20, url) for j, url in enumerate(images)]
    assert sorted(fetch.calls) == sorted(images)  # each URL fetched exactly once


def test_url_page_without_size_and_no_fetch(tmp_path: Path) -> None:
    body = native([{"ref": "S1", "pages": [{"url": "https://bucket.example/a.png", "id": "a"}]}])
    message = image_error(body, tmp_path, fetch=None)
    assert "students[0].pages[0].url" in message and "fetching is disabled" in message


def test_failed_fetch_names_the_page(tmp_path: Path) -> None:
    fetch = FakeFetch({"https://bucket.example/a.png": png()})
    body = native([{"ref": "S1", "pages": [
        {"url": "https://bucket.example/a.png", "id": "a"},
        {"url": "https://bucket.example/gone.png", "id": "b"},
    ]}])
    message = image_error(body, tmp_path, fetch=fetch)
    assert "students[0].pages[1].url: HTTP 404 for https://bucket.example/gone.png" in message
    assert "pages[0]" not in message


def test_fetched_bytes_that_are_not_an_image(tmp_path: Path) -> None:
    fetch = FakeFetch({"https://bucket.example/a.png": b"<html>AccessDenied</html>"})
    body = native([{"ref": "S1", "pages": [{"url": "https://bucket.example/a.png", "id": "a"}]}])
    message = image_error(body, tmp_path, fetch=fetch)
    assert "students[0].pages[0].url" in message and "not a readable image" in message


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
    assert [p.location for p in first] == ["https://s3.example/0/1.png",
                                           "https://s3.example/0/2.png"]
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
    message = image_error(body, tmp_path, fetch=fetch)
    assert "students[1].pages[1].url" in message


def test_loading_a_legacy_request_twice_gives_the_same_process(tmp_path: Path) -> None:
    body = legacy(2, 2)
    req = load(body, tmp_path, fetch=legacy_fetch(body))
    again = load(body, tmp_path, fetch=legacy_fetch(body))
    assert again.process_id() == req.process_id()
