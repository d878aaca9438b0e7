"""The simulator's Files and Batch API, driven over HTTP with the real `openai` SDK.

https://platform.openai.com/docs/guides/batch: upload a JSONL of requests, create a batch, poll
it through validating → in_progress → finalizing → completed (or failed, expired, cancelling →
cancelled), then read the output and error files. Simulated time runs 1,000× faster here.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest
from PIL import Image, PngImagePlugin

from qbq.images import TRUTH_KEY, encode_data_uri
from qbq.prompts import PromptQuestion, StudentPages, build_messages, response_format
from qbq.simulator import BackgroundServer, SimConfig, create_app

MODEL = "gpt-4.1-mini"
ENDPOINT = "/v1/chat/completions"
QUESTIONS = [PromptQuestion("1", 5, "Award marks for each step. " * 150), PromptQuestion("2", 3, None)]
TRUTH = {f"S{i}": {"1": i % 6, "2": (i * 2) % 4} for i in range(6)}
TERMINAL = ("completed", "failed", "expired", "cancelled")
FAST = {"time_scale": 1000.0, "batch_validation_s": 1.0, "batch_completion_s": 30.0,
        "batch_finalizing_s": 1.0, "batch_cancel_s": 1.0}


def _page(ref: str) -> str:
    info = PngImagePlugin.PngInfo()
    info.add_text(TRUTH_KEY, json.dumps({"student": ref, "marks": TRUTH[ref]}))
    buffer = io.BytesIO()
    Image.new("RGB", (300, 400), (250, 250, 250)).save(buffer, format="PNG", pnginfo=info)
    return encode_data_uri(buffer.getvalue(), "image/png")


PAGES = {ref: _page(ref) for ref in TRUTH}


def _body(ref: str, model: str = MODEL) -> dict[str, Any]:
    messages = build_messages(
        instructions="Grade fairly.",
        questions=QUESTIONS,
        model_answer_urls=[],
        students=[StudentPages(ref, [PAGES[ref]])],
    )
    return {"model": model, "messages": messages, "max_completion_tokens": 2_000,
            "response_format": response_format(["1", "2"])}


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def _line(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}


@contextmanager
def simulator(**settings: Any) -> Iterator[tuple[BackgroundServer, openai.OpenAI]]:
    with BackgroundServer(create_app(SimConfig(**{**FAST, **settings}))) as server, openai.OpenAI(
        base_url=server.url + "/v1", api_key="sk-test", max_retries=0
    ) as client:
        yield server, client


def _submit(client: openai.OpenAI, rows: list[dict[str, Any]], **extra: Any) -> Any:
    uploaded = client.files.create(file=("grading.jsonl", _jsonl(rows)), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h", **extra
    )


def _wait(client: openai.OpenAI, batch_id: str, until: tuple[str, ...] = TERMINAL) -> tuple[Any, list[str]]:
    """Poll until the batch reaches a status in `until`; also the statuses seen on the way."""
    seen: list[str] = []
    deadline = time.monotonic() + 60  # a hang guard, not a timing check
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if batch.status in until:
            return batch, seen
        time.sleep(0.01)
    raise AssertionError(f"batch {batch_id} stuck in {seen[-1]}")


def _records(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_a_batch_grades_every_line_like_a_sync_request() -> None:
    # Each step lasts 150 ms of wall time, so the polling usually sees every status.
    with simulator(batch_validation_s=150.0, batch_completion_s=150.0, batch_finalizing_s=150.0) as (
        sim,
        client,
    ):
        rows = [_line(f"line-{ref}", _body(ref)) for ref in TRUTH]
        created = _submit(client, rows, metadata={"assessment": "maths"})
        assert created.status == "validating"
        assert created.object == "batch" and created.completion_window == "24h"
        assert created.metadata == {"assessment": "maths"}
        assert created.request_counts is not None and created.request_counts.total == 0

        batch, seen = _wait(client, created.id)
        assert batch.status == "completed"
        order = ["validating", "in_progress", "finalizing", "completed"]
        assert seen[-1] == "completed" and seen == [status for status in order if status in seen]
        assert batch.model == MODEL
        assert batch.request_counts is not None
        counts = batch.request_counts
        assert (counts.total, counts.completed, counts.failed) == (6, 6, 0)
        assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
        assert created.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
        assert batch.error_file_id is None

        output = _records(client, batch.output_file_id)
        assert sorted(r["custom_id"] for r in output) == sorted(r["custom_id"] for r in rows)
        # Only custom_id matches lines up: the output is not in input order.
        assert [r["custom_id"] for r in output] != [r["custom_id"] for r in rows]
        for record in output:
            assert set(record) == {"id", "custom_id", "response", "error"}
            assert record["error"] is None and record["id"].startswith("batch_req_")
            response = record["response"]
            assert response["status_code"] == 200 and response["request_id"].startswith("req_")
            body = response["body"]
            assert body["object"] == "chat.completion" and body["model"] == MODEL
            ref = record["custom_id"].removeprefix("line-")
            (student,) = json.loads(body["choices"][0]["message"]["content"])["students"]
            assert student["ref"] == ref
            assert {a["question_number"]: a["mark"] for a in student["answers"]} == TRUTH[ref]

        # Lines share a long prefix, so the lines after the first read it from the prompt cache.
        usage = batch.usage
        assert usage is not None
        cached = [r["response"]["body"]["usage"]["prompt_tokens_details"]["cached_tokens"] for r in output]
        assert sorted(cached)[0] == 0 and sum(1 for c in cached if c >= 1_024) == 5
        assert usage.input_tokens_details.cached_tokens == sum(cached)
        assert usage.input_tokens == sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in output)
        assert usage.total_tokens == usage.input_tokens + usage.output_tokens

        stats = httpx.get(sim.url + "/_sim/stats", timeout=10).json()
        assert (stats["requests"], stats["batches"], stats["batch_requests"]) == (0, 1, 6)
        assert stats["prompt_tokens"] == 0 and stats["cached_tokens"] == 0
        assert stats["batch_tokens"]["prompt_tokens"] == usage.input_tokens
        assert stats["batch_tokens"]["cached_tokens"] == sum(cached)

        listed = client.batches.list(limit=5)
        assert [b.id for b in listed.data] == [batch.id]
        output_file = client.files.retrieve(batch.output_file_id or "")
        assert output_file.purpose == "batch_output" and output_file.bytes > 0


def test_failed_lines_go_to_the_error_file() -> None:
    with simulator(batch_faults={"http500": 1.0}) as (sim, client):
        bad = _body("S1")
        bad["messages"] = []
        batch, _ = _wait(client, _submit(client, [_line("a", _body("S0")), _line("b", bad)]).id)
        assert batch.status == "completed"
        assert batch.output_file_id is None
        assert batch.request_counts is not None and batch.request_counts.failed == 2
        errors = {r["custom_id"]: r for r in _records(client, batch.error_file_id)}
        assert errors["a"]["response"]["status_code"] == 500
        assert errors["a"]["response"]["body"]["error"]["type"] == "server_error"
        # A line the endpoint refuses gets the 400 a sync request would get.
        assert errors["b"]["response"]["status_code"] == 400
        assert errors["b"]["response"]["body"]["error"]["param"] == "messages"

        changed = httpx.post(sim.url + "/_sim/config", timeout=10,
                             json={"batch_faults": {"timeout": 0.5, "truncate": 0.5}, "seed": 3})
        assert changed.status_code == 200
        rows = [_line(f"r{i}", _body(f"S{i}")) for i in range(6)]
        batch, _ = _wait(client, _submit(client, rows).id)
        output = _records(client, batch.output_file_id)
        failed = _records(client, batch.error_file_id)
        assert len(output) + len(failed) == 6 and output and failed
        for record in failed:
            assert record["response"] is None
            assert record["error"]["code"] == "request_timeout"
        for record in output:
            assert record["response"]["body"]["choices"][0]["finish_reason"] == "length"


def test_a_batch_past_its_window_expires() -> None:
    # Lines are due every 100 simulated seconds once validated; the window closes at 250 s.
    with simulator(batch_completion_s=400.0, batch_window_s=250.0) as (_, client):
        rows = [_line(f"r{i}", _body(f"S{i}")) for i in range(4)]
        batch, _ = _wait(client, _submit(client, rows).id)
        assert batch.status == "expired" and batch.expired_at
        assert batch.in_progress_at and not batch.completed_at
        done = _records(client, batch.output_file_id)
        expired = _records(client, batch.error_file_id)
        assert sorted(r["custom_id"] for r in done) == ["r0", "r1"]
        assert sorted(r["custom_id"] for r in expired) == ["r2", "r3"]
        for record in expired:
            assert record["response"] is None
            assert record["error"]["code"] == "batch_expired"


def test_cancelling_a_batch() -> None:
    with simulator(batch_completion_s=100_000.0) as (_, client):
        created = _submit(client, [_line(f"r{i}", _body(f"S{i}")) for i in range(3)])
        _wait(client, created.id, until=("in_progress",))
        cancelling = client.batches.cancel(created.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at
        batch, _ = _wait(client, created.id)
        assert batch.status == "cancelled" and batch.cancelled_at
        unrun = _records(client, batch.error_file_id)
        assert sorted(r["custom_id"] for r in unrun) == ["r0", "r1", "r2"]
        assert {r["error"]["code"] for r in unrun} == {"batch_cancelled"}
        # A finished batch cannot be cancelled (a failed one here: its ids repeat).
        failed, _ = _wait(client, _submit(client, [_line("x", _body("S0"))] * 2).id)
        assert failed.status == "failed"
        with pytest.raises(openai.BadRequestError):
            client.batches.cancel(failed.id)


@pytest.mark.parametrize(
    ("rows", "code", "line"),
    [
        ([_line("same", _body("S0")), _line("same", _body("S1"))], "duplicate_custom_id", 2),
        ([_line("a", _body("S0")), _line("b", _body("S1", model="gpt-4o"))], "mismatched_model", 2),
        ([_line("a", _body("S0")), {"custom_id": "b", "method": "POST", "url": "/v1/embeddings",
                                    "body": _body("S1")}], "mismatched_endpoint", 2),
        ([_line("a", _body("S0", model="gpt-nonexistent"))], "model_not_found", None),
    ],
)
def test_an_invalid_input_file_fails_the_batch(
    rows: list[dict[str, Any]], code: str, line: int | None
) -> None:
    with simulator() as (_, client):
        batch, _ = _wait(client, _submit(client, rows).id)
    assert batch.status == "failed" and batch.failed_at
    assert batch.errors is not None and batch.errors.data is not None
    (error,) = batch.errors.data
    assert (error.code, error.line) == (code, line)


def test_an_invalid_json_line_fails_the_batch() -> None:
    with simulator() as (_, client):
        content = _jsonl([_line("a", _body("S0"))]) + b"{not json\n"
        uploaded = client.files.create(file=("in.jsonl", content), purpose="batch")
        created = client.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT,
                                        completion_window="24h")
        batch, _ = _wait(client, created.id)
    assert batch.errors is not None and batch.errors.data is not None
    assert [(e.code, e.line) for e in batch.errors.data] == [("invalid_json_line", 2)]


def test_the_enqueued_token_limit_is_the_batch_pool() -> None:
    with simulator(batch_queue_tokens=5_000, rpm=1) as (sim, client):
        rows = [_line(f"r{i}", _body(f"S{i}")) for i in range(6)]  # ~1,500 prompt tokens each
        batch, _ = _wait(client, _submit(client, rows).id)
        assert batch.status == "failed"
        assert batch.errors is not None and batch.errors.data is not None
        (error,) = batch.errors.data
        assert error.code == "token_limit_exceeded"
        assert error.message.startswith(f"Enqueued token limit reached for {MODEL} in organization ")
        assert "Limit: 5,000 enqueued tokens." in error.message
        # Within the pool, even with 1 RPM for synchronous calls, every line is answered.
        small, _ = _wait(client, _submit(client, rows[:2]).id)
        assert small.status == "completed"
        assert small.request_counts is not None and small.request_counts.completed == 2
        assert httpx.get(sim.url + "/_sim/stats", timeout=10).json()["requests"] == 0


def test_requests_to_the_files_and_batches_endpoints_are_checked() -> None:
    with simulator() as (sim, client):
        with pytest.raises(openai.BadRequestError) as not_jsonl:
            client.files.create(file=("grading.txt", b"{}\n"), purpose="batch")
        assert isinstance(not_jsonl.value.body, dict)
        assert not_jsonl.value.body["message"] == "Invalid file format for Batch API. Must be .jsonl"

        with pytest.raises(openai.NotFoundError) as missing:
            client.files.retrieve("file-nope")
        assert missing.value.body == {"message": "No such File object: file-nope",
                                      "type": "invalid_request_error", "param": "id", "code": None}

        uploaded = client.files.create(file=("in.jsonl", _jsonl([_line("a", _body("S0"))])),
                                       purpose="batch")
        assert uploaded.object == "file" and uploaded.purpose == "batch" and uploaded.status == "processed"
        assert uploaded.expires_at == uploaded.created_at + 30 * 24 * 3600
        assert client.files.content(uploaded.id).content == _jsonl([_line("a", _body("S0"))])

        with pytest.raises(openai.BadRequestError) as window:
            client.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT,
                                  completion_window="48h")  # type: ignore[arg-type]
        assert isinstance(window.value.body, dict) and window.value.body["param"] == "completion_window"

        # Another key sees neither the file nor its batches.
        with (
            openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-other", max_retries=0) as other,
            pytest.raises(openai.NotFoundError),
        ):
            other.files.retrieve(uploaded.id)
        unauthenticated = httpx.get(sim.url + "/v1/batches", timeout=10)
        assert unauthenticated.status_code == 401
        assert unauthenticated.headers["x-qbq-simulated"] == "true"
