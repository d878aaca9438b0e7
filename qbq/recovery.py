"""Bounded recovery shared by every batch of a run: circuit breaker, retry budget, batch size.

One `RunGuards` per flow run and process; all methods are thread-safe because mapped
`grade_batch` tasks run in a thread pool.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from qbq.errors import ProviderDownError, QuotaExhaustedError, RetryBudgetExhaustedError

__all__ = ["BatchSizeHint", "CircuitBreaker", "RetryBudget", "RunGuards"]


class CircuitBreaker:
    """Stops every sender after `threshold` provider failures in a row.

    A failure is an outage sign: a 5xx, a timeout, a lost connection. A 429 is not one (the
    provider answered, and the rate limiter already pauses every sender for the wait it states):
    `record_throttled` leaves the streak as it is, and a 429 answering the half-open probe
    closes the breaker, so a 429 storm on a shared key can neither open the breaker nor make it
    give up with `ProviderDownError`.

    Open: senders wait out the cool-down (and `on_open` pauses the shared limiter, so other
    processes wait too). Then one probe goes through (half-open): success closes the breaker,
    failure re-opens it with the cool-down doubled. An outage longer than `give_up_after_s`
    raises `ProviderDownError` instead of burning more retries. `stop(error)` (the account is
    out of credit) makes every later call raise a `QuotaExhaustedError` without waiting.
    """

    def __init__(self, *, threshold: int, cooldown_s: float, give_up_after_s: float,
                 on_open: Callable[[float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.give_up_after_s = give_up_after_s
        self._on_open = on_open
        self._clock = clock
        self._sleep = sleep
        self._cond = threading.Condition()
        self.failures = 0
        self.state = "closed"
        self.opened_count = 0
        self._open_until = 0.0
        self._outage_start: float | None = None
        self._current_cooldown = cooldown_s
        self._probe_in_flight = False
        self._stopped: QuotaExhaustedError | None = None

    def stop(self, error: QuotaExhaustedError) -> None:
        """No call of this run may reach the provider any more: each raises `error` again."""
        with self._cond:
            self._stopped = error
            self._cond.notify_all()

    def before_call(self) -> bool:
        """Wait while open; raise `ProviderDownError` once the outage outlasts the limit, or
        the stopping `QuotaExhaustedError` once stopped. Returns True when this call is the
        half-open probe (its outcome decides the breaker; pass it back to `record_throttled`
        or `release_probe`)."""
        while True:
            with self._cond:
                if self._stopped is not None:
                    raise QuotaExhaustedError(self._stopped.message,
                                              status_code=self._stopped.status_code)
                now = self._clock()
                if self.state == "closed":
                    return False
                assert self._outage_start is not None
                down_for = now - self._outage_start
                if down_for >= self.give_up_after_s:
                    raise ProviderDownError(
                        f"provider failing for {down_for:.0f} s ({self.failures} failures in a "
                        f"row); the circuit breaker gave up after {self.give_up_after_s:.0f} s")
                if self.state == "open" and now >= self._open_until:
                    self.state = "half_open"
                if self.state == "half_open" and not self._probe_in_flight:
                    self._probe_in_flight = True
                    return True
                wait = max(0.05, self._open_until - now) if self.state == "open" else 0.05
            self._sleep(min(wait, 1.0))

    def record_success(self) -> None:
        with self._cond:
            self.failures = 0
            self.state = "closed"
            self._outage_start = None
            self._probe_in_flight = False
            self._current_cooldown = self.cooldown_s
            self._cond.notify_all()

    def record_throttled(self, *, probe: bool) -> None:
        """The provider answered 429. Not a failure: the streak stays as it is. For the half-open
        `probe` it ends the outage (the provider answers; the rate limiter paces the rest), so
        the breaker closes; any other call's 429 changes nothing."""
        if probe:
            self.record_success()

    def release_probe(self, *, probe: bool) -> None:
        """The call ended without a provider answer or failure (e.g. a configuration error
        before it was sent): a probe frees its slot, so the next call probes instead."""
        if not probe:
            return
        with self._cond:
            self._probe_in_flight = False
            self._cond.notify_all()

    def record_failure(self) -> None:
        pause_for: float | None = None
        with self._cond:
            now = self._clock()
            self.failures += 1
            if self._outage_start is None:
                self._outage_start = now
            reopen = self.state == "half_open"
            if reopen or (self.state == "closed" and self.failures >= self.threshold):
                if reopen:
                    self._current_cooldown = min(self._current_cooldown * 2, 300.0)
                self.state = "open"
                self.opened_count += 1
                self._open_until = now + self._current_cooldown
                self._probe_in_flight = False
                pause_for = self._current_cooldown
        if pause_for is not None and self._on_open is not None:
            self._on_open(pause_for)


class RetryBudget:
    """Caps what retries and re-asks may spend in one run: attempts, and tokens really charged."""

    def __init__(self, *, max_retries: int, max_tokens: int) -> None:
        self.max_retries = max_retries
        self.max_tokens = max_tokens
        self.retries = 0
        self.tokens = 0
        self._lock = threading.Lock()

    def spend(self, upper_bound_tokens: int) -> None:
        """Allow one more retry that may cost up to `upper_bound_tokens`, or raise
        `RetryBudgetExhaustedError`; the tokens it really used are added by `charge`."""
        with self._lock:
            if (self.retries + 1 > self.max_retries
                    or self.tokens + upper_bound_tokens > self.max_tokens):
                raise RetryBudgetExhaustedError(
                    f"retry budget exhausted ({self.retries} retries and {self.tokens:,} tokens "
                    f"spent, of {self.max_retries} / {self.max_tokens:,})")
            self.retries += 1

    def charge(self, tokens: int) -> None:
        with self._lock:
            self.tokens += tokens


class BatchSizeHint:
    """The largest number of students per request known to work in this run (after truncation)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.max_students: int | None = None

    def shrink_to(self, n: int) -> None:
        with self._lock:
            if self.max_students is None or n < self.max_students:
                self.max_students = max(1, n)

    def get(self) -> int | None:
        with self._lock:
            return self.max_students


@dataclass
class RunGuards:
    breaker: CircuitBreaker
    budget: RetryBudget
    size_hint: BatchSizeHint
