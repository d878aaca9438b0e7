"""Structured logs: JSON lines with qbq's context fields, allow-listed events, redaction."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qbq.observability.logs import (
    ALLOWED_FIELDS,
    CONTEXT_FIELDS,
    LOGGING_CONFIG_PATH,
    JsonLinesFormatter,
    RedactingTextFormatter,
    RedactionFilter,
    add_event_observer,
    log_batch_event,
    redact,
    remove_event_observer,
)

ROOT = Path(__file__).resolve().parents[2]
PRESIGNED = ("https://bucket.s3.amazonaws.com/scans/S001-p1.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
             "&X-Amz-Credential=AKIAEXAMPLE%2F20260101&X-Amz-Signature=deadbeefcafe0123")
API_KEY = "sk-proj-Abc123DEF456ghi789JKL"


@pytest.fixture
def json_logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLinesFormatter())
    handler.addFilter(RedactionFilter())
    logger = logging.getLogger("qbq.tests.logs")
    logger.handlers = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.handlers = []


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_every_context_field_lands_in_one_json_object_per_line(
    json_logger: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_logger
    fields: dict[str, Any] = {
        "process_id": "qbq-0123abcd", "batch_id": 3, "idempotency_key": "k" * 64,
        "model": "gpt-4.1-mini", "tokens_in": 12000, "tokens_out": 800, "cached_tokens": 1024,
        "latency_ms": 812.3456, "attempt": 2, "retry_count": 1, "error_type": "RateLimitedError",
        "stage": "grade",
    }
    assert set(fields) == set(CONTEXT_FIELDS)
    log_batch_event(logger, "batch_finished", status="succeeded", **fields)
    logger.info("two\nlines of message")
    logger.warning("plain %s with %d args", "message", 2, extra={"process_id": "qbq-x"})

    first, second, third = lines(stream)
    assert first["event"] == "batch_finished" and first["level"] == "INFO"
    assert first["logger"] == "qbq.tests.logs" and first["ts"].endswith("+00:00")
    for name, value in fields.items():
        expected = round(value, 3) if isinstance(value, float) else value
        assert first[name] == expected, name
    assert first["status"] == "succeeded"
    assert "tokens_in=12000" in first["message"]  # the API handler only sees the message
    assert second["message"] == "two\nlines of message"
    assert third["message"] == "plain message with 2 args" and third["process_id"] == "qbq-x"


def test_fields_outside_the_allow_list_and_non_scalars_are_dropped(
    json_logger: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_logger
    logged = log_batch_event(
        logger, "batch_finished", process_id="qbq-1", first_name="Zelphine",
        last_name="Quarrington", feedback="Lovely answer about osmosis", answer_text="x",
        model={"name": "Zelphine"}, tokens_in=5,
    )
    log_batch_event(logger, "Student Zelphine Quarrington graded", batch_id=1)

    text = stream.getvalue()
    for secret in ("Zelphine", "Quarrington", "osmosis", "first_name", "answer_text"):
        assert secret not in text
    event, renamed = lines(stream)
    assert event["process_id"] == "qbq-1" and event["tokens_in"] == 5
    assert "model" not in event
    assert logged["dropped_fields"] == event["dropped_fields"] == 5
    assert renamed["event"] == "invalid_event_name" and renamed["batch_id"] == 1
    assert set(ALLOWED_FIELDS) >= set(CONTEXT_FIELDS)


def test_query_strings_api_keys_bearer_tokens_and_image_bytes_are_redacted(
    json_logger: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_logger
    data_uri = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB"
    logger.info("fetching %s with key %s", PRESIGNED, API_KEY)
    logger.info("header Authorization: Bearer abcdef123456.token and %s", data_uri)
    log_batch_event(logger, "batch_attempt_failed", error_type=f"x {PRESIGNED}", stage=API_KEY)
    try:
        raise RuntimeError(f"GET {PRESIGNED} failed for {API_KEY}")
    except RuntimeError:
        logger.exception("download failed")

    text = stream.getvalue()
    for secret in ("X-Amz-Signature", "deadbeefcafe", "AKIAEXAMPLE", "Abc123DEF456",
                   "abcdef123456", "iVBORw0KGgo"):
        assert secret not in text, secret
    first, second, third, fourth = lines(stream)
    assert "https://bucket.s3.amazonaws.com/scans/S001-p1.png?[redacted]" in first["message"]
    assert "sk-[redacted]" in first["message"]
    assert "Bearer [redacted]" in second["message"]
    assert "data:image/png;base64,[redacted]" in second["message"]
    assert third["stage"] == "sk-[redacted]"
    assert fourth["exc_type"] == "RuntimeError" and "?[redacted]" in fourth["exc_text"]


def test_redaction_also_covers_text_lines_and_leaves_plain_urls_alone() -> None:
    record = logging.LogRecord("qbq.x", logging.INFO, __file__, 1, "see %s", (PRESIGNED,), None)
    RedactionFilter().filter(record)
    line = RedactingTextFormatter().format(record)
    assert "X-Amz" not in line and "S001-p1.png?[redacted]" in line
    assert redact("http://127.0.0.1:8700/v1/chat/completions") == \
        "http://127.0.0.1:8700/v1/chat/completions"
    assert redact("tokens=sk-abc") == "tokens=sk-abc"  # too short to be a key


def test_events_feed_observers_with_the_allowed_fields_only() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def observer(event: str, fields: Any) -> None:
        seen.append((event, dict(fields)))

    logger = logging.getLogger("qbq_tests_observer")
    logger.propagate = False
    add_event_observer(observer)
    try:
        log_batch_event(logger, "batch_finished", tokens_in=3, feedback="secret")
    finally:
        remove_event_observer(observer)
    assert seen == [("batch_finished", {"tokens_in": 3})]


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PREFECT_LOGGING_LEVEL": "INFO",
                "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore"}
    full_env.pop("QBQ_LOG_FORMAT", None)
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120, check=True)


_EMIT = f"""
import logging
from prefect import flow  # noqa: F401  (importing it sets up Prefect's logging)
from qbq.observability.logs import configure_logging, log_batch_event
{{configure}}
log_batch_event(logging.getLogger("qbq.grading"), "batch_finished", batch_id=2, tokens_in=7,
                first_name="Zelphine")
logging.getLogger("prefect.flow_runs").warning("fetch %s", {PRESIGNED!r})
logging.getLogger("some.library").warning("key %s", {API_KEY!r})
"""


def test_configure_logging_json_turns_prefect_console_into_json_lines() -> None:
    out = _run(_EMIT.format(configure="print(configure_logging())"), QBQ_LOG_FORMAT="json")
    assert out.stdout.strip() == "json"
    records = [json.loads(line) for line in out.stderr.splitlines() if line.strip()]
    assert [r["logger"] for r in records] == ["qbq.grading", "prefect.flow_runs", "some.library"]
    assert records[0]["batch_id"] == 2 and records[0]["tokens_in"] == 7
    assert "Zelphine" not in out.stderr and "X-Amz" not in out.stderr
    assert "Abc123DEF456" not in out.stderr


def test_configure_logging_text_is_the_default_and_still_redacts() -> None:
    out = _run(_EMIT.format(configure="print(configure_logging())"))
    assert out.stdout.strip() == "text"
    assert "batch_finished batch_id=2 tokens_in=7" in out.stderr
    assert not out.stderr.lstrip().startswith("{")
    assert "X-Amz" not in out.stderr and "Abc123DEF456" not in out.stderr


@pytest.mark.parametrize("configure", ["", "configure_logging()"])
def test_shipped_prefect_logging_config_writes_json_lines(configure: str) -> None:
    out = _run(_EMIT.format(configure=configure), QBQ_LOG_FORMAT="json",
               PREFECT_LOGGING_SETTINGS_PATH=str(LOGGING_CONFIG_PATH))
    records = [json.loads(line) for line in out.stderr.splitlines() if line.strip()]
    assert [r["logger"] for r in records] == ["qbq.grading", "prefect.flow_runs", "some.library"]
    assert records[0]["event"] == "batch_finished" and records[0]["batch_id"] == 2
    assert "X-Amz" not in out.stderr and "Abc123DEF456" not in out.stderr


def test_optional_prometheus_counts_batch_events() -> None:
    import httpx

    from qbq.observability.metrics import start_prometheus

    port = start_prometheus(0)
    assert start_prometheus(0) == port
    logger = logging.getLogger("qbq_tests_prometheus")
    logger.propagate = False
    log_batch_event(logger, "batch_finished", status="succeeded", tokens_in=1200, tokens_out=90,
                    cached_tokens=0, retry_count=2, latency_ms=1500.0)
    log_batch_event(logger, "batch_attempt_failed", error_type="RateLimitedError")
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert 'qbq_batches_total{status="succeeded"} 1.0' in text
    assert 'qbq_tokens_total{kind="in"} 1200.0' in text
    assert "qbq_retries_total 2.0" in text
    assert 'qbq_errors_total{error_type="RateLimitedError"} 1.0' in text
    assert "qbq_batch_latency_seconds_count 1.0" in text


# --- exceptions leaving a task (issue 15, item 5) ------------------------------------------------


def test_redacting_masks_an_outside_exceptions_secret_and_keeps_clean_ones() -> None:
    from qbq.errors import ImageError, RedactedError
    from qbq.observability.logs import redacting

    @redacting
    def leaky(kind: str) -> None:
        if kind == "signed":
            raise ValueError("GET https://b.example/p.png?X-Amz-Signature=SECRETSIG failed")
        if kind == "clean":
            raise KeyError("batch 3")
        raise ImageError("page p1: unreadable")

    with pytest.raises(RedactedError) as info:
        leaky("signed")
    assert "SECRETSIG" not in str(info.value) and info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert str(info.value) == "ValueError: GET https://b.example/p.png?[redacted] failed"
    assert info.value.original_type == "ValueError"
    with pytest.raises(KeyError):
        leaky("clean")
    with pytest.raises(ImageError):
        leaky("qbq")
