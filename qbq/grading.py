"""`grade_batch`: one batch through the model, with retries, re-asks and every step recorded.

Retries live here and only here (the SDK's and Prefect's are off): transient provider errors
back off exponentially with full jitter and honour `retry-after`; an invalid reply is asked again
with the validation errors; what still fails is stored as a reasoned failure per student.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qbq.domain import GradingRequest, Page
from qbq.errors import (
    ImageError,
    ProviderError,
    QbqError,
    RateLimitedError,
    RefusalError,
    ResponseError,
    ResponseRuleError,
    TruncatedResponseError,
)
from qbq.images import encode_data_uri, inspect_image
from qbq.planning import PlannedBatch, prompt_questions
from qbq.prompts import StudentPages, build_messages, response_format
from qbq.provider import ChatProvider, ChatReply
from qbq.response import CheckedReply, check_reply, parse_reply, rule_error
from qbq.settings import GradingPolicy
from qbq.store import Store
from qbq.store import repository as repo

__all__ = ["BatchOutcome", "GradingDeps", "backoff_delay", "grade_batch", "page_url"]

BatchStatus = Literal["succeeded", "failed"]


@dataclass(frozen=True)
class BatchOutcome:
    """What the orchestration layer learns about a batch: counts only, no personal data."""

    index: int
    idempotency_key: str
    status: BatchStatus
    from_store: bool
    n_students: int
    n_graded: int
    model_calls: int = 0
    attempts: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    error_type: str | None = None
    simulated: bool = False


@dataclass
class GradingDeps:
    """The outside world `grade_batch` talks to, injected (fakes in tests, real in flows)."""

    provider: ChatProvider
    store: Store
    policy: GradingPolicy
    keep_raw_responses: bool = False
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)


def page_url(page: Page) -> str:
    """What goes into the image part: URLs as given, local files inlined as data URIs."""
    if page.source != "path":
        return page.location
    try:
        data = Path(page.location).read_bytes()
    except OSError as exc:
        raise ImageError(f"page {page.image_id}: cannot read {page.location}") from exc
    return encode_data_uri(data, inspect_image(data, what=page.image_id).mime)


def backoff_delay(attempt: int, policy: GradingPolicy, rng: random.Random,
                  retry_after: float | None) -> float:
    """Full-jitter exponential backoff, never shorter than the provider's `retry-after`."""
    ceiling = min(policy.backoff_max_s, policy.backoff_base_s * 2 ** (attempt - 1))
    delay = rng.uniform(0, ceiling)
    return max(delay, retry_after) if retry_after is not None else delay


@dataclass
class _Tally:
    calls: int = 0
    attempts: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    simulated: bool = False
    last_raw: str | None = None

    def add(self, reply: ChatReply) -> None:
        self.calls += 1
        self.prompt_tokens += reply.prompt_tokens
        self.cached_tokens += reply.cached_tokens
        self.completion_tokens += reply.completion_tokens
        self.latency_ms += reply.latency_ms
        self.simulated = self.simulated or reply.simulated
        self.last_raw = reply.content


def _correction(error: ResponseError) -> str:
    detail = error.message[:1500]
    return (f"Your previous answer was rejected: {detail}. Answer again with JSON that follows "
            "the schema, with every listed student exactly once and every question exactly once, "
            "each mark between 0 and the question's max_mark.")


def grade_batch(batch: PlannedBatch, request: GradingRequest, deps: GradingDeps) -> BatchOutcome:
    """Grade one planned batch, or return its stored result if it already succeeded."""
    key = batch.idempotency_key
    with deps.store.transaction() as session:
        claimed = repo.claim_batch(session, key)
        if not claimed:
            return BatchOutcome(batch.index, key, "succeeded", True, len(batch.students),
                                len(batch.students))
    refs = batch.refs
    max_marks = request.max_marks
    messages = build_messages(
        instructions=request.instructions,
        questions=prompt_questions(request),
        model_answer_urls=[page_url(p) for p in request.model_answer_pages],
        students=[StudentPages(s.ref, [page_url(p) for p in s.pages]) for s in batch.students],
    )
    fmt = response_format(refs, list(max_marks))
    tally = _Tally()
    transient_failures = 0
    reasks = 0
    last_error: QbqError | None = None
    checked: CheckedReply | None = None
    while True:
        tally.attempts += 1
        try:
            reply = deps.provider.complete(
                model=request.model,
                messages=messages,
                response_format=fmt,
                max_completion_tokens=batch.max_completion_tokens,
            )
            tally.add(reply)
            parsed = parse_reply(reply.content, finish_reason=reply.finish_reason,
                                 refusal=reply.refusal)
            checked = check_reply(parsed, refs, max_marks)
            if len(checked.valid) == len(refs):
                break
            error = rule_error(checked, reply.content)
            assert error is not None
            raise error
        except ProviderError as exc:
            last_error = exc
            _record_attempt(deps, key, tally.attempts, exc)
            transient_failures += 1
            if not exc.transient or transient_failures >= deps.policy.max_attempts:
                break
            retry_after = exc.retry_after if isinstance(exc, RateLimitedError) else None
            deps.sleep(backoff_delay(transient_failures, deps.policy, deps.rng, retry_after))
        except ResponseError as exc:
            last_error = exc
            _record_attempt(deps, key, tally.attempts, exc)
            if isinstance(exc, RefusalError | TruncatedResponseError) or reasks >= deps.policy.reasks:
                break
            reasks += 1
            messages = [*messages[:3], {"role": "user", "content": _correction(exc)}]
    return _finish(batch, deps, tally, checked, last_error)


def _record_attempt(deps: GradingDeps, key: str, attempt: int, exc: QbqError) -> None:
    with deps.store.transaction() as session:
        repo.record_attempt_error(session, key, attempt=attempt, error_type=exc.error_type,
                                  stage=exc.stage, detail=exc.message[:500])


def _finish(batch: PlannedBatch, deps: GradingDeps, tally: _Tally, checked: CheckedReply | None,
            last_error: QbqError | None) -> BatchOutcome:
    key = batch.idempotency_key
    valid = checked.valid if checked is not None else {}
    failures: dict[str, dict[str, Any]] = {}
    for ref in batch.refs:
        if ref in valid:
            continue
        assert last_error is not None
        reason = last_error.message
        if isinstance(last_error, ResponseRuleError) and checked is not None:
            reason = "; ".join(checked.problems.get(ref, [])) or reason
        failures[ref] = {"reason": reason[:500], "error_type": last_error.error_type,
                         "needs_review": isinstance(last_error, RefusalError)}
    result = {
        "students": {ref: s.model_dump(mode="json") for ref, s in valid.items()},
        "failures": failures,
        "simulated": tally.simulated,
        "model_calls": tally.calls,
    }
    raw = tally.last_raw if deps.keep_raw_responses or failures else None
    with deps.store.transaction() as session:
        if failures:
            assert last_error is not None
            repo.record_batch_failure(session, key, error_type=last_error.error_type,
                                      stage=last_error.stage, detail=last_error.message[:500],
                                      attempts=tally.attempts, result=result,
                                      prompt_tokens=tally.prompt_tokens,
                                      cached_tokens=tally.cached_tokens,
                                      completion_tokens=tally.completion_tokens,
                                      latency_ms=tally.latency_ms, raw_response=raw)
        else:
            repo.record_batch_success(session, key, result=result,
                                      prompt_tokens=tally.prompt_tokens,
                                      cached_tokens=tally.cached_tokens,
                                      completion_tokens=tally.completion_tokens,
                                      latency_ms=tally.latency_ms, attempts=tally.attempts,
                                      raw_response=raw)
    return BatchOutcome(
        index=batch.index,
        idempotency_key=key,
        status="failed" if failures else "succeeded",
        from_store=False,
        n_students=len(batch.students),
        n_graded=len(valid),
        model_calls=tally.calls,
        attempts=tally.attempts,
        prompt_tokens=tally.prompt_tokens,
        cached_tokens=tally.cached_tokens,
        completion_tokens=tally.completion_tokens,
        latency_ms=tally.latency_ms,
        error_type=last_error.error_type if failures and last_error else None,
        simulated=tally.simulated,
    )
