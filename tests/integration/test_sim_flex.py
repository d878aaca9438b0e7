"""Flex processing in the simulator, over HTTP with the real `openai` SDK.

https://platform.openai.com/docs/guides/flex-processing: `service_tier: "flex"` for the models
OpenAI lists (o3, o4-mini, the gpt-5 family), slower, and at times a 429 "Resource
Unavailable" that is not billed.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from qbq.simulator import BackgroundServer, SimConfig, create_app
from qbq.simulator.tiers import flex_supported

HELLO = [{"role": "user", "content": "hi"}]


def test_flex_is_served_and_reported_for_a_flex_model() -> None:
    with BackgroundServer(create_app(SimConfig())) as sim, openai.OpenAI(
        base_url=sim.url + "/v1", api_key="sk-test", max_retries=0
    ) as client:
        flex = client.chat.completions.create(model="o4-mini", messages=HELLO, service_tier="flex")
        assert flex.service_tier == "flex"
        auto = client.chat.completions.create(model="o4-mini", messages=HELLO, service_tier="auto")
        assert auto.service_tier == "default"
        plain = client.chat.completions.create(model="o4-mini", messages=HELLO)
        assert plain.service_tier == "default"

        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="gpt-4.1-mini", messages=HELLO, service_tier="flex")
        assert refused.value.body == {
            "message": "Unsupported service_tier: flex",
            "type": "invalid_request_error",
            "param": "service_tier",
            "code": None,
        }
        with pytest.raises(openai.BadRequestError) as invalid:
            client.chat.completions.create(
                model="o4-mini",
                messages=HELLO,
                service_tier="cheap",  # type: ignore[arg-type]
            )
        assert isinstance(invalid.value.body, dict)
        assert invalid.value.body["code"] == "invalid_value"


def test_flex_without_capacity_is_an_unbilled_429() -> None:
    config = SimConfig(rpm=60, tpm=1_000_000, flex_unavailable_rate=1.0)
    with BackgroundServer(create_app(config)) as sim, openai.OpenAI(
        base_url=sim.url + "/v1", api_key="sk-test", max_retries=0
    ) as client:
        with pytest.raises(openai.RateLimitError) as unavailable:
            client.chat.completions.create(model="gpt-5-mini", messages=HELLO, service_tier="flex")
        assert isinstance(unavailable.value.body, dict)
        assert unavailable.value.body["code"] == "resource_unavailable"
        assert unavailable.value.body["message"].startswith("Resource Unavailable")
        assert "retry-after" not in unavailable.value.response.headers
        # The default tier is unaffected, and the refused flex request used none of the limits.
        ok = client.chat.completions.with_raw_response.create(model="gpt-5-mini", messages=HELLO)
        assert ok.headers["x-ratelimit-remaining-requests"] == "59"
        stats = httpx.get(sim.url + "/_sim/stats", timeout=10).json()
        assert stats["by_status"] == {"429": 1, "200": 1}
        assert stats["prompt_tokens"] == ok.parse().usage.prompt_tokens


@pytest.mark.parametrize(
    ("model", "supported"),
    [("o3", True), ("o4-mini", True), ("o4-mini-2025-04-16", True), ("gpt-5", True),
     ("gpt-5-mini", True), ("gpt-5-nano", True), ("gpt-5.2", True), ("gpt-4.1-mini", False),
     ("gpt-4o", False), ("o3-mini", False)],
)
def test_which_models_flex_serves(model: str, supported: bool) -> None:
    assert flex_supported(model, SimConfig().flex_models) is supported
