"""The Batch API adapter (https://platform.openai.com/docs/guides/batch): upload a JSONL of chat
requests, create a batch, read its state, download its output and error files.

With `qbq.provider` the model-provider boundary: the only other module that imports `openai`.
SDK errors become qbq's error tree through `qbq.provider.translate_error`; each output line is
turned into the same `ChatReply` a synchronous call returns, so it is validated the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import openai
from openai.types.chat import ChatCompletion
from pydantic import ValidationError

from qbq.errors import ConfigurationError, ResponseShapeError
from qbq.provider import ChatReply, ChatRequest, chat_reply, translate_error

__all__ = ["BATCH_ENDPOINT", "COMPLETION_WINDOW", "MAX_INPUT_BYTES", "MAX_INPUT_LINES",
           "TERMINAL_STATUSES", "BatchAPI", "BatchState",
           "OpenAIBatchAPI", "batch_input", "read_output"]

BATCH_ENDPOINT: Literal["/v1/chat/completions"] = "/v1/chat/completions"
#: The only window OpenAI offers: results within 24 hours, at half the price.
COMPLETION_WINDOW: Literal["24h"] = "24h"
#: Most bytes and lines one Batch API input file may hold
#: (https://platform.openai.com/docs/guides/batch: 200 MB, 50,000 requests).
MAX_INPUT_BYTES = 200 * 1024 * 1024
MAX_INPUT_LINES = 50_000
#: Batch statuses after which nothing more will be answered.
TERMINAL_STATUSES = ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True)
class BatchState:
    """A batch as the provider reports it: status and the ids of its result files."""

    batch_id: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class BatchAPI(Protocol):
    """What batch mode needs from the provider's Files and Batch APIs.

    Every method raises a `ProviderError` when the provider does not answer.
    """

    def submit(self, jsonl: bytes, metadata: Mapping[str, str]) -> tuple[str, BatchState]:
        """Upload `jsonl` and create a batch of it; (input file id, the new batch)."""
        ...

    def find(self, key: str, value: str) -> BatchState | None:
        """The newest batch whose metadata has `key` = `value`, or None."""
        ...

    def state(self, batch_id: str) -> BatchState: ...

    def content(self, file_id: str) -> tuple[bytes, bool]:
        """A file's bytes, and whether the provider is qbq's simulator."""
        ...


def batch_input(lines: Mapping[str, ChatRequest]) -> bytes:
    """The JSONL input file: one line per `custom_id` → request, in the given order.

    Raises `ConfigurationError` when it would break the Batch API's 200 MB / 50,000-line caps
    (qbq submits one job per process; pages sent as data URIs make lines large).
    """
    data = "".join(json.dumps({"custom_id": custom_id, "method": "POST", "url": BATCH_ENDPOINT,
                               "body": request.body()}, separators=(",", ":")) + "\n"
                   for custom_id, request in lines.items()).encode()
    if len(data) > MAX_INPUT_BYTES or len(lines) > MAX_INPUT_LINES:
        raise ConfigurationError(
            f"QBQ_MODE=batch: the Batch API input would be {len(data):,} bytes in {len(lines):,} "
            f"lines, over its {MAX_INPUT_BYTES:,}-byte / {MAX_INPUT_LINES:,}-line caps; grade "
            "this request in sync or flex mode, or give its pages as URLs (QBQ_PAGE_URLS=pass)")
    return data


def read_output(data: bytes, *, simulated: bool) -> dict[str, ChatReply]:
    """The usable answers of an output (or error) file: `custom_id` → reply.

    Lines that carry an error, a non-200 status or a body that is not a chat completion are
    left out: their requests are asked again synchronously, like any missing answer.
    """
    replies: dict[str, ChatReply] = {}
    for raw in data.splitlines():
        try:
            line: Any = json.loads(raw)
            response = line.get("response") or {}
            if line.get("error") or response.get("status_code") != 200:
                continue
            completion = ChatCompletion.model_validate(response["body"])
            replies[str(line["custom_id"])] = chat_reply(completion, simulated=simulated,
                                                         latency_ms=0.0)
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValidationError,
                ResponseShapeError):
            continue
    return replies


def _state(batch: Any) -> BatchState:
    return BatchState(batch.id, batch.status, batch.output_file_id, batch.error_file_id)


class OpenAIBatchAPI:
    """`BatchAPI` over an injected SDK client (retries off, like the chat provider's)."""

    def __init__(self, client: openai.OpenAI) -> None:
        self._client = client

    def submit(self, jsonl: bytes, metadata: Mapping[str, str]) -> tuple[str, BatchState]:
        try:
            uploaded = self._client.files.create(file=("qbq-batch.jsonl", jsonl), purpose="batch")
            batch = self._client.batches.create(
                input_file_id=uploaded.id, endpoint=BATCH_ENDPOINT,
                completion_window=COMPLETION_WINDOW, metadata=dict(metadata))
        except openai.OpenAIError as exc:
            raise translate_error(exc) from exc
        return uploaded.id, _state(batch)

    def find(self, key: str, value: str) -> BatchState | None:
        try:
            for batch in self._client.batches.list(limit=100):
                if (batch.metadata or {}).get(key) == value:
                    return _state(batch)
        except openai.OpenAIError as exc:
            raise translate_error(exc) from exc
        return None

    def state(self, batch_id: str) -> BatchState:
        try:
            return _state(self._client.batches.retrieve(batch_id))
        except openai.OpenAIError as exc:
            raise translate_error(exc) from exc

    def content(self, file_id: str) -> tuple[bytes, bool]:
        try:
            raw = self._client.files.with_raw_response.content(file_id)
        except openai.OpenAIError as exc:
            raise translate_error(exc) from exc
        return raw.content, raw.headers.get("x-qbq-simulated") == "true"

    def close(self) -> None:
        self._client.close()
