"""Tests of request parsing: native and legacy requests, and every refusal naming field and problem."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from qbq.errors import InputError, RequestValidationError
from qbq.request import LegacyRequest, NativeRequest, parse_request, parse_request_json


def native(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "assessment_id": "exam-2024-phys",
        "model": "gpt-4.1-mini",
        "instructions": "Award method marks.",
        "questions": [
            {"question_number": "1", "max_mark": 2, "rubric": "1 mark per step"},
            {"question_number": "2a", "max_mark": 3.5},
        ],
        "model_answer_pages": [{"path": "answers/key.png"}],
        "students": [
            {"ref": "S1", "pages": [{"path": "s1/p1.png"}, {"path": "/abs/s1/p2.png", "id": "s1-2"}]},
            {"ref": "S2", "pages": [
                {"url": "https://bucket.example/s2p1.png?sig=abc", "id": "img-21",
                 "width": 1240, "height": 1754},
                {"data_uri": "data:image/png;base64,iVBORw0KGgo="},
            ]},
        ],
    }
    body.update(over)
    return body


def legacy(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "external_assessment_id": 101,
        "external_assessment_settings_id": 202,
        "external_assessment_file_id": 303,
        "pages_per_student": 2,
        "prompt": "Grade kindly.",
        "images": [
            {"id": 11, "page_number": 1, "aws_path": "https://s3.example/a1.png"},
            {"id": 12, "page_number": 2, "aws_path": "https://s3.example/a2.png"},
            {"id": 13, "page_number": 1, "aws_path": "https://s3.example/b1.png"},
            {"id": 14, "page_number": 2, "aws_path": "https://s3.example/b2.png"},
        ],
        "model_assessment": None,
        "question_list": [{"question_number": "1", "max_mark": 4.0},
                          {"question_number": "2", "max_mark": 6}],
    }
    body.update(over)
    return body


def problems_of(data: Any) -> list[str]:
    with pytest.raises(RequestValidationError) as info:
        parse_request(data)
    error = info.value
    assert isinstance(error, InputError)
    assert error.problems, "a refusal must list its problems"
    for p in error.problems:
        assert p in error.message
    return error.problems


def student_pages(*pages: dict[str, Any]) -> dict[str, Any]:
    return native(students=[{"ref": "S1", "pages": list(pages)}])


# --- valid requests -----------------------------------------------------------------------------


def test_native_request_parses() -> None:
    req = parse_request(native())
    assert isinstance(req, NativeRequest)
    assert req.assessment_id == "exam-2024-phys"
    assert [q.question_number for q in req.questions] == ["1", "2a"]
    assert req.questions[0].rubric == "1 mark per step" and req.questions[1].rubric is None
    assert req.questions[1].max_mark == 3.5
    assert [s.ref for s in req.students] == ["S1", "S2"]
    url_page = req.students[1].pages[0]
    assert (url_page.url, url_page.id, url_page.width, url_page.height) == (
        "https://bucket.example/s2p1.png?sig=abc", "img-21", 1240, 1754)
    assert req.students[0].pages[1].path == "/abs/s1/p2.png"
    assert req.model_answer_pages[0].path == "answers/key.png"


def test_native_minimal_request_parses() -> None:
    body = native()
    del body["instructions"], body["model_answer_pages"]
    req = parse_request(body)
    assert isinstance(req, NativeRequest)
    assert req.instructions is None and req.model_answer_pages == []


def test_legacy_request_parses() -> None:
    req = parse_request(legacy())
    assert isinstance(req, LegacyRequest)
    assert req.external_assessment_id == 101
    assert req.pages_per_student == 2
    assert [im.id for im in req.images] == [11, 12, 13, 14]
    assert req.question_list[1].max_mark == 6.0


def test_legacy_request_tolerates_unknown_fields() -> None:
    req = parse_request(legacy(created_by="old-system"))
    assert isinstance(req, LegacyRequest)


def test_parse_request_json_accepts_text_and_bytes() -> None:
    text = json.dumps(native())
    assert isinstance(parse_request_json(text), NativeRequest)
    assert isinstance(parse_request_json(json.dumps(legacy()).encode()), LegacyRequest)


# --- refusals: one per problem the issue lists --------------------------------------------------


def test_no_students() -> None:
    assert problems_of(native(students=[])) == ["students: no students to grade"]


def test_legacy_no_images_means_no_students() -> None:
    problems = problems_of(legacy(images=[]))
    assert any(p.startswith("images:") and "no students" in p for p in problems)


def test_student_with_no_pages() -> None:
    body = native()
    body["students"][1]["pages"] = []
    assert problems_of(body) == ["students[1].pages: student 'S2' has no pages"]


def test_duplicate_student_refs() -> None:
    body = native()
    body["students"].append(copy.deepcopy(body["students"][0]))
    body["students"][2]["pages"] = [{"path": "other.png"}]
    assert problems_of(body) == ["students: duplicate ref 'S1' at positions [0, 2]"]


def test_duplicate_refs_after_whitespace_stripping() -> None:
    body = native()
    body["students"][1]["ref"] = " S1 "
    assert problems_of(body) == ["students: duplicate ref 'S1' at positions [0, 1]"]


def test_duplicate_question_numbers() -> None:
    body = native(questions=[{"question_number": "1", "max_mark": 2},
                             {"question_number": "1", "max_mark": 3}])
    assert problems_of(body) == ["questions: duplicate question_number '1' at positions [0, 1]"]


def test_legacy_duplicate_question_numbers() -> None:
    body = legacy(question_list=[{"question_number": "3", "max_mark": 2},
                                 {"question_number": "3", "max_mark": 3}])
    assert problems_of(body) == [
        "question_list: duplicate question_number '3' at positions [0, 1]"]


@pytest.mark.parametrize("max_mark", [0, -1, -0.5])
def test_max_mark_not_positive(max_mark: float) -> None:
    body = native()
    body["questions"][1]["max_mark"] = max_mark
    assert problems_of(body) == [f"questions[1].max_mark: must be > 0, got {float(max_mark)}"]


def test_legacy_max_mark_negative() -> None:
    body = legacy()
    body["question_list"][0]["max_mark"] = -3
    assert problems_of(body) == ["question_list[0].max_mark: must be >= 0, got -3.0"]


def test_legacy_max_mark_0_is_accepted_as_the_old_system_did() -> None:
    body = legacy()
    body["question_list"][0]["max_mark"] = 0
    req = parse_request(body)
    assert isinstance(req, LegacyRequest) and req.question_list[0].max_mark == 0


@pytest.mark.parametrize("request_of", [native, legacy])
@pytest.mark.parametrize("text", ["Infinity", "NaN", "-Infinity"])
def test_max_mark_must_be_finite(request_of: Any, text: str) -> None:
    """JSON parsers in Python accept these; a mark cap of infinity would accept any mark."""
    data = request_of()
    data["questions" if "questions" in data else "question_list"][0]["max_mark"] = 987654.5
    body = json.dumps(data).replace("987654.5", text)
    with pytest.raises(RequestValidationError) as info:
        parse_request_json(body)
    assert any("max_mark" in p and ("finite" in p or "> 0" in p) for p in info.value.problems)


def test_legacy_short_last_group_is_accepted_as_the_old_system_did() -> None:
    body = legacy()
    del body["images"][-1]
    req = parse_request(body)
    assert isinstance(req, LegacyRequest) and len(req.images) == 3


def test_legacy_page_major_images_are_refused_naming_the_first_bad_group() -> None:
    body = legacy()
    body["images"] = [body["images"][i] for i in (0, 2, 1, 3)]  # page 1 of a, b; page 2 of a, b
    assert problems_of(body) == [
        "images[0:2] (student 1): page_number 1 appears 2 times in one student's group of "
        "pages_per_student=2; the images look page-major (every student's page 1, then every "
        "page 2): list them student by student"]


def test_a_list_holding_one_legacy_request_is_that_request() -> None:
    req = parse_request([legacy()])
    assert isinstance(req, LegacyRequest) and req.external_assessment_id == 101
    assert problems_of([legacy(), legacy()]) == [
        "request: a list body must hold exactly one request, got 2"]
    [problem] = problems_of([])
    assert problem.startswith("request: must be a JSON object")


def test_legacy_pages_per_student_must_be_positive() -> None:
    problems = problems_of(legacy(pages_per_student=0))
    assert len(problems) == 1 and problems[0].startswith("pages_per_student:")
    assert "greater than 0" in problems[0]


def test_legacy_duplicate_image_ids() -> None:
    body = legacy()
    body["images"][3]["id"] = 11
    assert problems_of(body) == ["images: duplicate image id 11 at positions [0, 3]"]


@pytest.mark.parametrize("text", ['{"assessment_id": "x",', "", "not json", "{'single': 1}"])
def test_malformed_json(text: str) -> None:
    with pytest.raises(RequestValidationError) as info:
        parse_request_json(text)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("request: malformed JSON")


def test_undecodable_bytes_are_malformed_json() -> None:
    with pytest.raises(RequestValidationError, match="malformed JSON"):
        parse_request_json(b"\xff\xfe\x00{")


@pytest.mark.parametrize("data", [[native()], "text", 3, None])
def test_request_must_be_an_object(data: Any) -> None:
    [problem] = problems_of(data)
    assert problem.startswith("request: must be a JSON object")


@pytest.mark.parametrize(
    "page",
    [
        {"path": "a.png", "url": "https://x.example/a.png", "id": "a"},
        {"path": "a.png", "data_uri": "data:image/png;base64,AAAA"},
        {"url": "https://x.example/a.png", "data_uri": "data:image/png;base64,AAAA", "id": "a"},
        {},
        {"id": "only-an-id", "width": 10, "height": 10},
        {"path": ""},
    ],
    ids=["path+url", "path+data_uri", "url+data_uri", "empty", "id-only", "empty-path"],
)
def test_page_needs_exactly_one_source(page: dict[str, Any]) -> None:
    assert problems_of(student_pages({"path": "ok.png"}, page)) == [
        "students[0].pages[1]: a page needs exactly one of path, url or data_uri"]


def test_url_page_without_id() -> None:
    [problem] = problems_of(student_pages({"url": "https://bucket.example/p.png?sig=1"}))
    assert problem.startswith("students[0].pages[0]: a url page needs an id")


def test_url_must_be_http() -> None:
    [problem] = problems_of(student_pages({"url": "s3://bucket/p.png", "id": "p"}))
    assert problem == "students[0].pages[0]: url must be http(s)"


def test_data_uri_must_be_an_image_or_a_pdf() -> None:
    [problem] = problems_of(student_pages({"data_uri": "data:text/plain;base64,AAAA"}))
    assert problem == ("students[0].pages[0]: data_uri: data URI is labelled 'text/plain'; qbq "
                       "reads images and PDFs (data:image/...;base64, or data:application/pdf;"
                       "base64,)")


@pytest.mark.parametrize("size", [{"width": 100}, {"height": 100}])
def test_width_without_height(size: dict[str, int]) -> None:
    assert problems_of(student_pages({"path": "a.png", **size})) == [
        "students[0].pages[0]: give both width and height, or neither"]


@pytest.mark.parametrize("size", [{"width": 0, "height": 10}, {"width": 10, "height": -1}])
def test_sizes_must_be_positive(size: dict[str, int]) -> None:
    [problem] = problems_of(student_pages({"path": "a.png", **size}))
    field = "width" if size["width"] <= 0 else "height"
    assert problem.startswith(f"students[0].pages[0].{field}:")
    assert "greater than 0" in problem


def test_duplicate_page_ids_across_students() -> None:
    body = native()
    body["students"][1]["pages"][0]["id"] = "s1-2"
    assert problems_of(body) == [
        "students[1].pages[0].id: duplicate page id 's1-2' (also students[0].pages[1])"]


def test_duplicate_page_id_between_model_answers_and_students() -> None:
    body = native()
    body["model_answer_pages"] = [{"path": "key.png", "id": "img-21"}]
    assert problems_of(body) == [
        "model_answer_pages[0].id: duplicate page id 'img-21' (also students[1].pages[0])"]


def test_unknown_field_is_refused_with_its_location() -> None:
    body = native()
    body["students"][0]["pages"][0]["rotation"] = 90
    assert problems_of(body) == ["students[0].pages[0].rotation: Extra inputs are not permitted"]


def test_missing_fields_are_named() -> None:
    problems = problems_of({"assessment_id": "x", "model": "gpt-4o"})
    assert problems == ["questions: Field required"]
    body = native()
    del body["students"]
    assert problems_of(body) == ["students: no students to grade"]


def test_empty_ref_is_refused() -> None:
    body = native()
    body["students"][0]["ref"] = "  "
    [problem] = problems_of(body)
    assert problem.startswith("students[0].ref:")


def test_all_problems_are_reported_at_once() -> None:
    body = native(questions=[{"question_number": "1", "max_mark": 0},
                             {"question_number": "1", "max_mark": 1}])
    body["students"][1]["ref"] = "S1"
    body["students"].append({"ref": "S3", "pages": []})
    problems = problems_of(body)
    assert problems == [
        "questions[0].max_mark: must be > 0, got 0.0",
        "questions: duplicate question_number '1' at positions [0, 1]",
        "students: duplicate ref 'S1' at positions [0, 1]",
        "students[2].pages: student 'S3' has no pages",
    ]


# --- class scans, data URI shapes, inline size ----------------------------------------------------


def class_scan(**scan: Any) -> dict[str, Any]:
    body = native()
    del body["students"]
    body["class_scan"] = {"path": "class.pdf", "pages_per_student": 2, **scan}
    return body


def test_class_scan_parses_instead_of_students() -> None:
    req = parse_request(class_scan(refs=["A", "B"]))
    assert isinstance(req, NativeRequest) and req.students == []
    assert req.class_scan is not None
    assert (req.class_scan.path, req.class_scan.pages_per_student, req.class_scan.refs) == (
        "class.pdf", 2, ["A", "B"])


@pytest.mark.parametrize(
    ("scan", "problem"),
    [
        ({"url": "https://x/c.pdf"}, "class_scan: class_scan needs exactly one of path, url or "
                                     "data_uri"),
        ({"pages_per_student": 0}, "class_scan.pages_per_student: Input should be greater than 0"),
        ({"refs": []}, "class_scan: refs: give at least one ref, or null for S001, S002, ..."),
        ({"refs": ["A", "B", "A"]}, "class_scan: refs: duplicate refs ['A']"),
    ],
    ids=["two-sources", "zero-pages", "empty-refs", "duplicate-refs"],
)
def test_bad_class_scan_is_refused(scan: dict[str, Any], problem: str) -> None:
    assert problems_of(class_scan(**scan)) == [problem]


def test_class_scan_and_students_together_are_refused() -> None:
    body = class_scan()
    body["students"] = native()["students"]
    assert problems_of(body) == ["class_scan: give students or class_scan, not both"]


PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGP4DwABAQEAG7buVgAAAABJRU5ErkJggg=="


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        (f"data:image/png,{PNG_B64}", "data_uri: data URI header 'data:image/png' has no ';base64' "
         "marker (its data looks like base64): qbq reads base64 data URIs only - write "
         "'data:image/png;base64,' before the base64"),
        (PNG_B64, "data_uri: not a data URI: it has no 'data:' prefix; the text looks like raw "
         "base64 of a PNG file - send it as 'data:image/png;base64,' followed by the base64"),
        ("hello", "data_uri: not a data URI: it must start with 'data:<type>;base64,' "
         "(e.g. data:image/png;base64,)"),
    ],
    ids=["no-base64-flag", "raw-base64", "not-a-uri"],
)
def test_data_uri_shape_problems_say_exactly_what_is_wrong(uri: str, problem: str) -> None:
    assert problems_of(student_pages({"data_uri": uri})) == [f"students[0].pages[0]: {problem}"]


@pytest.mark.parametrize(
    "uri",
    [
        f"data:image/png;base64,{PNG_B64[:40]}\n{PNG_B64[40:]}",  # wrapped (MIME, 76 columns)
        f"data:image/png;base64, {PNG_B64}",  # a space after the comma
        "data:image/png;base64," + PNG_B64.replace("+", "-").replace("/", "_").rstrip("="),
        f"DATA:image/png;charset=binary;BASE64,{PNG_B64}",
    ],
    ids=["wrapped", "space", "urlsafe-unpadded", "parameters-and-case"],
)
def test_data_uri_forms_that_are_accepted(uri: str) -> None:
    assert isinstance(parse_request(student_pages({"data_uri": uri})), NativeRequest)

