"""The OpenAI simulator served on loopback and driven with the real `openai` SDK."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI, Response
from PIL import Image, PngImagePlugin

from qbq.catalog import get_model_spec
from qbq.images import TRUTH_KEY, encode_data_uri
from qbq.prompts import PromptQuestion, StudentPages, build_messages, response_format
from qbq.simulator import BackgroundServer, SimConfig, create_app, simulated_mark
from qbq.tokens import chat_prompt_tokens

MODEL = "gpt-4.1-mini"
QUESTIONS = [
    PromptQuestion("1", 5, "Full marks for a correct derivation."),
    PromptQuestion("2", 3, None),
    PromptQuestion("3", 2.5, "Half marks allowed."),
]
QNUMS = [q.question_number for q in QUESTIONS]
MAX_MARK = {q.question_number: q.max_mark for q in QUESTIONS}
REFS = ["S-001", "S-002"]
TRUTH_A = {"student": "S-001", "marks": {"1": 4, "2": 2.5}, "name": {"first": "Ada", "last": "L"}}


def _png(size: tuple[int, int], colour: tuple[int, int, int], truth: Any = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    if truth is not None:
        info.add_text(TRUTH_KEY, json.dumps(truth))
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


# S-001: page 1 carries truth for questions 1 and 2 (data URI), page 2 has none and is served
# over http. S-002: one page without truth. One model-answer page.
PAGE_A1 = _png((800, 1100), (250, 250, 245), TRUTH_A)
PAGE_A2 = _png((1240, 1754), (240, 240, 240))
PAGE_B1 = _png((1000, 1400), (230, 235, 240))
MODEL_ANSWER = _png((600, 800), (255, 255, 255))
PNG_URI = {
    name: encode_data_uri(data, "image/png")
    for name, data in {"a1": PAGE_A1, "b1": PAGE_B1, "model": MODEL_ANSWER}.items()
}


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    pages = {"a2.png": PAGE_A2, "junk.png": b"this is not an image"}
    app = FastAPI()

    @app.get("/pages/{name}")
    def page(name: str) -> Response:
        if name not in pages:
            return Response(status_code=404)
        return Response(pages[name], media_type="image/png")

    with BackgroundServer(app) as server:
        yield server.url


@pytest.fixture
def sim() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(SimConfig())) as server:
        yield server


@pytest.fixture
def client(sim: BackgroundServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-test", max_retries=0) as c:
        yield c


def _batch(image_server: str) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, bytes]]:
    a2_url = f"{image_server}/pages/a2.png"
    messages = build_messages(
        instructions="Be kind.",
        questions=QUESTIONS,
        model_answer_urls=[PNG_URI["model"]],
        students=[
            StudentPages("S-001", [PNG_URI["a1"], a2_url]),
            StudentPages("S-002", [PNG_URI["b1"]]),
        ],
    )
    bytes_by_url = {
        PNG_URI["a1"]: PAGE_A1,
        a2_url: PAGE_A2,
        PNG_URI["b1"]: PAGE_B1,
        PNG_URI["model"]: MODEL_ANSWER,
    }
    return messages, response_format(QNUMS), bytes_by_url


def _dims(bytes_by_url: dict[str, bytes]) -> dict[str, tuple[int, int]]:
    dims = {}
    for url, data in bytes_by_url.items():
        with Image.open(io.BytesIO(data)) as img:
            dims[url] = img.size
    return dims


def _message(error: openai.APIStatusError) -> str:
    # The SDK prefixes `.message` with "Error code: 400 - "; the body holds OpenAI's own text.
    assert isinstance(error.body, dict)
    assert set(error.body) == {"message", "type", "param", "code"}
    assert error.body["type"] == "invalid_request_error"
    return str(error.body["message"])


def _with_image(url: str) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Student ref: S-001"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


def test_grades_from_truth_and_counts_like_the_planner(
    sim: BackgroundServer, client: openai.OpenAI, image_server: str
) -> None:
    messages, fmt, bytes_by_url = _batch(image_server)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, response_format=fmt, max_completion_tokens=2000
    )
    assert raw.headers["x-qbq-simulated"] == "true"
    completion = raw.parse()

    assert completion.id.startswith("chatcmpl-sim-")
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    assert completion.system_fingerprint == "qbq-simulator"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.refusal is None
    reply = json.loads(choice.message.content or "")

    assert [s["ref"] for s in reply["students"]] == REFS
    a, b = reply["students"]
    assert set(a) == {"ref", "name", "answers"}
    assert a["name"] == {"first": "Ada", "last": "L"}
    assert b["name"] is None
    marks_a = {ans["question_number"]: ans for ans in a["answers"]}
    assert [ans["question_number"] for ans in a["answers"]] == QNUMS
    assert marks_a["1"]["mark"] == 4 and marks_a["2"]["mark"] == 2.5
    assert marks_a["1"]["confidence"] == "high"
    # No truth for question 3 of S-001, nor for any question of S-002: hash-derived marks.
    assert marks_a["3"]["mark"] == simulated_mark([PAGE_A1, PAGE_A2], "3", 2.5)
    assert marks_a["3"]["confidence"] == "medium"
    for ans in b["answers"]:
        qnum = ans["question_number"]
        assert ans["mark"] == simulated_mark([PAGE_B1], qnum, MAX_MARK[qnum])
        assert 0 <= ans["mark"] <= MAX_MARK[qnum]
        assert (ans["mark"] * 2).is_integer()
    for ans in a["answers"] + b["answers"]:
        assert ans["feedback"].startswith("[simulated]")
        assert ans["status"] == "answered"
        assert set(ans) == {"question_number", "mark", "feedback", "confidence", "status"}

    dims = _dims(bytes_by_url)
    expected_prompt = chat_prompt_tokens(
        get_model_spec(MODEL), messages, fmt, lambda url: dims[url]
    )
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == expected_prompt
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0

    # The same request gives the same marks.
    again = client.chat.completions.create(model=MODEL, messages=messages, response_format=fmt)
    assert json.loads(again.choices[0].message.content or "") == reply

    stats = httpx.get(sim.url + "/_sim/stats").json()
    assert {key: stats[key] for key in ("simulated", "requests", "by_status")} == {
        "simulated": True,
        "requests": 2,
        "by_status": {"200": 2},
    }
    assert stats["prompt_tokens"] == 2 * expected_prompt
    assert stats["completion_tokens"] == 2 * usage.completion_tokens
    assert stats["limits"] == {"rpm": None, "tpm": None}
    assert stats["faults"] == {}
    # Unlimited, yet the timeline counts what the limits would charge: prompt + model maximum.
    charged = expected_prompt + 2000 + expected_prompt + get_model_spec(MODEL).max_output_tokens
    assert sum(second["tokens"] for second in stats["timeline"]) == charged
    assert sum(second["started"] for second in stats["timeline"]) == 2


def test_tile_model_counts_detail(client: openai.OpenAI, image_server: str) -> None:
    messages, fmt, bytes_by_url = _batch(image_server)
    completion = client.chat.completions.create(
        model="gpt-4o", messages=messages, response_format=fmt
    )
    dims = _dims(bytes_by_url)
    expected = chat_prompt_tokens(get_model_spec("gpt-4o"), messages, fmt, lambda url: dims[url])
    assert completion.usage is not None and completion.usage.prompt_tokens == expected


def test_reply_cut_at_max_completion_tokens(client: openai.OpenAI, image_server: str) -> None:
    messages, fmt, _ = _batch(image_server)
    completion = client.chat.completions.create(
        model=MODEL, messages=messages, response_format=fmt, max_completion_tokens=5
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5


def test_errors_use_openai_classes_and_envelope(
    sim: BackgroundServer, client: openai.OpenAI, image_server: str
) -> None:
    messages, fmt, _ = _batch(image_server)

    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="gpt-nonexistent", messages=messages)
    assert not_found.value.code == "model_not_found"

    loose = json.loads(json.dumps(fmt))
    answer = loose["json_schema"]["schema"]["properties"]["students"]["items"]["properties"][
        "answers"
    ]["items"]
    del answer["additionalProperties"]
    with pytest.raises(openai.BadRequestError) as not_strict:
        client.chat.completions.create(model=MODEL, messages=messages, response_format=loose)
    assert not_strict.value.param == "response_format"
    assert "additionalProperties" in _message(not_strict.value)
    assert "'answers', 'items'" in _message(not_strict.value)

    partial = json.loads(json.dumps(fmt))
    name_obj = partial["json_schema"]["schema"]["properties"]["students"]["items"]["properties"][
        "name"
    ]["anyOf"][0]
    name_obj["required"] = ["first"]
    with pytest.raises(openai.BadRequestError) as not_required:
        client.chat.completions.create(model=MODEL, messages=messages, response_format=partial)
    assert "Missing 'last'" in _message(not_required.value)

    with pytest.raises(openai.BadRequestError) as bad_scheme:
        client.chat.completions.create(model=MODEL, messages=_with_image("ftp://x/p.png"))
    assert bad_scheme.value.param == "messages[0].content[1].image_url.url"

    with pytest.raises(openai.BadRequestError) as not_image_uri:
        client.chat.completions.create(
            model=MODEL, messages=_with_image("data:text/plain;base64,aGVsbG8=")
        )
    assert not_image_uri.value.code == "invalid_image_format"

    junk_uri = "data:image/png;base64," + base64.b64encode(b"not a png").decode()
    with pytest.raises(openai.BadRequestError) as undecodable:
        client.chat.completions.create(model=MODEL, messages=_with_image(junk_uri))
    # OpenAI's one wording for an image it cannot take, naming no image (param null)
    assert _message(undecodable.value).startswith("You uploaded an unsupported image")
    assert undecodable.value.param is None

    with pytest.raises(openai.BadRequestError) as junk_http:
        client.chat.completions.create(
            model=MODEL, messages=_with_image(f"{image_server}/pages/junk.png")
        )
    assert _message(junk_http.value).startswith("You uploaded an unsupported image")

    missing = f"{image_server}/pages/missing.png"
    with pytest.raises(openai.BadRequestError) as download:
        client.chat.completions.create(model=MODEL, messages=_with_image(missing))
    assert _message(download.value) == f"Error while downloading {missing}."

    too_many = get_model_spec(MODEL).max_output_tokens + 1
    with pytest.raises(openai.BadRequestError) as too_big:
        client.chat.completions.create(
            model=MODEL, messages=messages, max_completion_tokens=too_many
        )
    assert too_big.value.param == "max_completion_tokens"

    huge = [{"role": "user", "content": "hello " * 130_000}]
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model="gpt-4o", messages=huge)
    assert too_long.value.code == "context_length_exceeded"

    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model=MODEL, messages=[])
    assert empty.value.param == "messages"

    odd_part: Any = [{"role": "user", "content": [{"type": "video", "video": "x"}]}]
    with pytest.raises(openai.BadRequestError) as unknown_part:
        client.chat.completions.create(model=MODEL, messages=odd_part)
    assert unknown_part.value.param == "messages[0].content[0].type"

    no_content: Any = [{"role": "user"}]
    with pytest.raises(openai.BadRequestError) as no_content_err:
        client.chat.completions.create(model=MODEL, messages=no_content)
    assert no_content_err.value.code == "missing_required_parameter"

    stats = httpx.get(sim.url + "/_sim/stats").json()
    assert stats["by_status"] == {"404": 1, "400": 12}
    assert stats["requests"] == 13
    assert stats["prompt_tokens"] == 0

    assert httpx.post(sim.url + "/_sim/reset").status_code == 200
    assert httpx.get(sim.url + "/_sim/stats").json()["requests"] == 0


def test_authentication() -> None:
    with BackgroundServer(create_app(SimConfig(api_key="sk-right"))) as sim:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        missing = httpx.post(sim.url + "/v1/chat/completions", json=body)
        assert missing.status_code == 401
        assert set(missing.json()["error"]) == {"message", "type", "param", "code"}

        with openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-wrong", max_retries=0) as c:
            with pytest.raises(openai.AuthenticationError) as wrong:
                c.chat.completions.create(model=MODEL, messages=body["messages"])
            assert wrong.value.code == "invalid_api_key"
        with openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-right", max_retries=0) as c:
            assert c.chat.completions.create(model=MODEL, messages=body["messages"]).choices
        assert httpx.get(sim.url + "/_sim/stats").json()["by_status"] == {"401": 2, "200": 1}


def test_latency() -> None:
    with (
        BackgroundServer(create_app(SimConfig(latency_ms=300))) as sim,
        openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-any", max_retries=0) as c,
    ):
        start = time.monotonic()
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert time.monotonic() - start >= 0.3

        # Requests in flight together wait together, as with the real API.
        def ask(_: int) -> None:
            c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])

        start = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(ask, range(4)))
        assert time.monotonic() - start >= 0.3
        # They wait together, not one after another: several were in flight at once.
        timeline = httpx.get(sim.url + "/_sim/stats", timeout=10).json()["timeline"]
        assert max(second["in_flight"] for second in timeline) >= 2
