"""The steps of a grading run as plain functions over injected adapters; tasks/ wraps them.

prepare → register → (grade_batch per batch) → collect → finalize (payload + outbox) → deliver.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from qbq.delivery import DeliveryReport
from qbq.domain import GradingRequest
from qbq.errors import PageIdConflictError
from qbq.observability.lifecycle import purge_after_reduce
from qbq.payload import LegacyPayload, NativePayload, RunSummary
from qbq.planning import BatchPlan
from qbq.preparation import Prepared
from qbq.reduce import StoredBatch, reduce_results, to_legacy
from qbq.settings import GradingPolicy, QbqSettings
from qbq.store import BatchSpec, Store
from qbq.store import repository as repo
from qbq.store.page_contents import page_content_conflicts, remember_page_contents

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["Finalized", "RunResult", "build_payload", "check_page_ids", "collect", "finalize",
           "register"]


def payload_format(request: GradingRequest, settings: QbqSettings) -> Literal["native", "legacy"]:
    if settings.payload_format != "auto":
        return settings.payload_format
    return request.source_format


def check_page_ids(store: Store, request: GradingRequest) -> None:
    """Raise `PageIdConflictError` when declared page ids were seen before in this assessment
    with other content, unless the request asks to regrade."""
    contents = request.declared_contents
    if request.regrade or not contents:
        return
    with store.transaction() as session:
        conflicts = page_content_conflicts(session, request.assessment_id, contents)
    if conflicts:
        raise PageIdConflictError(request.assessment_id, conflicts)


def register(store: Store, prepared: Prepared, settings: QbqSettings) -> None:
    """Record the process and its batches (idempotent: a rerun finds them in place).

    Raises `PageIdConflictError` for page ids reused with new content (`check_page_ids`).
    """
    request, plan = prepared.request, prepared.plan
    check_page_ids(store, request)

    def write(session: Session) -> None:  # idempotent, so replayed after a dropped connection
        remember_page_contents(session, request.assessment_id, request.declared_contents,
                               plan.process_id)
        repo.ensure_process(
            session,
            process_id=plan.process_id,
            assessment_id=request.assessment_id,
            model=request.model,
            request_hash=request.request_hash(),
            payload_format=payload_format(request, settings),
            n_students=len(request.students),
            n_batches=len(plan.batches),
        )
        repo.ensure_batches(session, plan.process_id, [
            BatchSpec(b.idempotency_key, b.index, b.refs, b.prompt_tokens,
                      b.max_completion_tokens, request.model)
            for b in plan.batches
        ])
        process = repo.get_process(session, plan.process_id)
        if process is not None and process.status != "completed":
            repo.set_process_status(session, plan.process_id, "grading")

    store.run(write)


def collect(store: Store, plan: BatchPlan) -> dict[str, StoredBatch]:
    with store.transaction() as session:
        rows = repo.get_batches(session, [b.idempotency_key for b in plan.batches])
        return {
            key: StoredBatch(status=row.status, result=row.result, error_type=row.error_type,
                             error_detail=row.error_detail, usage=row.usage)
            for key, row in rows.items()
        }


def build_payload(prepared: Prepared, batches: dict[str, StoredBatch], *,
                  policy: GradingPolicy, settings: QbqSettings
                  ) -> tuple[NativePayload, NativePayload | LegacyPayload]:
    """The native payload and the one to deliver (legacy for legacy requests by default)."""
    native = reduce_results(prepared.request, prepared.plan, batches, policy)
    if payload_format(prepared.request, settings) == "legacy":
        return native, to_legacy(native, prepared.request)
    return native, native


@dataclass(frozen=True)
class Finalized:
    """A finished run's payloads: `native` (always) and `outgoing` (what is delivered: the
    legacy form for legacy requests unless QBQ_PAYLOAD_FORMAT says otherwise)."""

    native: NativePayload
    outgoing: NativePayload | LegacyPayload


@dataclass(frozen=True)
class RunResult:
    """What a grading run returns to its caller (in process; never persisted by Prefect).

    `summary` holds counts, tokens and cost only; the payloads hold names and feedback.
    `delivery` is None when no results API is configured.
    """

    process_id: str
    status: Literal["success", "failed"]
    summary: RunSummary
    payloads: Finalized
    delivery: DeliveryReport | None = None


def delivery_key(process_id: str) -> str:
    return f"{process_id}/results"


def finalize(store: Store, prepared: Prepared, *, policy: GradingPolicy,
             settings: QbqSettings) -> Finalized:
    """Reduce, then mark the process done and queue the payload in the same transaction."""
    native, outgoing = build_payload(prepared, collect(store, prepared.plan), policy=policy,
                                     settings=settings)
    body = json.loads(outgoing.model_dump_json())
    # A repeated completion queues nothing new, so it is replayed after a dropped connection.
    store.run(lambda session: repo.complete_process(
        session,
        prepared.plan.process_id,
        status="completed" if native.status == "success" else "failed",
        summary=native.summary.model_dump(mode="json"),
        payload=body if settings.results_api_url else None,
        target_url=settings.results_api_url,
        delivery_key=delivery_key(prepared.plan.process_id),
    ))
    purge_after_reduce(store, [b.idempotency_key for b in prepared.plan.batches],
                       keep=settings.keep_raw_responses)
    return Finalized(native, outgoing)
