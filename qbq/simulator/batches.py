"""OpenAI's Batch API, emulated in memory (the simulator is a test device: a restart loses it).

Endpoints (https://platform.openai.com/docs/api-reference/batch): `POST /v1/batches`
(`input_file_id`, `endpoint` = "/v1/chat/completions", `completion_window` = "24h",
`metadata`), `GET /v1/batches` (`after`, `limit`), `GET /v1/batches/{id}`,
`POST /v1/batches/{id}/cancel`; files through `qbq.simulator.files`. Objects are the spec's
`Batch`; output and error lines its `BatchRequestOutput`: `{"id", "custom_id", "response":
{"status_code", "request_id", "body"}, "error": null}`, or `"response": null` with `"error":
{"code", "message"}` for a line that never ran (`batch_expired`, `batch_cancelled`) or timed
out (`request_timeout`).

Life of a batch (https://platform.openai.com/docs/guides/batch), in simulated seconds:
`validating` for `batch_validation_s` (a bad input file, an unknown model or the enqueued-token
limit make it `failed`), then `in_progress` while its lines are answered evenly spread over
`batch_completion_s`, then `finalizing` for `batch_finalizing_s`, then `completed`. A batch
still unfinished `batch_window_s` after creation ends `expired`: lines already answered are in
the output and error files, the rest in the error file as `batch_expired`. Cancelling makes it
`cancelling` for `batch_cancel_s`, then `cancelled`, unrun lines as `batch_cancelled`.

Each line is answered exactly like a synchronous chat completion (same checks, grading,
reasoning and prompt caching), with its own faults (`batch_faults`): a 5xx becomes an
error-file line with that status, `timeout` an error-file line `request_timeout`, a content
fault a spoiled 200. Batches have their own rate-limit pool: the enqueued-token limit
(`batch_queue_tokens`, prompt tokens of a key's unfinished batches per model, as OpenAI's
"Enqueued token limit reached ..." failure); their lines never touch the per-minute buckets,
and `/_sim/stats` counts them as `batch_requests`, not `requests`. Output lines are written in
a seeded shuffled order: OpenAI does not keep input order, only `custom_id` matches them up.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qbq.errors import UnknownModelError
from qbq.simulator.batch_input import BatchLine, parse_batch_input
from qbq.simulator.call import ChatCall
from qbq.simulator.faults import CONTENT_FAULTS, STATUS_FAULTS
from qbq.simulator.files import FileStore, StoredFile
from qbq.simulator.limits import ORGANIZATION
from qbq.simulator.replies import status_error
from qbq.simulator.stages import LINE_STAGES
from qbq.simulator.state import SimState
from qbq.simulator.validation import SimAPIError

__all__ = ["BATCH_ENDPOINTS", "BatchJob", "BatchService", "bad_request"]

log = logging.getLogger(__name__)

#: The endpoints the spec allows for a batch; the simulator runs only chat completions.
BATCH_ENDPOINTS: tuple[str, ...] = (
    "/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions",
    "/v1/moderations", "/v1/images/generations", "/v1/images/edits", "/v1/videos",
)
_ACTIVE = ("validating", "in_progress", "finalizing")
_TERMINAL = ("completed", "failed", "expired", "cancelled")
_METADATA_PAIRS, _METADATA_KEY, _METADATA_VALUE = 16, 64, 512
_EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
_CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."

Complete = Callable[[ChatCall], dict[str, Any]]


@dataclass
class BatchJob:
    """One batch and its results; `to_object()` is the API's `Batch` object."""

    id: str
    owner: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    created_sim: float
    status: str = "validating"
    model: str | None = None
    stamps: dict[str, int | None] = field(default_factory=dict)
    errors: list[dict[str, Any]] | None = None
    lines: list[BatchLine] = field(default_factory=list)
    #: Output records of the lines answered so far, by index; the indexes of failed ones.
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    failed_lines: set[int] = field(default_factory=set)
    usage: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens"), 0))
    enqueued_tokens: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    expires_at: int | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)

    def stamp(self, status: str) -> None:
        self.status = status
        self.stamps[f"{status}_at"] = int(time.time())

    def to_object(self) -> dict[str, Any]:
        done = len(self.results)
        failed = len(self.failed_lines)
        stamps = {
            f"{name}_at": self.stamps.get(f"{name}_at")
            for name in ("in_progress", "finalizing", "completed", "failed", "expired",
                         "cancelling", "cancelled")
        }
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            **stamps,
            "request_counts": {"total": len(self.lines), "completed": done - failed, "failed": failed},
            "usage": {
                "input_tokens": self.usage["input_tokens"],
                "input_tokens_details": {"cached_tokens": self.usage["cached_tokens"]},
                "output_tokens": self.usage["output_tokens"],
                "output_tokens_details": {"reasoning_tokens": self.usage["reasoning_tokens"]},
                "total_tokens": self.usage["input_tokens"] + self.usage["output_tokens"],
            },
            "metadata": self.metadata,
        }


def bad_request(message: str, param: str | None = None, code: str | None = None) -> SimAPIError:
    """A 400 `invalid_request_error` in OpenAI's envelope."""
    return SimAPIError(400, message, param=param, code=code)


def _check_metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise bad_request("Invalid type for 'metadata': expected an object.", "metadata", "invalid_type")
    if len(metadata) > _METADATA_PAIRS:
        raise bad_request(
            f"Invalid 'metadata': too many properties. Expected an object with at most "
            f"{_METADATA_PAIRS} properties, but got an object with {len(metadata)} properties "
            "instead.",
            "metadata",
            "object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > _METADATA_KEY:
            raise bad_request(f"Invalid 'metadata': key '{key}' is longer than {_METADATA_KEY} characters.",
                       "metadata", "invalid_value")
        if not isinstance(value, str) or len(value) > _METADATA_VALUE:
            raise bad_request(f"Invalid 'metadata.{key}': expected a string of at most {_METADATA_VALUE} "
                       "characters.", f"metadata.{key}", "invalid_value")
    return dict(metadata)


class BatchService:
    """The files and batches of one simulator app, and the tasks running its batches.

    Its HTTP endpoints are in `qbq.simulator.batch_routes`.
    """

    def __init__(self, state: SimState, complete: Complete) -> None:
        self.state = state
        self.files = FileStore()
        self._complete = complete
        self._jobs: dict[str, BatchJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # --- timing -----------------------------------------------------------------------------

    def _wall(self, simulated_s: float) -> float:
        return max(0.0, simulated_s) / self.state.config.time_scale

    async def _sleep(self, job: BatchJob, simulated_s: float) -> bool:
        """Sleep `simulated_s`; True, early, when the batch is cancelled meanwhile."""
        if job.cancel.is_set():
            return True
        try:
            await asyncio.wait_for(job.cancel.wait(), timeout=self._wall(simulated_s))
        except TimeoutError:
            return False
        return True

    # --- creating ---------------------------------------------------------------------------

    def create(self, body: dict[str, Any], owner: str) -> BatchJob:
        """A new batch from a `POST /v1/batches` body (400/404 as OpenAI for a bad one)."""
        for param in ("input_file_id", "endpoint", "completion_window"):
            if body.get(param) is None:
                raise bad_request(
                    f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
                )
        endpoint = body["endpoint"]
        if endpoint not in BATCH_ENDPOINTS:
            allowed = ", ".join(f"'{e}'" for e in BATCH_ENDPOINTS)
            raise bad_request(f"Invalid value: '{endpoint}'. Supported values are: {allowed}.", "endpoint",
                       "invalid_value")
        if endpoint != "/v1/chat/completions":
            raise bad_request(f"The qbq simulator runs only /v1/chat/completions batches, not {endpoint}.",
                       "endpoint", "unsupported_value")
        if body["completion_window"] != "24h":
            raise bad_request(f"Invalid value: '{body['completion_window']}'. Supported values are: '24h'.",
                       "completion_window", "invalid_value")
        metadata = _check_metadata(body.get("metadata"))
        source = self.files.get(str(body["input_file_id"]), owner)
        if source.purpose != "batch":
            raise bad_request(f"The file {source.id} has purpose '{source.purpose}'; a batch's input file "
                       "must be uploaded with purpose 'batch'.", "input_file_id", "invalid_value")
        now = int(time.time())
        job = BatchJob(
            id=f"batch_sim{uuid.uuid4().hex[:24]}",
            owner=owner,
            input_file_id=source.id,
            endpoint=endpoint,
            completion_window="24h",
            metadata=metadata,
            created_at=now,
            created_sim=self.state.now(),
            expires_at=now + round(self._wall(self.state.config.batch_window_s)),
        )
        self._jobs[job.id] = job
        self.state.record_batch()
        task = asyncio.get_running_loop().create_task(self._run(job, source))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def get(self, batch_id: str, owner: str) -> BatchJob:
        """The batch `batch_id` of `owner`; 404 otherwise."""
        job = self._jobs.get(batch_id)
        if job is None or job.owner != owner:
            raise SimAPIError(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        return job

    def cancel(self, batch_id: str, owner: str) -> BatchJob:
        """Start cancelling a validating or in-progress batch (idempotent once cancelling)."""
        job = self.get(batch_id, owner)
        if job.status in ("cancelling", "cancelled"):
            return job
        if job.status not in ("validating", "in_progress"):
            raise bad_request(f"Cannot cancel a batch with status '{job.status}'.", "batch_id")
        job.stamp("cancelling")
        job.cancel.set()
        return job

    def listing(self, owner: str, after: str | None, limit: int) -> dict[str, Any]:
        """`GET /v1/batches`: the owner's batches newest first, `limit` after the id `after`."""
        mine = [j for j in self._jobs.values() if j.owner == owner]
        mine.sort(key=lambda j: (j.created_sim, j.id), reverse=True)
        if after is not None:
            ids = [j.id for j in mine]
            mine = mine[ids.index(after) + 1 :] if after in ids else []
        page = mine[:limit]
        data = [j.to_object() for j in page]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(mine) > limit,
        }

    # --- running ----------------------------------------------------------------------------

    async def _validate(self, job: BatchJob, source: StoredFile) -> bool:
        parsed = parse_batch_input(source.data, job.endpoint)
        errors = parsed.errors
        if not errors and parsed.model is not None:
            try:
                self.state.resolve(parsed.model)
            except UnknownModelError:
                errors = [{"code": "model_not_found", "line": None, "param": "body.model",
                           "message": f"The model `{parsed.model}` does not exist or you do not "
                                      "have access to it."}]
        job.model = parsed.model
        job.lines = parsed.lines
        if not errors:
            errors = await self._check_queue(job)
        if errors:
            job.errors = errors
            job.stamp("failed")
            return False
        return True

    async def _check_queue(self, job: BatchJob) -> list[dict[str, Any]]:
        limit = self.state.config.batch_queue_tokens
        if limit is None:
            return []
        for line in job.lines:
            call = self._line_call(job, line)
            try:
                for stage in LINE_STAGES:
                    await stage(call)
            except SimAPIError:
                continue
            job.enqueued_tokens += call.prompt_tokens
        queued = sum(
            other.enqueued_tokens
            for other in self._jobs.values()
            if other is not job and other.owner == job.owner and other.model == job.model
            and other.status in _ACTIVE
        )
        if queued + job.enqueued_tokens <= limit:
            return []
        return [{"code": "token_limit_exceeded", "line": None, "param": None,
                 "message": f"Enqueued token limit reached for {job.model} in organization "
                            f"{ORGANIZATION}. Limit: {limit:,} enqueued tokens. Please try again "
                            "once some in_progress batches have been completed."}]

    async def _run(self, job: BatchJob, source: StoredFile) -> None:
        try:
            await self._lifecycle(job, source)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("simulator batch %s failed", job.id)
            job.errors = [{"code": "server_error", "line": None, "param": None,
                           "message": "The batch failed inside the qbq simulator."}]
            job.stamp("failed")

    async def _lifecycle(self, job: BatchJob, source: StoredFile) -> None:
        config = self.state.config
        if await self._sleep(job, config.batch_validation_s):
            await self._finish_cancelled(job)
            return
        if not await self._validate(job, source):
            return
        job.stamp("in_progress")
        start = self.state.now()
        deadline = job.created_sim + config.batch_window_s
        count = len(job.lines)
        for index, line in enumerate(job.lines):
            due = start + (index + 1) / count * config.batch_completion_s
            if due > deadline:
                break
            if await self._sleep(job, due - self.state.now()):
                await self._finish_cancelled(job)
                return
            job.results[index] = await self._answer_line(job, index, line)
        if len(job.results) < count:
            if await self._sleep(job, deadline - self.state.now()):
                await self._finish_cancelled(job)
                return
            self._write_files(job, "batch_expired", _EXPIRED_MESSAGE)
            job.stamp("expired")
            return
        job.stamp("finalizing")
        await asyncio.sleep(self._wall(config.batch_finalizing_s))
        self._write_files(job, "", "")
        job.stamp("completed")

    async def _finish_cancelled(self, job: BatchJob) -> None:
        if job.status != "cancelling":
            job.stamp("cancelling")
        await asyncio.sleep(self._wall(self.state.config.batch_cancel_s))
        self._write_files(job, "batch_cancelled", _CANCELLED_MESSAGE)
        job.stamp("cancelled")

    def _line_call(self, job: BatchJob, line: BatchLine) -> ChatCall:
        return ChatCall(
            request=None,
            config=self.state.config,
            state=self.state,
            raw_body=json.dumps(line.body, sort_keys=True).encode(),
            body=line.body,
            api_key=job.owner,
        )

    async def _answer_line(self, job: BatchJob, index: int, line: BatchLine) -> dict[str, Any]:
        call = self._line_call(job, line)
        request_id = f"req_sim_{uuid.uuid4().hex}"
        record: dict[str, Any] = {"id": f"batch_req_sim{uuid.uuid4().hex[:24]}",
                                  "custom_id": line.custom_id, "response": None, "error": None}
        try:
            for stage in LINE_STAGES:
                await stage(call)
        except SimAPIError as exc:
            job.failed_lines.add(index)
            record["response"] = {"status_code": exc.status, "request_id": request_id, "body": exc.body()}
            self.state.record_batch_line()
            return record
        fault = self.state.draw_batch_fault()
        if fault is not None and fault.kind == "timeout":
            job.failed_lines.add(index)
            record["error"] = {"code": "request_timeout", "message": "The request timed out."}
            self.state.record_batch_line()
            return record
        if fault is not None and fault.kind in STATUS_FAULTS:
            job.failed_lines.add(index)
            error = status_error(STATUS_FAULTS[fault.kind])
            record["response"] = {"status_code": error.status, "request_id": request_id,
                                  "body": error.body()}
            self.state.record_batch_line()
            return record
        call.fault = fault if fault is not None and fault.kind in CONTENT_FAULTS else None
        completion = await asyncio.to_thread(self._complete, call)
        usage = completion["usage"]
        job.usage["input_tokens"] += usage["prompt_tokens"]
        job.usage["cached_tokens"] += usage["prompt_tokens_details"]["cached_tokens"]
        job.usage["output_tokens"] += usage["completion_tokens"]
        job.usage["reasoning_tokens"] += usage["completion_tokens_details"]["reasoning_tokens"]
        self.state.record_batch_line(
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"],
            reasoning_tokens=usage["completion_tokens_details"]["reasoning_tokens"],
            cached_tokens=usage["prompt_tokens_details"]["cached_tokens"],
        )
        record["response"] = {"status_code": 200, "request_id": request_id, "body": completion}
        return record

    def _write_files(self, job: BatchJob, unrun_code: str, unrun_message: str) -> None:
        """The output and error files; lines never run go to the error file as `unrun_code`."""
        output: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for index, line in enumerate(job.lines):
            record = job.results.get(index)
            if record is None:
                failed.append({
                    "id": f"batch_req_sim{uuid.uuid4().hex[:24]}", "custom_id": line.custom_id,
                    "response": None, "error": {"code": unrun_code, "message": unrun_message},
                })
            else:
                (failed if index in job.failed_lines else output).append(record)
        seed = str(self.state.config.seed).encode()

        def shuffled(records: list[dict[str, Any]]) -> bytes:
            records = sorted(records, key=lambda r: hashlib.sha256(seed + r["custom_id"].encode()).digest())
            return "".join(json.dumps(r) + "\n" for r in records).encode()

        if output:
            job.output_file_id = self.files.add(
                shuffled(output), f"batch_{job.id}_output.jsonl", "batch_output", job.owner, None).id
        if failed:
            job.error_file_id = self.files.add(
                shuffled(failed), f"batch_{job.id}_error.jsonl", "batch_output", job.owner, None).id

    async def shutdown(self) -> None:
        """Stop every running batch (the app is stopping)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
