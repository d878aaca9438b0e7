"""The HTTP adapter (httpx) of the results API: POST and lookup.

Clients are injected, so tests can hand them a transport; the results API answers a repeated
`Idempotency-Key` without storing twice. Page downloads have their own adapter with the address
guard and limits: `qbq.intake.fetch`.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx

from qbq.errors import DeliveryError

__all__ = ["HttpClient", "lookup_results", "make_http_client", "post_results", "safe_url"]

HttpClient = httpx.Client


def make_http_client(*, timeout_s: float, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(timeout=timeout_s, headers=headers, follow_redirects=True)


def safe_url(url: str) -> str:
    """A URL without its query string (presigned URLs carry credentials there)."""
    return url.split("?", 1)[0]


def post_results(client: httpx.Client, url: str, payload: dict[str, Any],
                 idempotency_key: str) -> int:
    """POST the payload once; return the status code (2xx) or raise `DeliveryError`."""
    try:
        response = client.post(url, content=json.dumps(payload).encode(),
                               headers={"Idempotency-Key": idempotency_key,
                                        "Content-Type": "application/json"})
    except httpx.HTTPError as exc:
        raise DeliveryError(
            f"results API unreachable at {safe_url(url)}: {type(exc).__name__}") from exc
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"results API answered {response.status_code}",
                            status_code=response.status_code)
    return response.status_code


def lookup_results(client: httpx.Client, url_template: str, idempotency_key: str) -> bool:
    """Whether the results API already holds the payload sent under `idempotency_key`.

    `url_template` contains `{key}` (e.g. "https://platform/api/results/{key}"): 200 means it
    arrived, 404 that it did not; anything else is a `DeliveryError` (we cannot tell).
    """
    url = url_template.replace("{key}", quote(idempotency_key, safe=""))
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        raise DeliveryError(
            f"results API lookup unreachable at {safe_url(url)}: {type(exc).__name__}") from exc
    if response.status_code == 200:
        return True
    if response.status_code == 404:
        return False
    raise DeliveryError(f"results API lookup answered {response.status_code}",
                        status_code=response.status_code)
