"""The `grade-assessment` flow: plan → grade_batch.map → reduce → deliver, as a Prefect 3 flow."""

from __future__ import annotations

import queue
from typing import Any, Literal, cast
from uuid import UUID

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.utilities.annotations import quote

from flows.artifacts import publish_run_artifacts
from flows.config import make_task_runner, resolve_config
from qbq.errors import RequestValidationError
from qbq.grading import BatchOutcome
from qbq.observability.logs import configure_logging
from qbq.pipeline import RunResult
from qbq.preparation import Prepared, handed_over
from qbq.progress import BatchProgress, publish
from qbq.resources import RunRef, run_resources
from tasks.grading import (
    batch_mode_task,
    deliver_task,
    finalize_task,
    grade_batch_task,
    prepare_task,
    register_task,
    submitted_task,
)

__all__ = ["grade_assessment"]


@flow(name="grade-assessment", log_prints=False, persist_result=False)
def grade_assessment(
    request_id: str | None = None,
    request_path: str | None = None,
    provider_block: str | None = None,
    results_block: str | None = None,
    policy_block: str | None = None,
    mode: Literal["sync", "batch", "flex"] | None = None,
    reasoning_effort: str | None = None,
) -> RunResult:
    """Grade one request: stored by `qbq submit` (`request_id`), or a JSON file at
    `request_path` on the worker. The request is never a parameter: Prefect keeps parameters
    in its database in clear, and a request holds image bytes, signed URLs and instructions.

    Returns the run's `RunResult` (status, summary, payloads, delivery) to an in-process caller;
    Prefect keeps none of it. Settings come from the `QBQ_*` environment.

    Args:
        request_id: Id printed by `qbq submit` (the request in qbq's store, `QBQ_DATABASE_URL`;
            its relative page paths resolve against the folder it was submitted from). Give
            this or request_path.
        request_path: Path of a request JSON file on the worker (relative page paths resolve
            against its folder).
        provider_block: Name of an OpenAIProvider block (API key, base URL, rate limits);
            empty: the worker's OPENAI_* and QBQ_* settings.
        results_block: Name of a ResultsAPI block (where the payload is POSTed); empty: the
            worker's QBQ_RESULTS_API_URL.
        policy_block: Name of a qbq-grading-policy block (coverage threshold, retries,
            margins); empty: the worker's QBQ_* settings.
        mode: sync, batch (the Batch API) or flex (service_tier "flex"); empty: the policy's
            (QBQ_MODE, or the policy block's mode).
        reasoning_effort: `reasoning_effort` for a reasoning model (`qbq models` lists each
            model's values); empty: the policy block's, else QBQ_REASONING_EFFORT, else the
            model's default.
    """
    configure_logging()
    logger = get_run_logger()
    settings, policy = resolve_config(provider_block, results_block, policy_block)
    if mode is not None:
        policy = policy.model_copy(update={"mode": mode})
    if reasoning_effort:
        policy = policy.model_copy(update={"reasoning_effort": reasoning_effort})
    if (request_id is None) == (request_path is None):
        raise RequestValidationError(["request_id: give exactly one of request_id or "
                                      "request_path"])
    source: dict[str, Any] | str = str(request_path)
    base_dir = None
    if request_id is not None:
        source, base_dir = submitted_task(request_id, settings)
    prepared = handed_over(source, settings, policy) or prepare_task(source, settings, policy,
                                                                     base_dir)
    plan = prepared.plan
    logger.info("process %s: %d students in %d batches, ~%d prompt tokens, est. $%.4f",
                plan.process_id, plan.n_students, len(plan.batches), plan.prompt_tokens,
                plan.estimated_cost_usd())
    with run_resources(plan, settings, policy) as resources:
        run = resources.ref
        register_task(prepared, run)
        if policy.mode == "batch":
            batch_mode_task(prepared, run)
        else:
            _grade_all(prepared, run)
        if resources.store.stopped is not None:
            # The store failed for good mid-run: the batches after it failed without a model
            # call; the run stops here with that one error (paid replies are in QBQ_SPILL_DIR).
            raise resources.store.stopped
        payloads = finalize_task(prepared, run)
        native = payloads.native
        delivery = deliver_task(plan.process_id, run) if settings.results_api_url else None
        if delivery is not None and delivery.failed:
            logger.warning("delivery failed (%s); the outbox keeps the payload for "
                           "the deliver-results flow", delivery.last_error)
        publish_run_artifacts(plan.process_id, resources.store,
                              max_marks=prepared.request.max_marks)
    logger.info("process %s %s: %d/%d students graded", plan.process_id, native.status,
                native.summary.graded, native.summary.students)
    return RunResult(plan.process_id, native.status, native.summary, payloads, delivery)


def _grade_all(prepared: Prepared, run: RunRef) -> None:
    """`grade_batch` for every batch on the task runner chosen now (threads or Dask), with a
    progress artifact and progress events as batches finish."""
    plan = prepared.plan
    total = len(plan.batches)
    artifact_id = create_progress_artifact(progress=0.0, description=f"batches graded of {total}")
    # quote(): Prefect would otherwise walk every parameter of every task run looking for
    # futures (the batch's students and pages, the settings) — measured at ~10 ms a batch
    grade = grade_batch_task if run.settings.prefect_cache else grade_batch_task.with_options(
        cache_policy=NO_CACHE, cache_key_fn=None, persist_result=False)
    with make_task_runner(run.settings) as runner:
        futures = runner.map(cast(Any, grade), {"batch": [quote(b) for b in plan.batches],
                                     "prepared": unmapped(quote(prepared)),
                                     "run": unmapped(quote(run))})
        # Completion callbacks instead of prefect.futures.as_completed, which measured ~20 ms
        # of overhead per batch here (it waits on futures in turns).
        finished: queue.SimpleQueue[PrefectFuture[BatchOutcome]] = queue.SimpleQueue()
        for future in futures:
            future.add_done_callback(finished.put)
        shown = 0.0
        for done in range(1, total + 1):
            future = finished.get()
            future.wait()
            state = future.state
            outcome = future.result(raise_on_failure=False) if state.is_completed() else None
            from_store = isinstance(outcome, BatchOutcome) and outcome.from_store
            publish(BatchProgress(plan.process_id, done, total,
                                  "succeeded" if state.is_completed() else "failed", from_store))
            progress = 100.0 * done / total
            if progress - shown >= 1.0 or done == total:  # one API call per percent, not per batch
                update_progress_artifact(cast(UUID, artifact_id), progress=progress)
                shown = progress
