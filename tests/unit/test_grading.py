"""Each recovery path of `grade_batch`, with a scripted provider and an in-memory store."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qbq import pipeline
from qbq.backoff import floored_backoff
from qbq.catalog import get_model_spec
from qbq.domain import Student
from qbq.errors import (
    ImageError,
    ProviderConnectionError,
    ProviderContentError,
    ProviderRequestError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    QuotaExhaustedError,
    RateLimitedError,
    RefusalError,
    ReplyTimeoutError,
    ResponseShapeError,
    RetryBudgetExhaustedError,
    TruncatedResponseError,
)
from qbq.grading import (
    Fail,
    GroupState,
    Isolate,
    MoreRoom,
    Reask,
    Retry,
    Rules,
    Split,
    decide,
    grade_batch,
)
from qbq.limiter import Limits, MemoryBackend, RateLimiter
from qbq.planning import plan_batches
from qbq.preparation import Prepared, prepare
from qbq.provider import QUOTA_MESSAGE, ChatReply, ChatRequest
from qbq.sample import write_sample
from qbq.settings import GradingPolicy, QbqSettings
from qbq.store import Store, list_attempt_errors
from qbq.testing.fakes import (
    FakeClock,
    ScriptedProvider,
    answers,
    fake_run,
    memory_store,
    reply,
    request_refs,
)
from qbq.usage import Usage


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    request = write_sample(tmp_path_factory.mktemp("s"), students=6, pages=1, questions=2, seed=1)
    return prepare(request, settings=QbqSettings(), policy=GradingPolicy())


@pytest.fixture
def setup(prepared: Prepared) -> tuple[Prepared, Store]:
    store = memory_store()
    pipeline.register(store, prepared, QbqSettings(database_url="sqlite://"))
    return prepared, store


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
    provider = ScriptedProvider(qnums(prepared), [lambda r, m: fail, lambda r, m: fail])
    clock = FakeClock()

    outcome = grade_batch(batch, prepared.request, fake_run(store, provider, clock).deps)

    assert outcome.status == "succeeded" and outcome.n_graded == len(batch.students)
    assert len(provider.calls) == 3
    assert len(clock.slept) == 2 and all(0 <= s <= 2.0 for s in clock.slept)
    with store.transaction() as s:
        errors = list_attempt_errors(s, batch.idempotency_key)
    assert [e.error_type for e in errors] == ["ProviderUnavailableError"] * 2
    assert [e.attempt for e in errors] == [1, 2]


def test_a_429_pauses_every_sender_for_retry_after(setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    clock = FakeClock()
    limiter = RateLimiter(MemoryBackend(), Limits(rpm=10_000, tpm=10**9), "k", sleep=clock.sleep)
    provider = ScriptedProvider(qnums(prepared), [
        lambda r, m: RateLimitedError("rate limited", retry_after=7.5)])

    outcome = grade_batch(prepared.plan.batches[0], prepared.request,
                          fake_run(store, provider, clock, limiter=limiter).deps)

    assert outcome.status == "succeeded"
    # the retry waited in the shared limiter, ~7.5 s (wall clock), not in a private backoff
    assert any(7.0 <= s <= 7.6 for s in clock.slept)
    assert limiter.paused_for() <= 7.5


def test_request_errors_are_not_retried(setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    provider = ScriptedProvider(qnums(prepared), [
        lambda r, m: ProviderRequestError("request refused (400): bad image", status_code=400)])

    outcome = grade_batch(prepared.plan.batches[0], prepared.request,
                          fake_run(store, provider, FakeClock()).deps)

    assert outcome.status == "failed" and outcome.n_graded == 0
    assert len(provider.calls) == 1
    row = stored(store, outcome.idempotency_key)
    assert row.status == "failed" and row.error_type == "ProviderRequestError"
    assert set(row.result["failures"]) == set(prepared.plan.batches[0].refs)


def test_invalid_json_is_asked_again_with_the_errors(setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    provider = ScriptedProvider(qnums(prepared), [lambda r, m: reply("Sure! Here are the marks.")])

    outcome = grade_batch(prepared.plan.batches[0], prepared.request,
                          fake_run(store, provider, FakeClock()).deps)

    assert outcome.status == "succeeded"
    assert len(provider.calls) == 2
    correction = provider.calls[1].messages[-1]
    assert correction["role"] == "user" and "rejected" in correction["content"]


def test_persistent_rule_break_fails_only_the_offending_student(
        setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    q = qnums(prepared)
    top = prepared.request.max_marks[q[0]]

    def over_max(refs: list[str], _m: ChatRequest) -> ChatReply:
        body = answers(refs, q)
        if refs[0] == "S001":
            body["students"][0]["answers"][0]["mark"] = top + 5
        return reply(json.dumps(body))

    provider = ScriptedProvider(q, [over_max] * 10)
    batch = prepared.plan.batches[0]
    outcome = grade_batch(batch, prepared.request, fake_run(store, provider, FakeClock()).deps)

    assert outcome.status == "failed"
    assert outcome.n_graded == len(batch.students) - 1
    result = stored(store, batch.idempotency_key).result
    assert set(result["failures"]) == {"S001"}
    assert "outside 0.." in result["failures"]["S001"]["reason"]
    # re-asks only concerned the student still missing
    assert provider.refs_per_call[1:] == [["S001"], ["S001"]]


def test_truncation_splits_until_every_student_is_graded(setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    q = qnums(prepared)

    def truncate_if_big(refs: list[str], _m: ChatRequest) -> ChatReply:
        if len(refs) > 2:
            return reply(json.dumps(answers(refs, q))[:40], finish="length")
        return reply(json.dumps(answers(refs, q)))

    provider = ScriptedProvider(q, [truncate_if_big] * 20)
    deps = fake_run(store, provider, FakeClock()).deps
    batch = prepared.plan.batches[0]
    assert len(batch.students) == 6

    outcome = grade_batch(batch, prepared.request, deps)

    assert outcome.status == "succeeded" and outcome.n_graded == 6
    assert deps.size_hint.get() == 2
    # 6 truncated → 3 truncated → 2 + 1; the remembered size 2 pre-splits the other 3 into 2 + 1
    assert [len(refs) for refs in provider.refs_per_call] == [6, 3, 2, 1, 2, 1]


def test_a_single_student_cut_off_gets_more_room_then_fails_with_a_reason(
        setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    q = qnums(prepared)
    provider = ScriptedProvider(q, [lambda r, m: reply('{"students": [', finish="length")] * 200)

    outcome = grade_batch(prepared.plan.batches[0], prepared.request,
                          fake_run(store, provider, FakeClock()).deps)

    result = stored(store, outcome.idempotency_key).result
    assert outcome.status == "failed" and outcome.n_graded == 0
    assert all(f["error_type"] == "TruncatedResponseError" for f in result["failures"].values())
    assert all("model's 32,768 output tokens" in f["reason"]
               for f in result["failures"].values())
    # a single student is retried with max_completion_tokens doubling up to the model's max
    first = [r.max_completion_tokens for r in provider.calls if request_refs(r) == ["S001"]]
    assert first[-1] == 32_768
    assert all(b == min(32_768, 2 * a) for a, b in itertools.pairwise(first))


def test_refusal_marks_students_for_review(setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    provider = ScriptedProvider(qnums(prepared), [
        lambda r, m: reply(None, refusal="I can't help with that.")])

    outcome = grade_batch(prepared.plan.batches[0], prepared.request,
                          fake_run(store, provider, FakeClock()).deps)

    failures = stored(store, outcome.idempotency_key).result["failures"]
    assert all(f["needs_review"] and "refused" in f["reason"] for f in failures.values())
    assert len(provider.calls) == 1


def test_breaker_opens_pauses_everyone_and_gives_up(setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    clock = FakeClock()
    limiter = RateLimiter(MemoryBackend(), Limits(rpm=10_000, tpm=10**9), "k", sleep=clock.sleep)
    down = ProviderUnavailableError("provider error 503", status_code=503)
    provider = ScriptedProvider(qnums(prepared), [lambda r, m: down] * 100)
    policy = GradingPolicy(max_attempts=100, backoff_base_s=0.1, backoff_max_s=0.1)
    run = fake_run(store, provider, clock, policy=policy, breaker_threshold=3,
                   give_up_after_s=60.0, limiter=limiter)

    outcome = grade_batch(prepared.plan.batches[0], prepared.request, run.deps)

    assert outcome.status == "failed" and outcome.error_type == "ProviderDownError"
    assert run.guards.breaker.opened_count >= 2
    # it stopped calling once the outage outlasted 60 s: cool-downs of 10, 20, 40 s
    assert len(provider.calls) < 10
    result = stored(store, outcome.idempotency_key).result
    assert all("circuit breaker gave up" in f["reason"] for f in result["failures"].values())


def test_breaker_closes_after_a_successful_probe(setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    clock = FakeClock()
    down = ProviderUnavailableError("provider error 502", status_code=502)
    provider = ScriptedProvider(qnums(prepared), [lambda r, m: down] * 3)
    policy = GradingPolicy(max_attempts=10, backoff_base_s=0.1, backoff_max_s=0.1)
    run = fake_run(store, provider, clock, policy=policy, breaker_threshold=3)

    outcome = grade_batch(prepared.plan.batches[0], prepared.request, run.deps)

    assert outcome.status == "succeeded"
    assert run.guards.breaker.opened_count == 1 and run.guards.breaker.state == "closed"
    assert sum(clock.slept) >= 10.0  # the senders sat out the 10 s cool-down


def test_retry_budget_caps_spend(setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    fail = ProviderUnavailableError("provider error 500", status_code=500)
    provider = ScriptedProvider(qnums(prepared), [lambda r, m: fail] * 10)
    policy = GradingPolicy(max_attempts=10, backoff_base_s=0.01)

    outcome = grade_batch(prepared.plan.batches[0], prepared.request,
                          fake_run(store, provider, FakeClock(), policy=policy,
                                           max_retries=2).deps)

    assert outcome.status == "failed" and outcome.error_type == "RetryBudgetExhaustedError"
    assert len(provider.calls) == 3  # the first try and two retries


def test_each_failing_student_gets_only_its_own_reason(tmp_path: Path) -> None:
    # S1 is a prefix of S10: reasons used to be matched by substring and got mixed up
    request = write_sample(tmp_path / "s", students=3, pages=1, questions=2, seed=3)
    body = json.loads(request.read_text())
    for student, ref in zip(body["students"], ["S1", "S10", "S2"], strict=True):
        student["ref"] = ref
    request.write_text(json.dumps(body))
    settings = QbqSettings(database_url="sqlite://")
    prepared = prepare(request, settings=settings, policy=GradingPolicy())
    store = memory_store()
    pipeline.register(store, prepared, settings)
    q = qnums(prepared)
    top = prepared.request.max_marks[q[0]]

    def broken(refs: list[str], _r: ChatRequest) -> ChatReply:
        body = answers(refs, q)
        for student in body["students"]:
            if student["ref"] == "S1":
                student["answers"][0]["mark"] = top + 1
            if student["ref"] == "S10":
                student["answers"] = student["answers"][:1]
        return reply(json.dumps(body))

    provider = ScriptedProvider(q, [broken] * 5)
    outcome = grade_batch(prepared.plan.batches[0], prepared.request,
                          fake_run(store, provider, FakeClock()).deps)

    failures = stored(store, outcome.idempotency_key).result["failures"]
    assert set(failures) == {"S1", "S10"} and outcome.n_graded == 1
    assert failures["S1"]["reason"] == f"S1: question {q[0]} mark {top + 1} outside 0..{top}"
    assert failures["S10"]["reason"] == f"S10: question {q[1]} answered 0 times"


def test_the_decision_table_reads_as_documented() -> None:
    policy = GradingPolicy(max_attempts=3, reasks=1, backoff_base_s=1.0, backoff_max_s=8.0)
    rules = Rules(policy, max_output_tokens=1000, rng=random.Random(0))
    one, two = [Student("A", ())], [Student("A", ()), Student("B", ())]

    def state(pending: list[Student], **kw: Any) -> GroupState:
        return GroupState(pending, kw.pop("max_completion_tokens", 400), **kw)

    assert decide(RetryBudgetExhaustedError("spent"), state(two), rules) == Fail()
    retry = decide(ProviderUnavailableError("503"), state(two, provider_failures=1), rules)
    assert isinstance(retry, Retry) and 0.0 <= retry.delay_s <= 2.0
    assert decide(RateLimitedError("429"), state(two), rules) == Retry(0.0)
    # retries spent on a timeout or a 5xx: split, so one student cannot fail the others
    assert decide(ProviderUnavailableError("503"), state(two, provider_failures=2),
                  rules) == Isolate()
    assert decide(ProviderTimeoutError("slow"), state(two, provider_failures=2),
                  rules) == Isolate()
    assert decide(ProviderUnavailableError("503"), state(one, provider_failures=2), rules) == Fail()
    assert decide(ProviderConnectionError("reset"), state(two, provider_failures=2),
                  rules) == Fail()
    assert decide(ProviderRequestError("401", status_code=401), state(two), rules) == Fail()
    # a 400 for the content: bisect; one student left: fail it, flagged for review
    assert decide(ProviderContentError("400", status_code=400), state(two), rules) == Isolate()
    alone = decide(ProviderContentError("400", status_code=400), state(one), rules)
    assert isinstance(alone, Fail) and alone.needs_review and "student A" in (alone.reason or "")
    assert decide(TruncatedResponseError("cut"), state(two), rules) == Split()
    assert decide(TruncatedResponseError("cut"), state(one), rules) == MoreRoom(800)
    cut = decide(TruncatedResponseError("cut"), state(one, max_completion_tokens=1000), rules)
    assert isinstance(cut, Fail) and "1,000 output tokens" in (cut.reason or "")
    refused = decide(RefusalError("no"), state(two), rules)
    assert isinstance(refused, Fail) and refused.needs_review
    reask = decide(ResponseShapeError("not JSON"), state(two), rules)
    assert isinstance(reask, Reask) and "not JSON" in reask.correction
    assert decide(ResponseShapeError("not JSON"), state(two, reasks=1), rules) == Fail()
    with pytest.raises(ImageError):  # not a grading fault: it propagates
        decide(ImageError("page gone"), state(two), rules)


# --- isolation: one student's page never fails the others --------------------------------------

UNDECODABLE = "You uploaded an unsupported image. Please make sure your image is valid."


def content_error(param: str | None, message: str = UNDECODABLE) -> ProviderContentError:
    return ProviderContentError(f"request refused (400): {message}", status_code=400,
                                param=param, code="invalid_image_format")


def refuse_when(bad: str, error: Callable[[ChatRequest], Exception],
                qnums: list[str]) -> Callable[[list[str], ChatRequest], Any]:
    def behave(refs: list[str], request: ChatRequest) -> Any:
        return error(request) if bad in refs else reply(json.dumps(answers(refs, qnums)))
    return behave


def image_param(request: ChatRequest, ref: str) -> str:
    """The `param` OpenAI gives for `ref`'s first image in `request`."""
    for i, message in enumerate(request.messages):
        content = message["content"]
        if isinstance(content, list):
            for j, part in enumerate(content):
                if part.get("text") == f"Student ref: {ref}":
                    return f"messages[{i}].content[{j + 1}].image_url.url"
    raise AssertionError(ref)


def test_a_refusal_naming_an_image_fails_that_student_alone(
        setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    batch = prepared.plan.batches[0]
    refs = [s.ref for s in batch.students]
    bad = refs[3]
    signed = "https://pages.test/p.png?X-Amz-Signature=s3cret"
    provider = ScriptedProvider(qnums(prepared), [
        lambda r, m: content_error(image_param(m, bad), f"Error while downloading {signed}.")])

    outcome = grade_batch(batch, prepared.request, fake_run(store, provider, FakeClock()).deps)

    assert provider.refs_per_call == [refs, [r for r in refs if r != bad]]  # straight to it
    result = stored(store, batch.idempotency_key).result
    assert set(result["students"]) == set(refs) - {bad} and outcome.n_graded == len(refs) - 1
    failure = result["failures"][bad]
    page_id = batch.students[3].pages[0].image_id
    assert failure["reason"] == (f"student {bad}: page {page_id} refused by the provider: "
                                 "request refused (400): Error while downloading "
                                 "https://pages.test/p.png?[redacted]")
    assert "s3cret" not in json.dumps(result)
    assert (failure["error_type"], failure["needs_review"]) == ("ProviderContentError", True)


def test_a_refusal_naming_no_image_is_bisected_to_the_student_at_fault(
        setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    batch = prepared.plan.batches[0]
    refs = [s.ref for s in batch.students]
    assert len(refs) == 6
    bad = refs[4]
    provider = ScriptedProvider(qnums(prepared), [
        refuse_when(bad, lambda m: content_error(None), qnums(prepared))] * 20)

    grade_batch(batch, prepared.request, fake_run(store, provider, FakeClock()).deps)

    assert provider.refs_per_call == [refs, refs[:3], refs[3:], refs[3:5], [refs[3]], [bad],
                                      [refs[5]]]
    result = stored(store, batch.idempotency_key).result
    assert set(result["students"]) == set(refs) - {bad}
    page_id = batch.students[4].pages[0].image_id
    assert result["failures"][bad]["reason"] == (
        f"student {bad}: page {page_id} refused by the provider: request refused (400): "
        f"{UNDECODABLE}")


def test_a_group_that_keeps_timing_out_is_split_after_its_retries(
        setup: tuple[Prepared, Store]) -> None:
    prepared, store = setup
    batch = prepared.plan.batches[0]
    refs = [s.ref for s in batch.students]
    bad = refs[0]
    provider = ScriptedProvider(qnums(prepared), [
        refuse_when(bad, lambda m: ProviderTimeoutError("the model request timed out"),
                    qnums(prepared))] * 40)
    run = fake_run(store, provider, FakeClock(), policy=GradingPolicy(max_attempts=2))

    grade_batch(batch, prepared.request, run.deps)

    result = stored(store, batch.idempotency_key).result
    assert set(result["students"]) == set(refs) - {bad}
    assert result["failures"][bad]["error_type"] == "ProviderTimeoutError"
    # each group holding the slow student is tried max_attempts times, then halved
    assert [len(c) for c in provider.refs_per_call] == [6, 6, 3, 3, 2, 2, 1, 1, 1, 1, 3]


def test_a_429_storm_without_any_stated_wait_cannot_spend_the_attempts_in_a_second(
        setup: tuple[Prepared, Store]) -> None:
    """429s with neither retry-after nor reset headers: every sender pauses at least the
    floor, doubling, so three in a row wait ≥ 2 + 4 + 8 s before the fourth attempt."""
    prepared, store = setup
    clock = FakeClock()
    limiter = RateLimiter(MemoryBackend(), Limits(rpm=10_000, tpm=10**9), "k", sleep=clock.sleep)
    storm = RateLimitedError("rate limited (429): slow down", retry_after=None)
    provider = ScriptedProvider(qnums(prepared), [lambda r, m: storm] * 3)
    rng = random.Random(0)
    run = fake_run(store, provider, clock, limiter=limiter,
                   fallback_pause_s=lambda n: floored_backoff(n, floor_s=2.0, max_s=60.0,
                                                              rng=rng))

    outcome = grade_batch(prepared.plan.batches[0], prepared.request, run.deps)

    assert outcome.status == "succeeded" and len(provider.calls) == 4
    pauses = [s for s in clock.slept if s > 0.1]
    assert len(pauses) == 3
    assert all(p >= floor - 0.1 for p, floor in zip(pauses, (2, 4, 8), strict=True))


def test_insufficient_quota_stops_the_run_at_once_and_a_rerun_resumes(
        prepared: Prepared) -> None:
    prepared = dataclasses.replace(prepared, plan=plan_batches(
        prepared.request, GradingPolicy(max_students_per_batch=2)))
    assert len(prepared.plan.batches) == 3
    store = memory_store()
    pipeline.register(store, prepared, QbqSettings(database_url="sqlite://"))
    provider = ScriptedProvider(qnums(prepared), [
        lambda r, m: QuotaExhaustedError(QUOTA_MESSAGE, status_code=429)])
    run = fake_run(store, provider, FakeClock())

    outcomes = [grade_batch(b, prepared.request, run.deps) for b in prepared.plan.batches]

    assert len(provider.calls) == 1  # the first refusal stops every later request of the run
    assert run.guards.budget.retries == 0
    assert [o.status for o in outcomes] == ["failed"] * 3
    assert {o.error_type for o in outcomes} == {"QuotaExhaustedError"}
    reasons = {f["reason"] for b in prepared.plan.batches
               for f in stored(store, b.idempotency_key).result["failures"].values()}
    assert len(reasons) == 1 and "add credit" in reasons.pop()

    # credit added: the same store, a new run grades every student, nothing was lost
    again = ScriptedProvider(qnums(prepared))
    rerun = [grade_batch(b, prepared.request, fake_run(store, again, FakeClock()).deps)
             for b in prepared.plan.batches]
    assert [o.status for o in rerun] == ["succeeded"] * 3
    assert sum(o.n_graded for o in rerun) == 6


def test_a_reply_too_slow_splits_the_batch_and_the_smaller_size_is_remembered(
        setup: tuple[Prepared, Store]) -> None:
    """A request that outlasts its own timeout (sized to its output) is split like a truncated
    one; the halves' timeouts follow their own, smaller expected output."""
    prepared, store = setup
    q = qnums(prepared)

    def slow_if_big(refs: list[str], _m: ChatRequest) -> ChatReply | ReplyTimeoutError:
        if len(refs) > 3:
            return ReplyTimeoutError("no answer within this request's 200 s")
        return reply(json.dumps(answers(refs, q)))

    provider = ScriptedProvider(q, [slow_if_big] * 20)
    run = fake_run(store, provider, FakeClock())
    batch = prepared.plan.batches[0]

    outcome = grade_batch(batch, prepared.request, run.deps)

    assert outcome.status == "succeeded" and outcome.n_graded == 6
    assert [len(refs) for refs in provider.refs_per_call] == [6, 3, 3]
    assert run.deps.size_hint.get() == 3
    assert run.guards.budget.retries == 2  # the halves are retries of the batch
    expected = [r.expected_output_tokens for r in provider.calls]
    assert expected[0] == batch.expected_output_tokens + batch.expected_reasoning_tokens
    assert expected[1] == expected[2] == -(-expected[0] // 2)


def test_later_batches_size_their_reasoning_allowance_from_what_the_run_observed(
        prepared: Prepared) -> None:
    """gpt-5-mini at effort medium: the first batch is sent with the planned allowance and the
    effort; once the store holds its reasoning tokens, the next batch reserves from those."""
    request = dataclasses.replace(prepared.request, model="gpt-5-mini",
                                  spec=get_model_spec("gpt-5-mini"))
    policy = GradingPolicy(reasoning_effort="medium", max_students_per_batch=3,
                           reasoning_min_completion_tokens=0)
    plan = plan_batches(request, policy)
    assert len(plan.batches) == 2
    store = memory_store()
    pipeline.register(store, Prepared(request, plan), QbqSettings(database_url="sqlite://"))
    q = qnums(prepared)

    def reasoned(refs: list[str], _m: ChatRequest) -> ChatReply:
        spent = Usage(replies=1, prompt_tokens=900, completion_tokens=1000 + 100 * len(refs),
                      reasoning_tokens=100 * len(refs))
        return reply(json.dumps(answers(refs, q)), usage=spent)

    provider = ScriptedProvider(q, [reasoned] * 2)
    deps = fake_run(store, provider, FakeClock(), policy=policy).deps
    first, second = plan.batches

    for batch in plan.batches:
        assert grade_batch(batch, request, deps, plan).status == "succeeded"

    assert [c.reasoning_effort for c in provider.calls] == ["medium", "medium"]
    assert provider.calls[0].max_completion_tokens == first.max_completion_tokens
    observed = plan.completion_tokens_for(second, observed_reasoning_per_student=100.0,
                                          policy=policy)
    assert provider.calls[1].max_completion_tokens == observed
    assert observed < second.max_completion_tokens  # 100 observed, 1,024 a student planned
    assert stored(store, first.idempotency_key).reasoning_tokens == 300


def test_a_batch_over_the_learned_token_limit_is_split_before_it_is_sent(
        setup: tuple[Prepared, Store]) -> None:
    """The plan knew no TPM (none configured); the provider then stated one smaller than the
    batch: the batch is split without sending it, and no provider failure is counted."""
    prepared, store = setup
    batch = prepared.plan.batches[0]
    full = batch.prompt_tokens + batch.max_completion_tokens
    half = batch.prompt_tokens_for(set(batch.refs[:3])) + batch.max_completion_tokens
    assert half < full
    clock = FakeClock()
    limiter = RateLimiter(MemoryBackend(), None, "k", sleep=clock.sleep)
    limiter.settle(limiter.acquire(1), 1, {"x-ratelimit-limit-requests": "10000",
                                           "x-ratelimit-limit-tokens": str(half)})
    provider = ScriptedProvider(qnums(prepared))
    run = fake_run(store, provider, clock, limiter=limiter)

    outcome = grade_batch(batch, prepared.request, run.deps)

    assert outcome.status == "succeeded" and outcome.n_graded == 6
    assert [len(refs) for refs in provider.refs_per_call] == [3, 3]  # the 6 were never sent
    assert run.guards.breaker.failures == 0
