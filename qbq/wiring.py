"""The one place that builds the outside world (store, model provider, HTTP) from settings.

Clients are built once per process and shared by every thread of a flow run.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import httpx

from qbq.errors import ConfigurationError
from qbq.grading import GradingDeps
from qbq.http import make_http_client
from qbq.limiter import Backend, Limits, RateLimiter, key_id, make_backend
from qbq.planning import BatchPlan
from qbq.provider import ChatProvider, OpenAIChatProvider, make_openai_client
from qbq.recovery import BatchSizeHint, CircuitBreaker, RetryBudget, RunGuards
from qbq.settings import GradingPolicy, QbqSettings
from qbq.store import Store

__all__ = ["get_grading_deps", "get_http_client", "get_limiter", "get_provider", "get_store",
           "store_fingerprint"]

_lock = threading.Lock()
_stores: dict[str, Store] = {}
_providers: dict[tuple[str | None, str | None, str | None, float], ChatProvider] = {}
_http: dict[tuple[float, str | None], httpx.Client] = {}
_backends: dict[tuple[str, str | None, str], Backend] = {}
_guards: dict[str, RunGuards] = {}
_slots: dict[int, threading.BoundedSemaphore] = {}
_limiters: dict[tuple[object, ...], RateLimiter] = {}

MISSING_LIMITS = (
    "rate limits are not set: QBQ_RPM and QBQ_TPM must hold this API key's requests and tokens "
    "per minute for the model (OpenAI dashboard → Limits), or the OpenAIProvider block's rpm/tpm. "
    "A missing limit never means unthrottled; to grade without limits against a local simulator, "
    "set QBQ_UNTHROTTLED=true."
)


def get_store(settings: QbqSettings) -> Store:
    """The migrated store for the configured database URL (migrations run once per process)."""
    url = settings.database_url
    with _lock:
        store = _stores.get(url)
        if store is None:
            store = Store(url)
            store.migrate()
            _stores[url] = store
        return store


def store_fingerprint(settings: QbqSettings) -> str:
    """Names this database (URL and the id it got at creation), so that a cached task result
    is never taken for a batch that a different or re-created database does not hold."""
    store = get_store(settings)
    return hashlib.sha256(f"{store.url}|{store.instance_id()}".encode()).hexdigest()[:16]


def get_provider(settings: QbqSettings) -> ChatProvider:
    """The OpenAI provider; without QBQ_OPENAI_* settings, OPENAI_API_KEY / OPENAI_BASE_URL."""
    api_key, base_url = _api_identity(settings)
    key = (base_url, api_key, settings.openai_organization, settings.request_timeout_s)
    with _lock:
        provider = _providers.get(key)
        if provider is None:
            client = make_openai_client(api_key=api_key, base_url=base_url,
                                        organization=settings.openai_organization,
                                        timeout_s=settings.request_timeout_s)
            provider = OpenAIChatProvider(client)
            _providers[key] = provider
        return provider


def get_http_client(settings: QbqSettings) -> httpx.Client:
    token = settings.results_api_token.get_secret_value() if settings.results_api_token else None
    key = (settings.delivery_timeout_s, token)
    with _lock:
        client = _http.get(key)
        if client is None:
            client = make_http_client(timeout_s=settings.delivery_timeout_s, token=token)
            _http[key] = client
        return client


def _api_identity(settings: QbqSettings) -> tuple[str | None, str | None]:
    api_key = (settings.openai_api_key.get_secret_value() if settings.openai_api_key
               else os.environ.get("OPENAI_API_KEY"))
    base_url = settings.openai_base_url or os.environ.get("OPENAI_BASE_URL")
    return api_key, base_url


def get_limiter(settings: QbqSettings) -> RateLimiter | None:
    """The limiter shared by every sender of this API key; None only when explicitly unthrottled."""
    if settings.unthrottled:
        return None
    if settings.rpm is None or settings.tpm is None:
        raise ConfigurationError(MISSING_LIMITS)
    folder = str(Path(settings.limiter_dir).expanduser())
    backend_key = (settings.limiter_backend, settings.limiter_url, folder)
    with _lock:
        backend = _backends.get(backend_key)
        if backend is None:
            backend = make_backend(settings.limiter_backend, url=settings.limiter_url,
                                   folder=Path(folder))
            _backends[backend_key] = backend
    limits = Limits(settings.rpm, settings.tpm, burst_s=settings.limiter_burst_s)
    key = key_id(*_api_identity(settings))
    with _lock:  # one instance per key and limits, so its threads share group commits
        return _limiters.setdefault((backend_key, limits, key), RateLimiter(backend, limits, key))


def _run_guards(plan: BatchPlan, policy: GradingPolicy, limiter: RateLimiter | None) -> RunGuards:
    with _lock:
        guards = _guards.get(plan.process_id)
        if guards is None:
            planned = plan.prompt_tokens + sum(b.max_completion_tokens for b in plan.batches)
            attempts = policy.retry_budget_attempts
            guards = RunGuards(
                breaker=CircuitBreaker(threshold=policy.breaker_threshold,
                                       cooldown_s=policy.breaker_cooldown_s,
                                       give_up_after_s=policy.breaker_give_up_s,
                                       on_open=limiter.cool_down if limiter else None),
                budget=RetryBudget(
                    max_retries=attempts if attempts is not None else 2 * len(plan.batches) + 10,
                    max_tokens=int(policy.retry_budget_token_ratio * planned)),
                size_hint=BatchSizeHint(),
            )
            _guards[plan.process_id] = guards
        return guards


def get_grading_deps(settings: QbqSettings, policy: GradingPolicy, plan: BatchPlan) -> GradingDeps:
    """Everything `grade_batch` needs, shared by the batches of one run in this process."""
    limiter = get_limiter(settings)
    with _lock:
        slots = _slots.setdefault(settings.max_in_flight,
                                  threading.BoundedSemaphore(settings.max_in_flight))
    return GradingDeps(provider=get_provider(settings), store=get_store(settings), policy=policy,
                       guards=_run_guards(plan, policy, limiter), limiter=limiter,
                       in_flight=slots, keep_raw_responses=settings.keep_raw_responses)


def forget_run(process_id: str) -> None:
    """Drop a finished run's guards (a rerun starts with a fresh budget and breaker)."""
    with _lock:
        _guards.pop(process_id, None)
