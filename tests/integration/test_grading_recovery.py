"""Each recovery path of `grade_batch`, with a scripted fake provider and a real SQLite store."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qbq import pipeline
from qbq.errors import (
    ProviderError,
    ProviderRequestError,
    ProviderUnavailableError,
    RateLimitedError,
)
from qbq.grading import GradingDeps, grade_batch
from qbq.limiter import Limits, MemoryBackend, RateLimiter
from qbq.preparation import Prepared, prepare
from qbq.provider import ChatReply
from qbq.recovery import BatchSizeHint, CircuitBreaker, RetryBudget, RunGuards
from qbq.sample import write_sample
from qbq.settings import GradingPolicy, QbqSettings
from qbq.store import Store, list_attempt_errors

Behaviour = Callable[[list[str], list[dict[str, Any]]], ChatReply | ProviderError]


def reply(content: str | None, *, finish: str = "stop", refusal: str | None = None) -> ChatReply:
    return ChatReply(content=content, refusal=refusal, finish_reason=finish, prompt_tokens=100,
                     cached_tokens=0, completion_tokens=50, latency_ms=5.0, simulated=True)


def answers(refs: list[str], qnums: list[str], mark: float = 1.0) -> dict[str, Any]:
    return {"students": [{"ref": r, "name": None, "answers": [
        {"question_number": q, "mark": mark, "feedback": "ok", "confidence": "high",
         "status": "answered"} for q in qnums]} for r in refs]}


class FakeProvider:
    """Plays `script` one behaviour per call, then answers validly."""

    def __init__(self, qnums: list[str], script: list[Behaviour] | None = None) -> None:
        self.qnums = qnums
        self.script = list(script or [])
        self.calls: list[tuple[list[str], list[dict[str, Any]]]] = []
        self.max_tokens: list[tuple[list[str], int]] = []

    def complete(self, *, model: str, messages: list[dict[str, Any]],
                 response_format: dict[str, Any], max_completion_tokens: int) -> ChatReply:
        schema = response_format["json_schema"]["schema"]
        refs = schema["properties"]["students"]["items"]["properties"]["ref"]["enum"]
        self.calls.append((refs, messages))
        self.max_tokens.append((refs, max_completion_tokens))
        if self.script:
            outcome = self.script.pop(0)(refs, messages)
            if isinstance(outcome, ProviderError):
                raise outcome
            return outcome
        return reply(json.dumps(answers(refs, self.qnums)))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Prepared, Store]:
    request = write_sample(tmp_path / "s", students=6, pages=1, questions=2, seed=1)
    settings = QbqSettings(database_url=f"sqlite:///{tmp_path / 'q.db'}")
    prepared = prepare(request, settings=settings, policy=GradingPolicy())
    store = Store(settings.database_url)
    store.migrate()
    pipeline.register(store, prepared, settings)
    return prepared, store


def make_deps(store: Store, provider: FakeProvider, clock: Clock, *, policy: GradingPolicy | None = None,
              budget: int = 50, threshold: int = 5, give_up: float = 300.0,
              limiter: RateLimiter | None = None) -> GradingDeps:
    policy = policy or GradingPolicy(backoff_base_s=1.0)
    breaker = CircuitBreaker(threshold=threshold, cooldown_s=10, give_up_after_s=give_up,
                             on_open=limiter.cool_down if limiter else None,
                             clock=lambda: clock.now, sleep=clock.sleep)
    guards = RunGuards(breaker, RetryBudget(max_retries=budget, max_tokens=10**9), BatchSizeHint())
    return GradingDeps(provider=provider, store=store, policy=policy, guards=guards,
                       limiter=limiter, sleep=clock.sleep, rng=random.Random(0))


def qnums(prepared: Prepared) -> list[str]:
    return [q.question_number for q in prepared.request.questions]


def stored(store: Store, key: str) -> Any:
    from qbq.store import get_batches

    with store.transaction() as s:
        return get_batches(s, [key])[key]


def test_transient_errors_are_retried_with_backoff(setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    batch = prepared.plan.batches[0]
    fail = ProviderUnavailableError("provider error 503", status_code=503)
    provider = FakeProvider(qnums(prepared), [lambda r, m: fail, lambda r, m: fail])
    clock = Clock()

    outcome = grade_batch(batch, prepared.request, make_deps(store, provider, clock))

    assert outcome.status == "succeeded" and outcome.n_graded == len(batch.students)
    assert len(provider.calls) == 3
    assert len(clock.slept) == 2 and all(0 <= s <= 2.0 for s in clock.slept)
    with store.transaction() as s:
        errors = list_attempt_errors(s, batch.idempotency_key)
    assert [e.error_type for e in errors] == ["ProviderUnavailableError"] * 2
    assert [e.attempt for e in errors] == [1, 2]


def test_a_429_pauses_every_sender_for_retry_after(setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    clock = Clock()
    limiter = RateLimiter(MemoryBackend(), Limits(rpm=10_000, tpm=10**9), "k", sleep=clock.sleep)
    provider = FakeProvider(qnums(prepared), [
        lambda r, m: RateLimitedError("rate limited", retry_after=7.5)])

    outcome = grade_batch(prepared.plan.batches[0], prepared.request,
                          make_deps(store, provider, clock, limiter=limiter))

    assert outcome.status == "succeeded"
    # the retry waited in the shared limiter, ~7.5 s (wall clock), not in a private backoff
    assert any(7.0 <= s <= 7.6 for s in clock.slept)
    assert limiter.paused_for() <= 7.5


def test_request_errors_are_not_retried(setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    provider = FakeProvider(qnums(prepared), [
        lambda r, m: ProviderRequestError("request refused (400): bad image", status_code=400)])

    outcome = grade_batch(prepared.plan.batches[0], prepared.request,
                          make_deps(store, provider, Clock()))

    assert outcome.status == "failed" and outcome.n_graded == 0
    assert len(provider.calls) == 1
    row = stored(store, outcome.idempotency_key)
    assert row.status == "failed" and row.error_type == "ProviderRequestError"
    assert set(row.result["failures"]) == set(prepared.plan.batches[0].refs)


def test_invalid_json_is_asked_again_with_the_errors(setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    provider = FakeProvider(qnums(prepared), [lambda r, m: reply("Sure! Here are the marks.")])

    outcome = grade_batch(prepared.plan.batches[0], prepared.request,
                          make_deps(store, provider, Clock()))

    assert outcome.status == "succeeded"
    assert len(provider.calls) == 2
    correction = provider.calls[1][1][-1]
    assert correction["role"] == "user" and "rejected" in correction["content"]


def test_persistent_rule_break_fails_only_the_offending_student(
        setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    q = qnums(prepared)
    top = prepared.request.max_marks[q[0]]

    def over_max(refs: list[str], _m: list[dict[str, Any]]) -> ChatReply:
        body = answers(refs, q)
        if refs[0] == "S001":
            body["students"][0]["answers"][0]["mark"] = top + 5
        return reply(json.dumps(body))

    provider = FakeProvider(q, [over_max] * 10)
    batch = prepared.plan.batches[0]
    outcome = grade_batch(batch, prepared.request, make_deps(store, provider, Clock()))

    assert outcome.status == "failed"
    assert outcome.n_graded == len(batch.students) - 1
    result = stored(store, batch.idempotency_key).result
    assert set(result["failures"]) == {"S001"}
    assert "outside 0.." in result["failures"]["S001"]["reason"]
    # re-asks only concerned the student still missing
    assert [refs for refs, _ in provider.calls[1:]] == [["S001"], ["S001"]]


def test_truncation_splits_until_every_student_is_graded(setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    q = qnums(prepared)

    def truncate_if_big(refs: list[str], _m: list[dict[str, Any]]) -> ChatReply:
        if len(refs) > 2:
            return reply(json.dumps(answers(refs, q))[:40], finish="length")
        return reply(json.dumps(answers(refs, q)))

    provider = FakeProvider(q, [truncate_if_big] * 20)
    deps = make_deps(store, provider, Clock())
    batch = prepared.plan.batches[0]
    assert len(batch.students) == 6

    outcome = grade_batch(batch, prepared.request, deps)

    assert outcome.status == "succeeded" and outcome.n_graded == 6
    assert deps.guards.size_hint.get() == 2
    # 6 truncated → 3 truncated → 2 + 1; the remembered size 2 pre-splits the other 3 into 2 + 1
    assert [len(refs) for refs, _ in provider.calls] == [6, 3, 2, 1, 2, 1]


def test_a_single_student_cut_off_gets_more_room_then_fails_with_a_reason(
        setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    q = qnums(prepared)
    provider = FakeProvider(q, [lambda r, m: reply('{"students": [', finish="length")] * 200)

    outcome = grade_batch(prepared.plan.batches[0], prepared.request,
                          make_deps(store, provider, Clock()))

    result = stored(store, outcome.idempotency_key).result
    assert outcome.status == "failed" and outcome.n_graded == 0
    assert all(f["error_type"] == "TruncatedResponseError" for f in result["failures"].values())
    assert all("model's 32,768 output tokens" in f["reason"]
               for f in result["failures"].values())
    # a single student is retried with max_completion_tokens doubling up to the model's max
    first = [m for refs, m in provider.max_tokens if refs == ["S001"]]
    assert first[-1] == 32_768
    assert all(b == min(32_768, 2 * a) for a, b in itertools.pairwise(first))


def test_refusal_marks_students_for_review(setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    provider = FakeProvider(qnums(prepared), [
        lambda r, m: reply(None, refusal="I can't help with that.")])

    outcome = grade_batch(prepared.plan.batches[0], prepared.request,
                          make_deps(store, provider, Clock()))

    failures = stored(store, outcome.idempotency_key).result["failures"]
    assert all(f["needs_review"] and "refused" in f["reason"] for f in failures.values())
    assert len(provider.calls) == 1


def test_breaker_opens_pauses_everyone_and_gives_up(setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    clock = Clock()
    limiter = RateLimiter(MemoryBackend(), Limits(rpm=10_000, tpm=10**9), "k", sleep=clock.sleep)
    down = ProviderUnavailableError("provider error 503", status_code=503)
    provider = FakeProvider(qnums(prepared), [lambda r, m: down] * 100)
    policy = GradingPolicy(max_attempts=100, backoff_base_s=0.1, backoff_max_s=0.1)
    deps = make_deps(store, provider, clock, policy=policy, threshold=3, give_up=60.0,
                     limiter=limiter)

    outcome = grade_batch(prepared.plan.batches[0], prepared.request, deps)

    assert outcome.status == "failed" and outcome.error_type == "ProviderDownError"
    assert deps.guards.breaker.opened_count >= 2
    # it stopped calling once the outage outlasted 60 s: cool-downs of 10, 20, 40 s
    assert len(provider.calls) < 10
    result = stored(store, outcome.idempotency_key).result
    assert all("circuit breaker gave up" in f["reason"] for f in result["failures"].values())


def test_breaker_closes_after_a_successful_probe(setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    clock = Clock()
    down = ProviderUnavailableError("provider error 502", status_code=502)
    provider = FakeProvider(qnums(prepared), [lambda r, m: down] * 3)
    policy = GradingPolicy(max_attempts=10, backoff_base_s=0.1, backoff_max_s=0.1)
    deps = make_deps(store, provider, clock, policy=policy, threshold=3)

    outcome = grade_batch(prepared.plan.batches[0], prepared.request, deps)

    assert outcome.status == "succeeded"
    assert deps.guards.breaker.opened_count == 1 and deps.guards.breaker.state == "closed"
    assert sum(clock.slept) >= 10.0  # the senders sat out the 10 s cool-down


def test_retry_budget_caps_spend(setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    fail = ProviderUnavailableError("provider error 500", status_code=500)
    provider = FakeProvider(qnums(prepared), [lambda r, m: fail] * 10)
    policy = GradingPolicy(max_attempts=10, backoff_base_s=0.01)

    outcome = grade_batch(prepared.plan.batches[0], prepared.request,
                          make_deps(store, provider, Clock(), policy=policy, budget=2))

    assert outcome.status == "failed" and outcome.error_type == "RetryBudgetExhaustedError"
    assert len(provider.calls) == 3  # the first try and two retries
