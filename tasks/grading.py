"""Prefect tasks for one grading run: prepare, register, grade_batch (mapped), finalize, deliver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.utilities.annotations import quote

from qbq import pipeline
from qbq.delivery import DeliveryReport, drain_outbox
from qbq.errors import GradingFailedError
from qbq.grading import BatchOutcome, grade_batch
from qbq.payload import NativePayload
from qbq.planning import PlannedBatch
from qbq.settings import GradingPolicy, QbqSettings
from qbq.wiring import get_grading_deps, get_http_client, get_store, store_fingerprint

__all__ = ["deliver_task", "finalize_task", "grade_batch_task", "prepare_task", "register_task"]


@task(name="prepare", cache_policy=NO_CACHE, persist_result=False)
def prepare_task(source: dict[str, Any] | str, settings: QbqSettings,
                 policy: GradingPolicy) -> pipeline.Prepared:
    return pipeline.prepare(source if isinstance(source, dict) else Path(source),
                            settings=settings, policy=policy)


@task(name="register", cache_policy=NO_CACHE, persist_result=False)
def register_task(prepared: pipeline.Prepared, settings: QbqSettings) -> None:
    pipeline.register(get_store(settings), prepared, settings)


def _batch_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Cache by the batch's idempotency key, scoped to the store that holds its result."""
    batch: PlannedBatch = _unquote(parameters["batch"])
    settings: QbqSettings = _unquote(parameters["settings"])
    return f"grade-{batch.idempotency_key}-{store_fingerprint(settings)}"


def _batch_run_name() -> str:
    from prefect.runtime import task_run

    return f"grade-batch-{_unquote(task_run.parameters['batch']).index}"


def _unquote(value: Any) -> Any:
    """The flow passes big parameters quoted (so Prefect does not walk them); cache-key
    functions see them as given."""
    return value.unquote() if isinstance(value, quote) else value


@task(name="grade_batch", cache_key_fn=_batch_cache_key, persist_result=True, retries=0,
      task_run_name=_batch_run_name)
def grade_batch_task(batch: PlannedBatch, prepared: pipeline.Prepared, settings: QbqSettings,
                     policy: GradingPolicy) -> BatchOutcome:
    """Grade one batch; retries happen inside (honouring retry-after), never in Prefect.

    A batch that ends with ungraded students raises, so Prefect marks it failed and never
    caches it: the next run of the same request grades it again. Its details are in the store.
    """
    deps = get_grading_deps(settings, policy, prepared.plan)
    outcome = grade_batch(batch, prepared.request, deps)
    if outcome.status != "succeeded":
        raise GradingFailedError(
            f"batch {batch.index}: {outcome.n_students - outcome.n_graded} of "
            f"{outcome.n_students} students not graded ({outcome.error_type})"
        )
    return outcome


@task(name="finalize", cache_policy=NO_CACHE, persist_result=False)
def finalize_task(prepared: pipeline.Prepared, settings: QbqSettings,
                  policy: GradingPolicy) -> NativePayload:
    return pipeline.finalize(get_store(settings), prepared, policy=policy, settings=settings)


@task(name="deliver", cache_policy=NO_CACHE, persist_result=False)
def deliver_task(process_id: str, settings: QbqSettings) -> DeliveryReport:
    """Send this run's payload now (even if an earlier attempt is backing off)."""
    return drain_outbox(get_store(settings), get_http_client(settings), process_id=process_id,
                        lookup_url=settings.results_api_lookup_url, ignore_backoff=True,
                        backoff_s=settings.delivery_backoff_s)
