"""Payload revisions, end to end without Prefect: run 1 with one student's page refused by the
provider and another's URL failing; both fixed, rerun; rerun again. Grading runs on a scripted
provider, delivery on the reference receiver in process (starlette's TestClient is an
httpx.Client), the store in memory."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import typer
from starlette.testclient import TestClient
from typer.testing import CliRunner

from qbq import cli, pipeline
from qbq.cli_reports import register
from qbq.delivery import drain_outbox
from qbq.errors import ProviderContentError
from qbq.grading import grade_batch
from qbq.loading import load_request
from qbq.pipeline import RunResult, delivery_line
from qbq.planning import plan_batches
from qbq.preparation import Prepared
from qbq.provider import ChatReply, ChatRequest
from qbq.receiver import create_app
from qbq.request import parse_request
from qbq.sample import write_sample
from qbq.settings import GradingPolicy, QbqSettings
from qbq.store import Store, list_outbox
from qbq.testing.fakes import (
    FakeClock,
    FakeFetcher,
    ScriptedProvider,
    answers,
    fake_run,
    memory_store,
    reply,
)

URL = "http://testserver/results"
PAGE_URL = "https://pages.school.test/s3.png"
SIGNED = f"{PAGE_URL}?X-Amz-Signature=secret"
#: OpenAI's reply to an undecodable image names no message (param null): bisect to find it.
UNDECODABLE = "You uploaded an unsupported image. Please make sure your image is valid."


SETTINGS = QbqSettings(database_url="sqlite://", results_api_url=URL)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Prepared]:
    """A 6-student request whose student 3 gives its page as a presigned URL, prepared with
    that URL failing (False: 403) and working (True)."""
    folder = tmp_path_factory.mktemp("rev")
    path = write_sample(folder, students=6, pages=1, questions=2, seed=3)
    body = json.loads(path.read_text())
    page = body["students"][2]["pages"][0]
    png = (path.parent / page.pop("path")).read_bytes()
    page["url"] = SIGNED
    out: dict[bool, Prepared] = {}
    for works in (False, True):
        fetch = FakeFetcher({SIGNED: png if works else 403})
        request = load_request(parse_request(body), base_dir=path.parent, settings=SETTINGS,
                               fetch=fetch)
        out[works] = Prepared(request, plan_batches(request, GradingPolicy()))
    return out


def prepared(sample: dict[bool, Prepared], settings: QbqSettings, *, url_works: bool) -> Prepared:
    return sample[url_works]


def refusing(bad_ref: str | None, qnums: list[str]) -> ScriptedProvider:
    """A provider that answers 400 (param null) for any request holding `bad_ref`'s page."""

    def behave(refs: list[str], _: ChatRequest) -> ChatReply | ProviderContentError:
        if bad_ref in refs:
            return ProviderContentError(f"request refused (400): {UNDECODABLE}",
                                        status_code=400, param=None,
                                        code="invalid_image_format")
        return reply(json.dumps(answers(refs, qnums)))

    return ScriptedProvider(qnums, [behave] * 50)


def run(store: Store, prep: Prepared, provider: ScriptedProvider,
        settings: QbqSettings) -> pipeline.Finalized:
    pipeline.register(store, prep, settings)
    deps = fake_run(store, provider, FakeClock()).deps
    for batch in prep.plan.batches:
        grade_batch(batch, prep.request, deps)
    return pipeline.finalize(store, prep, policy=GradingPolicy(), settings=settings)


def test_a_fixed_rerun_is_delivered_as_revision_2_and_an_unchanged_one_sends_nothing(
        sample: dict[bool, Prepared], tmp_path: Path) -> None:
    settings = QbqSettings(database_url="sqlite://", results_api_url=URL)
    store = memory_store()
    receiver = TestClient(create_app(tmp_path / "receiver.db"))
    first = prepared(sample, settings, url_works=False)
    refs = [s.ref for s in first.request.students]
    qnums = [q.question_number for q in first.request.questions]
    bad, broken_url = refs[4], refs[2]

    # run 1: every other student graded, two precise reasons
    one = run(store, first, refusing(bad, qnums), settings)
    assert one.native.revision == 1 and one.native.status == "failed"
    graded = [s.ref for s in one.native.students if s.status == "graded"]
    assert graded == [r for r in refs if r not in (bad, broken_url)]
    reasons = {f.ref: f.reason for f in one.native.failures}
    assert set(reasons) == {bad, broken_url}
    bad_page = next(s for s in first.request.students if s.ref == bad).pages[0].image_id
    assert bad in reasons[bad] and bad_page in reasons[bad] and UNDECODABLE in reasons[bad]
    assert PAGE_URL in reasons[broken_url] and "403" in reasons[broken_url]
    assert "Signature" not in json.dumps(one.native.model_dump())
    assert drain_outbox(store, receiver, process_id=first.plan.process_id).delivered == 1

    # both fixed: revision 2 (success) is delivered under its own key
    fixed = prepared(sample, settings, url_works=True)
    assert fixed.plan.process_id == first.plan.process_id
    two = run(store, fixed, refusing(None, qnums), settings)
    assert (two.native.revision, two.native.status, two.queued) == (2, "success", True)
    assert drain_outbox(store, receiver, process_id=fixed.plan.process_id).delivered == 1
    held = receiver.get("/results").json()
    assert [p["payload"]["revision"] for p in held["payloads"]] == [1, 2]
    assert [p["payload"]["status"] for p in held["payloads"]] == ["failed", "success"]
    keys = [p["idempotency_key"] for p in held["payloads"]]
    assert keys[0] != keys[1] and keys[1] == two.delivery_key
    assert all(k.startswith(f"{first.plan.process_id}/r{n}-") for n, k in zip((1, 2), keys,
                                                                              strict=True))
    assert held["duplicates"] == 0

    # a third run changes nothing: nothing queued, nothing sent
    three = run(store, fixed, refusing(None, qnums), settings)
    assert (three.queued, three.native.revision, three.delivery_key) == (False, 2, keys[1])
    assert drain_outbox(store, receiver, process_id=fixed.plan.process_id).delivered == 0
    after = receiver.get("/results").json()
    assert (len(after["payloads"]), after["duplicates"]) == (2, 0)
    with store.transaction() as s:
        rows = list_outbox(s, fixed.plan.process_id)
    assert [(r.revision, r.status) for r in rows] == [(1, "delivered"), (2, "delivered")]


def test_an_undelivered_revision_is_superseded_by_the_next(
        sample: dict[bool, Prepared], tmp_path: Path) -> None:
    settings = QbqSettings(database_url="sqlite://", results_api_url=URL)
    store = memory_store()
    first = prepared(sample, settings, url_works=False)
    qnums = [q.question_number for q in first.request.questions]
    run(store, first, refusing(None, qnums), settings)  # queued, never delivered
    fixed = prepared(sample, settings, url_works=True)
    run(store, fixed, refusing(None, qnums), settings)
    receiver = TestClient(create_app(tmp_path / "receiver.db"))
    assert drain_outbox(store, receiver).delivered == 1
    held = receiver.get("/results").json()["payloads"]
    assert [(p["payload"]["revision"], p["payload"]["status"]) for p in held] == [(2, "success")]
    with store.transaction() as s:
        rows = list_outbox(s, fixed.plan.process_id)
    assert [(r.revision, r.status) for r in rows] == [(1, "superseded"), (2, "delivered")]


def test_the_key_names_the_content_so_two_stores_never_share_a_key_for_different_payloads(
        sample: dict[bool, Prepared]) -> None:
    settings = QbqSettings(database_url="sqlite://", results_api_url=URL)
    prep = prepared(sample, settings, url_works=True)
    qnums = [q.question_number for q in prep.request.questions]
    refs = [s.ref for s in prep.request.students]
    a = run(memory_store(), prep, refusing(None, qnums), settings)
    b = run(memory_store(), prep, refusing(refs[0], qnums), settings)
    c = run(memory_store(), prep, refusing(None, qnums), settings)
    assert a.native.revision == b.native.revision == 1
    assert a.delivery_key != b.delivery_key  # same request, same revision, other content
    assert a.delivery_key == c.delivery_key  # same content: the same key


def flag_low(refs: list[str], qnums: list[str], unsure: str) -> ChatReply:
    body = answers(refs, qnums)
    for student in body["students"]:
        if student["ref"] == unsure:
            student["answers"][1]["confidence"] = "low"
    return reply(json.dumps(body))


def test_review_lists_refused_failed_and_unsure_with_the_right_question_and_maximum(
        sample: dict[bool, Prepared], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    monkeypatch.setenv("QBQ_DATABASE_URL", url)
    store = Store(url)
    store.migrate()
    first = prepared(sample, SETTINGS, url_works=False)
    refs = [s.ref for s in first.request.students]
    qnums = [q.question_number for q in first.request.questions]
    bad, broken_url, unsure = refs[4], refs[2], refs[0]

    def behave(r: list[str], _: ChatRequest) -> ChatReply | ProviderContentError:
        if bad in r:
            return ProviderContentError(f"request refused (400): {UNDECODABLE}",
                                        status_code=400, param=None)
        return flag_low(r, qnums, unsure)

    run(store, first, ScriptedProvider(qnums, [behave] * 50), SETTINGS)
    store.dispose()
    app = typer.Typer()
    register(app)
    shown = CliRunner().invoke(app, ["review", first.plan.process_id, "--json"])
    assert shown.exit_code == 0, shown.output

    max_marks = first.request.max_marks
    total = sum(max_marks.values())
    rows = [(r["ref"], r["question_number"], r["max_mark"]) for r in json.loads(shown.stdout)]
    assert rows == [(unsure, qnums[1], max_marks[qnums[1]]), (broken_url, "all", total),
                    (bad, "all", total)]
    reasons = [r["reason"] for r in json.loads(shown.stdout)]
    assert reasons[0] == "low confidence"
    assert reasons[1].startswith("not graded (PageFetchError): ") and PAGE_URL in reasons[1]
    assert reasons[2].startswith("not graded (ProviderContentError): student " + bad)
    text = CliRunner().invoke(app, ["review", first.plan.process_id]).stdout
    assert "valid." in text and "…" not in text  # wrapped in full, never cut


def test_grade_ends_with_where_the_payload_went_and_exits_3_when_it_was_not_delivered(
        sample: dict[bool, Prepared], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = memory_store()
    fixed = prepared(sample, SETTINGS, url_works=True)
    qnums = [q.question_number for q in fixed.request.questions]
    fin = run(store, fixed, refusing(None, qnums), SETTINGS)
    down = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(503)))
    failed = RunResult(fixed.plan.process_id, fin.native.status, fin.native.summary, fin,
                       drain_outbox(store, down))
    line, not_delivered = delivery_line(failed)
    assert not_delivered and line.startswith(f"payload NOT delivered to {URL} (revision 1, "
                                             f"Idempotency-Key {fin.delivery_key}): ")
    assert "503" in line and "outbox" in line

    monkeypatch.setattr(cli, "run_grade", lambda *a, **k: failed)
    result = CliRunner().invoke(cli.app, ["grade", "request.json"], terminal_width=400)
    assert result.exit_code == 3
    assert result.stdout.strip().splitlines()[-1].startswith("payload NOT delivered to")

    receiver = TestClient(create_app(tmp_path / "receiver.db"))
    ok = RunResult(fixed.plan.process_id, fin.native.status, fin.native.summary, fin,
                   drain_outbox(store, receiver, ignore_backoff=True))
    assert delivery_line(ok) == (
        f"payload delivered to {URL} (revision 1, Idempotency-Key {fin.delivery_key})", False)
    unset = run(memory_store(), fixed, refusing(None, qnums),
                QbqSettings(database_url="sqlite://"))
    assert delivery_line(RunResult(fixed.plan.process_id, "success", unset.native.summary,
                                   unset, None)) == (
        "payload not delivered: no results API is set (QBQ_RESULTS_API_URL)", False)
