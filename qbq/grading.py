"""`grade_batch`: one planned batch through the model, every fault turned into a grade or a
reasoned failure, every step recorded.

The provider it is given already carries the cross-cutting guards (`qbq.guards`: retry budget,
circuit breaker, in-flight slot, rate pacing). This module only decides what a reply or an
error means. Each error kind has one handler returning a decision — the recovery rules at a
glance (first matching row wins; `HANDLERS` is this table):

    error                          decision
    RetryBudgetExhaustedError      Fail   the students still pending
    ProviderContentError (HTTP 400 Isolate the student whose image `param` names, failing
      for an image, the size or           it alone; with no such `param` (OpenAI's null for
      the schema)                         an undecodable image) bisect the group; one
                                          student: Fail, flagged for review, naming its ref,
                                          page id and the provider's message
    ReplyTimeoutError              Split  the students in two, as a truncation (the smaller
                                          size is remembered); one student: as ProviderError
    RequestOverLimitError          Split  likewise (never sent: over the key's learned TPM);
                                          one student: Fail
    ProviderError                  Retry  after full-jitter backoff if transient (a 429 waits
                                          in the shared limiter instead), up to max_attempts;
                                          then, for timeouts and 5xx, Isolate (bisect) so one
                                          slow or failing student cannot fail the others;
                                          else Fail
    TruncatedResponseError         Split  the students in two (the smaller size is remembered
                                          for the run); one student: MoreRoom, doubling
                                          max_completion_tokens up to the model's maximum; then
                                          Fail
    RefusalError                   Fail   flagged for human review
    ResponseError (shape, schema,  Reask  with the problems (policy.reasks times), for the
      rules)                              students still missing; then Fail, each student
                                          with its own problems as the reason
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qbq.backoff import full_jitter
from qbq.domain import GradingRequest, Page, Student
from qbq.errors import (
    ProviderContentError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    QbqError,
    RateLimitedError,
    RefusalError,
    ReplyTimeoutError,
    RequestOverLimitError,
    ResponseError,
    ResponseRuleError,
    RetryBudgetExhaustedError,
    StoreUnavailableError,
    TruncatedResponseError,
    clip_detail,
)
from qbq.intake.cache import model_image_url
from qbq.observability.logs import log_batch_event, redact
from qbq.planning import BatchPlan, PlannedBatch, prompt_questions
from qbq.prompts import (
    StudentPages,
    build_messages,
    correction_text,
    image_owner,
    prompt_cache_key,
    response_format,
)
from qbq.provider import ChatProvider, ChatRequest
from qbq.recovery import BatchSizeHint
from qbq.response import StudentOut, check_reply, parse_reply
from qbq.settings import GradingPolicy
from qbq.spill import BatchRecord, discard, spill, take
from qbq.store import Store, acquire_batch_lease, new_owner_id, utcnow
from qbq.store import leases as repo_leases
from qbq.store import repository as repo
from qbq.usage import Usage

__all__ = ["HANDLERS", "BatchOutcome", "Fail", "GradingDeps", "GroupState", "Isolate", "MoreRoom",
           "Reask", "Retry", "Rules", "Split", "decide", "grade_batch", "page_url",
           "planned_request"]

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
    usage: Usage = field(default_factory=Usage)
    #: Requests sent for this batch (replies and failed attempts).
    attempts: int = 0
    error_type: str | None = None
    simulated: bool = False


@dataclass
class GradingDeps:
    """The outside world `grade_batch` talks to, injected (fakes in tests, real in flows).

    `provider` is the run's guarded provider (`qbq.guards.guarded_provider`); `size_hint` the
    run's shared known-good batch size.
    """

    provider: ChatProvider
    store: Store
    policy: GradingPolicy
    size_hint: BatchSizeHint
    keep_raw_responses: bool = False
    #: Where a paid reply goes when the store fails for good (`qbq.spill`); None: nowhere.
    spill_dir: Path | None = None
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)


def page_url(page: Page) -> str:
    """What goes into the image part: the page's normalised image as a data URI (read from the
    page cache, so another process of this host can send it and nothing is normalised twice), or
    its URL when QBQ_PAGE_URLS=pass."""
    return model_image_url(page)


# --- the decision table -------------------------------------------------------------------------


@dataclass(frozen=True)
class Retry:
    """Send the same students again after `delay_s` seconds."""

    delay_s: float


@dataclass(frozen=True)
class Reask:
    """Ask again for the students still pending, quoting what was wrong."""

    correction: str


@dataclass(frozen=True)
class MoreRoom:
    """Ask again with a larger completion budget (tokens)."""

    max_completion_tokens: int


@dataclass(frozen=True)
class Split:
    """Grade the pending students in two halves."""


@dataclass(frozen=True)
class Fail:
    """Give up on the pending students; `reason` overrides the error's own per-student reason."""

    reason: str | None = None
    needs_review: bool = False


@dataclass(frozen=True)
class Isolate:
    """Find the students at fault: fail `suspect` alone with `reason` (flagged for review) and
    grade the others; with no suspect, grade the pending students in two halves (the run's
    batch size is kept: the fault is in a student, not in the size)."""

    suspect: str | None = None
    reason: str | None = None


Decision = Retry | Reask | MoreRoom | Split | Isolate | Fail


@dataclass
class GroupState:
    """Where the grading of one group of students stands; `messages` are the last request's."""

    pending: list[Student]
    max_completion_tokens: int
    provider_failures: int = 0
    reasks: int = 0
    correction: str | None = None
    messages: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Rules:
    """What the handlers decide by: the policy, the model's output ceiling, a random source."""

    policy: GradingPolicy
    max_output_tokens: int
    rng: random.Random


def on_budget_spent(exc: RetryBudgetExhaustedError, state: GroupState, rules: Rules) -> Decision:
    return Fail()


def refused_reason(student: Student, page: int | None, exc: ProviderContentError) -> str:
    """Why the provider refused `student`: its ref, the page id (`page`: index of the page the
    provider named; None: all of the student's pages are suspects) and the provider's message,
    URL query strings removed."""
    if page is not None and page < len(student.pages):
        pages = f"page {student.pages[page].image_id}"
    else:
        ids = [p.image_id for p in student.pages]
        pages = (f"page {ids[0]}" if len(ids) == 1
                 else f"one of pages {', '.join(ids)}" if ids else "its pages")
    return f"student {student.ref}: {pages} refused by the provider: {redact(exc.message)}"


def on_content_refused(exc: ProviderContentError, state: GroupState, rules: Rules) -> Decision:
    owner = image_owner(state.messages or [], exc.param)
    by_ref = {s.ref: s for s in state.pending}
    if owner is not None and owner[0] in by_ref:
        return Isolate(owner[0], refused_reason(by_ref[owner[0]], owner[1], exc))
    if len(state.pending) > 1:
        return Isolate()
    return Fail(refused_reason(state.pending[0], None, exc), needs_review=True)


#: Transient errors that, once retries are spent, may be one student's doing (a page that
#: makes every reply time out or the provider fail): split rather than fail the group.
_ISOLATED_AFTER_RETRIES: tuple[type[ProviderError], ...] = (ProviderTimeoutError,
                                                            ProviderUnavailableError)


def on_provider_error(exc: ProviderError, state: GroupState, rules: Rules) -> Decision:
    failures = state.provider_failures + 1
    if exc.transient and failures >= rules.policy.max_attempts and len(state.pending) > 1 \
            and isinstance(exc, _ISOLATED_AFTER_RETRIES):
        return Isolate()
    if not exc.transient or failures >= rules.policy.max_attempts:
        return Fail()
    if isinstance(exc, RateLimitedError):
        return Retry(0.0)  # the pacing wrapper paused every sender; the limiter does the wait
    return Retry(full_jitter(failures, base_s=rules.policy.backoff_base_s,
                             max_s=rules.policy.backoff_max_s, rng=rules.rng))


def on_reply_timeout(exc: ReplyTimeoutError, state: GroupState, rules: Rules) -> Decision:
    if len(state.pending) > 1:
        return Split()  # half the students answer in about half the time
    return on_provider_error(exc, state, rules)


def on_over_limit(exc: RequestOverLimitError, state: GroupState, rules: Rules) -> Decision:
    return Split() if len(state.pending) > 1 else Fail()


def on_truncated(exc: TruncatedResponseError, state: GroupState, rules: Rules) -> Decision:
    if len(state.pending) > 1:
        return Split()
    ceiling = rules.max_output_tokens
    if state.max_completion_tokens >= ceiling:
        return Fail("the reply was cut off even for this student alone at the model's "
                    f"{ceiling:,} output tokens")
    return MoreRoom(min(ceiling, state.max_completion_tokens * 2))


def on_refusal(exc: RefusalError, state: GroupState, rules: Rules) -> Decision:
    return Fail(f"the model refused; needs human review: {exc.message}", needs_review=True)


def on_invalid_reply(exc: ResponseError, state: GroupState, rules: Rules) -> Decision:
    if state.reasks < rules.policy.reasks:
        return Reask(correction_text(exc.message))
    return Fail()


Handler = Callable[[Any, GroupState, Rules], Decision]

#: Error kind → handler, first match wins (subclasses before their bases).
HANDLERS: tuple[tuple[type[QbqError], Handler], ...] = (
    (RetryBudgetExhaustedError, on_budget_spent),
    (ProviderContentError, on_content_refused),
    (ReplyTimeoutError, on_reply_timeout),
    (RequestOverLimitError, on_over_limit),
    (ProviderError, on_provider_error),
    (TruncatedResponseError, on_truncated),
    (RefusalError, on_refusal),
    (ResponseError, on_invalid_reply),
)


def handler_for(exc: QbqError) -> Handler | None:
    """The table's handler for `exc`, or None for errors grading does not recover from."""
    return next((handler for kind, handler in HANDLERS if isinstance(exc, kind)), None)


def decide(exc: QbqError, state: GroupState, rules: Rules) -> Decision:
    """The table's decision for `exc` (raises `exc` itself when no row matches)."""
    handler = handler_for(exc)
    if handler is None:
        raise exc
    return handler(exc, state, rules)


# --- one batch ------------------------------------------------------------------------------------


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

    def fail(self, students: Sequence[Student], error: QbqError, decision: Fail) -> None:
        for student in students:
            own = error.reason_for(student.ref) if isinstance(error, ResponseRuleError) else None
            self.failures[student.ref] = {
                "reason": clip_detail(decision.reason or own or error.message),
                "error_type": error.error_type, "needs_review": decision.needs_review}
        self.last_error = error


class _BatchRun:
    """Grades the students of one planned batch; holds what its requests cost."""

    def __init__(self, batch: PlannedBatch, request: GradingRequest, deps: GradingDeps,
                 owner: str, plan: BatchPlan | None = None) -> None:
        self.batch, self.request, self.deps, self.owner = batch, request, deps, owner
        self.process_id = request.process_id()
        self.effort = request.spec.validate_reasoning_effort(deps.policy.reasoning_effort,
                                                            "QBQ_REASONING_EFFORT")
        self.max_completion_tokens = self._completion_budget(plan)
        self.rules = Rules(deps.policy, request.spec.max_output_tokens, deps.rng)
        self.usage = Usage()
        self.attempts = 0
        self.simulated = False
        self.last_raw: str | None = None
        self._requests_built = 0
        self._answer_urls = [page_url(p) for p in request.model_answer_pages]
        self._cache_key = prompt_cache_key(request.assessment_id, request.prompt_fingerprint)
        self._page_urls: dict[str, list[str]] = {}
        self._renewed = time.monotonic()

    def _completion_budget(self, plan: BatchPlan | None) -> int:
        """The batch's max_completion_tokens, its reasoning allowance sized from the reasoning
        the run's earlier batches spent (per student, from the store) once there is any."""
        if plan is None or self.effort in (None, "none"):
            return self.batch.max_completion_tokens
        observed = self.deps.store.run(
            lambda session: repo.observed_reasoning_per_student(session, self.process_id))
        return plan.completion_tokens_for(self.batch, observed_reasoning_per_student=observed,
                                          policy=self.deps.policy)

    def _urls(self, student: Student) -> list[str]:
        if student.ref not in self._page_urls:
            self._page_urls[student.ref] = [page_url(p) for p in student.pages]
        return self._page_urls[student.ref]

    def _chat_request(self, state: GroupState) -> ChatRequest:
        refs = [s.ref for s in state.pending]
        messages = build_messages(
            instructions=self.request.instructions, questions=prompt_questions(self.request),
            model_answer_urls=self._answer_urls,
            students=[StudentPages(s.ref, self._urls(s)) for s in state.pending],
            correction=state.correction)
        self._requests_built += 1
        state.messages = messages
        return ChatRequest(
            model=self.request.model, messages=messages,
            response_format=response_format(list(self.request.max_marks)),
            prompt_cache_key=self._cache_key,
            service_tier="flex" if self.deps.policy.mode == "flex" else None,
            max_completion_tokens=state.max_completion_tokens, reasoning_effort=self.effort,
            planned_prompt_tokens=self.batch.prompt_tokens_for(set(refs)),
            retry=self._requests_built > 1, on_send=self._on_send,
            expected_output_tokens=self._expected_output(len(refs)))

    def _expected_output(self, n_students: int) -> int:
        """The batch's expected visible and reasoning tokens, pro rata for `n_students`."""
        batch = self.batch
        total = batch.expected_output_tokens + batch.expected_reasoning_tokens
        return math.ceil(total * n_students / max(1, len(batch.students)))

    def _on_send(self) -> None:
        """Right before a request leaves: count it, and renew our claim on the batch once a
        third of it has passed (waits for the rate or a slot can be long)."""
        self.attempts += 1
        now = time.monotonic()
        if now - self._renewed < self.deps.policy.lease_s / 3:
            return
        self.deps.store.run(lambda session: repo_leases.renew_batch_lease(
            session, self.batch.idempotency_key, owner=self.owner, now=utcnow(),
            lease_s=self.deps.policy.lease_s))
        self._renewed = now

    def _attempt(self, state: GroupState, out: _Graded) -> None:
        """One request for the pending students; keeps the valid ones, raises for the rest."""
        refs = [s.ref for s in state.pending]
        reply = self.deps.provider.complete(self._chat_request(state))
        self.usage += reply.usage
        self.simulated = self.simulated or reply.simulated
        self.last_raw = reply.content
        parsed = parse_reply(reply.content, finish_reason=reply.finish_reason,
                             refusal=reply.refusal)
        checked = check_reply(parsed, refs, self.request.max_marks)
        out.valid.update(checked.valid)
        state.pending = [s for s in state.pending if s.ref not in checked.valid]
        if state.pending:
            raise ResponseRuleError(checked.problems, body=reply.content)

    def _record(self, exc: QbqError) -> None:
        self.deps.store.run(lambda session: repo.record_attempt_error(
            session, self.batch.idempotency_key, attempt=self.attempts,
            error_type=exc.error_type, stage=exc.stage, detail=exc.message))
        log_batch_event(log, "batch_attempt_failed", process_id=self.process_id,
                        batch_id=self.batch.index, idempotency_key=self.batch.idempotency_key,
                        model=self.request.model, attempt=self.attempts,
                        error_type=exc.error_type, stage=exc.stage)

    def grade(self, students: Sequence[Student]) -> _Graded:
        """Grade `students`, in groups of the run's known-good size."""
        limit = self.deps.size_hint.get()
        if limit is not None and len(students) > limit:
            out = _Graded()
            for i in range(0, len(students), limit):
                out.merge(self.grade(students[i : i + limit]))
            return out
        return self._grade_group(students)

    def _grade_group(self, students: Sequence[Student]) -> _Graded:
        out = _Graded()
        state = GroupState(list(students), self.max_completion_tokens)
        while state.pending:
            try:
                self._attempt(state, out)
            except QbqError as exc:
                if handler_for(exc) is None:
                    raise
                self._record(exc)
                decision = decide(exc, state, self.rules)
                if isinstance(decision, Fail):
                    out.fail(state.pending, exc, decision)
                    return out
                if isinstance(decision, Split):
                    return self._split(state.pending, out)
                if isinstance(decision, Isolate):
                    return self._isolate(decision, state.pending, exc, out)
                self._apply(decision, state)
        return out

    def _apply(self, decision: Retry | Reask | MoreRoom, state: GroupState) -> None:
        if isinstance(decision, Retry):
            state.provider_failures += 1
            if decision.delay_s > 0:
                self.deps.sleep(decision.delay_s)
        elif isinstance(decision, Reask):
            state.reasks += 1
            state.correction = decision.correction
        else:
            state.max_completion_tokens = decision.max_completion_tokens

    def _isolate(self, decision: Isolate, pending: list[Student], exc: QbqError,
                 out: _Graded) -> _Graded:
        rest = [s for s in pending if s.ref != decision.suspect]
        if len(rest) < len(pending):
            suspect = [s for s in pending if s.ref == decision.suspect]
            out.fail(suspect, exc, Fail(decision.reason, needs_review=True))
            log.info("batch %d: the provider refused one student's page; grading the other %d",
                     self.batch.index, len(rest))
            if rest:
                out.merge(self.grade(rest))
            return out
        half = (len(pending) + 1) // 2
        log.info("batch %d: %s for %d students; bisecting into %d + %d", self.batch.index,
                 exc.error_type, len(pending), half, len(pending) - half)
        out.merge(self.grade(pending[:half]))
        out.merge(self.grade(pending[half:]))
        return out

    def _split(self, pending: list[Student], out: _Graded) -> _Graded:
        half = (len(pending) + 1) // 2
        self.deps.size_hint.shrink_to(half)
        log.info("batch %d: reply truncated or too slow; splitting %d students into %d + %d",
                 self.batch.index, len(pending), half, len(pending) - half)
        out.merge(self.grade(pending[:half]))
        out.merge(self.grade(pending[half:]))
        return out


def planned_request(batch: PlannedBatch, request: GradingRequest,
                    deps: GradingDeps) -> ChatRequest:
    """The first request `grade_batch` sends for `batch`, all its students at once (what a
    Batch API input line carries, so that its answer is recognised as this request's)."""
    run = _BatchRun(batch, request, deps, owner="")
    return run._chat_request(GroupState(list(batch.students), batch.max_completion_tokens))


def _claim(batch: PlannedBatch, deps: GradingDeps, owner: str) -> bool:
    """Take the batch's lease (True), or wait while another run grades it and return False
    once it has succeeded there — so concurrent duplicate runs call the model once."""
    while True:
        # Replayed after a dropped connection: a claim whose commit was lost in the drop finds
        # the lease already ours (`acquire_batch_lease`).
        claim = deps.store.run(lambda session: acquire_batch_lease(
            session, batch.idempotency_key, owner=owner, now=utcnow(),
            lease_s=deps.policy.lease_s))
        if claim != "busy":
            return claim == "claimed"
        deps.sleep(deps.policy.lease_poll_s)


def grade_batch(batch: PlannedBatch, request: GradingRequest, deps: GradingDeps,
                plan: BatchPlan | None = None) -> BatchOutcome:
    """Grade one planned batch, or return its stored result if it already succeeded.

    Sends the policy's `reasoning_effort` (else the model's default) to reasoning models; with
    `plan` (the batch's), sizes the reasoning allowance from what the run observed so far.
    Raises `ConfigurationError` for an effort the model does not accept.
    """
    key = batch.idempotency_key
    owner = new_owner_id()
    if not _claim(batch, deps, owner):
        log_batch_event(log, "batch_finished", process_id=request.process_id(),
                        batch_id=batch.index, idempotency_key=key, model=request.model,
                        status="succeeded", from_store=True)
        return BatchOutcome(batch.index, key, "succeeded", True, len(batch.students),
                            len(batch.students))
    kept = _write_kept_reply(batch, deps)
    if kept is not None:
        return kept
    run = _BatchRun(batch, request, deps, owner, plan)
    return _finish(run, run.grade(batch.students))


def _write_kept_reply(batch: PlannedBatch, deps: GradingDeps) -> BatchOutcome | None:
    """Write the reply an earlier run paid for and spilled when its store failed (`qbq.spill`),
    instead of paying for it again; None when there is none."""
    key = batch.idempotency_key
    if deps.spill_dir is None or (held := take(deps.spill_dir, key)) is None:
        return None
    deps.store.run(held.write)
    discard(deps.spill_dir, key)
    log.info("batch %d: wrote the reply an earlier run kept when its store failed", batch.index)
    status: BatchStatus = "failed" if held.error_type else "succeeded"
    return BatchOutcome(batch.index, key, status, True, len(batch.students), held.n_graded,
                        attempts=held.attempts, error_type=held.error_type)


def _finish(run: _BatchRun, graded: _Graded) -> BatchOutcome:
    """Store the batch's grades and failures, log its end, and say how it went."""
    batch, deps, usage = run.batch, run.deps, run.usage
    key = batch.idempotency_key
    result = {
        "students": {ref: s.model_dump(mode="json") for ref, s in graded.valid.items()},
        "failures": graded.failures,
        "simulated": run.simulated,
        "model_calls": usage.replies,
        "mode": deps.policy.mode,
    }
    error = graded.last_error if graded.failures else None
    raw = run.last_raw if deps.keep_raw_responses or error else None
    record = BatchRecord(key, result, usage, run.attempts, raw,
                         error.error_type if error else None, error.stage if error else None,
                         clip_detail(error.message) if error else None)
    # The replies are paid for: held and written when a store outage ends (QBQ_DB_OUTAGE_S);
    # kept in a spill file for the next run when the store failed for good.
    try:
        deps.store.run(record.write)
    except StoreUnavailableError as stop:
        if deps.spill_dir is None or not usage.replies:
            raise
        try:
            path = spill(deps.spill_dir, record)
        except OSError as exc:
            log.error("batch %d: the store failed and its paid reply could not be kept in %s: "
                      "%s", batch.index, deps.spill_dir, exc.strerror)
            raise stop from None
        log.warning("batch %d: the store failed; its paid reply is kept in %s for the next run",
                    batch.index, path)
        raise
    status: BatchStatus = "failed" if error else "succeeded"
    log_batch_event(log, "batch_finished", logging.WARNING if error else logging.INFO,
                    process_id=run.process_id, batch_id=batch.index, idempotency_key=key,
                    model=run.request.model, status=status, n_students=len(batch.students),
                    n_graded=len(graded.valid), tokens_in=usage.prompt_tokens,
                    tokens_out=usage.completion_tokens, cached_tokens=usage.cached_tokens,
                    reasoning_tokens=usage.reasoning_tokens, latency_ms=usage.latency_ms,
                    attempt=run.attempts, retry_count=max(run.attempts - 1, 0),
                    error_type=error.error_type if error else None,
                    stage=error.stage if error else "grade")
    return BatchOutcome(index=batch.index, idempotency_key=key, status=status, from_store=False,
                        n_students=len(batch.students), n_graded=len(graded.valid), usage=usage,
                        attempts=run.attempts, error_type=error.error_type if error else None,
                        simulated=run.simulated)
