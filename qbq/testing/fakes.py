"""Test doubles for every boundary, shared by the tests and the benchmarks: a scripted model
provider, a clock, a page fetcher, an in-memory store, and grading deps wired from them."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qbq.errors import ImageError, ProviderError
from qbq.grading import GradingDeps
from qbq.guards import guarded_provider
from qbq.limiter import RateLimiter
from qbq.prompts import student_refs
from qbq.provider import ChatProvider, ChatReply, ChatRequest
from qbq.recovery import BatchSizeHint, CircuitBreaker, RetryBudget, RunGuards
from qbq.settings import GradingPolicy
from qbq.store import Store
from qbq.usage import Usage

__all__ = ["Behaviour", "FakeClock", "FakeFetcher", "FakeRun", "ScriptedProvider", "answers",
           "fake_run", "memory_store", "reply", "request_refs"]

#: One scripted call: given the request's student refs and the request, a reply or an error.
Behaviour = Callable[[list[str], ChatRequest], ChatReply | ProviderError]


def reply(content: str | None, *, finish: str = "stop", refusal: str | None = None,
          usage: Usage | None = None) -> ChatReply:
    """A provider reply (simulated) with `content`; 100 prompt + 50 completion tokens unless
    `usage` says otherwise."""
    return ChatReply(content=content, refusal=refusal, finish_reason=finish,
                     usage=usage or Usage(replies=1, prompt_tokens=100, completion_tokens=50,
                                          latency_ms=5.0),
                     simulated=True)


def answers(refs: Sequence[str], question_numbers: Sequence[str],
            mark: float = 1.0) -> dict[str, Any]:
    """A valid reply body grading every student `mark` on every question."""
    return {"students": [{"ref": r, "name": None, "answers": [
        {"question_number": q, "mark": mark, "feedback": "ok", "confidence": "high",
         "status": "answered"} for q in question_numbers]} for r in refs]}


def request_refs(request: ChatRequest) -> list[str]:
    """The student refs a request asks about, from its `Student ref: <ref>` labels."""
    return student_refs(request.messages)


class ScriptedProvider:
    """A `ChatProvider` that plays `script` one behaviour per call, then answers validly.

    `calls` keeps every request in order; `refs_per_call` their student refs.
    """

    def __init__(self, question_numbers: Sequence[str],
                 script: Sequence[Behaviour] | None = None) -> None:
        self.question_numbers = list(question_numbers)
        self.script = list(script or [])
        self.calls: list[ChatRequest] = []

    @property
    def refs_per_call(self) -> list[list[str]]:
        return [request_refs(r) for r in self.calls]

    def complete(self, request: ChatRequest) -> ChatReply:
        if request.on_send is not None:
            request.on_send()
        self.calls.append(request)
        refs = request_refs(request)
        if self.script:
            outcome = self.script.pop(0)(refs, request)
            if isinstance(outcome, ProviderError):
                raise outcome
            return outcome
        return reply(json.dumps(answers(refs, self.question_numbers)))


@dataclass
class FakeClock:
    """Time that passes only when something sleeps; `slept` records every sleep (seconds)."""

    now: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def time(self) -> float:
        return self.now


@dataclass
class FakeFetcher:
    """A page `Fetcher`: the bytes for known URLs, `ImageError` naming the status otherwise.

    `pages` maps a URL to its bytes, or to an int HTTP status to fail with; `fetched` records
    every URL asked for.
    """

    pages: Mapping[str, bytes | int]
    fetched: list[str] = field(default_factory=list)

    def __call__(self, url: str) -> bytes:
        self.fetched.append(url)
        found = self.pages.get(url, 404)
        if isinstance(found, int):
            raise ImageError(f"cannot download {url.split('?', 1)[0]}: HTTP {found}")
        return found


def memory_store() -> Store:
    """A migrated SQLite store in memory (one connection shared by every thread)."""
    store = Store("sqlite://")
    store.migrate()
    return store


@dataclass(frozen=True)
class FakeRun:
    """Grading deps wired from doubles, and the guards inside them (for assertions)."""

    deps: GradingDeps
    guards: RunGuards


def fake_run(store: Store, provider: ChatProvider, clock: FakeClock, *,
             policy: GradingPolicy | None = None, max_retries: int = 50,
             breaker_threshold: int = 5, give_up_after_s: float = 300.0,
             limiter: RateLimiter | None = None,
             fallback_pause_s: Callable[[int], float] = lambda n: 0.5) -> FakeRun:
    """Grading deps over `provider` inside the real guards, on `clock`'s time.

    The breaker's cool-downs (10 s) and the backoffs sleep on `clock`; the budget allows
    `max_retries` retries and unlimited tokens; the n-th 429 in a row that states no wait
    pauses `fallback_pause_s(n)` seconds (0.5 unless given).
    """
    policy = policy or GradingPolicy(backoff_base_s=1.0)
    guards = RunGuards(
        breaker=CircuitBreaker(threshold=breaker_threshold, cooldown_s=10,
                               give_up_after_s=give_up_after_s,
                               on_open=limiter.cool_down if limiter else None,
                               clock=clock.time, sleep=clock.sleep),
        budget=RetryBudget(max_retries=max_retries, max_tokens=10**12),
        size_hint=BatchSizeHint())
    guarded = guarded_provider(provider, budget=guards.budget, breaker=guards.breaker,
                               slots=None, limiter=limiter,
                               fallback_pause_s=fallback_pause_s)
    deps = GradingDeps(provider=guarded, store=store, policy=policy, size_hint=guards.size_hint,
                       sleep=clock.sleep, rng=random.Random(0))
    return FakeRun(deps, guards)
