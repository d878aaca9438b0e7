"""Faults as OpenAI sends them: quota, 429s without retry-after, 408/409, x-should-retry, a slow
provider whose client gives up. Driven over HTTP with the real `openai` SDK and httpx."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest

from qbq.simulator import BackgroundServer, SimConfig, create_app

MODEL = "gpt-4.1-mini"
FAULT = "x-qbq-simulated-fault"
HELLO = [{"role": "user", "content": "hi"}]
BODY = {"model": MODEL, "messages": HELLO}
AUTH = {"authorization": "Bearer sk-test"}


@contextmanager
def simulator(**settings: Any) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(SimConfig(**settings))) as server:
        yield server


def _post(server: BackgroundServer) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json=BODY, headers=AUTH, timeout=10)


def _ratelimit_headers(response: httpx.Response) -> set[str]:
    return {name for name in response.headers if name.startswith("x-ratelimit-")}


def test_insufficient_quota_is_a_429_no_wait_fixes() -> None:
    with simulator(rpm=100, tpm=100_000, faults={"insufficient_quota": 1.0}) as sim:
        raw = _post(sim)
        assert raw.status_code == 429
        assert raw.json() == {
            "error": {
                "message": "You exceeded your current quota, please check your plan and billing "
                "details. For more information on this error, read the docs: "
                "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "type": "insufficient_quota",
                "param": None,
                "code": "insufficient_quota",
            }
        }
        assert "retry-after" not in raw.headers and "retry-after-ms" not in raw.headers
        assert _ratelimit_headers(raw) == set()
        assert raw.headers[FAULT] == "insufficient_quota"

        with (
            openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-test", max_retries=0) as client,
            pytest.raises(openai.RateLimitError) as refused,
        ):
            client.chat.completions.create(model=MODEL, messages=HELLO)
        assert refused.value.code == "insufficient_quota"
        stats = httpx.get(sim.url + "/_sim/stats", timeout=10).json()
        assert stats["by_status"] == {"429": 2}
        assert stats["faults"] == {"insufficient_quota": 2}


def test_rate_limit_without_retry_after_keeps_the_reset_headers() -> None:
    with simulator(rpm=100, tpm=100_000, faults={"rate_limit_no_headers": 1.0}) as sim:
        raw = _post(sim)
    assert raw.status_code == 429
    error = raw.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "retry-after" not in raw.headers and "retry-after-ms" not in raw.headers
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    # The reset headers say how long to wait: at least the injected 429's one second.
    reset = raw.headers["x-ratelimit-reset-requests"]
    assert reset.endswith("s") and not reset.endswith("ms") and float(reset[:-1]) >= 1.0
    assert {"x-ratelimit-limit-requests", "x-ratelimit-reset-tokens"} <= _ratelimit_headers(raw)
    assert raw.headers[FAULT] == "rate_limit_no_headers"


def test_rate_limit_without_any_header() -> None:
    with simulator(rpm=100, tpm=100_000, faults={"rate_limit_no_headers:bare": 1.0}) as sim:
        raw = _post(sim)
    assert raw.status_code == 429
    assert raw.json()["error"]["code"] == "rate_limit_exceeded"
    assert "retry-after" not in raw.headers
    assert _ratelimit_headers(raw) == set()
    assert raw.headers[FAULT] == "rate_limit_no_headers:bare"


def test_reset_only_variant_without_configured_limits_sends_only_resets() -> None:
    with simulator(faults={"rate_limit_no_headers": 1.0}) as sim:
        raw = _post(sim)
    assert raw.status_code == 429
    assert _ratelimit_headers(raw) == {"x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"}


@pytest.mark.parametrize(
    ("fault", "status", "should_retry"),
    [
        ("http408", 408, None),
        ("http409", 409, None),
        ("http500:should_retry_false", 500, "false"),
        ("http409:should_retry_false", 409, "false"),
        ("http408:should_retry_true", 408, "true"),
    ],
)
def test_status_faults_and_x_should_retry(fault: str, status: int, should_retry: str | None) -> None:
    with simulator(fault_script=[fault]) as sim:
        raw = _post(sim)
        assert raw.status_code == status
        assert set(raw.json()["error"]) == {"message", "type", "param", "code"}
        assert raw.headers.get("x-should-retry") == should_retry
        assert raw.headers[FAULT] == fault


def test_sdk_obeys_x_should_retry_false() -> None:
    # The SDK retries 409 by default; x-should-retry: false stops it after one call.
    with simulator(fault_script=["http409:should_retry_false", "ok"]) as sim:
        with (
            openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-test", max_retries=2) as client,
            pytest.raises(openai.ConflictError),
        ):
            client.chat.completions.create(model=MODEL, messages=HELLO)
        assert httpx.get(sim.url + "/_sim/stats", timeout=10).json()["requests"] == 1


def test_slow_provider_outlasts_the_client_and_stops_work() -> None:
    # 2,000 simulated ms per output token: any reply takes minutes; the client waits 0.5 s.
    with simulator(ms_per_output_token=2_000) as sim:
        with openai.OpenAI(
            base_url=sim.url + "/v1", api_key="sk-test", max_retries=0, timeout=0.5
        ) as client, pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model=MODEL, messages=HELLO)
        deadline = time.monotonic() + 10
        stats = httpx.get(sim.url + "/_sim/stats", timeout=10).json()
        while stats["by_status"] != {"499": 1} and time.monotonic() < deadline:
            time.sleep(0.05)
            stats = httpx.get(sim.url + "/_sim/stats", timeout=10).json()
    # The simulator noticed the client leave and stopped: nothing in flight, no 200 sent.
    assert stats["by_status"] == {"499": 1}
    assert stats["in_flight"] == 0
    assert stats["completion_tokens"] == 0
    assert sum(s["started"] for s in stats["timeline"]) == 1


def test_new_fault_names_are_validated() -> None:
    with pytest.raises(ValueError, match="valid variants: reset_only, bare"):
        SimConfig(faults={"rate_limit_no_headers:sometimes": 0.5})
    assert SimConfig(faults="insufficient_quota=0.1,http408:should_retry_true=0.2").faults == {
        "insufficient_quota": 0.1,
        "http408:should_retry_true": 0.2,
    }
