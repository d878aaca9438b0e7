"""The stages of a chat request: OpenAI's checks, then the fault draw, flex capacity and limits.

Each stage takes a `ChatCall` and may stop it with a `SimAPIError`. `DEFAULT_STAGES` is the
synchronous endpoint's list; `LINE_STAGES` the checks a line of a batch goes through (no
HTTP request of its own, no per-minute limits: batches have their own pool).
"""

from __future__ import annotations

import asyncio
import json

from qbq.errors import UnknownModelError
from qbq.simulator.caching import check_cache_params
from qbq.simulator.call import ChatCall, Stage
from qbq.simulator.caps import check_body_size, check_image_count, check_image_formats
from qbq.simulator.faults import RATE_LIMIT_FAULTS
from qbq.simulator.images import load_images
from qbq.simulator.limits import (
    insufficient_quota_error,
    openai_duration,
    rate_limit_error,
    rate_limit_headers,
)
from qbq.simulator.reasoning import check_reasoning_params
from qbq.simulator.schema_limits import check_schema_limits
from qbq.simulator.tiers import check_service_tier, flex_unavailable_error
from qbq.simulator.validation import (
    SimAPIError,
    check_max_completion_tokens,
    check_messages,
    check_response_format,
    image_parts,
)
from qbq.tokens import chat_prompt_tokens

__all__ = [
    "DEFAULT_STAGES",
    "FAULT_HEADER",
    "FAULT_RETRY_AFTER_S",
    "LINE_STAGES",
    "authenticate",
    "check_request",
    "count_prompt",
    "draw_fault",
    "enforce_rate_limits",
    "fetch_images",
    "flex_capacity",
    "parse_body",
    "resolve_model",
]

#: On a faulted answer: the fault injected, as KIND or KIND:VARIANT (for tests and debugging).
FAULT_HEADER = "x-qbq-simulated-fault"
#: The least wait an injected 429 advertises, in simulated seconds.
FAULT_RETRY_AFTER_S = 1.0


async def authenticate(call: ChatCall) -> None:
    """401 unless the request carries `Authorization: Bearer <key>` (the configured key, if any)."""
    header = call.http.headers.get("authorization", "")
    scheme, _, key = header.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise SimAPIError(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
    expected = call.config.api_key
    if expected is not None and key != expected:
        masked = f"{key[:3]}{'*' * 4}{key[-4:]}" if len(key) > 8 else "*" * len(key)
        raise SimAPIError(
            401,
            f"Incorrect API key provided: {masked}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )
    call.api_key = key


async def parse_body(call: ChatCall) -> None:
    """400 for a body over 50 MB, or one that is not a JSON object."""
    raw = await call.http.body()
    check_body_size(len(raw))
    call.raw_body = raw
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise SimAPIError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON.)",
        )
    call.body = body


async def resolve_model(call: ChatCall) -> None:
    """400 without a model; 404 `model_not_found` for a model the catalogue does not know."""
    name = call.body.get("model")
    if name is None:
        raise SimAPIError(400, "you must provide a model parameter")
    if not isinstance(name, str):
        raise SimAPIError(
            400, "Invalid type for 'model': expected a string.", param="model", code="invalid_type"
        )
    try:
        call.spec = call.sim.resolve(name)
    except UnknownModelError as exc:
        raise SimAPIError(
            404,
            f"The model `{name}` does not exist or you do not have access to it.",
            code="model_not_found",
        ) from exc


async def check_request(call: ChatCall) -> None:
    """400 for invalid messages, schema, streaming, n, budget, reasoning, tier or cache params."""
    body = call.body
    call.messages = check_messages(body.get("messages"))
    call.response_format = check_response_format(body.get("response_format"))
    if call.response_format is not None and call.response_format.get("type") == "json_schema":
        json_schema = call.response_format["json_schema"]
        if json_schema.get("strict"):
            check_schema_limits(json_schema["schema"], json_schema["name"])
    if body.get("stream"):
        raise SimAPIError(
            400,
            "The qbq simulator does not support streaming (stream=true).",
            param="stream",
            code="unsupported_value",
        )
    n = body.get("n")
    if n is not None and n != 1:
        raise SimAPIError(
            400,
            "The qbq simulator answers with exactly one choice (n=1).",
            param="n",
            code="unsupported_value",
        )
    call.reasoning_effort = check_reasoning_params(body, call.model)
    call.max_completion_tokens = check_max_completion_tokens(body, call.model)
    call.service_tier = check_service_tier(body, call.model.name, call.config.flex_models)
    call.prompt_cache_key, call.prompt_cache_retention = check_cache_params(body)
    check_image_count(sum(1 for _ in image_parts(call.messages)))


async def fetch_images(call: ChatCall) -> None:
    """400 for an image that cannot be downloaded or decoded, or is not a supported format."""
    call.images = await load_images(image_parts(call.messages), call.config.image_fetch_timeout_s)
    check_image_formats(call.images.values())


def _count(call: ChatCall) -> None:
    spec = call.model

    def dims(url: str) -> tuple[int, int]:
        image = call.images[url]
        return image.width, image.height

    call.prompt_tokens = chat_prompt_tokens(spec, call.messages, call.response_format, dims)


async def count_prompt(call: ChatCall) -> None:
    """Prompt tokens by qbq's own formulas; 400 `context_length_exceeded` over the limits.

    Two limits, as OpenAI has them: the model's maximum input (gpt-5: 272,000 tokens of its
    400,000 window; https://platform.openai.com/docs/models/gpt-5), then prompt plus
    completion budget within the context window.
    """
    spec = call.model
    # Tokenizing is CPU work: off the event loop, so concurrent requests overlap as with OpenAI.
    await asyncio.to_thread(_count, call)
    if spec.max_input_tokens and call.prompt_tokens > spec.max_input_tokens:
        raise SimAPIError(
            400,
            f"Input tokens exceed the configured limit of {spec.max_input_tokens} tokens. Your "
            f"messages resulted in {call.prompt_tokens} tokens. Please reduce the length of the "
            "messages.",
            param="messages",
            code="context_length_exceeded",
        )
    budget = call.max_completion_tokens or 0
    if call.prompt_tokens + budget > spec.context_window:
        detail = (
            f"{call.prompt_tokens} in the messages, {budget} in the completion"
            if budget
            else f"{call.prompt_tokens} in the messages"
        )
        raise SimAPIError(
            400,
            f"This model's maximum context length is {spec.context_window} tokens. However, "
            f"you requested {call.prompt_tokens + budget} tokens ({detail}). Please reduce the "
            "length of the messages or completion.",
            param="messages",
            code="context_length_exceeded",
        )


async def draw_fault(call: ChatCall) -> None:
    """The fault for this request, if any (drawn once every check has passed)."""
    call.fault, call.script_entry = call.sim.draw_fault()


async def flex_capacity(call: ChatCall) -> None:
    """429 "Resource Unavailable" for a flex request when flex lacks capacity (unbilled)."""
    if call.service_tier == "flex" and call.sim.flex_unavailable():
        call.sim.reject(None)
        raise flex_unavailable_error()


async def enforce_rate_limits(call: ChatCall) -> None:
    """429 over the key's RPM/TPM or for an injected 429 fault; else charge the request.

    Injected 429s: `rate_limit` (with retry-after), `rate_limit_no_headers` (`reset_only`:
    x-ratelimit-* headers that say to wait, no retry-after; `bare`: no header at all) and
    `insufficient_quota` (no header; the buckets are not charged).
    """
    state = call.sim
    fault = call.fault
    if fault is not None and fault.kind == "insufficient_quota":
        state.reject(fault)
        call.headers[FAULT_HEADER] = fault.label
        raise insufficient_quota_error()
    await state.wait_turn(call.ticket)
    try:
        outcome = state.admit(call)
    finally:
        state.settle(call.ticket)
    time_scale = state.config.time_scale
    injected = fault is not None and fault.kind in RATE_LIMIT_FAULTS
    bare = fault is not None and fault.kind == "rate_limit_no_headers" and fault.variant == "bare"
    if not bare:
        call.headers.update(rate_limit_headers(outcome, time_scale))
    if outcome.accepted:
        call.accepted = True
        return
    error, headers = rate_limit_error(
        outcome,
        call.model.name,
        time_scale,
        min_wait_s=FAULT_RETRY_AFTER_S if injected else 0.0,
        injected=injected,
        retry_after=not (fault is not None and fault.kind == "rate_limit_no_headers"),
    )
    call.headers.update(headers)
    if fault is not None and fault.kind == "rate_limit_no_headers" and not bare:
        _reset_headers_say_wait(call, outcome.wait_s, time_scale)
    if injected and fault is not None:
        call.headers[FAULT_HEADER] = fault.label
    raise error


def _reset_headers_say_wait(call: ChatCall, wait_s: float | None, time_scale: float) -> None:
    """Without retry-after, the x-ratelimit-reset-* headers tell a client how long to wait.

    Both reset headers are sent even when the simulator has no limits set (then alone, with
    no limit or remaining header to learn a wrong limit from).
    """
    wall = openai_duration(max(wait_s or 0.0, FAULT_RETRY_AFTER_S) / time_scale)
    call.headers["x-ratelimit-reset-requests"] = wall
    call.headers["x-ratelimit-reset-tokens"] = wall
    if "x-ratelimit-remaining-requests" in call.headers:
        call.headers["x-ratelimit-remaining-requests"] = "0"


#: The stages of a chat request, in order: OpenAI's checks, then the fault draw and the limits.
DEFAULT_STAGES: tuple[Stage, ...] = (
    authenticate,
    parse_body,
    resolve_model,
    check_request,
    fetch_images,
    count_prompt,
    draw_fault,
    flex_capacity,
    enforce_rate_limits,
)

#: The checks of a batch line (its body is already parsed; batches have their own limits).
LINE_STAGES: tuple[Stage, ...] = (resolve_model, check_request, fetch_images, count_prompt)
