"""The grade-assessment flow end to end: Prefect, the simulator over HTTP, a real store, delivery."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flows.grade_assessment import grade_assessment
from qbq.request import NativeRequest
from qbq.sample import truth_of, write_legacy_sample, write_sample
from qbq.simulator import BackgroundServer
from tests.integration.conftest import received

pytestmark = pytest.mark.usefixtures("prefect_server")


def _marks(payload: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {s["ref"]: {a["question_number"]: a["mark"] for a in s["answers"]}
            for s in payload["students"]}


def test_flow_grades_every_student_on_the_right_marks_and_delivers_once(
    tmp_path: Path, grading_env: str, receiver: BackgroundServer, sim_stats: Any
) -> None:
    request = write_sample(tmp_path / "sample", students=10, pages=2, questions=3, seed=3)

    summary = grade_assessment(request_path=str(request))

    assert summary["status"] == "success"
    assert summary["graded"] == 10 and summary["failed"] == 0
    assert summary["batches"] == 4  # 10 students, at most 3 per batch
    assert summary["simulated"] is True
    stats = sim_stats()
    assert stats["requests"] == 4 and stats["by_status"] == {"200": 4}
    assert summary["prompt_tokens"] == stats["prompt_tokens"]
    got = received(receiver)
    assert len(got["payloads"]) == 1
    payload = got["payloads"][0]["payload"]
    assert payload["process_id"] == summary["process_id"]
    assert _marks(payload) == truth_of(request)
    assert [s["ref"] for s in payload["students"]] == [f"S{i:03d}" for i in range(1, 11)]
    assert all(len(s["image_ids"]) == 2 for s in payload["students"])
    assert all(a["feedback"].startswith("[simulated]")
               for s in payload["students"] for a in s["answers"])


def test_second_run_makes_no_model_call_and_delivers_nothing_new(
    tmp_path: Path, grading_env: str, receiver: BackgroundServer, sim_stats: Any
) -> None:
    request = write_sample(tmp_path / "sample", students=7, pages=1, questions=2, seed=4)
    first = grade_assessment(request_path=str(request))
    calls_after_first = sim_stats()["requests"]

    second = grade_assessment(request_path=str(request))

    assert calls_after_first == 3
    assert sim_stats()["requests"] == calls_after_first
    assert second["process_id"] == first["process_id"]
    assert second["status"] == "success" and second["graded"] == 7
    got = received(receiver)
    assert len(got["payloads"]) == 1 and got["duplicates"] == 0


def test_inline_request_parameter(
    tmp_path: Path, grading_env: str, receiver: BackgroundServer, sim_stats: Any
) -> None:
    path = write_sample(tmp_path / "sample", students=2, pages=1, questions=2, seed=5)
    body = json.loads(path.read_text())
    for student in body["students"]:
        for page in student["pages"]:
            page["path"] = str(path.parent / page["path"])
    body["model_answer_pages"] = []

    summary = grade_assessment(request=NativeRequest.model_validate(body))

    assert summary["status"] == "success" and summary["graded"] == 2
    assert _marks(received(receiver)["payloads"][0]["payload"]) == truth_of(path)


def test_legacy_request_in_legacy_payload_out(
    grading_env: str, receiver: BackgroundServer, static_files: tuple[Path, str], sim_stats: Any
) -> None:
    root, base_url = static_files
    legacy = write_legacy_sample(root, base_url=base_url, students=4, pages=2, questions=3, seed=6)
    truth = truth_of(root / "request.json")

    summary = grade_assessment(request_path=str(legacy))

    assert summary["status"] == "success" and summary["graded"] == 4
    payload = received(receiver)["payloads"][0]["payload"]
    body = json.loads(legacy.read_text())
    assert payload["assessment_id"] == body["external_assessment_id"]
    assert payload["assessment_settings_id"] == body["external_assessment_settings_id"]
    assert payload["status"] == "success"
    assert len(payload["data"]) == 4
    image_ids = [str(im["id"]) for im in body["images"]]
    for i, entry in enumerate(payload["data"]):
        assert set(entry) >= {"first_name", "last_name", "answers", "image_ids"}
        assert entry["first_name"] and entry["last_name"]
        assert entry["image_ids"] == image_ids[2 * i : 2 * i + 2]
        marks = {a["question_number"]: a["mark"] for a in entry["answers"]}
        assert marks == truth[f"S{i + 1:03d}"]
        assert set(entry["answers"][0]) >= {"question_number", "mark", "feedback"}
