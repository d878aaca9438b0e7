"""The HTTP endpoints of the simulator's Files and Batch APIs (see `qbq.simulator.batches`).

Every endpoint needs `Authorization: Bearer <key>`; files and batches belong to that key.
Errors use OpenAI's envelope `{"error": {message, type, param, code}}`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from qbq.simulator.batches import BatchService, bad_request
from qbq.simulator.call import ChatCall
from qbq.simulator.replies import error_response
from qbq.simulator.stages import authenticate
from qbq.simulator.validation import SimAPIError

__all__ = ["register_batch_routes"]


def register_batch_routes(app: FastAPI, service: BatchService) -> None:
    """Add `/v1/files` and `/v1/batches` (with their sub-routes) to `app`, served by `service`."""
    # Long: the Files and Batch routes are closures over one BatchService; FastAPI registers them here.


    async def owner_of(request: Request) -> str:
        call = ChatCall(request=request, config=service.state.config)
        await authenticate(call)
        return call.api_key

    async def json_body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            raise bad_request("We could not parse the JSON body of your request.")
        return body

    Handler = Callable[[Request, str], Awaitable[Response]]

    def guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                return await handler(request, await owner_of(request))
            except SimAPIError as exc:
                return error_response(exc, {})
        return run

    async def upload(request: Request, owner: str) -> Response:
        stored = service.files.upload(request.headers.get("content-type", ""), await request.body(), owner)
        return JSONResponse(stored.to_object())

    async def list_files(request: Request, owner: str) -> Response:
        return JSONResponse(service.files.listing(owner, request.query_params.get("purpose")))

    async def get_file(request: Request, owner: str) -> Response:
        return JSONResponse(service.files.get(request.path_params["file_id"], owner).to_object())

    async def file_content(request: Request, owner: str) -> Response:
        stored = service.files.get(request.path_params["file_id"], owner)
        return Response(stored.data, media_type="application/octet-stream")

    async def delete_file(request: Request, owner: str) -> Response:
        return JSONResponse(service.files.delete(request.path_params["file_id"], owner))

    async def create_batch(request: Request, owner: str) -> Response:
        return JSONResponse(service.create(await json_body(request), owner).to_object())

    async def list_batches(request: Request, owner: str) -> Response:
        raw = request.query_params.get("limit", "20")
        limit = int(raw) if raw.isdigit() else 0
        if not 1 <= limit <= 100:
            raise bad_request(f"Invalid 'limit': expected an integer between 1 and 100, got {raw!r}.",
                       "limit", "invalid_value")
        return JSONResponse(service.listing(owner, request.query_params.get("after"), limit))

    async def get_batch(request: Request, owner: str) -> Response:
        return JSONResponse(service.get(request.path_params["batch_id"], owner).to_object())

    async def cancel_batch(request: Request, owner: str) -> Response:
        return JSONResponse(service.cancel(request.path_params["batch_id"], owner).to_object())

    app.add_api_route("/v1/files", guarded(upload), methods=["POST"])
    app.add_api_route("/v1/files", guarded(list_files), methods=["GET"])
    app.add_api_route("/v1/files/{file_id}", guarded(get_file), methods=["GET"])
    app.add_api_route("/v1/files/{file_id}", guarded(delete_file), methods=["DELETE"])
    app.add_api_route("/v1/files/{file_id}/content", guarded(file_content), methods=["GET"])
    app.add_api_route("/v1/batches", guarded(create_batch), methods=["POST"])
    app.add_api_route("/v1/batches", guarded(list_batches), methods=["GET"])
    app.add_api_route("/v1/batches/{batch_id}", guarded(get_batch), methods=["GET"])
    app.add_api_route("/v1/batches/{batch_id}/cancel", guarded(cancel_batch), methods=["POST"])
