"""Every request field bounded and printable (issue 15, item 2): each violation is a
`RequestValidationError` naming the field, found before any page is read or model called."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qbq.errors import RequestValidationError
from qbq.field_limits import MAX_JSON_DEPTH, json_depth_problem, nesting_problem
from qbq.request import parse_request, parse_request_json
from tests.unit.test_request import legacy, native, problems_of


def one_student(ref: str = "S1", **page: Any) -> dict[str, Any]:
    return native(students=[{"ref": ref, "pages": [page or {"path": "p.png"}]}])


def json_problems(text: str | bytes) -> list[str]:
    with pytest.raises(RequestValidationError) as info:
        parse_request_json(text)
    return info.value.problems


# --- nesting, counted before parsing -------------------------------------------------------------


def test_3000_deep_json_is_refused_before_parsing_not_a_recursion_error() -> None:
    body = json.dumps(native())[:-1] + ', "extra": ' + "[" * 3000 + "]" * 3000 + "}"
    [problem] = json_problems(body)
    assert problem.startswith(f"request: JSON nested deeper than {MAX_JSON_DEPTH} levels")


def test_unclosed_deep_json_and_deep_objects_are_refused_too() -> None:
    assert "nested deeper" in json_problems("[" * 3000)[0]
    assert "nested deeper" in json_problems('{"a":' * 3000)[0]


def test_brackets_inside_strings_do_not_count() -> None:
    body = native(instructions="[" * 5000 + '\\"{' * 100)
    assert json_depth_problem(json.dumps(body)) is None
    assert parse_request_json(json.dumps(body)).instructions == body["instructions"]


def test_a_decoded_request_is_bounded_too_without_recursion() -> None:
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    assert nesting_problem(deep) is not None
    assert "nested deeper" in problems_of(native(extra=deep))[0]


def test_an_integer_of_5000_digits_is_a_request_error() -> None:
    body = json.dumps(native())[:-1] + ', "x": ' + "9" * 5000 + "}"
    assert json_problems(body)[0].startswith("request: unreadable JSON number")


# --- lengths -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "field", "limit"), [
    (one_student("R" * 50_000), "students[0].ref", 64),
    (native(assessment_id="a" * 201), "assessment_id", 128),
    (native(model="m" * 101), "model", 100),
    (native(instructions="i" * 20_001), "instructions", 20_000),
    (native(questions=[{"question_number": "1" * 33, "max_mark": 1}]),
     "questions[0].question_number", 32),
    (native(questions=[{"question_number": "1", "max_mark": 1, "rubric": "r" * 5_001}]),
     "questions[0].rubric", 5_000),
    (one_student(path="p" * 4_097), "students[0].pages[0].path", 4_096),
    (one_student(url="https://a.example/" + "u" * 8_192, id="x"), "students[0].pages[0].url",
     8_192),
    (one_student(path="p.png", id="i" * 129), "students[0].pages[0].id", 128),
])
def test_every_text_field_has_a_maximum_length(body: dict[str, Any], field: str,
                                               limit: int) -> None:
    assert f"{field}: String should have at most {limit} characters" in problems_of(body)


def test_lists_are_bounded() -> None:
    pages = [{"path": f"p{i}.png"} for i in range(1_001)]
    assert problems_of(native(students=[{"ref": "S1", "pages": pages}])) == [
        "students[0].pages: List should have at most 1000 items after validation, not 1001"]


# --- printable -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "field", "found"), [
    (one_student("S1\nS2"), "students[0].ref", "U+000A"),
    (one_student('S1\n{"level": "INFO", "msg": "forged"}'), "students[0].ref", "U+000A"),
    (one_student("S1\x1b[31m"), "students[0].ref", "U+001B"),
    (one_student("S1\u202eevil"), "students[0].ref", "U+202E"),
    (native(assessment_id="exam\x00"), "assessment_id", "U+0000"),
    (one_student(path="pa\x00ge.png"), "students[0].pages[0].path", "U+0000"),
    (one_student(path="p.png", id="a\u2028b"), "students[0].pages[0].id", "U+2028"),
    (native(questions=[{"question_number": "1\t", "max_mark": 1}, {"question_number": "2\rb",
                                                                   "max_mark": 1}]),
     "questions[1].question_number", "U+000D"),
])
def test_control_and_format_characters_are_refused_in_ids_refs_and_paths(
        body: dict[str, Any], field: str, found: str) -> None:
    assert (f"{field}: must not contain control or format characters (found {found})"
            in problems_of(body))


def test_instructions_and_rubrics_keep_newlines_but_not_nul_or_escape() -> None:
    ok = parse_request(native(instructions="Line 1\n\tLine 2\r\n"))
    assert ok.instructions is not None and "\n\tLine 2" in ok.instructions
    assert problems_of(native(instructions="a\x1b[2Jb")) == [
        "instructions: must not contain control characters other than newline and tab "
        "(found U+001B)"]


def test_the_refusal_never_echoes_the_hostile_text() -> None:
    with pytest.raises(RequestValidationError) as info:
        parse_request(one_student("S1\x1b]0;pwned\x07" + "x" * 40))
    assert "\x1b" not in info.value.message and "pwned" not in info.value.message


# --- numbers -------------------------------------------------------------------------------------


def test_a_width_of_10_to_the_400_is_a_field_error_not_an_overflow() -> None:
    body = json.dumps(one_student(url="https://a.example/p.png", id="p", width=1, height=1))
    body = body.replace('"width": 1', '"width": 1' + "0" * 400)
    assert "students[0].pages[0].width: Input should be less than or equal to 65535" in (
        json_problems(body))


@pytest.mark.parametrize("mark", [1e6, float("inf")])
def test_max_mark_is_bounded_and_finite(mark: float) -> None:
    [problem] = problems_of(native(questions=[{"question_number": "1", "max_mark": mark}]))
    assert problem.startswith("questions[0].max_mark: Input should be")


def test_legacy_numbers_and_texts_are_bounded() -> None:
    problems = problems_of(legacy(external_assessment_id=2**64, pages_per_student=10**6,
                                  prompt="p\x00"))
    assert problems[0].startswith("external_assessment_id: Input should be less than or equal")
    assert problems[1].startswith("pages_per_student: Input should be less than or equal to 1000")
    assert problems[2].startswith("prompt: must not contain control characters")
    images = legacy()["images"]
    images[0]["aws_path"] = "https://s3.example/a\nb.png"
    assert problems_of(legacy(images=images)) == [
        "images[0].aws_path: must not contain control or format characters (found U+000A)"]
