"""Each provider wrapper on its own: in-flight slot, rate pacing, circuit breaker, retry budget,
and the order `guarded_provider` stacks them in."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from qbq.errors import (
    ProviderDownError,
    ProviderUnavailableError,
    RateLimitedError,
    RetryBudgetExhaustedError,
)
from qbq.guards import CircuitBroken, InFlightLimited, RatePaced, RetryBudgeted, guarded_provider
from qbq.limiter import Limits, MemoryBackend, RateLimiter
from qbq.provider import ChatReply, ChatRequest
from qbq.recovery import CircuitBreaker, RetryBudget
from qbq.testing.fakes import FakeClock, reply
from qbq.usage import Usage


def request(*, retry: bool = False, prompt: int = 1000, max_tokens: int = 500) -> ChatRequest:
    return ChatRequest(model="gpt-4.1-mini", messages=[], response_format={},
                       max_completion_tokens=max_tokens, planned_prompt_tokens=prompt, retry=retry)


USED = Usage(replies=1, prompt_tokens=800, completion_tokens=100)


class Provider:
    """Answers (or raises) from a list, then replies with `usage`; counts calls."""

    def __init__(self, outcomes: list[Exception] | None = None, usage: Usage = USED) -> None:
        self.outcomes = list(outcomes or [])
        self.usage = usage
        self.calls = 0

    def complete(self, request: ChatRequest) -> ChatReply:
        self.calls += 1
        if self.outcomes:
            raise self.outcomes.pop(0)
        return reply("{}", usage=self.usage)


def test_in_flight_slots_bound_concurrency() -> None:
    gate, lock = threading.Event(), threading.Lock()
    peak = current = 0

    class Slow:
        def complete(self, request: ChatRequest) -> ChatReply:
            nonlocal peak, current
            with lock:
                current += 1
                peak = max(peak, current)
            gate.wait(5)
            time.sleep(0.01)
            with lock:
                current -= 1
            return reply("{}")

    provider = InFlightLimited(Slow(), threading.BoundedSemaphore(2))
    threads = [threading.Thread(target=provider.complete, args=(request(),)) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join(5)
    assert peak == 2


def _limiter(clock: FakeClock, tpm: int = 60_000) -> RateLimiter:
    return RateLimiter(MemoryBackend(), Limits(rpm=600, tpm=tpm, burst_s=1.0), "k",
                       sleep=clock.sleep)


def test_rate_pacing_reserves_the_request_and_settles_with_usage(monkeypatch: Any) -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    reserved: list[int] = []
    settled: list[int | None] = []
    real_acquire, real_settle = limiter.acquire, limiter.settle
    monkeypatch.setattr(limiter, "acquire", lambda t: reserved.append(t) or real_acquire(t))
    monkeypatch.setattr(limiter, "settle", lambda r, c, h: settled.append(c) or real_settle(r, c, h))

    RatePaced(Provider(), limiter, lambda n: 0.5).complete(request(prompt=1000, max_tokens=500))

    assert reserved == [1500]  # planned prompt + max_completion_tokens, charged up front
    assert settled == [800 + 500]  # the real prompt + max_completion_tokens


def test_a_429_pauses_every_sender_for_retry_after_or_the_fallback() -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    paced = RatePaced(Provider([RateLimitedError("429", retry_after=7.5)]), limiter, lambda n: 0.5)
    with pytest.raises(RateLimitedError):
        paced.complete(request())
    assert 7.0 < limiter.paused_for() <= 7.5

    other = _limiter(clock)
    with pytest.raises(RateLimitedError):
        RatePaced(Provider([RateLimitedError("429")]), other, lambda n: 0.5).complete(request())
    assert 0.0 < other.paused_for() <= 0.5


def test_the_breaker_opens_after_failures_in_a_row_and_closes_on_success() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=2, cooldown_s=10, give_up_after_s=100, clock=clock.time,
                             sleep=clock.sleep)
    down = ProviderUnavailableError("503", status_code=503)
    provider = CircuitBroken(Provider([down, down]), breaker)
    for _ in range(2):
        with pytest.raises(ProviderUnavailableError):
            provider.complete(request())
    assert breaker.state == "open"
    provider.complete(request())  # waits out the cool-down, then the probe succeeds
    assert breaker.state == "closed" and sum(clock.slept) >= 10


def test_the_breaker_gives_up_on_a_long_outage() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, cooldown_s=10, give_up_after_s=25, clock=clock.time,
                             sleep=clock.sleep)
    down = ProviderUnavailableError("503", status_code=503)
    provider = CircuitBroken(Provider([down] * 10), breaker)
    with pytest.raises(ProviderDownError):
        for _ in range(10):
            try:
                provider.complete(request())
            except ProviderUnavailableError:
                continue


def test_the_budget_lets_first_attempts_through_and_charges_retries() -> None:
    budget = RetryBudget(max_retries=1, max_tokens=10_000)
    inner = Provider(usage=Usage(replies=1, prompt_tokens=900, completion_tokens=100))
    provider = RetryBudgeted(inner, budget)
    provider.complete(request())
    assert (budget.retries, budget.tokens) == (0, 0)
    provider.complete(request(retry=True))
    assert (budget.retries, budget.tokens) == (1, 1000)  # the tokens really used
    with pytest.raises(RetryBudgetExhaustedError):
        provider.complete(request(retry=True))
    assert inner.calls == 2  # the refused retry never reached the provider


def test_the_stack_refuses_a_retry_before_it_waits_for_anything() -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    breaker = CircuitBreaker(threshold=5, cooldown_s=10, give_up_after_s=100, clock=clock.time,
                             sleep=clock.sleep)
    inner = Provider()
    stack = guarded_provider(inner, budget=RetryBudget(max_retries=0, max_tokens=0),
                             breaker=breaker, slots=threading.BoundedSemaphore(1),
                             limiter=limiter, fallback_pause_s=lambda n: 0.5)
    stack.complete(request())
    with pytest.raises(RetryBudgetExhaustedError):
        stack.complete(request(retry=True))
    assert inner.calls == 1 and breaker.failures == 0


def test_a_429_storm_neither_opens_the_breaker_nor_makes_it_give_up() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=2, cooldown_s=10, give_up_after_s=25, clock=clock.time,
                             sleep=clock.sleep)
    provider = CircuitBroken(Provider([RateLimitedError("429")] * 20), breaker)
    for _ in range(20):
        with pytest.raises(RateLimitedError):
            provider.complete(request())
        clock.sleep(5)  # the storm lasts well past give_up_after_s
    assert breaker.state == "closed" and breaker.failures == 0 and breaker.opened_count == 0
    provider.complete(request())
    assert clock.slept == [5] * 20  # the breaker itself never waited


def test_a_half_open_probe_answered_429_closes_the_breaker() -> None:
    """The provider answers (429): the outage is over and the limiter paces the rest, so a run
    of 429s after an outage cannot end in ProviderDownError."""
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, cooldown_s=10, give_up_after_s=30, clock=clock.time,
                             sleep=clock.sleep)
    down = ProviderUnavailableError("503", status_code=503)
    provider = CircuitBroken(Provider([down] + [RateLimitedError("429")] * 10), breaker)
    with pytest.raises(ProviderUnavailableError):
        provider.complete(request())
    assert breaker.state == "open"
    for _ in range(10):  # the probe, then every later call, is throttled for 10 × 5 s
        with pytest.raises(RateLimitedError):
            provider.complete(request())
        assert breaker.state == "closed"
        clock.sleep(5)
    provider.complete(request())
    assert breaker.opened_count == 1


def test_only_the_probe_frees_the_probe_slot() -> None:
    """A call that started before the breaker opened and comes back 429 while the probe is
    out does not let a second probe through; a probe ending without a provider answer does."""
    breaker = CircuitBreaker(threshold=1, cooldown_s=0, give_up_after_s=100)
    breaker.record_failure()  # open, cool-down over at once
    assert breaker.before_call() is True  # the probe
    breaker.record_throttled(probe=False)  # the stale call's 429
    assert breaker.state == "half_open" and breaker._probe_in_flight
    breaker.release_probe(probe=True)  # the probe ended in a configuration error
    assert not breaker._probe_in_flight
    assert breaker.before_call() is True  # the next call probes


def test_a_probe_that_raises_no_provider_error_frees_the_slot() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, cooldown_s=10, give_up_after_s=100, clock=clock.time,
                             sleep=clock.sleep)
    down = ProviderUnavailableError("503", status_code=503)
    provider = CircuitBroken(Provider([down, ValueError("not the provider")]), breaker)
    with pytest.raises(ProviderUnavailableError):
        provider.complete(request())
    with pytest.raises(ValueError):
        provider.complete(request())  # the probe, after the cool-down
    provider.complete(request())  # probes again rather than waiting until give-up
    assert breaker.state == "closed"
