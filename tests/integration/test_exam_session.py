"""The exam-session flow over an intake folder: each request graded once, bad ones set aside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flows.exam_session import exam_session
from qbq.errors import GradingFailedError
from qbq.sample import truth_of, write_sample
from qbq.simulator import BackgroundServer
from tests.integration.conftest import received

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, simulator: BackgroundServer,
        receiver: BackgroundServer) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", f"{simulator.url}/v1")
    monkeypatch.setenv("QBQ_RESULTS_API_URL", f"{receiver.url}/results")
    monkeypatch.setenv("QBQ_DATABASE_URL", f"sqlite:///{tmp_path / 'qbq.db'}")
    monkeypatch.setenv("QBQ_MAX_STUDENTS_PER_BATCH", "3")
    monkeypatch.setenv("QBQ_RPM", "10000")
    monkeypatch.setenv("QBQ_TPM", "100000000")
    monkeypatch.setenv("QBQ_LIMITER_DIR", str(tmp_path / "limiter"))


def test_intake_requests_are_graded_once_and_bad_ones_set_aside(
        tmp_path: Path, env: None, receiver: BackgroundServer, sim_stats: Any) -> None:
    intake = tmp_path / "intake"
    write_sample(intake / "exam-a", students=4, pages=1, questions=2, seed=61)
    write_sample(intake / "exam-b", students=2, pages=1, questions=2, seed=62)
    (intake / "broken.json").write_text('{"assessment_id": ')
    (intake / ".incoming.json").write_text("{}")  # still being written: left alone

    with pytest.raises(GradingFailedError, match="1 of 3 intake request"):
        exam_session(intake_dir=str(intake))

    assert sorted(p.name for p in (intake / "done").iterdir()) == ["exam-a", "exam-b"]
    assert sorted(p.name for p in (intake / "failed").iterdir()) == [
        "broken.json", "broken.json.error.txt"]
    assert "malformed JSON" in (intake / "failed" / "broken.json.error.txt").read_text()
    assert list((intake / "processing").iterdir()) == []
    assert (intake / ".incoming.json").exists()
    payloads = {p["payload"]["assessment_id"]: p["payload"] for p in received(receiver)["payloads"]}
    assert len(payloads) == 2
    for name in ("exam-a", "exam-b"):
        request = intake / "done" / name / "request.json"
        payload = payloads[json.loads(request.read_text())["assessment_id"]]
        marks = {s["ref"]: {a["question_number"]: a["mark"] for a in s["answers"]}
                 for s in payload["students"]}
        assert marks == truth_of(request)
    calls = sim_stats()["requests"]
    assert calls == 2 + 1  # 4 students in 2 batches, 2 students in 1

    again = exam_session(intake_dir=str(intake))  # nothing waiting: nothing graded

    assert again["done"] == [] and again["failed"] == []
    assert sim_stats()["requests"] == calls and len(received(receiver)["payloads"]) == 2
