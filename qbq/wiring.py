"""The one place that builds the outside world (store, model provider, HTTP) from settings.

Clients are built once per process and shared by every thread of a flow run.
"""

from __future__ import annotations

import hashlib
import os
import threading

import httpx

from qbq.http import make_http_client
from qbq.provider import ChatProvider, OpenAIChatProvider, make_openai_client
from qbq.settings import QbqSettings
from qbq.store import Store

__all__ = ["get_http_client", "get_provider", "get_store", "store_fingerprint"]

_lock = threading.Lock()
_stores: dict[str, Store] = {}
_providers: dict[tuple[str | None, str | None, str | None, float], ChatProvider] = {}
_http: dict[tuple[float, str | None], httpx.Client] = {}


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
    """The OpenAI provider; OPENAI_API_KEY / OPENAI_BASE_URL come from the environment."""
    api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    base_url = settings.openai_base_url or os.environ.get("OPENAI_BASE_URL")
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
