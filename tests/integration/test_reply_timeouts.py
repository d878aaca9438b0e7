"""Timeouts sized to the work, against the simulator's slow output: a request whose expected
output allows too little time raises `ReplyTimeoutError` (grading splits on it); one sized to
its output is answered."""

from __future__ import annotations

import httpx
import pytest

from qbq.errors import ReplyTimeoutError
from qbq.provider import ChatRequest, OpenAIChatProvider, make_openai_client
from qbq.simulator import BackgroundServer, SimConfig, create_app

# the simulator's "hi" reply is 8 tokens: 250 ms each makes it take 2 s
MS_PER_OUTPUT_TOKEN = 250.0


def test_each_request_waits_as_long_as_its_expected_output_takes() -> None:
    hello = ChatRequest(model="gpt-4.1-mini", messages=[{"role": "user", "content": "hi"}],
                        response_format={"type": "text"}, max_completion_tokens=100)
    with BackgroundServer(create_app(SimConfig())) as sim:
        client = make_openai_client(api_key="sk-slow", base_url=sim.url + "/v1",
                                    loopback_only=True)
        OpenAIChatProvider(client).complete(hello)  # warm up (the first reply loads the grader)
        httpx.post(sim.url + "/_sim/config", json={"ms_per_output_token": MS_PER_OUTPUT_TOKEN},
                   timeout=10).raise_for_status()
        # 8 tokens a second expected: timeout 0.2 s + expected / 8
        provider = OpenAIChatProvider(client, timeout_base_s=0.2, output_tokens_per_s=8.0)
        too_little = ChatRequest(**{**hello.__dict__, "expected_output_tokens": 8})
        enough = ChatRequest(**{**hello.__dict__, "expected_output_tokens": 24})
        assert provider.timeout_for(too_little) == pytest.approx(1.2)

        with pytest.raises(ReplyTimeoutError, match="1 s"):
            provider.complete(too_little)
        answered = provider.complete(enough)  # 3.2 s allowed for a 2 s reply
        provider.close()

    assert answered.finish_reason == "stop" and answered.usage.completion_tokens == 8
