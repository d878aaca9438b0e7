"""`grade_batch`: one planned batch through the model, with every fault turned into a grade or a
reasoned failure, and every step recorded.

Retries live here and only here (the SDK's and Prefect's are off):
- transient provider errors back off exponentially with full jitter; a 429 pauses every sender
  of the key through the shared limiter until its `retry-after`;
- an invalid reply is asked again with the validation errors, for the students still missing;
  what stays invalid fails only the offending students;
- a truncated reply splits the students in two (recursively, down to one) and the smaller size
  is remembered for the rest of the run;
- a refusal marks the students for human review with the model's reason;
- the circuit breaker and the retry budget bound what a bad provider day can cost.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from qbq.domain import GradingRequest, Page, Student
from qbq.errors import (
    ProviderError,
    QbqError,
    RateLimitedError,
    RefusalError,
    ResponseError,
    ResponseRuleError,
    RetryBudgetExhaustedError,
    TruncatedResponseError,
)
from qbq.intake.cache import model_image_url
from qbq.limiter import RateLimiter
from qbq.observability.logs import log_batch_event
from qbq.planning import PlannedBatch, prompt_questions
from qbq.prompts import StudentPages, build_messages, response_format
from qbq.provider import ChatProvider, ChatReply
from qbq.recovery import RunGuards
from qbq.response import StudentOut, check_reply, parse_reply
from qbq.settings import GradingPolicy
from qbq.store import Store, acquire_batch_lease, new_owner_id, utcnow
from qbq.store import leases as repo_leases
from qbq.store import repository as repo

__all__ = ["BatchOutcome", "GradingDeps", "backoff_delay", "grade_batch", "page_url"]

log = logging.getLogger("qbq.grading")

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
    guards: RunGuards
    limiter: RateLimiter | None
    in_flight: threading.Semaphore | None = None
    keep_raw_responses: bool = False
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)


def page_url(page: Page) -> str:
    """What goes into the image part: the page's normalised image as a data URI (read from the
    page cache, so another process of this host can send it and nothing is normalised twice), or
    its URL when QBQ_PAGE_URLS=pass."""
    return model_image_url(page)


def backoff_delay(attempt: int, policy: GradingPolicy, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max, base·2^(attempt-1))]."""
    ceiling = min(policy.backoff_max_s, policy.backoff_base_s * 2 ** (attempt - 1))
    return rng.uniform(0, ceiling)


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


@dataclass
class _Graded:
    """Valid students and reasoned failures of a group of students."""

    valid: dict[str, StudentOut] = field(default_factory=dict)
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_error: QbqError | None = None

    def merge(self, other: _Graded) -> None:
        self.valid.update(other.valid)
        self.failures.update(other.failures)
        self.last_error = other.last_error or self.last_error

    def fail(self, refs: Sequence[str], error: QbqError, reason: str | None = None) -> None:
        for ref in refs:
            self.failures[ref] = {"reason": (reason or error.message)[:500],
                                  "error_type": error.error_type,
                                  "needs_review": isinstance(error, RefusalError)}
        self.last_error = error


class _BatchRun:
    """Grades the students of one planned batch; every model call goes through `_call`."""

    def __init__(self, batch: PlannedBatch, request: GradingRequest, deps: GradingDeps,
                 owner: str) -> None:
        self.batch = batch
        self.owner = owner
        self.process_id = request.process_id()
        self.request = request
        self.deps = deps
        self.key = batch.idempotency_key
        self.tally = _Tally()
        self.max_marks = request.max_marks
        self._answer_urls = [page_url(p) for p in request.model_answer_pages]
        self._page_urls: dict[str, list[str]] = {}
        self._first_call = True
        self._renewed = time.monotonic()

    # -- one request -----------------------------------------------------------------------

    def _messages(self, students: Sequence[Student], correction: str | None) -> list[dict[str, Any]]:
        pages = [StudentPages(s.ref, self._urls(s)) for s in students]
        return build_messages(instructions=self.request.instructions,
                              questions=prompt_questions(self.request),
                              model_answer_urls=self._answer_urls, students=pages,
                              correction=correction)

    def _urls(self, student: Student) -> list[str]:
        if student.ref not in self._page_urls:
            self._page_urls[student.ref] = [page_url(p) for p in student.pages]
        return self._page_urls[student.ref]

    def _call(self, students: Sequence[Student], correction: str | None,
              max_tokens: int | None = None) -> ChatReply:
        deps = self.deps
        max_tokens = max_tokens or self.batch.max_completion_tokens
        # the planned prompt of just these students; `settle` gives back what was not charged
        cost = self.batch.prompt_tokens_for({s.ref for s in students}) + max_tokens
        retry = not self._first_call
        if retry:
            deps.guards.budget.spend(cost)
        self._first_call = False
        deps.guards.breaker.before_call()
        messages = self._messages(students, correction)
        fmt = response_format([s.ref for s in students], list(self.max_marks))
        slot = deps.in_flight or contextlib.nullcontext()
        try:
            with slot:  # a request slot first, then the rate: a reserved start is never idle
                reservation = deps.limiter.acquire(cost) if deps.limiter else None
                self._keep_lease()
                self.tally.attempts += 1
                reply = deps.provider.complete(
                    model=self.request.model, messages=messages, response_format=fmt,
                    max_completion_tokens=max_tokens)
        except ProviderError as exc:
            deps.guards.breaker.record_failure()
            if isinstance(exc, RateLimitedError) and deps.limiter is not None:
                deps.limiter.cool_down(exc.retry_after if exc.retry_after is not None else
                                       backoff_delay(1, deps.policy, deps.rng))
            raise
        deps.guards.breaker.record_success()
        self.tally.add(reply)
        if retry:
            deps.guards.budget.charge(reply.prompt_tokens + reply.completion_tokens)
        if deps.limiter is not None and reservation is not None:
            charged = reply.prompt_tokens + max_tokens
            deps.limiter.settle(reservation, charged if reply.prompt_tokens else None,
                                reply.rate_headers)
        return reply

    def _keep_lease(self) -> None:
        """Renew our claim once a third of it has passed (waits for the limiter can be long)."""
        now = time.monotonic()
        if now - self._renewed < self.deps.policy.lease_s / 3:
            return
        with self.deps.store.transaction() as session:
            repo_leases.renew_batch_lease(session, self.key, owner=self.owner, now=utcnow(),
                                          lease_s=self.deps.policy.lease_s)
        self._renewed = now

    def _record(self, exc: QbqError) -> None:
        with self.deps.store.transaction() as session:
            repo.record_attempt_error(session, self.key, attempt=self.tally.attempts,
                                      error_type=exc.error_type, stage=exc.stage,
                                      detail=exc.message[:500])
        log_batch_event(log, "batch_attempt_failed", process_id=self.process_id,
                        batch_id=self.batch.index, idempotency_key=self.key,
                        model=self.request.model, attempt=self.tally.attempts,
                        error_type=exc.error_type, stage=exc.stage)

    # -- a group of students -----------------------------------------------------------------

    def grade(self, students: Sequence[Student]) -> _Graded:
        """Grade `students`, splitting to the run's known-good size first."""
        limit = self.deps.guards.size_hint.get()
        if limit is not None and len(students) > limit:
            out = _Graded()
            for i in range(0, len(students), limit):
                out.merge(self.grade(students[i : i + limit]))
            return out
        return self._grade_group(students)

    def _grade_group(self, students: Sequence[Student]) -> _Graded:
        out = _Graded()
        pending = list(students)
        transient = 0
        reasks = 0
        correction: str | None = None
        max_tokens = self.batch.max_completion_tokens
        while pending:
            refs = [s.ref for s in pending]
            try:
                reply = self._call(pending, correction, max_tokens)
                parsed = parse_reply(reply.content, finish_reason=reply.finish_reason,
                                     refusal=reply.refusal)
                checked = check_reply(parsed, refs, self.max_marks)
                out.valid.update(checked.valid)
                pending = [s for s in pending if s.ref not in checked.valid]
                if not pending:
                    break
                problems = [p for ref in refs if ref in checked.problems
                            for p in checked.problems[ref]]
                raise ResponseRuleError(problems, offending_refs=set(checked.problems) - {"*"},
                                        body=reply.content)
            except RetryBudgetExhaustedError as exc:
                self._record(exc)
                out.fail(refs, exc)
                return out
            except ProviderError as exc:
                self._record(exc)
                transient += 1
                if not exc.transient or transient >= self.deps.policy.max_attempts:
                    out.fail(refs, exc)
                    return out
                if not isinstance(exc, RateLimitedError):  # 429s wait in the shared limiter
                    self.deps.sleep(backoff_delay(transient, self.deps.policy, self.deps.rng))
            except TruncatedResponseError as exc:
                self._record(exc)
                if len(pending) == 1:
                    # one student cannot be split: give the reply more room, up to the model's max
                    ceiling = self.request.spec.max_output_tokens
                    if max_tokens >= ceiling:
                        out.fail(refs, exc, "the reply was cut off even for this student alone "
                                 f"at the model's {ceiling:,} output tokens")
                        return out
                    max_tokens = min(ceiling, max_tokens * 2)
                    continue
                half = (len(pending) + 1) // 2
                self.deps.guards.size_hint.shrink_to(half)
                log.info("batch %d: reply truncated; splitting %d students into %d + %d",
                         self.batch.index, len(pending), half, len(pending) - half)
                out.merge(self.grade(pending[:half]))
                out.merge(self.grade(pending[half:]))
                return out
            except RefusalError as exc:
                self._record(exc)
                out.fail(refs, exc, f"the model refused; needs human review: {exc.message}")
                return out
            except ResponseError as exc:
                self._record(exc)
                if reasks >= self.deps.policy.reasks:
                    reasons = _reasons(exc)
                    for ref in refs:
                        out.fail([ref], exc, reasons.get(ref))
                    return out
                reasks += 1
                correction = _correction(exc)
        return out


def _reasons(exc: ResponseError) -> dict[str, str]:
    """Per-student reasons from a rule error (each problem line starts with its ref)."""
    if not isinstance(exc, ResponseRuleError):
        return {}
    reasons: dict[str, str] = {}
    for problem in exc.problems:
        for ref in exc.offending_refs:
            if ref in problem:
                reasons[ref] = f"{reasons[ref]}; {problem}" if ref in reasons else problem
    return reasons


def _correction(error: ResponseError) -> str:
    return (f"Your previous answer was rejected: {error.message[:1500]}. Answer again with JSON "
            "that follows the schema, with every listed student exactly once and every question "
            "exactly once, each mark between 0 and the question's max_mark.")


def _claim(batch: PlannedBatch, deps: GradingDeps, owner: str) -> bool:
    """Take the batch's lease (True), or wait while another run grades it and return False
    once it has succeeded there — so concurrent duplicate runs call the model once."""
    while True:
        with deps.store.transaction() as session:
            claim = acquire_batch_lease(session, batch.idempotency_key, owner=owner, now=utcnow(),
                                        lease_s=deps.policy.lease_s)
        if claim != "busy":
            return claim == "claimed"
        deps.sleep(deps.policy.lease_poll_s)


def grade_batch(batch: PlannedBatch, request: GradingRequest, deps: GradingDeps) -> BatchOutcome:
    """Grade one planned batch, or return its stored result if it already succeeded."""
    key = batch.idempotency_key
    owner = new_owner_id()
    if not _claim(batch, deps, owner):
        log_batch_event(log, "batch_finished", process_id=request.process_id(),
                        batch_id=batch.index, idempotency_key=key, model=request.model,
                        status="succeeded", from_store=True)
        return BatchOutcome(batch.index, key, "succeeded", True, len(batch.students),
                            len(batch.students))
    run = _BatchRun(batch, request, deps, owner)
    graded = run.grade(batch.students)
    return _finish(run, graded)


def _finish(run: _BatchRun, graded: _Graded) -> BatchOutcome:
    batch, deps, tally = run.batch, run.deps, run.tally
    key = batch.idempotency_key
    result = {
        "students": {ref: s.model_dump(mode="json") for ref, s in graded.valid.items()},
        "failures": graded.failures,
        "simulated": tally.simulated,
        "model_calls": tally.calls,
    }
    failed = bool(graded.failures)
    raw = tally.last_raw if deps.keep_raw_responses or failed else None
    usage: dict[str, Any] = {
        "prompt_tokens": tally.prompt_tokens, "cached_tokens": tally.cached_tokens,
        "completion_tokens": tally.completion_tokens, "latency_ms": tally.latency_ms,
        "attempts": tally.attempts, "raw_response": raw, "result": result,
    }
    error = graded.last_error
    with deps.store.transaction() as session:
        if failed:
            assert error is not None
            repo.record_batch_failure(session, key, error_type=error.error_type,
                                      stage=error.stage, detail=error.message[:500], **usage)
        else:
            repo.record_batch_success(session, key, **usage)
    failure = error if failed else None
    log_batch_event(log, "batch_finished", logging.WARNING if failed else logging.INFO,
                    process_id=run.process_id, batch_id=batch.index, idempotency_key=key,
                    model=run.request.model, status="failed" if failed else "succeeded",
                    n_students=len(batch.students), n_graded=len(graded.valid),
                    tokens_in=tally.prompt_tokens, tokens_out=tally.completion_tokens,
                    cached_tokens=tally.cached_tokens, latency_ms=tally.latency_ms,
                    attempt=tally.attempts, retry_count=max(tally.attempts - 1, 0),
                    error_type=failure.error_type if failure else None,
                    stage=failure.stage if failure else "grade")
    return BatchOutcome(
        index=batch.index,
        idempotency_key=key,
        status="failed" if failed else "succeeded",
        from_store=False,
        n_students=len(batch.students),
        n_graded=len(graded.valid),
        model_calls=tally.calls,
        attempts=tally.attempts,
        prompt_tokens=tally.prompt_tokens,
        cached_tokens=tally.cached_tokens,
        completion_tokens=tally.completion_tokens,
        latency_ms=tally.latency_ms,
        error_type=error.error_type if failed and error else None,
        simulated=tally.simulated,
    )
