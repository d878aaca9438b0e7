"""A request in the replaced system's exact shape (a list body, integer image ids, a 0-mark
question, a short last group) grades and comes back in its old shape: integer ids, graded
students only in `data`, the others in `failures`; page-major images are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from qbq import pipeline
from qbq.cli import app
from qbq.errors import ProviderContentError
from qbq.grading import grade_batch
from qbq.loading import load_request
from qbq.payload import LegacyPayload
from qbq.planning import plan_batches
from qbq.preparation import Prepared
from qbq.provider import ChatReply, ChatRequest
from qbq.request import parse_request
from qbq.sample import write_sample
from qbq.settings import GradingPolicy, QbqSettings
from qbq.testing.fakes import FakeClock, FakeFetcher, ScriptedProvider, fake_run, memory_store, reply

BASE = "https://old-platform.s3.test/scans"
SETTINGS = QbqSettings(database_url="sqlite://")


@pytest.fixture(scope="module")
def old_request(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]],
                                                                      FakeFetcher]:
    """Three students, two pages each but the last (a short last group), as a one-element list
    with integer ids; question "2" is worth 0 marks."""
    native = json.loads(write_sample(tmp_path_factory.mktemp("old"), students=3, pages=2,
                                     questions=2, seed=5).read_text())
    folder = tmp_path_factory.getbasetemp()
    pages: dict[str, bytes | int] = {}
    images = []
    for student in native["students"]:
        for number, page in enumerate(student["pages"], start=1):
            url = f"{BASE}/{len(images) + 1}.png"
            pages[url] = next(folder.rglob(Path(page["path"]).name)).read_bytes()
            images.append({"id": 70_000 + len(images) + 1, "page_number": number, "aws_path": url})
    body = {
        "external_assessment_id": 555, "external_assessment_settings_id": 556,
        "external_assessment_file_id": 557, "pages_per_student": 2, "prompt": None,
        "images": images[:-1],  # the last student's page 2 is missing: a short last group
        "model_assessment": None,
        "question_list": [{"question_number": "1", "max_mark": 3.0},
                          {"question_number": "2", "max_mark": 0}],
    }
    return [body], FakeFetcher(pages)


def marks_for(refs: list[str], bad: str) -> ChatReply | ProviderContentError:
    if bad in refs:
        return ProviderContentError("request refused (400): unsupported image",
                                    status_code=400, param=None)
    return reply(json.dumps({"students": [{"ref": r, "name": None, "answers": [
        {"question_number": "1", "mark": 2.0, "feedback": "ok", "confidence": "high",
         "status": "answered"},
        {"question_number": "2", "mark": 0.0, "feedback": "no marks", "confidence": "high",
         "status": "answered"}]} for r in refs]}))


def grade(old: list[dict[str, Any]], fetch: FakeFetcher, bad: str,
          policy: GradingPolicy) -> dict[str, Any]:
    request = load_request(parse_request(old), base_dir=Path.cwd(), settings=SETTINGS,
                           fetch=fetch)
    prepared = Prepared(request, plan_batches(request, policy))
    store = memory_store()
    pipeline.register(store, prepared, SETTINGS)

    def behave(refs: list[str], _: ChatRequest) -> ChatReply | ProviderContentError:
        return marks_for(refs, bad)

    deps = fake_run(store, ScriptedProvider(["1", "2"], [behave] * 20), FakeClock()).deps
    for batch in prepared.plan.batches:
        grade_batch(batch, request, deps)
    done = pipeline.finalize(store, prepared, policy=policy, settings=SETTINGS)
    assert isinstance(done.outgoing, LegacyPayload)
    return json.loads(done.outgoing.model_dump_json())


def test_the_old_shape_in_gives_the_old_shape_out(
        old_request: tuple[list[dict[str, Any]], FakeFetcher]) -> None:
    old, fetch = old_request
    sent = grade(old, fetch, bad="S001", policy=GradingPolicy())

    assert (sent["assessment_id"], sent["assessment_settings_id"]) == (555, 556)
    assert [s["ref"] for s in sent["data"]] == ["S002", "S003"]  # graded students only
    assert [s["image_ids"] for s in sent["data"]] == [[70_003, 70_004], [70_005]]
    assert all(type(i) is int for s in sent["data"] for i in s["image_ids"])
    assert sent["data"][0]["answers"][1] == {"question_number": "2", "mark": 0.0,
                                             "feedback": "no marks"}
    # the short last group is a student with fewer pages, flagged for a person
    assert [s["needs_review"] for s in sent["data"]] == [False, True]
    [failure] = sent["failures"]
    assert (failure["ref"], failure["image_ids"], failure["error_type"]) == (
        "S001", [70_001, 70_002], "ProviderContentError")
    assert "S001" in failure["reason"] and "70001" in failure["reason"]
    assert sent["status"] == "failed"  # 2 of 3 graded, under the default coverage of 1.0


def test_the_old_any_student_parsed_rule_is_a_coverage_setting(
        old_request: tuple[list[dict[str, Any]], FakeFetcher]) -> None:
    old, fetch = old_request
    # README: QBQ_MIN_COVERAGE=0.000001 — "failed" only when no student was graded
    sent = grade(old, fetch, bad="S001", policy=GradingPolicy(min_coverage=0.000001))
    assert sent["status"] == "success" and len(sent["data"]) == 2


def test_page_major_images_are_refused_with_exit_2(
        old_request: tuple[list[dict[str, Any]], FakeFetcher], tmp_path: Path) -> None:
    [body], _ = old_request
    images = body["images"][:4]
    page_major = {**body, "images": [images[i] for i in (0, 2, 1, 3)]}
    path = tmp_path / "page-major.json"
    path.write_text(json.dumps([page_major]))
    result = CliRunner().invoke(app, ["plan", str(path)], terminal_width=400)
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "images[0:2] (student 1): page_number 1 appears 2 times" in said
    assert "page-major" in said
