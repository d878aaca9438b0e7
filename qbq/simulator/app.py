"""The simulator's FastAPI app: OpenAI's chat completions, files and batches, answered by a fake
examiner.

A chat request passes through `SimState.stages` (see `qbq.simulator.stages`), any of which may
stop it with a `SimAPIError`: the checks OpenAI makes, then the fault draw, flex capacity and
the provider's rate limits. An accepted request is then answered after the simulated latency,
spoiled by its fault if it drew one; reasoning models spend hidden reasoning tokens
(`qbq.simulator.reasoning`) and repeated prompt prefixes are served from the emulated prompt
cache (`qbq.simulator.caching`). The Batch API lives in `qbq.simulator.batches`.

Time: the simulator keeps simulated time, `time_scale` times faster than wall time. Buckets
refill, latencies, cache retention and batches run in simulated time; `retry-after` and
`x-ratelimit-reset-*` headers are wall seconds, so a client honouring them behaves right;
`/_sim/stats` timelines are simulated seconds. A chat request is charged to the rate limits
at the simulated time it arrived, and in arrival order (stamped with both by `StampArrival`
before anything else runs), as a provider's edge counts a request when it comes in: the
simulator's own work on it (decoding images, counting tokens — slow on a loaded machine, and
60× slower in simulated time at a 60× time scale) must neither bunch arrivals that the client
spaced out nor reorder them.

Status codes in `/_sim/stats` are those sent, plus 499 for an accepted request whose client
went away before the answer (the simulator stops waiting for it then).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from qbq.catalog import MODELS, ModelSpec
from qbq.simulator.batch_routes import register_batch_routes
from qbq.simulator.batches import BatchService
from qbq.simulator.call import ChatCall, Stage
from qbq.simulator.config import SimConfig
from qbq.simulator.faults import CONTENT_FAULTS, FAULT_KINDS, STATUS_FAULTS, spoil_reply
from qbq.simulator.grading import dump_content, fit_answer, grade, parse_prompt
from qbq.simulator.reasoning import reasoning_tokens, split_budget
from qbq.simulator.replies import (
    SIMULATED_HEADER,
    DroppedResponse,
    LabelSimulated,
    error_response,
    status_error,
    wait_unless_gone,
)
from qbq.simulator.stages import DEFAULT_STAGES, FAULT_HEADER, authenticate
from qbq.simulator.state import SimState
from qbq.simulator.validation import SimAPIError
from qbq.tokens import get_encoding, text_tokens

__all__ = [
    "DEFAULT_STAGES",
    "FAULT_HEADER",
    "SIMULATED_HEADER",
    "SYSTEM_FINGERPRINT",
    "ChatCall",
    "SimState",
    "Stage",
    "answer",
    "complete",
    "create_app",
    "stamp_arrival",
    "usage_counts",
]

log = logging.getLogger(__name__)

SYSTEM_FINGERPRINT = "qbq-simulator"
#: Not an HTTP status sent: counted for accepted requests whose client left before the answer.
CLIENT_GONE = 499

def _truncate(text: str, limit: int, encoding: str) -> str:
    enc = get_encoding(encoding)
    return enc.decode(enc.encode_ordinary(text)[:limit])


def _cut_in_half(text: str, encoding: str) -> str:
    enc = get_encoding(encoding)
    tokens = enc.encode_ordinary(text)
    return enc.decode(tokens[: max(1, len(tokens) // 2)])


def complete(call: ChatCall) -> dict[str, Any]:
    """The chat.completion object answering a checked request (spoiled by a content fault).

    A reasoning model first spends its reasoning tokens out of the completion budget
    (`max_completion_tokens`, else the model's maximum output); whatever visible reply does
    not fit the rest is cut, with finish_reason "length". Cached tokens come from the
    emulated prompt cache, which then holds this prompt's prefix.
    """
    # Long: follows the order in which OpenAI fills a reply (reasoning, visible output, cut, cache, usage)
    # in one place.
    spec = call.model
    config = call.config
    prompt = parse_prompt(call.messages)
    answer_obj = fit_answer(grade(prompt, lambda url: call.images[url].data), call.response_format)
    content: str | None = dump_content(answer_obj, call.response_format)
    refusal: str | None = None
    finish_reason = "stop"
    fault = call.fault
    if fault is not None and fault.kind in CONTENT_FAULTS and content is not None:
        seed = str(config.seed).encode()
        spoiled = spoil_reply(
            fault,
            answer_obj if isinstance(answer_obj, dict) else {},
            content,
            dump=lambda changed: dump_content(changed, call.response_format),
            cut=lambda text: _cut_in_half(text, spec.encoding),
            max_marks={q.question_number: q.max_mark for q in prompt.questions},
            request_key=hashlib.sha256(seed + b"\0" + call.raw_body).digest(),
        )
        content, refusal, finish_reason = spoiled.content, spoiled.refusal, spoiled.finish_reason
        label = fault.kind if spoiled.variant is None else f"{fault.kind}:{spoiled.variant}"
        call.headers[FAULT_HEADER] = label
    visible = text_tokens(content if content is not None else refusal or "", spec.encoding)
    thinking = 0
    if call.reasoning_effort is not None:
        answers = len(prompt.students) * len(prompt.questions)
        thinking = reasoning_tokens(
            call.reasoning_effort, answers, config.reasoning_tokens, config.reasoning_tokens_per_answer
        )
    budget = call.max_completion_tokens or spec.max_output_tokens
    split = split_budget(thinking, visible, budget)
    if split.visible_limit is not None:
        # As OpenAI does: the reply is cut at the budget (to nothing when reasoning used it all).
        if content is not None:
            content = _truncate(content, split.visible_limit, spec.encoding)
        else:
            refusal = _truncate(refusal or "", split.visible_limit, spec.encoding)
        visible = split.visible_limit
        finish_reason = "length"
    completion_tokens = split.reasoning + visible
    cached = call.sim.cached_prefix_tokens(call)
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
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": split.reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": call.service_tier,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def usage_counts(completion: Mapping[str, Any]) -> dict[str, int]:
    """The token counts `/_sim/stats` keeps, from a completion's usage."""
    usage = completion["usage"]
    return {
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "reasoning_tokens": usage["completion_tokens_details"]["reasoning_tokens"],
        "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
    }


async def answer(call: ChatCall, headers: dict[str, str]) -> Response:
    """The answer to an accepted request: a fault's, or the completion after its latency."""
    state = call.sim
    fault = call.fault
    slower = call.config.flex_latency_multiplier if call.service_tier == "flex" else 1.0
    if fault is not None:
        call.headers[FAULT_HEADER] = fault.label
    if fault is not None and fault.kind in STATUS_FAULTS:
        status = STATUS_FAULTS[fault.kind]
        if fault.variant is not None and fault.variant.startswith("should_retry_"):
            call.headers["x-should-retry"] = fault.variant.removeprefix("should_retry_")
        if await wait_unless_gone(call.request, state.latency_s(0, multiplier=slower)):
            state.record(CLIENT_GONE)
            return Response(status_code=204)
        state.record(status)
        return error_response(status_error(status), {**headers, **call.headers})
    if (
        fault is not None
        and fault.kind == "timeout"
        and await wait_unless_gone(call.request, call.config.hang_s)
    ):
        state.record(CLIENT_GONE)
        return Response(status_code=204)
    completion = await asyncio.to_thread(complete, call)
    counts = usage_counts(completion)
    if await wait_unless_gone(
        call.request, state.latency_s(counts["completion_tokens"], multiplier=slower)
    ):
        state.record(CLIENT_GONE)
        return Response(status_code=204)
    state.record(200, **counts)
    if fault is not None and fault.kind == "disconnect":
        return DroppedResponse(json.dumps(completion).encode(), {**headers, **call.headers})
    return JSONResponse(completion, headers={**headers, **call.headers})


def _public_config(config: SimConfig) -> dict[str, Any]:
    data = config.model_dump(exclude={"api_key"})
    data["api_key_required"] = config.api_key is not None
    data["fault_kinds"] = list(FAULT_KINDS)
    return data


CHAT_PATH = "/v1/chat/completions"


def stamp_arrival(scope: Any, state: SimState) -> None:
    """Stamp an HTTP request's ASGI scope, once, with the simulated time it arrived
    (`scope["state"]["sim_arrived"]`, read as `request.state.sim_arrived`) and, for a chat
    request, its arrival ticket (`sim_ticket`). A wrapper that reads the body before the app
    (a measuring middleware) calls this first, so the stamp is the arrival, not its own work."""
    if scope["type"] != "http":
        return
    stamps = scope.setdefault("state", {})
    if "sim_arrived" in stamps:
        return
    stamps["sim_arrived"] = state.now()
    if scope.get("method") == "POST" and scope.get("path") == CHAT_PATH:
        stamps["sim_ticket"] = state.take_ticket()


class StampArrival:
    """Pure ASGI middleware, outermost in the app: `stamp_arrival` before anything else runs."""

    def __init__(self, app: Any, state: SimState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        stamp_arrival(scope, self.state)
        await self.app(scope, receive, send)


def create_app(config: SimConfig, *, models: Mapping[str, ModelSpec] | None = None) -> FastAPI:
    """A fresh simulator app; its `SimState` is `app.state.sim`, its Batch API `app.state.batches`.

    `models` adds model specs to (or replaces specs of) the catalogue, e.g. a reasoning spec
    for tests while the catalogue marks no model as reasoning.
    """
    # Long: the routes are closures over this app's state and Batch service; FastAPI registers them here.
    state = SimState(config, list(DEFAULT_STAGES), models)
    batches = BatchService(state, complete)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await batches.shutdown()

    app = FastAPI(
        title="qbq OpenAI simulator", docs_url=None, redoc_url=None, openapi_url=None,
        lifespan=lifespan,
    )
    app.state.sim = state
    app.state.batches = batches
    app.add_middleware(LabelSimulated)
    app.add_middleware(StampArrival, state=state)  # added last: runs first

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

    @app.post(CHAT_PATH)
    async def chat_completions(request: Request) -> Response:
        call = ChatCall(request=request, config=state.config, state=state,
                        arrived=getattr(request.state, "sim_arrived", None),
                        ticket=getattr(request.state, "sim_ticket", None))
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
            return error_response(exc, {**headers, **call.headers})
        except Exception:
            log.exception("simulator failed on a chat request")
            state.record(500)
            error = SimAPIError(
                500,
                "The server had an error while processing your request.",
                type="server_error",
            )
            return error_response(error, {**headers, **call.headers})
        finally:
            state.settle(call.ticket)  # (a request that ended before the rate limits)
            if call.accepted:
                state.finish()

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        call = ChatCall(request=request, config=state.config)
        try:
            await authenticate(call)
        except SimAPIError as exc:
            return error_response(exc, {})
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": SYSTEM_FINGERPRINT}
            for name in sorted({*MODELS, *state.models})
        ]
        return JSONResponse({"object": "list", "data": data})

    register_batch_routes(app, batches)

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
        """Change any of `RUNTIME_FIELDS` (limits, latency, faults, reasoning, caching, ...) now."""
        try:
            changes = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            changes = None
        if not isinstance(changes, dict):
            error = SimAPIError(400, "POST /_sim/config takes a JSON object of settings to change.")
            return error_response(error, {})
        try:
            new = state.update_config(changes)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
            )
            return error_response(SimAPIError(400, f"Invalid simulator settings: {problems}"), {})
        except ValueError as exc:
            return error_response(SimAPIError(400, f"Invalid simulator settings: {exc}"), {})
        return JSONResponse(_public_config(new))

    return app
