"""The provider adapter's error table (HTTP status and SDK exceptions → qbq errors), its request
body, and the switch that keeps the test suite away from real models."""

from __future__ import annotations

import httpx2
import openai
import pytest

from qbq.errors import (
    ConfigurationError,
    ProviderConnectionError,
    ProviderContentError,
    ProviderError,
    ProviderRequestError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    QuotaExhaustedError,
    RateLimitedError,
)
from qbq.provider import ChatRequest, make_openai_client, openai_duration_s, translate_error

URL = "http://127.0.0.1:9/v1/chat/completions"


def status_error(code: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = httpx2.Request("POST", URL)
    response = httpx2.Response(code, headers=headers or {}, request=request)
    body = {"error": {"message": f"the provider says {code}", "type": "x", "code": None}}
    return openai.APIStatusError(f"Error code: {code}", response=response, body=body)


# status → (qbq error, transient); the choice for 408, 409 and x-should-retry follows the SDK's
# own retry rule (openai._base_client.BaseClient._should_retry)
TABLE: list[tuple[int, dict[str, str], type[ProviderError], bool]] = [
    (400, {}, ProviderContentError, False),  # param null: OpenAI's reply for a bad image
    (401, {}, ProviderRequestError, False),
    (403, {}, ProviderRequestError, False),
    (404, {}, ProviderRequestError, False),
    (408, {}, ProviderTimeoutError, True),
    (409, {}, ProviderUnavailableError, True),
    (422, {}, ProviderRequestError, False),
    (429, {}, RateLimitedError, True),
    (500, {}, ProviderUnavailableError, True),
    (502, {}, ProviderUnavailableError, True),
    (503, {}, ProviderUnavailableError, True),
    (400, {"x-should-retry": "true"}, ProviderContentError, True),
    (503, {"x-should-retry": "false"}, ProviderUnavailableError, False),
    (429, {"x-should-retry": "false"}, RateLimitedError, False),
]


@pytest.mark.parametrize(("code", "headers", "kind", "transient"), TABLE,
                         ids=[f"{c}{'-' + next(iter(h.values())) if h else ''}"
                              for c, h, _, _ in TABLE])
def test_status_codes_map_to_one_error_each(code: int, headers: dict[str, str],
                                            kind: type[ProviderError], transient: bool) -> None:
    error = translate_error(status_error(code, headers))
    assert type(error) is kind
    assert error.transient is transient
    assert str(code) in error.message and f"the provider says {code}" in error.message


@pytest.mark.parametrize(("param", "kind"), [
    ("messages[2].content[5].image_url.url", ProviderContentError),
    ("messages", ProviderContentError),
    ("response_format", ProviderContentError),
    ("model", ProviderRequestError),
    ("reasoning_effort", ProviderRequestError),
])
def test_a_400_is_about_the_content_when_its_param_points_there(
        param: str, kind: type[ProviderError]) -> None:
    error = status_error(400)
    error.body = {"error": {"message": "bad", "type": "invalid_request_error", "param": param,
                            "code": "invalid_image_format"}}
    translated = translate_error(error)
    assert type(translated) is kind
    assert isinstance(translated, ProviderRequestError)
    assert (translated.param, translated.code) == (param, "invalid_image_format")


def test_retry_after_headers_are_read_in_seconds() -> None:
    assert translate_error(status_error(429, {"retry-after": "7"})).retry_after == 7.0  # type: ignore[attr-defined]
    assert translate_error(status_error(429, {"retry-after-ms": "250"})).retry_after == 0.25  # type: ignore[attr-defined]
    assert translate_error(status_error(429)).retry_after is None  # type: ignore[attr-defined]


def test_timeouts_and_dropped_connections() -> None:
    request = httpx2.Request("POST", URL)
    assert type(translate_error(openai.APITimeoutError(request=request))) is ProviderTimeoutError
    dropped = translate_error(openai.APIConnectionError(request=request))
    assert type(dropped) is ProviderConnectionError and dropped.transient


def test_the_body_carries_only_what_is_set() -> None:
    request = ChatRequest(model="gpt-5-mini", messages=[], response_format={"type": "text"},
                          max_completion_tokens=500, planned_prompt_tokens=1200, retry=True)
    assert request.body() == {"model": "gpt-5-mini", "messages": [],
                              "response_format": {"type": "text"}, "max_completion_tokens": 500}
    assert request.reserved_tokens == 1700
    full = ChatRequest(model="m", messages=[], response_format={}, max_completion_tokens=1,
                       reasoning_effort="low", prompt_cache_key="k", service_tier="flex")
    assert {k: full.body()[k] for k in ("reasoning_effort", "prompt_cache_key", "service_tier")} \
        == {"reasoning_effort": "low", "prompt_cache_key": "k", "service_tier": "flex"}


def test_loopback_only_refuses_a_real_provider() -> None:
    with pytest.raises(ConfigurationError, match="QBQ_LOOPBACK_ONLY"):
        make_openai_client(api_key="sk-x", base_url="https://api.openai.com/v1",
                           loopback_only=True)
    make_openai_client(api_key="sk-x", base_url="http://127.0.0.1:9/v1", loopback_only=True).close()
    make_openai_client(api_key="sk-x", base_url="http://localhost:9/v1", loopback_only=True).close()


def test_the_suite_runs_with_loopback_only_on() -> None:
    from qbq.settings import get_settings

    assert get_settings().loopback_only is True


def test_insufficient_quota_is_its_own_error_never_retried() -> None:
    request = httpx2.Request("POST", URL)
    response = httpx2.Response(429, request=request)
    body = {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                      "code": "insufficient_quota"}}
    error = translate_error(openai.APIStatusError("Error code: 429", response=response, body=body))
    assert type(error) is QuotaExhaustedError and not error.transient
    assert "add credit" in error.message and "run the same command again" in error.message


def test_a_429_without_retry_after_waits_for_the_exhausted_buckets_reset() -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s",
               "x-ratelimit-remaining-tokens": "9000", "x-ratelimit-reset-tokens": "6m0s"}
    assert translate_error(status_error(429, headers)).retry_after == 1.5  # type: ignore[attr-defined]
    # no remaining counts (OpenAI's reset-only 429): the longest reset stated
    resets = {"x-ratelimit-reset-requests": "20ms", "x-ratelimit-reset-tokens": "2.5s"}
    assert translate_error(status_error(429, resets)).retry_after == 2.5  # type: ignore[attr-defined]
    both = {"retry-after": "3", **headers}
    assert translate_error(status_error(429, both)).retry_after == 3.0  # type: ignore[attr-defined]


@pytest.mark.parametrize(("text", "seconds"), [("20ms", 0.02), ("1.2s", 1.2), ("6m0s", 360.0),
                                               ("1h2m3s", 3723.0), ("0s", 0.0), ("soon", None)])
def test_openai_durations(text: str, seconds: float | None) -> None:
    assert openai_duration_s(text) == seconds
