"""Prefect tasks for one grading run: prepare, register, grade_batch (mapped), finalize, deliver.

Each is a few lines over a qbq function; the run's store and clients come from
`qbq.resources.resources_for(run)`, opened once by the flow. `redacting` masks secrets in the
message of any outside exception before Prefect stores it in a state or event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.utilities.annotations import quote

from qbq import pipeline
from qbq.batch_mode import grade_in_batch_mode
from qbq.delivery import DeliveryReport, drain_outbox
from qbq.errors import GradingFailedError
from qbq.grading import BatchOutcome, grade_batch
from qbq.observability.logs import redacting
from qbq.planning import PlannedBatch
from qbq.preparation import Prepared, prepare
from qbq.resources import RunRef, make_batch_api, open_store, resources_for
from qbq.settings import GradingPolicy, QbqSettings
from qbq.submission import load_submitted

__all__ = ["batch_mode_task", "deliver_task", "finalize_task", "grade_batch_task", "prepare_task",
           "register_task", "submitted_task"]


@task(name="prepare", cache_policy=NO_CACHE, persist_result=False)
@redacting
def prepare_task(source: dict[str, Any] | str, settings: QbqSettings,
                 policy: GradingPolicy, base_dir: Path | None = None) -> Prepared:
    return prepare(source if isinstance(source, dict) else Path(source), settings=settings,
                   policy=policy, base_dir=base_dir)


@task(name="load-submitted-request", cache_policy=NO_CACHE, persist_result=False)
@redacting
def submitted_task(request_id: str, settings: QbqSettings) -> tuple[dict[str, Any], Path]:
    """The request `qbq submit` stored under `request_id`, and its base folder."""
    store = open_store(settings)
    try:
        return load_submitted(store, request_id)
    finally:
        store.dispose()


@task(name="register", cache_policy=NO_CACHE, persist_result=False)
@redacting
def register_task(prepared: Prepared, run: RunRef) -> None:
    pipeline.register(resources_for(run).store, prepared, run.settings)


def _unquote(value: Any) -> Any:
    """The flow passes big parameters quoted (so Prefect does not walk them); cache-key
    functions see them as given."""
    return value.unquote() if isinstance(value, quote) else value


def _batch_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Cache by the batch's idempotency key, scoped to the store that holds its result."""
    batch: PlannedBatch = _unquote(parameters["batch"])
    run: RunRef = _unquote(parameters["run"])
    return f"grade-{batch.idempotency_key}-{run.store_id}"


def _batch_run_name() -> str:
    from prefect.runtime import task_run

    return f"grade-batch-{_unquote(task_run.parameters['batch']).index}"


@task(name="grade_batch", cache_key_fn=_batch_cache_key, persist_result=True, retries=0,
      task_run_name=_batch_run_name)
@redacting
def grade_batch_task(batch: PlannedBatch, prepared: Prepared, run: RunRef) -> BatchOutcome:
    """Grade one batch; retries happen inside (honouring retry-after), never in Prefect.

    A batch that ends with ungraded students raises, so Prefect marks it failed and never
    caches it: the next run of the same request grades it again. Its details are in the store.
    """
    outcome = grade_batch(batch, prepared.request, resources_for(run).grading_deps(),
                          prepared.plan)
    if outcome.status != "succeeded":
        raise GradingFailedError(
            f"batch {batch.index}: {outcome.n_students - outcome.n_graded} of "
            f"{outcome.n_students} students not graded ({outcome.error_type})"
        )
    return outcome


@task(name="grade_in_batch_mode", cache_policy=NO_CACHE, persist_result=False, retries=0)
def batch_mode_task(prepared: Prepared, run: RunRef) -> list[BatchOutcome]:
    """Every batch through one Batch API job; sleeps (no CPU) while the job runs."""
    api = make_batch_api(run.settings)
    try:
        return grade_in_batch_mode(prepared, resources_for(run).grading_deps(), api)
    finally:
        api.close()


@task(name="finalize", cache_policy=NO_CACHE, persist_result=False)
@redacting
def finalize_task(prepared: Prepared, run: RunRef) -> pipeline.Finalized:
    return pipeline.finalize(resources_for(run).store, prepared, policy=run.policy,
                             settings=run.settings)


@task(name="deliver", cache_policy=NO_CACHE, persist_result=False)
@redacting
def deliver_task(process_id: str, run: RunRef) -> DeliveryReport:
    """Send this run's payload now (even if an earlier attempt is backing off)."""
    resources = resources_for(run)
    return drain_outbox(resources.store, resources.http, process_id=process_id,
                        lookup_url=run.settings.results_api_lookup_url, ignore_backoff=True,
                        backoff_s=run.settings.delivery_backoff_s,
                        deadline_s=run.settings.delivery_deadline_s)
