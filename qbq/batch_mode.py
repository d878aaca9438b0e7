"""Batch mode: a run's planned requests through OpenAI's Batch API (50% off, within 24 h), each
answer then validated exactly like a synchronous reply by `grade_batch`.

    pending batches ─ record the job ─ upload JSONL + create batch ─ store its id ─ wait
      (poll with doubling backoff) ─ download the output ─ grade_batch per batch, its first
      request answered from the output; re-asks, and requests with no usable line (errored,
      expired, cancelled, missing), go to the synchronous API under the same rules.

Exactly once: a process submits at most one job. The job row is written before the upload,
the batch id the moment the batch exists (its own transaction); a rerun finds the row and
resumes that batch (if a crash fell between creating the batch and storing its id, the batch
is found again by its metadata). Why the run waits in a task rather than ending and letting a
scheduled flow collect: the wait is a sleeping thread (no CPU, one worker slot), and keeping
the run whole keeps one payload, one delivery and one resume path (the rerun) for every crash.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace

from qbq.batch_api import BatchAPI, BatchState, batch_input, read_output
from qbq.grading import BatchOutcome, GradingDeps, grade_batch, planned_request
from qbq.preparation import Prepared
from qbq.provider import ChatProvider, ChatReply, ChatRequest
from qbq.store import batch_jobs
from qbq.store import repository as repo
from qbq.store.models import BatchJobRow

__all__ = ["JOB_METADATA_KEY", "BatchReplies", "grade_in_batch_mode", "request_fingerprint"]

log = logging.getLogger("qbq.batch_mode")

#: Metadata key of a submitted batch naming its job (found again after a crash).
JOB_METADATA_KEY = "qbq_job"


def request_fingerprint(request: ChatRequest) -> str:
    """SHA-256 of a request's JSON body: what matches a batch line's answer to the request."""
    return hashlib.sha256(json.dumps(request.body(), sort_keys=True).encode()).hexdigest()


class BatchReplies:
    """A `ChatProvider` that answers each request a Batch API line carried from that line's
    reply (once), and sends every other request (re-asks, retries, missing lines) to `inner`."""

    def __init__(self, replies: Mapping[str, ChatReply], inner: ChatProvider) -> None:
        self._replies = dict(replies)  # request fingerprint → reply
        self._inner = inner

    def complete(self, request: ChatRequest) -> ChatReply:
        reply = self._replies.pop(request_fingerprint(request), None)
        if reply is None:
            return self._inner.complete(request)
        if request.on_send is not None:
            request.on_send()  # counts the attempt, as a sent request would
        return reply


def grade_in_batch_mode(prepared: Prepared, deps: GradingDeps, api: BatchAPI, *,
                        sleep: Callable[[float], None] | None = None) -> list[BatchOutcome]:
    """Grade every planned batch of `prepared` through one Batch API job (see the module).

    `deps.provider` answers what the job did not; `sleep` (default `deps.sleep`) waits between
    looks at the job. Raises `ProviderError` when the Batch API itself cannot be reached.
    """
    plan, request = prepared.plan, prepared.request
    wait = sleep or deps.sleep
    keys = [b.idempotency_key for b in plan.batches]
    with deps.store.transaction() as session:
        job = batch_jobs.job_for(session, plan.process_id)
        done = {k for k, row in repo.get_batches(session, keys).items()
                if row.status == "succeeded"}
    pending = [b for b in plan.batches if b.idempotency_key not in done]
    lines = {b.idempotency_key: planned_request(b, request, deps) for b in pending}
    replies: dict[str, ChatReply] = {}
    if job is None and lines:
        batch_input(lines)  # refuses an input over the Batch API's caps before any record
        job = _start(prepared, deps, list(lines))
    if job is not None and job.status != "collected":
        state = _submitted(job, lines, api, deps)
        state = _wait(state, api, deps, wait)
        job.provider_status = state.status
        by_line = _download(state, api)
        replies = {request_fingerprint(r): by_line[key] for key, r in lines.items() if key in by_line}
        log.info("batch job %s %s: %d of %d lines usable; the rest are asked synchronously",
                 job.job_key, state.status, len(replies), len(lines))
    graded = replace(deps, provider=BatchReplies(replies, deps.provider))
    outcomes = [grade_batch(b, request, graded) for b in plan.batches]
    if job is not None and job.status != "collected":
        with deps.store.transaction() as session:
            batch_jobs.finish_job(session, job.job_key, job.provider_status or "unknown")
    return outcomes


def _start(prepared: Prepared, deps: GradingDeps, batch_keys: list[str]) -> BatchJobRow:
    """Record the job before anything is uploaded."""
    with deps.store.transaction() as session:
        return batch_jobs.start_job(session, f"{prepared.plan.process_id}:batch-job",
                                    prepared.plan.process_id, batch_keys)


def _submitted(job: BatchJobRow, lines: Mapping[str, ChatRequest], api: BatchAPI,
               deps: GradingDeps) -> BatchState:
    """The job's batch: the stored one, one created before a crash (by metadata), or a new one
    whose id is stored at once."""
    if job.provider_batch_id is not None:
        return api.state(job.provider_batch_id)
    state = api.find(JOB_METADATA_KEY, job.job_key)
    input_file_id: str | None = None
    if state is None:
        # Only the lines the job was recorded with: never a request outside it.
        chosen = {k: lines[k] for k in job.batch_keys if k in lines}
        input_file_id, state = api.submit(batch_input(chosen), {JOB_METADATA_KEY: job.job_key})
    with deps.store.transaction() as session:
        batch_jobs.record_submission(session, job.job_key, input_file_id=input_file_id,
                                     provider_batch_id=state.batch_id,
                                     provider_status=state.status)
    job.provider_batch_id, job.provider_status = state.batch_id, state.status
    return state


def _wait(state: BatchState, api: BatchAPI, deps: GradingDeps,
          sleep: Callable[[float], None]) -> BatchState:
    """Look at the batch until it ends, waiting batch_poll_s, then twice as long each time."""
    delay = deps.policy.batch_poll_s
    while not state.terminal:
        sleep(delay)
        delay = min(delay * 2, deps.policy.batch_poll_max_s)
        state = api.state(state.batch_id)
    return state


def _download(state: BatchState, api: BatchAPI) -> dict[str, ChatReply]:
    """The usable output lines by custom_id (none for a failed batch; what was answered before
    an expired or cancelled batch stopped)."""
    if state.output_file_id is None:
        return {}
    data, simulated = api.content(state.output_file_id)
    return read_output(data, simulated=simulated)
