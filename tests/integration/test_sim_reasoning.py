"""Reasoning models and max input in the simulator, driven over HTTP with the real `openai` SDK.

The catalogue may not mark a model as reasoning yet, so the simulator gets a reasoning spec of
its own (gpt-5-mini's numbers: 272,000 input tokens of a 400,000 window).
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from qbq.catalog import get_model_spec
from qbq.images import encode_data_uri
from qbq.prompts import PromptQuestion, StudentPages, build_messages, response_format
from qbq.simulator import BackgroundServer, SimConfig, create_app

REASONER = "gpt-5-mini"
PLAIN = "gpt-4.1-mini"
EFFORTS = ("minimal", "low", "medium", "high")
SPEC = dataclasses.replace(
    get_model_spec(REASONER),
    reasoning=True,
    reasoning_efforts=EFFORTS,
    default_reasoning_effort="medium",
    max_input_tokens=272_000,
)
PLAIN_SPEC = dataclasses.replace(get_model_spec(PLAIN), reasoning=False, reasoning_efforts=())
PER_REQUEST = {"minimal": 0, "low": 100, "medium": 400, "high": 1600}
PER_ANSWER = {"minimal": 0, "low": 10, "medium": 30, "high": 90}
QUESTIONS = [PromptQuestion("1", 2, None), PromptQuestion("2", 3, None)]


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (250, 250, 250)).save(buffer, format="PNG")
    return encode_data_uri(buffer.getvalue(), "image/png")


# One small page per student: marks come from the page hash, which is all these tests need.
PNG = _png()


@pytest.fixture(scope="module")
def sim() -> Iterator[BackgroundServer]:
    config = SimConfig(reasoning_tokens=PER_REQUEST, reasoning_tokens_per_answer=PER_ANSWER)
    app = create_app(config, models={REASONER: SPEC, PLAIN: PLAIN_SPEC})
    with BackgroundServer(app) as server:
        yield server


def _grading(students: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    refs = [f"S{i:02d}" for i in range(students)]
    messages = build_messages(
        instructions=None,
        questions=QUESTIONS,
        model_answer_urls=[],
        students=[StudentPages(ref, [PNG]) for ref in refs],
    )
    return messages, response_format([q.question_number for q in QUESTIONS])


def test_reasoning_is_spent_inside_the_budget_and_reported(
    sim: BackgroundServer, client: openai.OpenAI
) -> None:
    messages, fmt = _grading(3)  # 3 students × 2 questions = 6 answers
    reply = client.chat.completions.create(
        model=REASONER, messages=messages, response_format=fmt, max_completion_tokens=20_000,
        reasoning_effort="low",
    )
    usage = reply.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 100 + 10 * 6
    visible = usage.completion_tokens - usage.completion_tokens_details.reasoning_tokens
    assert visible > 0
    assert reply.choices[0].finish_reason == "stop"
    assert len(json.loads(reply.choices[0].message.content or "")["students"]) == 3

    # No effort sent: OpenAI's default, medium; more students think more.
    messages, fmt = _grading(5)
    reply = client.chat.completions.create(
        model=REASONER, messages=messages, response_format=fmt, max_completion_tokens=20_000
    )
    assert reply.usage is not None and reply.usage.completion_tokens_details is not None
    assert reply.usage.completion_tokens_details.reasoning_tokens == 400 + 30 * 10

    stats = httpx.get(sim.url + "/_sim/stats", timeout=10).json()
    assert stats["reasoning_tokens"] == 160 + 700
    assert stats["completion_tokens"] == usage.completion_tokens + reply.usage.completion_tokens


def test_budget_too_small_ends_with_length_and_a_cut_reply(client: openai.OpenAI) -> None:
    messages, fmt = _grading(3)
    eaten = client.chat.completions.create(
        model=REASONER, messages=messages, response_format=fmt, max_completion_tokens=150,
        reasoning_effort="low",
    )
    assert eaten.choices[0].finish_reason == "length"
    assert eaten.choices[0].message.content == ""
    assert eaten.usage is not None and eaten.usage.completion_tokens_details is not None
    assert eaten.usage.completion_tokens == 150
    assert eaten.usage.completion_tokens_details.reasoning_tokens == 150

    cut = client.chat.completions.create(
        model=REASONER, messages=messages, response_format=fmt, max_completion_tokens=200,
        reasoning_effort="low",
    )
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None and cut.usage.completion_tokens_details is not None
    assert cut.usage.completion_tokens == 200
    assert cut.usage.completion_tokens_details.reasoning_tokens == 160
    content = cut.choices[0].message.content or ""
    assert content and not content.endswith("}")
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)


def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    assert isinstance(exc.body, dict) and set(exc.body) == {"message", "type", "param", "code"}
    assert exc.body["type"] == "invalid_request_error"
    return exc.body


@pytest.mark.parametrize(
    ("model", "extra", "expected"),
    [
        (
            PLAIN,
            {"reasoning_effort": "low"},
            {"param": "reasoning_effort", "code": "unsupported_parameter",
             "message": "Unsupported parameter: 'reasoning_effort' is not supported with this model."},
        ),
        (
            REASONER,
            {"reasoning_effort": "xhigh"},
            {"param": "reasoning_effort", "code": "unsupported_value",
             "message": "Unsupported value: 'reasoning_effort' does not support 'xhigh' with this "
                        "model. Supported values are: 'minimal', 'low', 'medium', and 'high'."},
        ),
        (
            REASONER,
            {"reasoning_effort": "extreme"},
            {"param": "reasoning_effort", "code": "invalid_value"},
        ),
        (
            REASONER,
            {"max_tokens": 500},
            {"param": "max_tokens", "code": "unsupported_parameter"},
        ),
        (
            REASONER,
            {"temperature": 0.2},
            {"param": "temperature", "code": "unsupported_value"},
        ),
    ],
)
def test_reasoning_parameters_are_checked_like_openai(
    client: openai.OpenAI, model: str, extra: dict[str, Any], expected: dict[str, str]
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], **extra
        )
    body = _error(refused.value)
    assert {key: body[key] for key in expected} == expected


def test_max_input_is_enforced_apart_from_the_context_window() -> None:
    small = dataclasses.replace(SPEC, max_input_tokens=1_000)
    with BackgroundServer(create_app(SimConfig(), models={REASONER: small})) as other, openai.OpenAI(
        base_url=other.url + "/v1", api_key="sk-test", max_retries=0
    ) as c:
        # 1,000 input tokens pass even though the window (400,000) would take far more.
        text = "hi " * 980
        ok = c.chat.completions.create(model=REASONER, messages=[{"role": "user", "content": text}])
        assert ok.usage is not None and ok.usage.prompt_tokens <= 1_000
        with pytest.raises(openai.BadRequestError) as over:
            c.chat.completions.create(
                model=REASONER, messages=[{"role": "user", "content": "hi " * 1_100}]
            )
    body = _error(over.value)
    assert body["code"] == "context_length_exceeded"
    assert body["param"] == "messages"
    assert body["message"].startswith("Input tokens exceed the configured limit of 1000 tokens. ")
    assert body["message"].endswith(" tokens. Please reduce the length of the messages.")


def test_reasoning_settings_change_at_run_time(sim: BackgroundServer, client: openai.OpenAI) -> None:
    changed = httpx.post(
        sim.url + "/_sim/config", json={"reasoning_tokens": "minimal=7"}, timeout=10
    )
    assert changed.status_code == 200
    assert changed.json()["reasoning_tokens"]["minimal"] == 7
    assert changed.json()["reasoning_tokens"]["high"] == 1600  # the others stay
    try:
        reply = client.chat.completions.create(
            model=REASONER, messages=[{"role": "user", "content": "hi"}], reasoning_effort="minimal"
        )
        assert reply.usage is not None and reply.usage.completion_tokens_details is not None
        assert reply.usage.completion_tokens_details.reasoning_tokens == 7
    finally:
        httpx.post(sim.url + "/_sim/config", json={"reasoning_tokens": PER_REQUEST}, timeout=10)
