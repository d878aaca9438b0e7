"""Injected provider faults: each kind seen through the real `openai` SDK, scripts, seeded rates."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from PIL import Image, PngImagePlugin

from qbq.images import TRUTH_KEY, encode_data_uri
from qbq.prompts import PromptQuestion, StudentPages, build_messages, response_format
from qbq.simulator import BackgroundServer, SimConfig, create_app
from qbq.simulator.config import sim_config_from_cli
from qbq.simulator.faults import FAULT_KINDS, REFUSAL_TEXT

MODEL = "gpt-4.1-mini"
FAULT = "x-qbq-simulated-fault"
QUESTIONS = [PromptQuestion("1", 5, None), PromptQuestion("2", 3, None), PromptQuestion("3", 2, None)]
MAX_MARK = {q.question_number: q.max_mark for q in QUESTIONS}
TRUTH = {
    "S-1": {"1": 4, "2": 1.5, "3": 2},
    "S-2": {"1": 0, "2": 3, "3": 1},
    "S-3": {"1": 5, "2": 2, "3": 0.5},
}
REFS = list(TRUTH)


def _page(ref: str, shade: int) -> str:
    info = PngImagePlugin.PngInfo()
    info.add_text(TRUTH_KEY, json.dumps({"student": ref, "marks": TRUTH[ref]}))
    buffer = io.BytesIO()
    Image.new("RGB", (400, 560), (shade, shade, shade)).save(buffer, format="PNG", pnginfo=info)
    return encode_data_uri(buffer.getvalue(), "image/png")


PAGES = {ref: _page(ref, 200 + i * 10) for i, ref in enumerate(REFS)}
FORMAT = response_format([q.question_number for q in QUESTIONS])
SCHEMA = FORMAT["json_schema"]["schema"]


def messages(instructions: str = "Grade fairly.") -> list[dict[str, Any]]:
    return build_messages(
        instructions=instructions,
        questions=QUESTIONS,
        model_answer_urls=[],
        students=[StudentPages(ref, [PAGES[ref]]) for ref in REFS],
    )


@contextmanager
def simulator(**settings: Any) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(SimConfig(**settings))) as server:
        yield server


@contextmanager
def sdk(server: BackgroundServer, timeout: float = 10.0) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=server.url + "/v1", api_key="sk-test", max_retries=0, timeout=timeout
    ) as client:
        yield client


def grade(client: openai.OpenAI, instructions: str = "Grade fairly.") -> Any:
    return client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=messages(instructions),
        response_format=FORMAT,
        max_completion_tokens=4000,
    )


def stats(server: BackgroundServer) -> Any:
    return httpx.get(server.url + "/_sim/stats", timeout=10).json()


def schema_valid(reply: Any) -> bool:
    return bool(jsonschema.Draft202012Validator(SCHEMA).is_valid(reply))


def marks(reply: Any) -> dict[str, dict[str, Any]]:
    return {
        s["ref"]: {a["question_number"]: a["mark"] for a in s["answers"]} for s in reply["students"]
    }


def outcome(client: openai.OpenAI) -> str:
    """What one request met: the fault header, "ok", or the SDK error class."""
    try:
        raw = grade(client)
    except openai.APIStatusError as exc:
        return exc.response.headers.get(FAULT, type(exc).__name__)
    except openai.APIConnectionError as exc:
        return type(exc).__name__
    return str(raw.headers.get(FAULT, "ok"))


def test_server_errors() -> None:
    with simulator(fault_script=["http500", "http502", "http503"]) as sim, sdk(sim) as client:
        for status in (500, 502, 503):
            with pytest.raises(openai.InternalServerError) as raised:
                grade(client)
            error = raised.value
            assert error.status_code == status
            assert isinstance(error.body, dict) and error.body["type"] == "server_error"
            assert error.response.headers[FAULT] == f"http{status}"
        assert grade(client).headers.get(FAULT) is None  # the script has run out
        snapshot = stats(sim)
        assert snapshot["faults"] == {"http500": 1, "http502": 1, "http503": 1}
        assert snapshot["by_status"] == {"500": 1, "502": 1, "503": 1, "200": 1}


def test_timeout_hangs_past_the_client_timeout() -> None:
    start = time.monotonic()
    with simulator(fault_script=["timeout"], hang_s=3) as sim:
        with sdk(sim, timeout=0.5) as client:
            asked = time.monotonic()
            with pytest.raises(openai.APITimeoutError):
                grade(client)
            assert time.monotonic() - asked < 2
            assert schema_valid(json.loads(grade(client).parse().choices[0].message.content))
        time.sleep(0.2)
        snapshot = stats(sim)
        assert snapshot["faults"] == {"timeout": 1}
        # The simulator noticed the client leave (499) and stopped hanging.
        assert snapshot["by_status"] == {"499": 1, "200": 1}
    assert time.monotonic() - start < 3  # shutting down did not wait for the hang


def test_timeout_answers_normally_after_the_hang() -> None:
    with simulator(fault_script=["timeout"], hang_s=0.4) as sim, sdk(sim, timeout=5) as client:
        start = time.monotonic()
        raw = grade(client)
        assert time.monotonic() - start >= 0.4
        assert raw.headers[FAULT] == "timeout"
        assert marks(json.loads(raw.parse().choices[0].message.content)) == TRUTH


def test_disconnect_is_a_connection_error() -> None:
    with simulator(fault_script=["disconnect"]) as sim, sdk(sim) as client:
        with pytest.raises(openai.APIConnectionError) as raised:
            grade(client)
        assert not isinstance(raised.value, openai.APITimeoutError)
        assert "incomplete" in repr(raised.value.__cause__) or "complete message body" in repr(
            raised.value.__cause__
        )
        assert grade(client).headers.get(FAULT) is None
        assert stats(sim)["faults"] == {"disconnect": 1}


def test_rate_limit_fault_under_the_limits() -> None:
    with simulator(fault_script=["rate_limit"], time_scale=10) as sim, sdk(sim) as client:
        with pytest.raises(openai.RateLimitError) as raised:
            grade(client)
        error = raised.value
        assert error.code == "rate_limit_exceeded"
        assert isinstance(error.body, dict) and error.body["type"] == "requests"
        assert float(error.response.headers["retry-after"]) == pytest.approx(0.1)
        assert error.response.headers[FAULT] == "rate_limit"
        grade(client)
        snapshot = stats(sim)
        assert snapshot["faults"] == {"rate_limit": 1}
        assert sum(s["rejected"] for s in snapshot["timeline"]) == 1


def test_content_faults_shape_the_reply() -> None:
    script = [
        "ok",
        "not_json",
        "schema_break:missing_mark",
        "schema_break:mark_string",
        "schema_break:extra_key",
        "rule_break:student_missing",
        "rule_break:student_twice",
        "rule_break:question_missing",
        "rule_break:question_twice",
        "rule_break:mark_above_max",
        "truncate",
        "refusal",
    ]
    with simulator(fault_script=script) as sim, sdk(sim) as client:
        replies: dict[str, tuple[Any, Any]] = {}
        for entry in script:
            raw = grade(client)
            assert raw.headers.get(FAULT, "ok") == entry
            choice = raw.parse().choices[0]
            replies[entry] = (choice, raw.parse().usage)

        ok, _ = replies["ok"]
        valid = json.loads(ok.message.content)
        assert schema_valid(valid) and marks(valid) == TRUTH

        not_json, _ = replies["not_json"]
        assert not_json.finish_reason == "stop"
        assert not_json.message.content.startswith("[simulated]")
        with pytest.raises(json.JSONDecodeError):
            json.loads(not_json.message.content)

        broken = {v: json.loads(replies[f"schema_break:{v}"][0].message.content) for v in
                  ("missing_mark", "mark_string", "extra_key")}
        for reply in broken.values():
            assert not schema_valid(reply)
        assert "mark" not in broken["missing_mark"]["students"][0]["answers"][0]
        assert isinstance(broken["mark_string"]["students"][0]["answers"][0]["mark"], str)
        assert set(broken["extra_key"]) - {"students"}

        rules = {v: json.loads(replies[f"rule_break:{v}"][0].message.content) for v in
                 ("student_missing", "student_twice", "question_missing", "question_twice",
                  "mark_above_max")}
        for reply in rules.values():
            assert schema_valid(reply)
        assert [s["ref"] for s in rules["student_missing"]["students"]] == REFS[:-1]
        assert [s["ref"] for s in rules["student_twice"]["students"]] == [*REFS, REFS[0]]
        assert [a["question_number"] for a in rules["question_missing"]["students"][0]["answers"]] == [
            "1", "2"]
        assert [a["question_number"] for a in rules["question_twice"]["students"][0]["answers"]] == [
            "1", "2", "3", "1"]
        above = rules["mark_above_max"]["students"][0]["answers"][0]
        assert above["mark"] > MAX_MARK[above["question_number"]]
        # What the fault left alone still follows the ground truth.
        assert marks(rules["mark_above_max"])["S-2"] == TRUTH["S-2"]
        assert marks(rules["student_missing"]) == {r: TRUTH[r] for r in REFS[:-1]}

        truncated, usage = replies["truncate"]
        assert truncated.finish_reason == "length"
        assert ok.message.content.startswith(truncated.message.content)
        assert len(truncated.message.content) < len(ok.message.content)
        with pytest.raises(json.JSONDecodeError):
            json.loads(truncated.message.content)
        assert usage.completion_tokens < replies["ok"][1].completion_tokens

        refusal, _ = replies["refusal"]
        assert refusal.message.content is None
        assert refusal.message.refusal == REFUSAL_TEXT
        assert refusal.finish_reason == "stop"

        assert stats(sim)["faults"] == {
            "not_json": 1, "schema_break": 3, "rule_break": 5, "truncate": 1, "refusal": 1}


def test_unpinned_variant_is_fixed_per_request() -> None:
    with simulator(faults={"rule_break": 1.0}) as sim, sdk(sim) as client:
        first = [grade(client, f"Batch {i}").headers[FAULT] for i in range(12)]
        again = [grade(client, f"Batch {i}").headers[FAULT] for i in range(12)]
        assert first == again
        assert len(set(first)) >= 3 and all(v.startswith("rule_break:") for v in first)


def test_script_runs_first_then_rates() -> None:
    settings = {"fault_script": ["http500", "ok", "truncate"], "faults": {"refusal": 1.0}}
    with simulator(**settings) as sim, sdk(sim) as client:
        seen = [outcome(client) for _ in range(5)]
        assert seen == ["http500", "ok", "truncate", "refusal", "refusal"]
        assert httpx.post(sim.url + "/_sim/reset", timeout=10).status_code == 200
        assert [outcome(client) for _ in range(3)] == ["http500", "ok", "truncate"]


def test_script_entry_waits_for_an_accepted_request() -> None:
    with simulator(rpm=1, fault_script=["ok", "http503"]) as sim, sdk(sim) as client:
        assert outcome(client) == "ok"
        assert outcome(client) == "RateLimitError"  # refused by the limits: no fault spent
        httpx.post(sim.url + "/_sim/config", json={"rpm": None}, timeout=10).raise_for_status()
        assert outcome(client) == "http503"


def test_rates_are_reproducible_with_a_seed() -> None:
    rates = {"http500": 0.2, "not_json": 0.2, "refusal": 0.2}

    def run(seed: int) -> tuple[list[str], dict[str, int]]:
        with simulator(faults=rates, seed=seed) as sim, sdk(sim) as client:
            seen = [outcome(client) for _ in range(24)]
            return seen, stats(sim)["faults"]

    first, counted = run(11)
    assert run(11) == (first, counted)
    assert run(12)[0] != first
    assert set(first) == {"ok", "http500", "not_json", "refusal"}
    assert counted == {k: first.count(k) for k in rates if first.count(k)}


def test_config_switches_faults_at_run_time() -> None:
    with simulator() as sim, sdk(sim) as client:
        assert outcome(client) == "ok"
        response = httpx.post(sim.url + "/_sim/config", json={"faults": "http502=1"}, timeout=10)
        assert response.json()["faults"] == {"http502": 1.0}
        assert outcome(client) == "http502"
        httpx.post(sim.url + "/_sim/config", json={"faults": {}}, timeout=10).raise_for_status()
        assert outcome(client) == "ok"


# --- settings ---------------------------------------------------------------------------------


def test_faults_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QBQ_SIM_FAULTS", "http500=0.1,truncate=0.2")
    monkeypatch.setenv("QBQ_SIM_FAULT_SCRIPT", "http500,ok,truncate")
    monkeypatch.setenv("QBQ_SIM_RPM", "100")
    config = SimConfig()
    assert config.faults == {"http500": 0.1, "truncate": 0.2}
    assert config.fault_script == ["http500", "ok", "truncate"]
    assert config.rpm == 100 and config.tpm is None

    monkeypatch.setenv("QBQ_SIM_FAULTS", "meteor=0.1")
    with pytest.raises(ValueError, match="unknown simulator fault kind 'meteor'"):
        SimConfig()


def test_sim_config_from_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QBQ_SIM_FAULTS", "http500=0.1,truncate=0.2")
    monkeypatch.setenv("QBQ_SIM_FAULT_SCRIPT", "timeout")
    monkeypatch.setenv("QBQ_SIM_RPM", "100")
    monkeypatch.setenv("QBQ_SIM_LATENCY_MS", "50")
    config = sim_config_from_cli(
        rpm=20, tpm=40_000, time_scale=60, faults=["truncate=0.3", "refusal=0.05"],
        fault_script="http503,ok", seed=3, hang_s=2,
    )
    assert config.faults == {"http500": 0.1, "truncate": 0.3, "refusal": 0.05}
    assert config.fault_script == ["http503", "ok"]
    assert (config.rpm, config.tpm, config.time_scale, config.seed, config.hang_s) == (
        20, 40_000, 60, 3, 2)
    assert config.latency_ms == 50  # from the environment

    kept = sim_config_from_cli()
    assert kept.fault_script == ["timeout"] and kept.rpm == 100

    with pytest.raises(ValueError) as unknown:
        sim_config_from_cli(faults=["explode=0.1"])
    for kind in FAULT_KINDS:
        assert kind in str(unknown.value)
    with pytest.raises(ValueError, match="KIND=RATE"):
        sim_config_from_cli(faults=["http500"])
    with pytest.raises(ValueError, match="at most 1"):
        sim_config_from_cli(faults=["http502=0.6", "http503=0.6"])
    with pytest.raises(ValueError, match="between 0 and 1"):
        sim_config_from_cli(faults=["http502=1.5"])
    with pytest.raises(ValueError):
        sim_config_from_cli(fault_script="http500,bogus")
    with pytest.raises(ValueError):
        sim_config_from_cli(time_scale=0.5)
