"""The steps of a grading run as plain functions over injected adapters; tasks/ wraps them.

prepare → register → (grade_batch per batch) → collect → finalize (payload + outbox) → deliver.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from qbq.delivery import DeliveryReport
from qbq.domain import GradingRequest
from qbq.errors import PageIdConflictError
from qbq.http import safe_url
from qbq.observability.lifecycle import purge_after_reduce
from qbq.payload import LegacyPayload, NativePayload, RunSummary, content_hash, delivery_key
from qbq.planning import BatchPlan
from qbq.preparation import Prepared
from qbq.reduce import StoredBatch, reduce_results, to_legacy
from qbq.review import review_items
from qbq.settings import GradingPolicy, QbqSettings
from qbq.store import BatchSpec, Store
from qbq.store import repository as repo
from qbq.store.page_contents import page_content_conflicts, remember_page_contents

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["Finalized", "RunResult", "build_payload", "check_page_ids", "collect", "delivery_line",
           "finalize",
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
    conflicts = store.run(partial(page_content_conflicts, assessment_id=request.assessment_id,
                                  contents=contents))
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
    def read(session: Session) -> dict[str, StoredBatch]:  # a read: replayed after a drop
        rows = repo.get_batches(session, [b.idempotency_key for b in plan.batches])
        return {
            key: StoredBatch(status=row.status, result=row.result, error_type=row.error_type,
                             error_detail=row.error_detail, usage=row.usage)
            for key, row in rows.items()
        }

    return store.run(read)


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
    #: The Idempotency-Key of `outgoing`'s revision (None when no results API is set).
    delivery_key: str | None = None
    #: Whether this finalize queued a new revision (False: unchanged, or no results API).
    queued: bool = False
    #: Where `outgoing` goes (the results API URL), or None.
    target_url: str | None = None


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


def delivery_line(result: RunResult) -> tuple[str, bool]:
    """The line a grading run ends with: where its payload went (URL without query, revision,
    Idempotency-Key) or why it did not; and whether a delivery failed (the payload then stays
    in the outbox for the deliver-results flow)."""
    fin = result.payloads
    revision = fin.outgoing.revision
    if fin.target_url is None or fin.delivery_key is None:
        return "payload not delivered: no results API is set (QBQ_RESULTS_API_URL)", False
    where = f"{safe_url(fin.target_url)} (revision {revision}, Idempotency-Key {fin.delivery_key})"
    report = result.delivery
    if report is not None and report.failed:
        return (f"payload NOT delivered to {where}: {report.last_error}; it stays in the outbox "
                "for the deliver-results flow"), True
    if report is not None and report.delivered:
        return f"payload delivered to {where}", False
    if not fin.queued:
        return f"payload unchanged since revision {revision}: nothing new sent to {where}", False
    return f"payload queued for {where}", False


def finalize(store: Store, prepared: Prepared, *, policy: GradingPolicy,
             settings: QbqSettings) -> Finalized:
    """Reduce, then mark the process done and, in the same transaction, queue the payload as a
    new revision if it differs from the last one queued (`qbq.payload.content_hash`).

    An unchanged rerun queues nothing and returns the last revision's number and key.
    """
    native, outgoing = build_payload(prepared, collect(store, prepared.plan), policy=policy,
                                     settings=settings)
    process_id, url = prepared.plan.process_id, settings.results_api_url
    digest = content_hash(json.loads(outgoing.model_dump_json()))

    def complete(session: Session) -> tuple[NativePayload, Any, str | None, bool]:
        # Replayed whole after a dropped connection (`Store.run`): it reads the last revision
        # again, so a replay never queues the same payload twice.
        last = repo.get_outbox(session, process_id) if url else None
        key: str | None = None
        if last is not None and last.content_hash == digest:
            revision, key = last.revision, last.idempotency_key
        else:
            revision = last.revision + 1 if last is not None else 1
        done = native.model_copy(update={"revision": revision})
        sent = (done if isinstance(outgoing, NativePayload)
                else outgoing.model_copy(update={"revision": revision}))
        body = json.loads(sent.model_dump_json())
        queued = bool(url) and key is None
        if queued:
            key = delivery_key(process_id, revision, body)
        repo.complete_process(
            session,
            process_id,
            status="completed" if done.status == "success" else "failed",
            # the review queue and the question list ride on the summary, for `qbq review`
            summary={**done.summary.model_dump(mode="json"),
                     "review": review_items(done, prepared.request),
                     "max_marks": prepared.request.max_marks},
            payload=body if queued else None,
            target_url=url if queued else None,
            delivery_key=key or "",
            revision=revision,
            content_hash=digest,
        )
        return done, sent, key, queued

    native, outgoing, key, queued = store.run(complete)
    purge_after_reduce(store, [b.idempotency_key for b in prepared.plan.batches],
                       keep=settings.keep_raw_responses)
    return Finalized(native, outgoing, delivery_key=key, queued=queued, target_url=url)
