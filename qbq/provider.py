"""The model-provider adapter: Chat Completions through the official `openai` SDK.

With `qbq.batch_api` (the Files and Batch APIs) the only module that imports `openai`.
It sends one `ChatRequest`, translates SDK
exceptions into qbq's error tree by one table (`STATUS_RULES`), and returns a `ChatReply` with
the content, `Usage`, and the rate-limit headers. The SDK's own retries are switched off:
`qbq.grading` decides retries, and the wrappers in `qbq.guards` pace and bound them, so that a
`retry-after` is honoured once and nothing stacks.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import openai
from openai._constants import RAW_RESPONSE_HEADER
from openai.types.chat import ChatCompletion

from qbq.errors import (
    ConfigurationError,
    FlexUnavailableError,
    ProviderConnectionError,
    ProviderContentError,
    ProviderError,
    ProviderRequestError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    QuotaExhaustedError,
    RateLimitedError,
    ReplyTimeoutError,
    ResponseShapeError,
)
from qbq.usage import Usage

__all__ = ["QUOTA_MESSAGE", "STATUS_RULES", "ChatProvider", "ChatReply", "ChatRequest",
           "OpenAIChatProvider", "chat_reply", "content_param", "is_loopback_host",
           "make_openai_client", "openai_duration_s",
           "translate_error"]

_RATE_HEADERS = (
    "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", "retry-after", "retry-after-ms",
)
_DETAIL_FROM_PROVIDER = 300  # characters of the provider's error message kept
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$")
#: What a teacher reads when OpenAI answers `insufficient_quota`.
QUOTA_MESSAGE = (
    "the OpenAI account has no credit left (429 insufficient_quota): add credit or raise the "
    "usage limit at https://platform.openai.com/settings/organization/billing, then run the same "
    "command again; the batches already graded are kept and the rest resume")


@dataclass(frozen=True)
class ChatRequest:
    """One Chat Completions request as qbq sends it, plus what the wrappers need to know.

    The first fields are the wire body (https://platform.openai.com/docs/api-reference/chat/create);
    fields left None are not sent. `planned_prompt_tokens` (the planner's estimate of the prompt)
    and `retry` (this request repeats an earlier one: a retry or a re-ask) are read by the rate
    pacing and the retry budget; `expected_output_tokens` (visible and reasoning, for the
    students asked; 0: unknown) sizes the request's timeout; `on_send` runs right before the
    HTTP request leaves, after any wait for a slot or the rate (the batch renews its lease and
    counts the attempt there).
    """

    model: str
    messages: list[dict[str, Any]]
    response_format: dict[str, Any]
    max_completion_tokens: int
    reasoning_effort: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    planned_prompt_tokens: int = 0
    retry: bool = False
    expected_output_tokens: int = 0
    on_send: Callable[[], None] | None = field(default=None, compare=False, repr=False)

    @property
    def reserved_tokens(self) -> int:
        """Tokens the provider charges up front: the prompt plus `max_completion_tokens`."""
        return self.planned_prompt_tokens + self.max_completion_tokens

    def body(self) -> dict[str, Any]:
        """The JSON body of the request."""
        body: dict[str, Any] = {"model": self.model, "messages": self.messages,
                                "response_format": self.response_format,
                                "max_completion_tokens": self.max_completion_tokens}
        optional = {"reasoning_effort": self.reasoning_effort,
                    "prompt_cache_key": self.prompt_cache_key, "service_tier": self.service_tier}
        body.update({k: v for k, v in optional.items() if v is not None})
        return body


@dataclass(frozen=True)
class ChatReply:
    """One provider answer, reduced to what grading and accounting need."""

    content: str | None
    refusal: str | None
    finish_reason: str | None
    usage: Usage
    simulated: bool
    rate_headers: Mapping[str, str] = field(default_factory=dict)


class ChatProvider(Protocol):
    """What grading needs from a model provider: one request in, one reply out.

    Raises a `ProviderError` when no answer came, `ResponseShapeError` when the answer is not a
    chat completion.
    """

    def complete(self, request: ChatRequest) -> ChatReply: ...


def is_loopback_host(url: str) -> bool:
    """Whether every address `url`'s host resolves to is a loopback address."""
    host = urlsplit(url).hostname
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def _loopback_guard(request: Any) -> None:
    url = str(request.url)
    if not is_loopback_host(url):
        raise ConfigurationError(
            f"model request to {urlsplit(url).hostname!r} refused: QBQ_LOOPBACK_ONLY is set "
            "(the test suite never calls a real model)")


def make_openai_client(*, api_key: str | None = None, base_url: str | None = None,
                       organization: str | None = None, timeout_s: float = 120.0,
                       loopback_only: bool = False) -> openai.OpenAI:
    """An SDK client with retries off; unset arguments fall back to OPENAI_* variables.

    `loopback_only` (the test suite's `QBQ_LOOPBACK_ONLY=true`) makes every request to a host
    that is not a loopback address fail with `ConfigurationError` before it is sent.
    Raises `ConfigurationError` without an API key.
    """
    http_client = (openai.DefaultHttpxClient(event_hooks={"request": [_loopback_guard]})
                   if loopback_only else None)
    try:
        client = openai.OpenAI(api_key=api_key, base_url=base_url, organization=organization,
                               timeout=timeout_s, max_retries=0, http_client=http_client)
    except openai.OpenAIError as exc:
        raise ConfigurationError(
            "no OpenAI API key: set OPENAI_API_KEY (and OPENAI_BASE_URL for the simulator), "
            "or configure the OpenAIProvider block"
        ) from exc
    if loopback_only and not is_loopback_host(str(client.base_url)):
        client.close()
        raise ConfigurationError(
            f"model provider {urlsplit(str(client.base_url)).hostname!r} refused: "
            "QBQ_LOOPBACK_ONLY is set (the test suite never calls a real model)")
    return client


def openai_duration_s(text: str) -> float | None:
    """Seconds in a duration as OpenAI writes `x-ratelimit-reset-*` ("20ms", "1.2s", "6m0s",
    "1h2m3s"; https://platform.openai.com/docs/guides/rate-limits); None when unreadable."""
    match = _DURATION.match(text.strip())
    if match is None or not any(match.groups()):
        return None
    hours, minutes, secs, ms = match.groups()
    return (int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs or 0)
            + float(ms or 0) / 1000.0)


def _reset_wait(headers: Mapping[str, str]) -> float | None:
    """The wait a 429 without `retry-after` implies: the `x-ratelimit-reset-*` of the exhausted
    bucket (remaining 0), else the longest reset stated; None without reset headers."""
    resets = {dim: wait for dim in ("requests", "tokens")
              if (raw := headers.get(f"x-ratelimit-reset-{dim}")) is not None
              and (wait := openai_duration_s(raw)) is not None}
    if not resets:
        return None
    exhausted = [wait for dim, wait in resets.items()
                 if headers.get(f"x-ratelimit-remaining-{dim}") == "0"]
    return max(exhausted or resets.values())


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait after a 429: `retry-after-ms`, `retry-after`, else the reset headers."""
    for name in ("retry-after-ms", "retry-after"):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value)
        except ValueError:
            continue
        return seconds / 1000.0 if name.endswith("-ms") else seconds
    return _reset_wait(headers)


def _error_detail(exc: openai.APIStatusError) -> str:
    return (_error_field(exc, "message") or str(exc.message))[:_DETAIL_FROM_PROVIDER]


#: The error `code` of flex's capacity 429 (https://platform.openai.com/docs/guides/flex-processing):
#: retried with backoff, never paced as a rate limit.
FLEX_UNAVAILABLE_CODE = "resource_unavailable"


#: (HTTP status, body's `error.code`) → qbq error, first match wins. The choice follows the
#: SDK's own retry rule (`openai._base_client.BaseClient._should_retry`, and
#: https://platform.openai.com/docs/guides/error-codes): a 429 `insufficient_quota` (no credit)
#: stops the run; other 429s pause every sender; 408 (request timeout) and 409 (lock timeout)
#: are transient like 5xx; other 4xx mean our request is wrong and are not retried. An
#: `x-should-retry: true|false` header overrides transience either way, as in the SDK.
STATUS_RULES: tuple[tuple[Callable[[int, str | None], bool], type[ProviderError], str], ...] = (
    (lambda code, kind: code == 429 and kind == "insufficient_quota", QuotaExhaustedError,
     QUOTA_MESSAGE),
    (lambda code, kind: code == 429 and kind == FLEX_UNAVAILABLE_CODE, FlexUnavailableError,
     "flex capacity unavailable"),
    (lambda code, kind: code == 429, RateLimitedError, "rate limited"),
    (lambda code, kind: code == 408, ProviderTimeoutError, "the provider timed out (408)"),
    (lambda code, kind: code == 409, ProviderUnavailableError, "the provider was busy (409)"),
    (lambda code, kind: code >= 500, ProviderUnavailableError, "provider error"),
    (lambda code, kind: True, ProviderRequestError, "request refused"),
)


def _error_field(exc: openai.APIStatusError, name: str) -> str | None:
    body = exc.body
    err = body.get("error", body) if isinstance(body, dict) else None
    value = err.get(name) if isinstance(err, dict) else None
    return str(value) if value is not None else None


def content_param(param: str | None) -> bool:
    """Whether a 400's `param` points at what the request carries (null: OpenAI's reply for an
    undecodable image; `messages...`: a part or the size; `response_format`: the schema), so a
    smaller batch may pass — rather than at a setting every batch shares (`model`, ...)."""
    return param is None or param.startswith(("messages", "response_format"))


def _status_error(exc: openai.APIStatusError) -> ProviderError:
    code, detail, headers = exc.status_code, _error_detail(exc), exc.response.headers
    error_code = _error_field(exc, "code")
    kind, label = next((kind, label) for match, kind, label in STATUS_RULES
                       if match(code, error_code))
    message = label if kind is QuotaExhaustedError else f"{label} ({code}): {detail}"
    error: ProviderError
    if kind is RateLimitedError:
        error = RateLimitedError(message, retry_after=_retry_after(headers))
    elif kind is ProviderRequestError:
        param = _error_field(exc, "param")
        content = code == 400 and content_param(param)
        error = (ProviderContentError if content else ProviderRequestError)(
            message, status_code=code, param=param, code=error_code)
    else:
        error = kind(message, status_code=code)
    should_retry = headers.get("x-should-retry")
    if should_retry in ("true", "false"):
        error.transient = should_retry == "true"
    return error


def translate_error(exc: openai.OpenAIError, *, timeout_s: float | None = None) -> ProviderError:
    """Map an SDK exception to qbq's error tree (by type and status code, never by text).

    A client-side timeout is a `ReplyTimeoutError` when the request had its own timeout
    (`timeout_s`, sized to its output), else a plain `ProviderTimeoutError`.
    """
    if isinstance(exc, openai.APITimeoutError):
        if timeout_s is not None:
            return ReplyTimeoutError(f"no answer within this request's {timeout_s:.0f} s")
        return ProviderTimeoutError("the model request timed out")
    if isinstance(exc, openai.APIConnectionError):
        return ProviderConnectionError(f"connection to the provider failed: {exc.message}")
    if isinstance(exc, openai.APIStatusError):
        return _status_error(exc)
    return ProviderConnectionError(f"provider call failed: {type(exc).__name__}")


def _usage(completion: ChatCompletion, latency_ms: float) -> Usage:
    usage = completion.usage
    if usage is None:
        return Usage(replies=1, latency_ms=latency_ms)
    prompt_details, completion_details = usage.prompt_tokens_details, usage.completion_tokens_details
    return Usage.from_counts(
        replies=1, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
        cached_tokens=prompt_details.cached_tokens if prompt_details else 0,
        reasoning_tokens=completion_details.reasoning_tokens if completion_details else 0,
        latency_ms=latency_ms)


def chat_reply(completion: ChatCompletion, *, simulated: bool, latency_ms: float,
               rate_headers: Mapping[str, str] | None = None) -> ChatReply:
    """A chat completion (a sync answer or a Batch API output line) as a `ChatReply`;
    `ResponseShapeError` when it has no choices."""
    if not completion.choices:
        raise ResponseShapeError("the provider's answer has no choices")
    choice = completion.choices[0]
    return ChatReply(content=choice.message.content, refusal=choice.message.refusal,
                     finish_reason=choice.finish_reason, usage=_usage(completion, latency_ms),
                     simulated=simulated, rate_headers=dict(rate_headers or {}))


class OpenAIChatProvider:
    """Chat Completions with strict structured output, through an injected SDK client.

    With `output_tokens_per_s` each request's timeout is sized to its work:
    `timeout_base_s` + `request.expected_output_tokens` / `output_tokens_per_s` seconds, so a
    big batch is not cut off by a timeout made for a small one (and a small one does not wait
    as long as a big one may take). Without it the client's own timeout applies.
    """

    def __init__(self, client: openai.OpenAI, *, timeout_base_s: float = 120.0,
                 output_tokens_per_s: float | None = None) -> None:
        self._client = client
        self.timeout_base_s = timeout_base_s
        self.output_tokens_per_s = output_tokens_per_s

    def timeout_for(self, request: ChatRequest) -> float | None:
        """Seconds this request may take (None: the client's timeout)."""
        if self.output_tokens_per_s is None:
            return None
        return self.timeout_base_s + request.expected_output_tokens / self.output_tokens_per_s

    def complete(self, request: ChatRequest) -> ChatReply:
        """Send `request` once; see `ChatProvider`."""
        if request.on_send is not None:
            request.on_send()
        timeout_s = self.timeout_for(request)
        options: dict[str, Any] = {"headers": {RAW_RESPONSE_HEADER: "true"}}
        if timeout_s is not None:
            options["timeout"] = timeout_s
        start = time.perf_counter()
        try:
            # The SDK's own POST, without `create()`'s per-call walk of the messages through its
            # TypedDict annotations (~1 ms of CPU a call, measured): qbq's messages are already
            # plain JSON built by qbq.prompts. Auth, errors and response parsing are the SDK's.
            raw = cast(Any, self._client.post(
                "/chat/completions", body=request.body(), cast_to=ChatCompletion,
                options=cast(Any, options)))
            completion = raw.parse()  # a LegacyAPIResponse[ChatCompletion], as with_raw_response
        except openai.APIResponseValidationError as exc:
            raise ResponseShapeError("the provider's answer is not a chat completion") from exc
        except openai.OpenAIError as exc:
            raise translate_error(exc, timeout_s=timeout_s) from exc
        latency_ms = (time.perf_counter() - start) * 1000.0
        return chat_reply(
            completion, simulated=raw.headers.get("x-qbq-simulated") == "true",
            latency_ms=latency_ms,
            rate_headers={k: v for k in _RATE_HEADERS if (v := raw.headers.get(k)) is not None})

    def close(self) -> None:
        """Close the SDK client's connections."""
        self._client.close()
