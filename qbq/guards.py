"""Cross-cutting concerns as wrappers around a `ChatProvider` (pydantic-ai's `WrapperModel`).

Each wrapper does one thing and passes the request on:

    RetryBudgeted ─ CircuitBroken ─ InFlightLimited ─ RatePaced ─ the provider adapter
    (a retry spends  (an open breaker  (a request slot   (reserve the rate, sleep
     from the run's   waits, then       per process)      to the start; settle with
     budget)          gives up)                           usage; a 429 pauses all)

The order matters: a retry is refused before it waits for anything; a slot is taken before the
rate is reserved, so a reserved start is never spent idle waiting for a slot. `guarded_provider`
builds the stack; the grading code only sees a `ChatProvider`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from qbq.errors import ProviderError, QuotaExhaustedError, RateLimitedError
from qbq.limiter import RateLimiter
from qbq.provider import ChatProvider, ChatReply, ChatRequest
from qbq.recovery import CircuitBreaker, RetryBudget

__all__ = ["CircuitBroken", "InFlightLimited", "RatePaced", "RetryBudgeted", "WrapperProvider",
           "guarded_provider"]


class WrapperProvider:
    """A provider that hands every request to `wrapped` (subclasses add one concern)."""

    def __init__(self, wrapped: ChatProvider) -> None:
        self.wrapped = wrapped

    def complete(self, request: ChatRequest) -> ChatReply:
        return self.wrapped.complete(request)


class InFlightLimited(WrapperProvider):
    """At most the semaphore's count of requests in flight (shared by a process's runs)."""

    def __init__(self, wrapped: ChatProvider, slots: threading.Semaphore) -> None:
        super().__init__(wrapped)
        self.slots = slots

    def complete(self, request: ChatRequest) -> ChatReply:
        with self.slots:
            return self.wrapped.complete(request)


class RatePaced(WrapperProvider):
    """Paces requests at the key's limits through the shared `RateLimiter`.

    Reserves `request.reserved_tokens` and sleeps until the start it was given; after the reply,
    settles the reservation with the tokens really charged (prompt + `max_completion_tokens`) and
    the `x-ratelimit-*` headers (a limiter without configured limits learns them there). A
    request that gets no reply releases its reservation (a probe lets another sender probe). A
    429 pauses every sender of the key for the wait it states (`retry-after`, else the
    `x-ratelimit-reset-*` headers; seconds), or for `fallback_pause_s(n)` when it stated none,
    `n` counting such 429s in a row (so the pause can grow).
    """

    def __init__(self, wrapped: ChatProvider, limiter: RateLimiter,
                 fallback_pause_s: Callable[[int], float]) -> None:
        super().__init__(wrapped)
        self.limiter = limiter
        self.fallback_pause_s = fallback_pause_s
        self._unstated = 0  # 429s in a row that stated no wait
        self._lock = threading.Lock()

    def _pause_for(self, exc: RateLimitedError) -> float:
        with self._lock:
            if exc.retry_after is not None:
                self._unstated = 0
                return exc.retry_after
            self._unstated += 1
            streak = self._unstated
        return self.fallback_pause_s(streak)

    def complete(self, request: ChatRequest) -> ChatReply:
        reservation = self.limiter.acquire(request.reserved_tokens)
        replied = False
        try:
            reply = self.wrapped.complete(request)
            replied = True
        except RateLimitedError as exc:
            self.limiter.cool_down(self._pause_for(exc))
            raise
        finally:
            if not replied:
                self.limiter.release(reservation)
        with self._lock:
            self._unstated = 0
        prompt = reply.usage.prompt_tokens
        charged = prompt + request.max_completion_tokens if prompt else None
        self.limiter.settle(reservation, charged, reply.rate_headers)
        return reply


class CircuitBroken(WrapperProvider):
    """Waits while the breaker is open; tells it about every provider failure and success.

    A 429 (`RateLimitedError`) is told as throttling, not as a failure: the rate limiter paces
    it, and a storm of them must not open the breaker (a probe answered 429 closes it). A probe
    that ends in anything else that is no provider answer frees the probe slot.

    Raises `ProviderDownError` (from the breaker) once an outage outlasts its give-up time. A
    `QuotaExhaustedError` stops the breaker: every later request of the run raises it at once,
    without a model call.
    """

    def __init__(self, wrapped: ChatProvider, breaker: CircuitBreaker) -> None:
        super().__init__(wrapped)
        self.breaker = breaker

    def complete(self, request: ChatRequest) -> ChatReply:
        probe = self.breaker.before_call()
        try:
            reply = self.wrapped.complete(request)
        except QuotaExhaustedError as exc:
            self.breaker.stop(exc)
            raise
        except RateLimitedError:
            self.breaker.record_throttled(probe=probe)
            raise
        except ProviderError:
            self.breaker.record_failure()
            raise
        except BaseException:
            self.breaker.release_probe(probe=probe)
            raise
        self.breaker.record_success()
        return reply


class RetryBudgeted(WrapperProvider):
    """Charges retries and re-asks (`request.retry`) to the run's `RetryBudget`.

    A retry first reserves one attempt and its upper-bound tokens (raises
    `RetryBudgetExhaustedError` when that would overspend); the tokens really used are charged
    after the reply. First attempts are free.
    """

    def __init__(self, wrapped: ChatProvider, budget: RetryBudget) -> None:
        super().__init__(wrapped)
        self.budget = budget

    def complete(self, request: ChatRequest) -> ChatReply:
        if not request.retry:
            return self.wrapped.complete(request)
        self.budget.spend(request.reserved_tokens)
        reply = self.wrapped.complete(request)
        self.budget.charge(reply.usage.total_tokens)
        return reply


def guarded_provider(provider: ChatProvider, *, budget: RetryBudget, breaker: CircuitBreaker,
                     slots: threading.Semaphore | None, limiter: RateLimiter | None,
                     fallback_pause_s: Callable[[int], float]) -> ChatProvider:
    """`provider` inside the whole stack (see the module docstring); no slots or no limiter
    leaves that layer out."""
    inner: ChatProvider = provider
    if limiter is not None:
        inner = RatePaced(inner, limiter, fallback_pause_s)
    if slots is not None:
        inner = InFlightLimited(inner, slots)
    return RetryBudgeted(CircuitBroken(inner, breaker), budget)

