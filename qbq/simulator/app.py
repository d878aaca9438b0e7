"""The simulator's FastAPI app: OpenAI's chat completions endpoint, answered by a fake examiner.

Requests pass through `SimState.stages`, any of which may stop them with a `SimAPIError`: the
checks OpenAI makes, then the fault draw and the rate limits. An accepted request is then
answered after the simulated latency, spoiled by its fault if it drew one.

Time: the simulator keeps simulated time, `time_scale` times faster than wall time. Buckets
refill and latencies run in simulated time; `retry-after` and `x-ratelimit-reset-*` headers are
wall seconds, so a client honouring them behaves right; `/_sim/stats` timelines are simulated
seconds.

Status codes in `/_sim/stats` are those sent, plus 499 for an accepted request whose client
went away before the answer (the simulator stops waiting for it then).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qbq.catalog import MODELS, ModelSpec, get_model_spec
from qbq.errors import UnknownModelError
from qbq.simulator.config import RUNTIME_FIELDS, SimConfig
from qbq.simulator.faults import (
    CONTENT_FAULTS,
    FAULT_KINDS,
    STATUS_FAULTS,
    Fault,
    FaultPlan,
    spoil_reply,
)
from qbq.simulator.grading import dump_content, fit_answer, grade, parse_prompt
from qbq.simulator.images import LoadedImage, load_images
from qbq.simulator.limits import Outcome, RateLimiter, rate_limit_error, rate_limit_headers
from qbq.simulator.timeline import Timeline
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
    "FAULT_HEADER",
    "SIMULATED_HEADER",
    "SYSTEM_FINGERPRINT",
    "ChatCall",
    "SimState",
    "Stage",
    "create_app",
]

log = logging.getLogger(__name__)

SIMULATED_HEADER = "x-qbq-simulated"
#: On a faulted answer: the fault injected, as KIND or KIND:VARIANT (for tests and debugging).
FAULT_HEADER = "x-qbq-simulated-fault"
SYSTEM_FINGERPRINT = "qbq-simulator"
#: The least wait an injected 429 advertises, in simulated seconds.
FAULT_RETRY_AFTER_S = 1.0
#: Not an HTTP status sent: counted for accepted requests whose client left before the answer.
CLIENT_GONE = 499

_SERVER_ERRORS = {
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The server is overloaded or not ready yet.",
}


@dataclass
class ChatCall:
    """One chat completion request on its way through the stages; each stage fills a part."""

    request: Request
    config: SimConfig
    state: SimState | None = None
    raw_body: bytes = b""
    body: dict[str, Any] = field(default_factory=dict)
    spec: ModelSpec | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    response_format: dict[str, Any] | None = None
    max_completion_tokens: int | None = None
    images: dict[str, LoadedImage] = field(default_factory=dict)
    prompt_tokens: int = 0
    #: The bearer key: the rate limits are kept per key.
    api_key: str = ""
    #: The fault drawn for this request (None: none) and the script entry it came from.
    fault: Fault | None = None
    script_entry: str | None = None
    #: True once the rate limits accepted the request (it is then in flight until answered).
    accepted: bool = False
    #: Extra headers for the response, success or error (x-ratelimit-*, retry-after, faults).
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def model(self) -> ModelSpec:
        if self.spec is None:
            raise RuntimeError("the model stage has not run")
        return self.spec

    @property
    def sim(self) -> SimState:
        if self.state is None:
            raise RuntimeError("this call has no simulator state")
        return self.state

    @property
    def charged_tokens(self) -> int:
        """What the rate limits charge: prompt tokens plus the completion budget."""
        budget = self.max_completion_tokens
        return self.prompt_tokens + (budget if budget is not None else self.model.max_output_tokens)


Stage = Callable[[ChatCall], Awaitable[None]]


class SimState:
    """Counters, limits, faults and timeline of one simulator app, and its request stages.

    Everything mutable is guarded by one lock, held only for short computations (never
    across an await), so it stays right whichever thread or task reads it.
    """

    def __init__(self, config: SimConfig, stages: list[Stage]) -> None:
        self.config = config
        self.stages = stages
        self._lock = threading.Lock()
        self._origin = time.monotonic()
        self._limiter = RateLimiter(config.rpm, config.tpm)
        self._timeline = Timeline()
        self._clear()

    def _clear(self) -> None:
        self._requests = 0
        self._by_status: dict[str, int] = {}
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._fault_counts: dict[str, int] = {}
        self._limiter.reset()
        self._timeline.reset()
        self._arm(self.config)

    def _arm(self, config: SimConfig) -> None:
        self._plan = FaultPlan(config.faults, config.fault_script, config.seed)
        self._jitter_rng = random.Random(f"qbq-sim-jitter:{config.seed}")

    def now(self) -> float:
        """Simulated seconds since the app started."""
        return (time.monotonic() - self._origin) * self.config.time_scale

    # --- counters ---------------------------------------------------------------------------

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
                "limits": {"rpm": self.config.rpm, "tpm": self.config.tpm},
                "time_scale": self.config.time_scale,
                "faults": dict(self._fault_counts),
                "timeline": self._timeline.snapshot(self.now()),
            }

    def reset(self) -> None:
        """Counters, timeline, buckets and fault counts cleared; the fault script starts again."""
        with self._lock:
            self._clear()

    # --- run-time configuration -------------------------------------------------------------

    def update_config(self, changes: dict[str, Any]) -> SimConfig:
        """Apply `changes` (fields of RUNTIME_FIELDS) now; raises ValueError when invalid.

        Buckets keep what they have used under new limits; changing faults, the script or the
        seed starts the fault sequence (and the jitter sequence) again.
        """
        unknown = sorted(set(changes) - RUNTIME_FIELDS)
        if unknown:
            raise ValueError(
                f"cannot change {', '.join(unknown)} at run time; changeable: "
                + ", ".join(sorted(RUNTIME_FIELDS))
            )
        with self._lock:
            config = SimConfig(**{**self.config.model_dump(), **changes})
            self.config = config
            self._limiter.configure(config.rpm, config.tpm, self.now())
            if {"faults", "fault_script", "seed"} & set(changes):
                self._arm(config)
            return config

    # --- the life of a chat request ---------------------------------------------------------

    def draw_fault(self) -> tuple[Fault | None, str | None]:
        with self._lock:
            return self._plan.next()

    def admit(self, call: ChatCall) -> Outcome:
        """Charge `call` to its key's buckets, or refuse it (an injected 429 always refuses).

        An accepted request joins the timeline as in flight and its fault is counted; a
        refused one counts as rejected, and gives its script entry back unless the fault
        itself was the 429.
        """
        tokens = call.charged_tokens
        with self._lock:
            now = self.now()
            injected = call.fault is not None and call.fault.kind == "rate_limit"
            if injected:
                outcome = self._limiter.refuse(call.api_key, tokens, now)
            else:
                outcome = self._limiter.acquire(call.api_key, tokens, now)
            if outcome.accepted:
                self._timeline.start(now, tokens)
            else:
                self._timeline.reject(now)
                if not injected and call.script_entry is not None:
                    self._plan.give_back(call.script_entry)
            if call.fault is not None and (outcome.accepted or injected):
                self._fault_counts[call.fault.kind] = self._fault_counts.get(call.fault.kind, 0) + 1
            return outcome

    def start(self, tokens: int) -> None:
        """A request starts without the rate-limit stage (when a caller removed it)."""
        with self._lock:
            self._timeline.start(self.now(), tokens)

    def finish(self) -> None:
        """An accepted request has been answered (or abandoned): no longer in flight."""
        with self._lock:
            self._timeline.finish(self.now())

    def latency_s(self, completion_tokens: int) -> float:
        """Wall seconds to wait before an answer with `completion_tokens` tokens."""
        config = self.config
        simulated_ms = config.latency_ms + config.ms_per_output_token * completion_tokens
        if simulated_ms <= 0:
            return 0.0
        factor = 1.0
        if config.jitter > 0:
            with self._lock:
                factor = self._jitter_rng.lognormvariate(0.0, config.jitter)
        return simulated_ms * factor / 1000 / config.time_scale


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
    call.api_key = key


async def parse_body(call: ChatCall) -> None:
    """400 unless the body is a JSON object."""
    raw = await call.request.body()
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


async def draw_fault(call: ChatCall) -> None:
    """The fault for this request, if any (drawn once every check has passed)."""
    call.fault, call.script_entry = call.sim.draw_fault()


async def enforce_rate_limits(call: ChatCall) -> None:
    """429 over the key's RPM/TPM (or for an injected `rate_limit` fault); else charge it."""
    state = call.sim
    outcome = state.admit(call)
    time_scale = state.config.time_scale
    call.headers.update(rate_limit_headers(outcome, time_scale))
    if outcome.accepted:
        call.accepted = True
        return
    injected = call.fault is not None and call.fault.kind == "rate_limit"
    error, headers = rate_limit_error(
        outcome,
        call.model.name,
        time_scale,
        min_wait_s=FAULT_RETRY_AFTER_S if injected else 0.0,
        injected=injected,
    )
    call.headers.update(headers)
    if injected and call.fault is not None:
        call.headers[FAULT_HEADER] = call.fault.label
    raise error


#: The stages of a chat request, in order: OpenAI's checks, then the fault draw and the limits.
DEFAULT_STAGES: tuple[Stage, ...] = (
    authenticate,
    parse_body,
    resolve_model,
    check_request,
    fetch_images,
    count_prompt,
    draw_fault,
    enforce_rate_limits,
)


# --- the answer -------------------------------------------------------------------------------


def _truncate(text: str, limit: int, encoding: str) -> str:
    enc = get_encoding(encoding)
    return enc.decode(enc.encode_ordinary(text)[:limit])


def _cut_in_half(text: str, encoding: str) -> str:
    enc = get_encoding(encoding)
    tokens = enc.encode_ordinary(text)
    return enc.decode(tokens[: max(1, len(tokens) // 2)])


def complete(call: ChatCall) -> dict[str, Any]:
    """The chat.completion object answering a checked request (spoiled by a content fault)."""
    spec = call.model
    prompt = parse_prompt(call.messages)
    answer = fit_answer(grade(prompt, lambda url: call.images[url].data), call.response_format)
    content: str | None = dump_content(answer, call.response_format)
    refusal: str | None = None
    finish_reason = "stop"
    fault = call.fault
    if fault is not None and fault.kind in CONTENT_FAULTS and content is not None:
        seed = str(call.config.seed).encode()
        spoiled = spoil_reply(
            fault,
            answer if isinstance(answer, dict) else {},
            content,
            dump=lambda changed: dump_content(changed, call.response_format),
            cut=lambda text: _cut_in_half(text, spec.encoding),
            max_marks={q.question_number: q.max_mark for q in prompt.questions},
            request_key=hashlib.sha256(seed + b"\0" + call.raw_body).digest(),
        )
        content, refusal, finish_reason = spoiled.content, spoiled.refusal, spoiled.finish_reason
        label = fault.kind if spoiled.variant is None else f"{fault.kind}:{spoiled.variant}"
        call.headers[FAULT_HEADER] = label
    completion_tokens = text_tokens(content if content is not None else refusal or "", spec.encoding)
    limit = call.max_completion_tokens
    if content is not None and limit is not None and completion_tokens > limit:
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
                    "refusal": refusal,
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


async def _client_gone(receive: Receive) -> bool:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return True


async def _wait_unless_gone(request: Request, seconds: float) -> bool:
    """Sleep `seconds` (wall); True, early, if the client closed the connection meanwhile."""
    if seconds <= 0:
        return False
    sleeper = asyncio.ensure_future(asyncio.sleep(seconds))
    watcher = asyncio.ensure_future(_client_gone(request.receive))
    try:
        done, _ = await asyncio.wait({sleeper, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        watcher.cancel()
    return watcher in done and not watcher.cancelled() and watcher.exception() is None


class DroppedResponse(Response):
    """A 200 whose connection drops mid-body: Content-Length promises more than is sent.

    The server closes the connection when the app returns without finishing the body, so
    the client sees an incomplete message (a protocol/connection error).
    """

    def __init__(self, content: bytes, headers: dict[str, str]) -> None:
        super().__init__(content, status_code=200, headers=headers, media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        half = self.body[: len(self.body) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})
        # Returning here, the body unfinished, makes uvicorn close the connection.


async def answer(call: ChatCall, headers: dict[str, str]) -> Response:
    """The answer to an accepted request: a fault's, or the completion after its latency."""
    state = call.sim
    fault = call.fault
    if fault is not None:
        call.headers[FAULT_HEADER] = fault.label
    if fault is not None and fault.kind in STATUS_FAULTS:
        status = STATUS_FAULTS[fault.kind]
        if await _wait_unless_gone(call.request, state.latency_s(0)):
            state.record(CLIENT_GONE)
            return Response(status_code=204)
        state.record(status)
        error = SimAPIError(status, _SERVER_ERRORS[status], type="server_error")
        return _error_response(error, {**headers, **call.headers})
    if (
        fault is not None
        and fault.kind == "timeout"
        and await _wait_unless_gone(call.request, call.config.hang_s)
    ):
        state.record(CLIENT_GONE)
        return Response(status_code=204)
    completion = await asyncio.to_thread(complete, call)
    usage = completion["usage"]
    if await _wait_unless_gone(call.request, state.latency_s(usage["completion_tokens"])):
        state.record(CLIENT_GONE)
        return Response(status_code=204)
    state.record(
        200,
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
    )
    if fault is not None and fault.kind == "disconnect":
        return DroppedResponse(json.dumps(completion).encode(), {**headers, **call.headers})
    return JSONResponse(completion, headers={**headers, **call.headers})


class LabelSimulated:
    """Pure ASGI middleware: every HTTP response carries `x-qbq-simulated: true`.

    (Pure ASGI rather than BaseHTTPMiddleware, so a deliberately dropped body passes through.)
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def labelled(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[SIMULATED_HEADER] = "true"
            await send(message)

        await self.app(scope, receive, labelled)


def _public_config(config: SimConfig) -> dict[str, Any]:
    data = config.model_dump(exclude={"api_key"})
    data["api_key_required"] = config.api_key is not None
    data["fault_kinds"] = list(FAULT_KINDS)
    return data


def create_app(config: SimConfig) -> FastAPI:
    """A fresh simulator app; its `SimState` is `app.state.sim`."""
    app = FastAPI(title="qbq OpenAI simulator", docs_url=None, redoc_url=None, openapi_url=None)
    state = SimState(config, list(DEFAULT_STAGES))
    app.state.sim = state
    app.add_middleware(LabelSimulated)

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
        call = ChatCall(request=request, config=state.config, state=state)
        headers = {"x-request-id": f"req_sim_{uuid.uuid4().hex}"}
        try:
            for stage in state.stages:
                await stage(call)
            if not call.accepted:
                # Stages without the rate-limit stage: nothing has been started yet.
                state.start(call.charged_tokens)
                call.accepted = True
            return await answer(call, headers)
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
        finally:
            if call.accepted:
                state.finish()

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

    @app.get("/_sim/config")
    async def get_config() -> dict[str, Any]:
        return _public_config(state.config)

    @app.post("/_sim/config")
    async def set_config(request: Request) -> Response:
        """Change rpm, tpm, latency, jitter, faults, fault_script, hang_s or seed now."""
        try:
            changes = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            changes = None
        if not isinstance(changes, dict):
            error = SimAPIError(400, "POST /_sim/config takes a JSON object of settings to change.")
            return _error_response(error, {})
        try:
            new = state.update_config(changes)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
            )
            return _error_response(SimAPIError(400, f"Invalid simulator settings: {problems}"), {})
        except ValueError as exc:
            return _error_response(SimAPIError(400, f"Invalid simulator settings: {exc}"), {})
        return JSONResponse(_public_config(new))

    return app
