"""HTTP plumbing of the simulator: error replies, the simulated label, waiting on a client."""

from __future__ import annotations

import asyncio

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qbq.simulator.validation import SimAPIError

__all__ = [
    "SIMULATED_HEADER",
    "DroppedResponse",
    "LabelSimulated",
    "error_response",
    "status_error",
    "wait_unless_gone",
]

SIMULATED_HEADER = "x-qbq-simulated"

_STATUS_MESSAGES = {
    408: "Request timed out.",
    409: "The request conflicted with another request being processed. Please try again.",
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The server is overloaded or not ready yet.",
}


def status_error(status: int) -> SimAPIError:
    """The error of a status fault (408, 409 or 5xx; the 408 and 409 texts are the simulator's)."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return SimAPIError(status, _STATUS_MESSAGES[status], type=kind)


def error_response(error: SimAPIError, headers: dict[str, str]) -> JSONResponse:
    """`error` in OpenAI's envelope `{"error": {message, type, param, code}}`."""
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def _client_gone(receive: Receive) -> bool:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return True


async def wait_unless_gone(request: Request | None, seconds: float) -> bool:
    """Sleep `seconds` (wall); True, early, if the client closed the connection meanwhile.

    Without a request (a batch line) it just sleeps.
    """
    if seconds <= 0:
        return False
    if request is None:
        await asyncio.sleep(seconds)
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
