"""The simulator's FastAPI app: OpenAI's chat completions endpoint, answered by a fake examiner.

Requests pass through `SimState.stages`, any of which may stop them with a `SimAPIError`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from qbq.catalog import MODELS, ModelSpec, get_model_spec
from qbq.errors import UnknownModelError
from qbq.simulator.config import SimConfig
from qbq.simulator.grading import grade, parse_prompt, reply_content
from qbq.simulator.images import LoadedImage, load_images
from qbq.simulator.validation import (
    SimAPIError,
    check_max_completion_tokens,
    check_messages,
    check_response_format,
    image_parts,
)
from qbq.tokens import chat_prompt_tokens, get_encoding, text_tokens

__all__ = [
    "DEFAULT_STAGES",
    "SIMULATED_HEADER",
    "SYSTEM_FINGERPRINT",
    "ChatCall",
    "SimState",
    "Stage",
    "create_app",
]

log = logging.getLogger(__name__)

SIMULATED_HEADER = "x-qbq-simulated"
SYSTEM_FINGERPRINT = "qbq-simulator"


@dataclass
class ChatCall:
    """One chat completion request on its way through the stages; each stage fills a part."""

    request: Request
    config: SimConfig
    body: dict[str, Any] = field(default_factory=dict)
    spec: ModelSpec | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    response_format: dict[str, Any] | None = None
    max_completion_tokens: int | None = None
    images: dict[str, LoadedImage] = field(default_factory=dict)
    prompt_tokens: int = 0
    #: Extra headers for the response, success or error (e.g. future x-ratelimit-*).
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def model(self) -> ModelSpec:
        if self.spec is None:
            raise RuntimeError("the model stage has not run")
        return self.spec


Stage = Callable[[ChatCall], Awaitable[None]]


class SimState:
    """Counters of one simulator app, and the stages its chat requests pass through.

    Counters are guarded by a lock, so they stay right whichever thread or task reads them.
    """

    def __init__(self, config: SimConfig, stages: list[Stage]) -> None:
        self.config = config
        self.stages = stages
        self._lock = threading.Lock()
        self._requests = 0
        self._by_status: dict[str, int] = {}
        self._prompt_tokens = 0
        self._completion_tokens = 0

    def record(self, status: int, *, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        with self._lock:
            self._requests += 1
            key = str(status)
            self._by_status[key] = self._by_status.get(key, 0) + 1
            self._prompt_tokens += prompt_tokens
            self._completion_tokens += completion_tokens

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "simulated": True,
                "requests": self._requests,
                "by_status": dict(self._by_status),
                "prompt_tokens": self._prompt_tokens,
                "completion_tokens": self._completion_tokens,
            }

    def reset(self) -> None:
        with self._lock:
            self._requests = 0
            self._by_status = {}
            self._prompt_tokens = 0
            self._completion_tokens = 0


# --- stages -----------------------------------------------------------------------------------


async def authenticate(call: ChatCall) -> None:
    """401 unless the request carries `Authorization: Bearer <key>` (the configured key, if any)."""
    header = call.request.headers.get("authorization", "")
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


async def parse_body(call: ChatCall) -> None:
    """400 unless the body is a JSON object."""
    raw = await call.request.body()
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
        call.spec = get_model_spec(name)
    except UnknownModelError as exc:
        raise SimAPIError(
            404,
            f"The model `{name}` does not exist or you do not have access to it.",
            code="model_not_found",
        ) from exc


async def check_request(call: ChatCall) -> None:
    """400 for invalid messages, response_format, streaming, n or completion budget."""
    call.messages = check_messages(call.body.get("messages"))
    call.response_format = check_response_format(call.body.get("response_format"))
    if call.body.get("stream"):
        raise SimAPIError(
            400,
            "The qbq simulator does not support streaming (stream=true).",
            param="stream",
            code="unsupported_value",
        )
    n = call.body.get("n")
    if n is not None and n != 1:
        raise SimAPIError(
            400,
            "The qbq simulator answers with exactly one choice (n=1).",
            param="n",
            code="unsupported_value",
        )
    call.max_completion_tokens = check_max_completion_tokens(call.body, call.model)


async def fetch_images(call: ChatCall) -> None:
    """400 for an image that cannot be downloaded or decoded."""
    call.images = await load_images(image_parts(call.messages), call.config.image_fetch_timeout_s)


async def count_prompt(call: ChatCall) -> None:
    """Prompt tokens by qbq's own formulas; 400 `context_length_exceeded` when over the window."""
    spec = call.model

    def dims(url: str) -> tuple[int, int]:
        image = call.images[url]
        return image.width, image.height

    # Tokenizing is CPU work: off the event loop, so concurrent requests overlap as with OpenAI.
    call.prompt_tokens = await asyncio.to_thread(
        chat_prompt_tokens, spec, call.messages, call.response_format, dims
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


#: The stages of a chat request, in order; later features (rate limits, faults) insert theirs.
DEFAULT_STAGES: tuple[Stage, ...] = (
    authenticate,
    parse_body,
    resolve_model,
    check_request,
    fetch_images,
    count_prompt,
)


# --- the answer -------------------------------------------------------------------------------


def _truncate(text: str, limit: int, encoding: str) -> str:
    enc = get_encoding(encoding)
    return enc.decode(enc.encode_ordinary(text)[:limit])


def complete(call: ChatCall) -> dict[str, Any]:
    """The chat.completion object answering a checked request."""
    spec = call.model
    prompt = parse_prompt(call.messages)
    answer = grade(prompt, lambda url: call.images[url].data)
    content = reply_content(answer, call.response_format)
    completion_tokens = text_tokens(content, spec.encoding)
    finish_reason = "stop"
    limit = call.max_completion_tokens
    if limit is not None and completion_tokens > limit:
        # As OpenAI does: the reply is cut at the budget and finish_reason says so.
        content = _truncate(content, limit, spec.encoding)
        completion_tokens = limit
        finish_reason = "length"
    return {
        "id": f"chatcmpl-sim-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": spec.name,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": call.prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def _error_response(error: SimAPIError, headers: dict[str, str]) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def create_app(config: SimConfig) -> FastAPI:
    """A fresh simulator app; its `SimState` is `app.state.sim`."""
    app = FastAPI(title="qbq OpenAI simulator", docs_url=None, redoc_url=None, openapi_url=None)
    state = SimState(config, list(DEFAULT_STAGES))
    app.state.sim = state

    @app.middleware("http")
    async def label_simulated(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers[SIMULATED_HEADER] = "true"
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown routes and methods, in OpenAI's envelope.
        message = (
            f"Invalid URL ({request.method} {request.url.path})"
            if exc.status_code in (404, 405)
            else str(exc.detail)
        )
        return JSONResponse(
            SimAPIError(exc.status_code, message).body(), status_code=exc.status_code
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        call = ChatCall(request=request, config=state.config)
        headers = {"x-request-id": f"req_sim_{uuid.uuid4().hex}"}
        try:
            for stage in state.stages:
                await stage(call)
            completion = await asyncio.to_thread(complete, call)
        except SimAPIError as exc:
            state.record(exc.status)
            return _error_response(exc, {**headers, **call.headers})
        except Exception:
            log.exception("simulator failed on a chat request")
            state.record(500)
            error = SimAPIError(
                500,
                "The server had an error while processing your request.",
                type="server_error",
            )
            return _error_response(error, {**headers, **call.headers})
        if state.config.latency_ms > 0:
            await asyncio.sleep(state.config.latency_ms / 1000)
        usage = completion["usage"]
        state.record(
            200,
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"],
        )
        return JSONResponse(completion, headers={**headers, **call.headers})

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        call = ChatCall(request=request, config=state.config)
        try:
            await authenticate(call)
        except SimAPIError as exc:
            return _error_response(exc, {})
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": SYSTEM_FINGERPRINT}
            for name in MODELS
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/_sim/stats")
    async def stats() -> dict[str, Any]:
        return state.snapshot()

    @app.post("/_sim/reset")
    async def reset() -> dict[str, Any]:
        state.reset()
        return state.snapshot()

    return app
