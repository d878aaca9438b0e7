"""The simulator's prompt caching, driven over HTTP with the real `openai` SDK.

Rules under test (https://platform.openai.com/docs/guides/prompt-caching): prompts of 1,024+
tokens; hits in 128-token steps of the longest identical prefix; the response schema comes
first; images must be identical, `detail` included; per `prompt_cache_key`; a retention.
"""

from __future__ import annotations

import io
import time
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
from qbq.tokens import MESSAGE_OVERHEAD, REPLY_PRIMING, Detail, image_tokens, text_tokens

MODEL = "gpt-4.1-mini"
RUBRIC = "Award one mark for each correct step of the derivation, and say which step failed. " * 80
QUESTIONS = [PromptQuestion("1", 4, RUBRIC), PromptQuestion("2", 3, None)]


def _page(shade: int, size: tuple[int, int] = (600, 800)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (shade, shade, shade)).save(buffer, format="PNG")
    return encode_data_uri(buffer.getvalue(), "image/png")


MODEL_ANSWER = _page(255)
PAGES = {ref: _page(200 + i) for i, ref in enumerate(["A", "B", "C", "D"])}


@pytest.fixture(scope="module")
def sim() -> Iterator[BackgroundServer]:
    # 1,000 simulated seconds per wall second: a 30 s retention passes in 0.03 s of wall time.
    config = SimConfig(time_scale=1000, prompt_cache_ttl_s=600, prompt_cache_extended_ttl_s=36_000)
    with BackgroundServer(create_app(config)) as server:
        yield server


def _grading(refs: list[str], *, detail: Detail = "high") -> list[dict[str, Any]]:
    return build_messages(
        instructions="Grade fairly and kindly.",
        questions=QUESTIONS,
        model_answer_urls=[MODEL_ANSWER],
        students=[StudentPages(ref, [PAGES[ref]]) for ref in refs],
        detail=detail,
    )


def _cached(reply: Any) -> int:
    assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
    return int(reply.usage.prompt_tokens_details.cached_tokens)


def _ask(client: openai.OpenAI, messages: list[dict[str, Any]], **extra: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=messages, **extra)


def test_identical_prefix_is_cached_in_128_token_steps(
    sim: BackgroundServer, client: openai.OpenAI
) -> None:
    first = _ask(client, _grading(["A", "B"]))
    assert _cached(first) == 0
    assert first.usage is not None and first.usage.prompt_tokens > 1_024

    # Same prefix (instructions, rubric, model answer, student A), another last student.
    second = _ask(client, _grading(["A", "C"]))
    hit = _cached(second)
    assert hit >= 1_024 and hit % 128 == 0
    assert second.usage is not None and hit < second.usage.prompt_tokens
    # The hit stops before student C's page: at most the tokens before it, rounded down.
    spec = get_model_spec(MODEL)
    page_c = image_tokens(spec, 600, 800, "high")
    assert hit <= second.usage.prompt_tokens - page_c - REPLY_PRIMING

    # The whole prompt again: every complete 128-token step of it.
    third = _ask(client, _grading(["A", "C"]))
    assert third.usage is not None
    assert _cached(third) == third.usage.prompt_tokens // 128 * 128

    stats = httpx.get(sim.url + "/_sim/stats", timeout=10).json()
    assert stats["cached_tokens"] == hit + _cached(third)


def test_short_prompts_are_never_cached(client: openai.OpenAI) -> None:
    short = [{"role": "user", "content": "word " * 900}]
    assert _ask(client, short).usage.prompt_tokens < 1_024
    assert _cached(_ask(client, short)) == 0


def test_the_schema_is_the_start_of_the_prefix(client: openai.OpenAI) -> None:
    messages = _grading(["A", "B"])
    _ask(client, messages, response_format=response_format(["1", "2"]))
    same = _ask(client, messages, response_format=response_format(["1", "2"]))
    assert _cached(same) >= 1_024
    # A schema pinning other question numbers differs within its first tokens: nothing of the prompt hits.
    other = _ask(client, messages, response_format=response_format(["1", "3"]))
    assert _cached(other) == 0


def test_images_must_match_detail_included(client: openai.OpenAI) -> None:
    tile_model = "gpt-4o"  # a tile model: detail changes the image's tokens
    high = _grading(["A", "B"], detail="high")
    client.chat.completions.create(model=tile_model, messages=high)
    low = _grading(["A", "B"], detail="low")
    reply = client.chat.completions.create(model=tile_model, messages=low)
    # The prefix before the model-answer image: the system message and the question text.
    system, user = low[0], low[1]
    before_image = MESSAGE_OVERHEAD + text_tokens("system") + text_tokens(system["content"])
    before_image += MESSAGE_OVERHEAD + text_tokens("user")
    for part in user["content"]:
        if part["type"] == "image_url":
            break
        before_image += text_tokens(part["text"])
    assert _cached(reply) == before_image // 128 * 128
    assert _cached(reply) >= 1_024


def test_prompt_cache_key_separates_caches(client: openai.OpenAI) -> None:
    messages = _grading(["A", "B"])
    _ask(client, messages, prompt_cache_key="exam-1")
    assert _cached(_ask(client, messages, prompt_cache_key="exam-1")) > 0
    assert _cached(_ask(client, messages, prompt_cache_key="exam-2")) == 0
    # Without a key a request lands in another cache than the keyed ones.
    assert _cached(_ask(client, _grading(["A", "C"]))) == 0


def test_retention_in_simulated_time(client: openai.OpenAI) -> None:
    messages = _grading(["A", "D"])
    _ask(client, messages)
    time.sleep(0.7)  # 700 simulated seconds: past the 600 s in-memory retention
    assert _cached(_ask(client, messages)) == 0

    _ask(client, messages, prompt_cache_retention="24h", prompt_cache_key="long")
    time.sleep(0.7)
    assert _cached(_ask(client, messages, prompt_cache_key="long")) > 0


def test_cache_parameters_are_checked(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        _ask(client, [{"role": "user", "content": "hi"}], prompt_cache_retention="1h")
    assert isinstance(bad.value.body, dict)
    assert bad.value.body["param"] == "prompt_cache_retention"
    assert bad.value.body["code"] == "invalid_value"
