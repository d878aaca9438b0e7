"""Fuzzing request parsing, loading and planning: only qbq errors escape (issue 15, item 3).

A short hypothesis search runs here; `benchmarks/fuzz.py` runs a long one. Every finding of the
issue and of the long runs is kept below as a regression case.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from qbq.errors import ImageError, RequestValidationError
from qbq.testing.fuzz import FUZZ_PAGE_URL, FuzzWorld, check_request_text, hostile_requests, make_world
from tests.pages import png


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> FuzzWorld:
    return make_world(tmp_path_factory.mktemp("fuzz"), png(400, 560))


def request(**over: object) -> str:
    body: dict[str, object] = {
        "assessment_id": "exam-1", "model": "gpt-4.1-mini",
        "questions": [{"question_number": "1", "max_mark": 2}],
        "students": [{"ref": "S1", "pages": [{"path": "p.png"}]}], **over}
    return json.dumps(body)


def legacy(**over: object) -> str:
    """A one-page legacy request with `over` in place of its fields."""
    body: dict[str, object] = {
        "external_assessment_id": 1, "external_assessment_settings_id": 2,
        "external_assessment_file_id": 3, "pages_per_student": 1,
        "images": [{"id": 1, "page_number": 1, "aws_path": FUZZ_PAGE_URL}],
        "question_list": [{"question_number": "1", "max_mark": 1}], **over}
    return json.dumps(body)


def test_a_valid_request_plans(world: FuzzWorld) -> None:
    assert check_request_text(request(), world) is None


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(text=hostile_requests())
def test_only_qbq_errors_escape(world: FuzzWorld, text: str) -> None:
    check_request_text(text, world)
    check_request_text(text, world, pass_urls=True)


# --- findings, kept as regression cases ----------------------------------------------------------

FINDINGS = {
    "path with NUL": (request(students=[{"ref": "S1", "pages": [{"path": "p\x00.png"}]}]),
                      RequestValidationError, "students[0].pages[0].path: must not contain"),
    "3000 nested [": (request(x=[]).replace("[]", "[" * 3000 + "]" * 3000),
                      RequestValidationError, "request: JSON nested deeper than 32 levels"),
    "octal IPv4 URL": (request(students=[{"ref": "S1", "pages": [
        {"url": "http://0177.0.0.1/x", "id": "a"}]}]), ImageError,
        "students[0].pages[0].url: refused: the URL's host is not a public internet address"),
    "unclosed IPv6 URL": (request(students=[{"ref": "S1", "pages": [
        {"url": "http://[::1/x", "id": "a"}]}]), ImageError,
        "students[0].pages[0].url: not a valid URL"),
    "width 10**400": (request(students=[{"ref": "S1", "pages": [
        {"url": FUZZ_PAGE_URL, "id": "a", "width": 1, "height": 1}]}]).replace(
            '"width": 1', '"width": 1' + "0" * 400), RequestValidationError,
        "students[0].pages[0].width: Input should be less than or equal to 65535"),
    "assessment_id of 201": (request(assessment_id="a" * 201), RequestValidationError,
                             "assessment_id: String should have at most 128 characters"),
    "assessment_id with NUL": (request(assessment_id="a\x00"), RequestValidationError,
                               "assessment_id: must not contain control"),
    "legacy URL with NUL": (
        legacy(images=[{"id": 1, "page_number": 1, "aws_path": "http://a\x00b/x"}]),
        RequestValidationError, "images[0].aws_path: must not contain control"),
    "legacy model answer with newline": (
        legacy(model_assessment=["http://a.example/x\ny"]), RequestValidationError,
        "model_assessment[0]: must not contain control or format characters (found U+000A)"),
    "legacy model answer unclosed IPv6": (
        legacy(model_assessment=["http://[::1/x"]), ImageError,
        "model_answer_pages[0].url: not a valid URL"),
    "integer of 6000 digits": (request(x=1).replace('"x": 1', '"x": ' + "9" * 6000),
                               RequestValidationError, "request: unreadable JSON number"),
}


@pytest.mark.parametrize("finding", FINDINGS)
def test_fuzz_findings_are_qbq_errors_naming_the_field(world: FuzzWorld, finding: str) -> None:
    text, kind, words = FINDINGS[finding]
    for pass_urls in (False, True):
        error = check_request_text(text, world, pass_urls=pass_urls)
        assert isinstance(error, kind), error
        assert words in error.message


def test_the_page_file_itself_stays_inside_the_folder(world: FuzzWorld, tmp_path: Path) -> None:
    error = check_request_text(
        request(students=[{"ref": "S1", "pages": [{"path": "/dev/zero"}]}]), world)
    assert isinstance(error, ImageError)
