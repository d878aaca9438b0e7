"""Everything a grading run talks to, built once per run and released when it ends (Dagster's
resources): the store, the model provider inside its guards, the delivery HTTP client, the
rate limiter, the retry budget and circuit breaker.

A flow opens `run_resources(...)`; its tasks find the same object by the run's token through
`resources_for(ref)` (a task on a Dask worker, in another process, builds its own there). The
guards die with the run, so a rerun in the same process starts with a fresh retry budget and a
closed breaker whatever stopped the previous one.

The only process-wide state of qbq lives here, as small keyed helpers: the in-flight slots of a
process (shared by its concurrent runs, as `QBQ_MAX_IN_FLIGHT` promises), limiter backends and
limiters (a `memory` backend must be one object per process; Redis/PostgreSQL connections are
reused) and the set of store URLs already migrated (Alembic runs once per process and URL).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from qbq.backoff import floored_backoff
from qbq.batch_api import OpenAIBatchAPI
from qbq.errors import ConfigurationError
from qbq.grading import GradingDeps
from qbq.guards import guarded_provider
from qbq.http import HttpClient, make_http_client
from qbq.limiter import Backend, Limits, RateLimiter, key_id, make_backend
from qbq.model_spec import Mode
from qbq.planning import BatchPlan
from qbq.provider import ChatProvider, OpenAIChatProvider, make_openai_client
from qbq.recovery import BatchSizeHint, CircuitBreaker, RetryBudget, RunGuards
from qbq.settings import GradingPolicy, QbqSettings
from qbq.store import Store

__all__ = ["RunRef", "RunResources", "check_provider_settings",
           "delivery_resources", "make_delivery_client", "make_limiter", "make_provider",
           "open_store", "resources_for", "run_resources", "store_fingerprint"]

#: Seconds beyond the request timeout that the other senders wait for a limit probe's reply.
_PROBE_GRACE_S = 10.0

# --- process-wide keyed helpers --------------------------------------------------------------------

_lock = threading.Lock()
_migrated: set[str] = set()
_slots: dict[int, threading.BoundedSemaphore] = {}
_backends: dict[tuple[str, str | None, str], Backend] = {}
_limiters: dict[tuple[object, ...], RateLimiter] = {}
#: Resources of the runs whose flow is open in this process, by run token.
_runs: dict[str, RunResources] = {}
#: Resources a worker process built for runs whose flow lives elsewhere (the last few).
_borrowed: OrderedDict[str, RunResources] = OrderedDict()
_BORROWED_KEPT = 4


def _in_flight_slots(n: int) -> threading.BoundedSemaphore:
    with _lock:
        return _slots.setdefault(n, threading.BoundedSemaphore(n))


def open_store(settings: QbqSettings) -> Store:
    """A new `Store` for `QBQ_DATABASE_URL`, migrated to the newest schema (once per process and
    URL). The caller disposes it."""
    store = Store.from_settings(settings)
    with _lock:
        fresh = settings.database_url not in _migrated
    if fresh:
        store.migrate()
        with _lock:
            _migrated.add(settings.database_url)
    return store


def store_fingerprint(store: Store) -> str:
    """Names one database (URL and the id it got at creation), so that a cached task result is
    never taken for a batch that a different or re-created database does not hold."""
    return hashlib.sha256(f"{store.url}|{store.instance_id()}".encode()).hexdigest()[:16]


def _api_identity(settings: QbqSettings) -> tuple[str | None, str | None]:
    api_key = (settings.openai_api_key.get_secret_value() if settings.openai_api_key
               else os.environ.get("OPENAI_API_KEY"))
    base_url = settings.openai_base_url or os.environ.get("OPENAI_BASE_URL")
    return api_key, base_url


def make_provider(settings: QbqSettings, mode: Mode = "sync") -> OpenAIChatProvider:
    """The OpenAI adapter; without QBQ_OPENAI_* settings, OPENAI_API_KEY / OPENAI_BASE_URL.
    In flex `mode` requests wait `QBQ_FLEX_TIMEOUT_S` instead of `QBQ_REQUEST_TIMEOUT_S`.
    Raises `ConfigurationError` without an API key (or, under QBQ_LOOPBACK_ONLY, for a
    provider that is not on loopback). The caller closes it."""
    api_key, base_url = _api_identity(settings)
    timeout_s = settings.flex_timeout_s if mode == "flex" else settings.request_timeout_s
    client = make_openai_client(api_key=api_key, base_url=base_url,
                                organization=settings.openai_organization,
                                timeout_s=timeout_s,
                                loopback_only=settings.loopback_only)
    return OpenAIChatProvider(client, timeout_base_s=settings.request_timeout_s,
                              output_tokens_per_s=settings.output_tokens_per_s)


def make_batch_api(settings: QbqSettings) -> OpenAIBatchAPI:
    """The Batch API adapter (batch mode), on the provider's identity; the caller closes it."""
    api_key, base_url = _api_identity(settings)
    return OpenAIBatchAPI(make_openai_client(
        api_key=api_key, base_url=base_url, organization=settings.openai_organization,
        timeout_s=settings.request_timeout_s, loopback_only=settings.loopback_only))


def make_limiter(settings: QbqSettings) -> RateLimiter | None:
    """The limiter shared by every sender of this API key; None only when explicitly
    unthrottled. With `QBQ_RPM` and `QBQ_TPM` it paces at them; with neither it learns the
    key's limits from the provider's `x-ratelimit-limit-*` headers (`qbq.limiter`). Raises
    `ConfigurationError` when only one of the two is set."""
    if settings.unthrottled:
        return None
    if (settings.rpm is None) != (settings.tpm is None):
        raise ConfigurationError(
            "set both QBQ_RPM and QBQ_TPM (the key's requests and tokens per minute), or "
            "neither to use the limits the provider states in its x-ratelimit-limit-* headers")
    folder = str(Path(settings.limiter_dir).expanduser())
    backend_key = (settings.limiter_backend, settings.limiter_url, folder)
    limits = (Limits(settings.rpm, settings.tpm, burst_s=settings.limiter_burst_s)
              if settings.rpm is not None and settings.tpm is not None else None)
    key = key_id(*_api_identity(settings))
    with _lock:  # one instance per key and limits, so a process's threads share group commits
        backend = _backends.get(backend_key)
        if backend is None:
            backend = make_backend(settings.limiter_backend, url=settings.limiter_url,
                                   folder=Path(folder))
            _backends[backend_key] = backend
        return _limiters.setdefault(
            (backend_key, limits, settings.limiter_burst_s, key),
            RateLimiter(backend, limits, key, burst_s=settings.limiter_burst_s,
                        probe_timeout_s=settings.request_timeout_s + _PROBE_GRACE_S))


def make_delivery_client(settings: QbqSettings) -> HttpClient:
    """The results API's HTTP client (bearer token, timeout). The caller closes it."""
    token = settings.results_api_token.get_secret_value() if settings.results_api_token else None
    return make_http_client(timeout_s=settings.delivery_timeout_s, token=token)


@contextmanager
def delivery_resources(settings: QbqSettings) -> Iterator[tuple[Store, HttpClient]]:
    """The store and the results API client, for draining the outbox; released afterwards."""
    store = open_store(settings)
    client = make_delivery_client(settings)
    try:
        yield store, client
    finally:
        client.close()
        store.dispose()


def check_provider_settings(settings: QbqSettings) -> None:
    """Raise `ConfigurationError` now if grading would fail for want of a key or limits."""
    make_provider(settings).close()
    make_limiter(settings)


# --- one run ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRef:
    """What a task needs to find (or, in another process, rebuild) its run's resources.

    Carries no personal data: settings, policy, the run's token and its retry-budget sizes
    (`max_retries`, `max_retry_tokens`), and the store's fingerprint (for cache keys).
    """

    token: str
    settings: QbqSettings
    policy: GradingPolicy
    max_retries: int
    max_retry_tokens: int
    store_id: str = ""

    @classmethod
    def for_plan(cls, plan: BatchPlan, settings: QbqSettings, policy: GradingPolicy) -> RunRef:
        """A new run of `plan`: a unique token and the retry budget sized from the plan.

        Raises `ConfigurationError` when the plan's model is not offered in `policy.mode`
        (flex is offered for some models only), before anything is sent.
        """
        if plan.spec is not None:
            plan.spec.prices(policy.mode)
        planned = plan.prompt_tokens + sum(b.max_completion_tokens for b in plan.batches)
        attempts = policy.retry_budget_attempts
        return cls(token=f"{plan.process_id}:{uuid.uuid4().hex[:12]}", settings=settings,
                   policy=policy,
                   max_retries=attempts if attempts is not None else 2 * len(plan.batches) + 10,
                   max_retry_tokens=int(policy.retry_budget_token_ratio * planned))


@dataclass
class RunResources:
    """The clients and guards of one run in this process; `close()` releases them."""

    ref: RunRef
    store: Store
    provider: ChatProvider
    limiter: RateLimiter | None
    guards: RunGuards
    http: HttpClient
    _raw_provider: OpenAIChatProvider | None = field(default=None, repr=False)

    @classmethod
    def build(cls, ref: RunRef) -> RunResources:
        """Open the store and clients and make fresh guards for `ref`'s run."""
        settings, policy = ref.settings, ref.policy
        limiter = make_limiter(settings)
        raw = make_provider(settings, policy.mode)
        store = open_store(settings)
        rng = random.Random()
        guards = RunGuards(
            breaker=CircuitBreaker(threshold=policy.breaker_threshold,
                                   cooldown_s=policy.breaker_cooldown_s,
                                   give_up_after_s=policy.breaker_give_up_s,
                                   on_open=limiter.cool_down if limiter else None),
            budget=RetryBudget(max_retries=ref.max_retries, max_tokens=ref.max_retry_tokens),
            size_hint=BatchSizeHint())
        provider = guarded_provider(
            raw, budget=guards.budget, breaker=guards.breaker,
            slots=_in_flight_slots(settings.max_in_flight), limiter=limiter,
            fallback_pause_s=lambda n: floored_backoff(n, floor_s=policy.rate_limit_pause_s,
                                                       max_s=policy.backoff_max_s, rng=rng))
        return cls(ref, store, provider, limiter, guards, make_delivery_client(settings), raw)

    def grading_deps(self) -> GradingDeps:
        """What `grade_batch` needs, over this run's store and guarded provider."""
        return GradingDeps(provider=self.provider, store=self.store, policy=self.ref.policy,
                           size_hint=self.guards.size_hint,
                           keep_raw_responses=self.ref.settings.keep_raw_responses,
                           spill_dir=Path(self.ref.settings.spill_dir).expanduser())

    def close(self) -> None:
        """Close the clients and the store's connections (idempotent)."""
        if self._raw_provider is not None:
            self._raw_provider.close()
            self._raw_provider = None
        self.http.close()
        self.store.dispose()


@contextmanager
def run_resources(plan: BatchPlan, settings: QbqSettings,
                  policy: GradingPolicy) -> Iterator[RunResources]:
    """Open a run's resources, make them findable by its token, and release them however the
    run ends."""
    ref = RunRef.for_plan(plan, settings, policy)
    resources = RunResources.build(ref)
    try:
        resources.ref = dataclasses.replace(ref, store_id=store_fingerprint(resources.store))
        with _lock:
            _runs[ref.token] = resources
        yield resources
    finally:
        with _lock:
            _runs.pop(ref.token, None)
        resources.close()


def resources_for(ref: RunRef) -> RunResources:
    """The resources of `ref`'s run in this process: the flow's own (thread runner), or built
    here on first use (a Dask worker process) and kept for the run's next tasks."""
    with _lock:
        found = _runs.get(ref.token) or _borrowed.get(ref.token)
    if found is not None:
        return found
    built = RunResources.build(ref)
    evicted: list[RunResources] = []
    with _lock:
        existing = _runs.get(ref.token) or _borrowed.get(ref.token)
        if existing is None:
            _borrowed[ref.token] = built
            while len(_borrowed) > _BORROWED_KEPT:
                evicted.append(_borrowed.popitem(last=False)[1])
    for old in [built] if existing is not None else evicted:
        old.close()
    return existing or built
