"""Reports of a graded run: metrics against the simulator's own counts, artifacts through the
Prefect API, CSV/Parquet exports against the delivered payload, the chart, review and purge."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pandas as pd
import pytest
import typer
from PIL import Image, ImageStat
from prefect import flow
from typer.testing import CliRunner

from flows.artifacts import artifact_key, publish_run_artifacts
from flows.grade_assessment import grade_assessment
from qbq.cli_reports import register
from qbq.observability import lifecycle
from qbq.observability.metrics import percentile
from qbq.observability.reports import PANELS_KEY, marks_frame
from qbq.pipeline import RunResult
from qbq.resources import open_store
from qbq.sample import truth_of, write_sample
from qbq.settings import get_settings
from qbq.simulator import BackgroundServer
from qbq.store import Store, queries
from qbq.store import repository as repo
from tests.integration.conftest import received

pytestmark = pytest.mark.usefixtures("prefect_server")


def cli() -> Callable[..., Any]:
    app = typer.Typer()
    register(app)
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        result = runner.invoke(app, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    return invoke


def max_marks_of(request: Path) -> dict[str, float]:
    body = json.loads(request.read_text())
    return {q["question_number"]: float(q["max_mark"]) for q in body["questions"]}


@flow(name="publish-run-artifacts")
def publish_flow(process_id: str, max_marks: dict[str, float]) -> None:
    store = open_store(get_settings())
    try:
        publish_run_artifacts(process_id, store, max_marks=max_marks)
    finally:
        store.dispose()


def grade(request: Path) -> tuple[dict[str, Any], UUID]:
    """Run the flow, then publish its artifacts as the flow's last step does (in a flow run of
    its own while that hook is not in the flow); return (summary, flow run id)."""
    state = grade_assessment(request_path=str(request), return_state=True)
    result: RunResult = state.result()
    summary = {"process_id": result.process_id, "status": result.status,
               **result.summary.model_dump()}
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    publish_flow(summary["process_id"], max_marks_of(request))
    return summary, flow_run_id


def payload_marks(receiver: BackgroundServer) -> dict[str, dict[str, float]]:
    payload = received(receiver)["payloads"][0]["payload"]
    return {s["ref"]: {a["question_number"]: a["mark"] for a in s["answers"]}
            for s in payload["students"]}


def frame_marks(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for row in frame.itertuples(index=False):
        out.setdefault(str(row.ref), {})[str(row.question_number)] = float(row.mark)
    return out


def test_percentile_matches_numpy_linear_interpolation() -> None:
    import numpy as np

    values = [812.0, 95.5, 1200.25, 40.0, 40.0, 333.3, 7.0]
    for q in (0, 50, 95, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([], 50) is None


def test_parse_age() -> None:
    assert lifecycle.parse_age("30d") == timedelta(days=30)
    assert lifecycle.parse_age("12h") == timedelta(hours=12)
    assert lifecycle.parse_age("90m") == timedelta(minutes=90)
    for bad in ("30", "d", "-1d", "3y"):
        with pytest.raises(ValueError):
            lifecycle.parse_age(bad)


def test_report_matches_the_simulator_exports_match_the_payload_and_purge_keeps_marks(
    tmp_path: Path, grading_env: str, receiver: BackgroundServer, sim_stats: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QBQ_KEEP_RAW_RESPONSES", "true")
    request = write_sample(tmp_path / "sample", students=10, pages=1, questions=3, seed=21)
    summary, flow_run_id = grade(request)
    pid = summary["process_id"]
    assert summary["status"] == "success"
    stats = sim_stats()
    run = cli()

    # metrics: printed, stored in the database, equal to the simulator's own counts
    out = tmp_path / "out"
    result = run("report", pid, "--json", "--csv", str(out / "marks.csv"),
                 "--parquet", str(out / "marks.parquet"), "--chart", str(out / "marks.png"))
    metrics = json.loads(result.stdout)
    assert metrics["requests"] == stats["requests"] == 4
    assert metrics["model_replies"] == stats["by_status"]["200"]
    assert metrics["tokens_in"] == stats["prompt_tokens"] == summary["prompt_tokens"]
    assert metrics["tokens_out"] == stats["completion_tokens"] == summary["completion_tokens"]
    assert (metrics["students"], metrics["students_graded"], metrics["batches_succeeded"]) == \
        (10, 10, 4)
    assert metrics["student_success_rate"] == metrics["batch_success_rate"] == 1.0
    assert metrics["retries"] == 0 and metrics["errors_by_type"] == {}
    assert metrics["estimated_cost_usd"] == pytest.approx(summary["estimated_cost_usd"], abs=1e-6)
    assert metrics["simulated"] is True
    assert 0 < metrics["latency_p50_ms"] <= metrics["latency_p95_ms"] <= metrics["latency_max_ms"]
    store = Store(grading_env)
    with store.transaction() as session:
        process = repo.get_process(session, pid)
        assert process is not None and process.summary is not None
        assert process.summary["metrics"] == metrics
        assert process.summary["max_marks"] == max_marks_of(request)

    # the text table shows the same figures
    table = run("report", pid).stdout
    assert "tokens in" in table and f"{stats['prompt_tokens']:,}" in table

    # exports: the payload's marks, per student and question, with the max marks
    truth = payload_marks(receiver)
    assert truth == truth_of(request)
    csv = pd.read_csv(out / "marks.csv", dtype={"ref": str, "question_number": str})
    parquet = pd.read_parquet(out / "marks.parquet")
    for frame in (csv, parquet):
        assert list(frame.columns) == ["ref", "question_number", "mark", "max_mark", "confidence",
                                       "status", "needs_review", "student_status"]
        assert len(frame) == 30
        assert frame_marks(frame) == truth
        assert dict(zip(frame["question_number"], frame["max_mark"], strict=True)) == \
            max_marks_of(request)
        assert set(frame["confidence"]) == {"high"} and not frame["needs_review"].any()

    # the chart: a real PNG with one panel per question plus the review share
    with Image.open(out / "marks.png") as image:
        assert image.format == "PNG" and image.width > 600 and image.height > 300
        assert image.info[PANELS_KEY] == "4"
        stat = ImageStat.Stat(image.convert("L"))
        assert stat.extrema[0][0] < 100 and stat.stddev[0] > 10  # drawn on, not blank

    # artifacts, read back through the Prefect API
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
    )

    with get_client(sync_client=True) as client:
        in_run = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        keyed = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=[artifact_key(pid, "batches"), artifact_key(pid, "summary")])))
    progress = [a for a in in_run if a.type == "progress"]
    assert progress and progress[-1].data == 100.0
    by_type = {a.type: a for a in keyed}
    table_rows = json.loads(str(by_type["table"].data))
    assert [r["batch"] for r in table_rows] == [0, 1, 2, 3]
    assert {r["status"] for r in table_rows} == {"succeeded"}
    assert sum(r["tokens_in"] for r in table_rows) == stats["prompt_tokens"]
    assert set(table_rows[0]) == {"batch", "status", "students", "graded", "attempts",
                                  "model_replies", "tokens_in", "tokens_out", "cached_tokens",
                                  "reasoning_tokens", "latency_ms", "error_type"}
    markdown = str(by_type["markdown"].data)
    for text in ("coverage | 100.0%", "students needing review | 0", "p50", "p95",
                 "HTTP 429 (rate limited) | 0", "retries | 0", "SIMULATED"):
        assert text in markdown
    for artifact in keyed:
        assert "S001" not in str(artifact.data)

    # status
    status = json.loads(run("status", pid, "--json").stdout)
    assert status["status"] == "completed" and status["batches_by_status"] == {"succeeded": 4}
    assert status["delivery"]["status"] == "delivered" and status["raw_replies_kept"] == 4

    # lifecycle: retention keeps raw replies; purges drop them and the delivered payload only
    keys = [k for k, _ in sorted((b.idempotency_key, b.batch_index) for b in _batches(store, pid))]
    assert "purged 0 raw model replies and 0 delivered payloads" in \
        run("purge", "--older-than", "30d").stdout
    assert lifecycle.purge_after_reduce(store, keys, keep=True) == 0
    assert lifecycle.purge_after_reduce(store, keys[:1], keep=False) == 1
    assert "purged 3 raw model replies and 1 delivered payloads" in \
        run("purge", "--older-than", "0s").stdout
    with store.transaction() as session:
        assert queries.raw_response_count(session, pid) == 0
        outbox = repo.get_outbox(session, pid)
        assert outbox is not None and outbox.status == "delivered"
        assert set(outbox.payload) == {"purged_at"}
    assert frame_marks(marks_frame(store, pid)) == truth
    again = json.loads(run("report", pid, "--json").stdout)
    assert again["tokens_in"] == metrics["tokens_in"] and again["students_graded"] == 10
    assert json.loads(run("status", pid, "--json").stdout)["delivery"]["payload_purged"] is True
    store.dispose()


def _batches(store: Store, pid: str) -> list[Any]:
    with store.transaction() as session:
        return queries.process_batches(session, pid)


def _flag_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the simulator's examiner unsure of some answers (it is always sure otherwise)."""
    import qbq.simulator.app as sim_app

    original = sim_app.grade
    flags = {("S002", "1"): {"confidence": "low"}, ("S003", "2"): {"status": "blank"},
             ("S005", "3"): {"status": "unreadable", "confidence": "medium"}}

    def unsure(*args: Any, **kwargs: Any) -> dict[str, Any]:
        answer: dict[str, Any] = original(*args, **kwargs)
        for student in answer["students"]:
            for a in student["answers"]:
                a.update(flags.get((student["ref"], a["question_number"]), {}))
        return answer

    monkeypatch.setattr(sim_app, "grade", unsure)


def test_review_payload_and_metrics_agree_on_what_needs_a_person(
    tmp_path: Path, grading_env: str, receiver: BackgroundServer, sim_stats: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _flag_answers(monkeypatch)
    request = write_sample(tmp_path / "sample", students=6, pages=1, questions=3, seed=22)
    summary, _ = grade(request)
    pid = summary["process_id"]
    run = cli()

    queue = json.loads(run("review", pid, "--json").stdout)
    # one rule (qbq.review): low confidence and unreadable need a person; a blank answer does not
    assert [(r["ref"], r["question_number"], r["reason"]) for r in queue] == [
        ("S002", "1", "low confidence"), ("S005", "3", "unreadable")]
    assert all("feedback" not in r for r in queue)
    text = run("review", pid).stdout
    assert "S002" in text and "[simulated]" not in text

    payload = received(receiver)["payloads"][0]["payload"]
    flagged = sorted(s["ref"] for s in payload["students"] if s["needs_review"])
    assert flagged == sorted({r["ref"] for r in queue}) == ["S002", "S005"]
    feedback = {(s["ref"], a["question_number"]): a["feedback"]
                for s in payload["students"] for a in s["answers"]}
    shown = json.loads(run("review", pid, "--json", "--show-feedback").stdout)
    assert [r["feedback"] for r in shown] == [feedback[("S002", "1")], feedback[("S005", "3")]]

    metrics = json.loads(run("report", pid, "--json").stdout)
    assert metrics["students_needs_review"] == 2 == summary["needs_review"] == len(flagged)
    chart = tmp_path / "chart.png"
    run("report", pid, "--chart", str(chart))
    with Image.open(chart) as image:
        assert image.info[PANELS_KEY] == "4"


def test_unknown_process_is_exit_code_2(grading_env: str) -> None:
    app = typer.Typer()
    register(app)
    for command in ("report", "review", "status"):
        result = CliRunner().invoke(app, [command, "qbq-nope"])
        assert result.exit_code == 2, command
    assert CliRunner().invoke(app, ["purge", "--older-than", "soon"]).exit_code == 2
