"""The model-provider adapter: Chat Completions through the official `openai` SDK.

This is the only module that imports `openai`. It translates SDK exceptions into qbq's error
tree and returns a `ChatReply` with the content, usage, latency and rate-limit headers. The SDK's
own retries are switched off: `qbq.grading` owns retries so that `retry-after` is honoured once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import openai
from openai._constants import RAW_RESPONSE_HEADER
from openai.types.chat import ChatCompletion

from qbq.errors import (
    ConfigurationError,
    ProviderConnectionError,
    ProviderError,
    ProviderRequestError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
    ResponseShapeError,
)

__all__ = ["ChatProvider", "ChatReply", "OpenAIChatProvider", "make_openai_client"]

_RATE_HEADERS = (
    "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", "retry-after",
)


@dataclass(frozen=True)
class ChatReply:
    """One provider answer, reduced to what grading and accounting need."""

    content: str | None
    refusal: str | None
    finish_reason: str | None
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    latency_ms: float
    simulated: bool
    rate_headers: Mapping[str, str] = field(default_factory=dict)


class ChatProvider(Protocol):
    """What grading needs from a model provider."""

    def complete(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        response_format: dict[str, Any],
        max_completion_tokens: int,
    ) -> ChatReply: ...


def make_openai_client(*, api_key: str | None = None, base_url: str | None = None,
                       organization: str | None = None, timeout_s: float = 120.0) -> openai.OpenAI:
    """An SDK client with retries off; unset arguments fall back to OPENAI_* variables."""
    try:
        return openai.OpenAI(api_key=api_key, base_url=base_url, organization=organization,
                             timeout=timeout_s, max_retries=0)
    except openai.OpenAIError as exc:
        raise ConfigurationError(
            "no OpenAI API key: set OPENAI_API_KEY (and OPENAI_BASE_URL for the simulator), "
            "or configure the OpenAIProvider block"
        ) from exc


def _retry_after(headers: Mapping[str, str]) -> float | None:
    for name in ("retry-after-ms", "retry-after"):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value)
        except ValueError:
            continue
        return seconds / 1000.0 if name.endswith("-ms") else seconds
    return None


def _error_detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
    return str(exc.message)[:300]


def translate_error(exc: openai.OpenAIError) -> ProviderError:
    """Map an SDK exception to qbq's error tree (by type and status code, never by text)."""
    if isinstance(exc, openai.APITimeoutError):
        return ProviderTimeoutError("the model request timed out")
    if isinstance(exc, openai.APIConnectionError):
        return ProviderConnectionError(f"connection to the provider failed: {exc.message}")
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        detail = _error_detail(exc)
        if code == 429:
            return RateLimitedError(f"rate limited: {detail}",
                                    retry_after=_retry_after(exc.response.headers))
        if code >= 500:
            return ProviderUnavailableError(f"provider error {code}: {detail}", status_code=code)
        return ProviderRequestError(f"request refused ({code}): {detail}", status_code=code)
    return ProviderConnectionError(f"provider call failed: {type(exc).__name__}")


class OpenAIChatProvider:
    """Chat Completions with strict structured output, through an injected SDK client."""

    def __init__(self, client: openai.OpenAI) -> None:
        self._client = client

    def complete(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        response_format: dict[str, Any],
        max_completion_tokens: int,
    ) -> ChatReply:
        start = time.perf_counter()
        try:
            # The SDK's own POST, without `create()`'s per-call walk of the messages through its
            # TypedDict annotations (~1 ms of CPU a call, measured): qbq's messages are already
            # plain JSON built by qbq.prompts. Auth, errors and response parsing are the SDK's.
            raw = self._client.post(
                "/chat/completions",
                body={"model": model, "messages": messages, "response_format": response_format,
                      "max_completion_tokens": max_completion_tokens},
                cast_to=ChatCompletion,
                options={"headers": {RAW_RESPONSE_HEADER: "true"}},
            )
            raw = cast(Any, raw)  # a LegacyAPIResponse[ChatCompletion], as with_raw_response
            completion = raw.parse()
        except openai.APIResponseValidationError as exc:
            raise ResponseShapeError("the provider's answer is not a chat completion") from exc
        except openai.OpenAIError as exc:
            raise translate_error(exc) from exc
        latency_ms = (time.perf_counter() - start) * 1000.0
        if not completion.choices:
            raise ResponseShapeError("the provider's answer has no choices")
        choice = completion.choices[0]
        usage = completion.usage
        cached = 0
        if usage is not None and usage.prompt_tokens_details is not None:
            cached = usage.prompt_tokens_details.cached_tokens or 0
        headers = {k: v for k in _RATE_HEADERS if (v := raw.headers.get(k)) is not None}
        return ChatReply(
            content=choice.message.content,
            refusal=choice.message.refusal,
            finish_reason=choice.finish_reason,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            cached_tokens=cached,
            completion_tokens=usage.completion_tokens if usage else 0,
            latency_ms=latency_ms,
            simulated=raw.headers.get("x-qbq-simulated") == "true",
            rate_headers=headers,
        )
