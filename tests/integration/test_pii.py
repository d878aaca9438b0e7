"""No personal data leaks: a graded run whose pages carry planted names, whose feedback names the
student, whose page URLs are presigned (one of them expired) and two of whose students fail,
scanned everywhere a person or a log pipeline could read it — none of the planted strings may
appear."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from prefect import flow
from typer.testing import CliRunner

from flows.artifacts import artifact_key, publish_run_artifacts
from flows.grade_assessment import grade_assessment
from qbq.cli_reports import register
from qbq.images import TRUTH_KEY, read_truth
from qbq.observability.logs import JsonLinesFormatter, configure_logging
from qbq.pipeline import RunResult
from qbq.resources import open_store
from qbq.sample import stamp_truth, truth_qr, write_sample
from qbq.settings import get_settings
from qbq.simulator import BackgroundServer
from qbq.store import Store, queries
from tests.integration.conftest import received

pytestmark = pytest.mark.usefixtures("prefect_server")

PLANTED = [("Ottoline", "Featherstonehaugh"), ("Peregrine", "Cholmondeley"),
           ("Wilhelmina", "Throckmorton"), ("Evangeline", "Marjoribanks"),
           ("Bartholomew", "Wolstenholme"), ("Clementine", "Auchinleck"),
           ("Leopoldina", "Ravenscroft")]
FEEDBACK_MARK = "Persnickety"
SIGNATURE = "PLANTEDSIG"
CREDENTIAL = "AKIAPLANTED"
API_KEY = "sk-test-simulated"
FAILING = "S003"
EXPIRED = "S005"  # its first page's presigned URL has expired (HTTP 404): fails at intake


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """QBQ_LOG_FORMAT=json for this test, with qbq's loggers also sent to the Prefect API (as
    PREFECT_LOGGING_EXTRA_LOGGERS=qbq does); the logging setup is restored afterwards."""
    from prefect.logging.handlers import APILogHandler

    logging.getLogger("qbq")  # a real logger (not a placeholder), so it is saved below
    loggers = [logging.getLogger(), *(x for x in logging.Logger.manager.loggerDict.values()
                                      if isinstance(x, logging.Logger))]
    saved = [(lg, list(lg.handlers), list(lg.filters), lg.level, lg.propagate) for lg in loggers]
    handler_filters = {id(h): (h, list(h.filters)) for lg in loggers for h in lg.handlers}
    monkeypatch.setenv("QBQ_LOG_FORMAT", "json")
    logging.getLogger("qbq").addHandler(APILogHandler())
    assert configure_logging() == "json"
    yield
    for lg, handlers, filters, level, propagate in saved:
        lg.handlers, lg.filters, lg.level, lg.propagate = handlers, filters, level, propagate
    for handler, filters in handler_filters.values():
        handler.filters = filters


def _plant(root: Path, base_url: str) -> Path:
    """A sample served over http with presigned-looking URLs and planted names in the truth."""
    native = write_sample(root, students=len(PLANTED), pages=2, questions=3, seed=31)
    body = json.loads(native.read_text())
    for i, (student, (first, last)) in enumerate(zip(body["students"], PLANTED, strict=True)):
        for page in student["pages"]:
            path = root / page["path"]
            data = path.read_bytes()
            truth = read_truth(data)
            if truth is not None:
                old_side = truth_qr(truth, (1240, 1754)).width
                truth["name"] = {"first": first, "last": last}
                info = PngInfo()
                info.add_text(TRUTH_KEY, json.dumps(truth))
                with Image.open(path) as img:
                    img.load()
                    blank = Image.new("L", (old_side + 40, old_side + 40), 255)
                    img.paste(blank, (img.width - blank.width, img.height - blank.height))
                    stamp_truth(img, truth).save(path, format="PNG", pnginfo=info)  # QR too
            query = f"X-Amz-Signature={SIGNATURE}{i}&X-Amz-Credential={CREDENTIAL}%2F20260101"
            name = "expired.png" if student["ref"] == EXPIRED and truth is not None else path.name
            page.clear()
            page.update({"url": f"{base_url}/pages/{name}?{query}", "id": path.stem})
    body["model_answer_pages"] = [{
        "url": f"{base_url}/pages/model-answer-p1.png?X-Amz-Signature={SIGNATURE}m",
        "id": "model-answer-p1"}]
    request = root / "planted.json"
    request.write_text(json.dumps(body))
    return request


def _planted_feedback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Feedback that names the student (as a real model may); one student always out of range."""
    import qbq.simulator.app as sim_app

    original = sim_app.grade

    def personal(*args: Any, **kwargs: Any) -> dict[str, Any]:
        answer: dict[str, Any] = original(*args, **kwargs)
        for student in answer["students"]:
            name = student.get("name") or {}
            for a in student["answers"]:
                a["feedback"] += f" {FEEDBACK_MARK} work, {name.get('first')} {name.get('last')}!"
            if student["ref"] == FAILING:
                student["answers"][0]["mark"] = 99
        return answer

    monkeypatch.setattr(sim_app, "grade", personal)


@flow(name="publish-run-artifacts")
def publish_flow(process_id: str) -> None:
    store = open_store(get_settings())
    try:
        publish_run_artifacts(process_id, store)
    finally:
        store.dispose()


def _api_texts(flow_run_id: Any, process_id: str,
               published: bool = True) -> tuple[list[str], list[Any]]:
    """Logs, artifacts, task and flow run states of the run, read back through the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    texts: list[str] = []
    runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        logs: list[Any] = []
        while batch := client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
            limit=200, offset=len(logs)):
            logs.extend(batch)
        texts += [f"{log.name} {log.message}" for log in logs]
        artifacts = client.read_artifacts(flow_run_filter=runs)
        artifacts += client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=[artifact_key(process_id, "batches"), artifact_key(process_id, "summary")])))
        texts += [f"{a.key} {a.type} {a.description} {a.data}" for a in artifacts]
        for task_run in client.read_task_runs(flow_run_filter=runs):
            texts.append(f"{task_run.name} {task_run.state_name} "
                         f"{task_run.state.message if task_run.state else ''}")
        flow_run = client.read_flow_run(flow_run_id)
        texts.append(f"{flow_run.name} {flow_run.parameters} "
                     f"{flow_run.state.message if flow_run.state else ''}")
    if published:
        assert {a.type for a in artifacts} >= {"progress", "table", "markdown"}
    return texts, logs


def test_no_names_feedback_urls_keys_or_image_bytes_leak(
    tmp_path: Path, grading_env: str, receiver: BackgroundServer, sim_stats: Any,
    static_files: tuple[Path, str], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], json_logs: None,
) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="qbq")
    _planted_feedback(monkeypatch)
    root, base_url = static_files
    request = _plant(root, base_url)

    state = grade_assessment(request_path=str(request), return_state=True)
    result: RunResult = state.result()
    process_id = result.process_id
    publish_flow(process_id)

    # the plant took: names and personal feedback reached the results payload, one student failed
    payload = received(receiver)["payloads"][0]["payload"]
    names = {(s["name"]["first"], s["name"]["last"]) for s in payload["students"] if s["name"]}
    assert names == set(PLANTED) - {PLANTED[2], PLANTED[4]}
    feedback = [a["feedback"] for s in payload["students"] for a in s["answers"]]
    assert feedback and all(FEEDBACK_MARK in f for f in feedback)
    assert [f["ref"] for f in payload["failures"]] == [FAILING, EXPIRED]
    assert payload["failures"][1]["error_type"] == "PageFetchError"
    assert result.summary.failed == 2

    # everything a person or a pipeline could read
    texts: list[str] = [result.summary.model_dump_json()]
    formatter = JsonLinesFormatter()
    for record in caplog.records:
        texts += [record.getMessage(), formatter.format(record), str(record.exc_text),
                  repr(record.__dict__)]
    captured = capfd.readouterr()
    texts += [captured.out, captured.err]
    json_lines = [line for line in captured.err.splitlines() if line.startswith("{")]

    records = [json.loads(line) for line in json_lines]
    qbq_records = [r for r in records if r["logger"].startswith("qbq.")]
    assert qbq_records and all("task_run_id" in r and "flow_run_id" in r for r in qbq_records)
    api_texts, api_logs = _api_texts(state.state_details.flow_run_id, process_id)
    texts += api_texts
    assert any(log.name.startswith("qbq") for log in api_logs)  # qbq's own lines reached the API
    store = Store(grading_env)
    with store.transaction() as session:
        texts += [f"{a.error_type} {a.stage} {a.detail}"
                  for a in queries.process_attempt_errors(session, process_id)]
        texts += [f"{b.error_type} {b.error_detail}"
                  for b in queries.process_batches(session, process_id)]
    store.dispose()
    texts += [f["reason"] for f in payload["failures"]]
    app = typer.Typer()
    register(app)
    for args in (["report", process_id], ["report", process_id, "--json"],
                 ["review", process_id], ["status", process_id, "--json"]):
        result = CliRunner().invoke(app, args, catch_exceptions=False)
        texts += [result.stdout, result.stderr]
    assert any("ResponseRuleError" in t for t in texts)  # the failure's texts are in the scan

    haystack = "\n".join(texts).lower()
    needles = [n for pair in PLANTED for n in pair]
    needles += [FEEDBACK_MARK, SIGNATURE, CREDENTIAL, "X-Amz-Signature", API_KEY, "iVBORw0KGgo"]
    needles += feedback
    for page in sorted((root / "pages").glob("*.png"))[:4]:
        needles.append(base64.b64encode(page.read_bytes()[16:64]).decode())
    leaked = sorted({n for n in needles if n.lower() in haystack})
    assert leaked == [], f"leaked into logs/artifacts/states: {leaked}"


#: Makes every write of a batch's result fail inside the database, as a real constraint or
#: outage would: the failing statement carries the result (names, feedback) as parameters.
_FAIL_RESULT_WRITES = {
    "sqlite": ["CREATE TRIGGER qbq_injected BEFORE UPDATE ON batches WHEN NEW.result IS NOT NULL "
               "BEGIN SELECT RAISE(ABORT, 'injected store failure'); END"],
    "postgresql": [
        "CREATE FUNCTION qbq_injected() RETURNS trigger AS $$ BEGIN IF NEW.result IS NOT NULL "
        "THEN RAISE EXCEPTION 'injected store failure'; END IF; RETURN NEW; END $$ "
        "LANGUAGE plpgsql",
        "CREATE TRIGGER qbq_injected BEFORE UPDATE ON batches FOR EACH ROW "
        "EXECUTE FUNCTION qbq_injected()"],
}


def test_a_failed_store_write_leaks_no_result_into_logs_or_states(
    tmp_path: Path, grading_env: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], json_logs: None,
) -> None:
    """Issue 15 item 5: the database refuses every result write; the error reaches the task
    states and logs, but never the statement's parameters (engines hide them)."""
    caplog.set_level(logging.INFO)
    _planted_feedback(monkeypatch)
    request = write_sample(tmp_path / "sample", students=2, pages=1, questions=2, seed=5)
    names = [n for page in sorted((tmp_path / "sample" / "pages").glob("*.png"))
             if (truth := read_truth(page.read_bytes())) and truth.get("name")
             for n in truth["name"].values()]
    store = open_store(get_settings())
    with store.engine.begin() as conn:
        for statement in _FAIL_RESULT_WRITES[store.dialect]:
            conn.exec_driver_sql(statement)
    store.dispose()

    state = grade_assessment(request_path=str(request), return_state=True)
    texts, _logs = _api_texts(state.state_details.flow_run_id, "", published=False)
    for record in caplog.records:
        texts += [record.getMessage(), str(record.exc_text), repr(record.__dict__)]
    captured = capfd.readouterr()
    texts += [captured.out, captured.err]
    haystack = "\n".join(texts)
    assert "injected store failure" in haystack  # the failure itself is reported
    leaked = sorted({n for n in [*names, FEEDBACK_MARK] if n.lower() in haystack.lower()})
    assert names and leaked == [], f"leaked into logs/states: {leaked}"
    assert "parameters hidden" in haystack.lower()


def test_a_submitted_request_leaves_nothing_in_flow_run_parameters(
    tmp_path: Path, grading_env: str, receiver: BackgroundServer,
) -> None:
    """Issue 15 item 6, the platform route: `qbq submit` stores the request in qbq's store and
    the run takes its id, so Prefect's flow-run parameters hold no image bytes, signed query or
    instructions (they used to hold the whole inline request)."""
    from qbq.submission import submit_request

    request = write_sample(tmp_path / "sample", students=2, pages=1, questions=2, seed=7)
    body = json.loads(request.read_text())
    body["instructions"] = f"{FEEDBACK_MARK} instructions, signed {SIGNATURE}"
    page = request.parent / body["students"][0]["pages"][0]["path"]
    data_uri = "data:image/png;base64," + base64.b64encode(page.read_bytes()).decode()
    body["students"][0]["pages"][0] = {"data_uri": data_uri, "id": "s1-p1"}
    store = open_store(get_settings())
    request_id = submit_request(store, json.dumps(body), request.parent)
    store.dispose()

    state = grade_assessment(request_id=request_id, return_state=True)
    result: RunResult = state.result()
    assert result.status == "success" and result.summary.graded == 2
    texts, _logs = _api_texts(state.state_details.flow_run_id, result.process_id,
                              published=False)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        parameters = client.read_flow_run(state.state_details.flow_run_id).parameters
    assert parameters["request_id"] == request_id and parameters.get("request_path") is None
    haystack = "\n".join([*texts, json.dumps(parameters)]).lower()
    needles = [FEEDBACK_MARK, SIGNATURE, data_uri[22:80], "base64,"]
    assert sorted(n for n in needles if n.lower() in haystack) == []
