"""The HTTP adapter (httpx) of the results API: POST and lookup.

Clients are injected, so tests can hand them a transport; the results API answers a repeated
`Idempotency-Key` without storing twice. Page downloads have their own adapter with the address
guard and limits: `qbq.intake.fetch`.

Delivery never follows a redirect: a 307/308 would re-POST names and feedback to whatever host
it names, and a 301/302/303 turns the POST into a body-less GET whose 200 would look like a
delivery. A 3xx is a failed delivery naming its `Location`. Each POST and lookup also has an
overall deadline (`deadline_s`), not only httpx's per-read timeout, so a server that drips its
answer cannot hold a sender forever.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from qbq.errors import DeliveryError

__all__ = ["HttpClient", "lookup_results", "make_http_client", "post_results", "safe_url"]

HttpClient = httpx.Client
_T = TypeVar("_T")


def make_http_client(*, timeout_s: float, token: str | None = None,
                     transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """The results API client: `timeout_s` per connect/read/write, bearer `token`, and never
    following redirects. `transport` replaces the network (tests)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(timeout=timeout_s, headers=headers, follow_redirects=False,
                        transport=transport)


def _within(deadline_s: float | None, what: str, call: Callable[[], _T]) -> _T:
    """`call()`, or `DeliveryError` once `deadline_s` seconds pass without its answer.

    The call goes on in its thread until httpx's own timeout ends it; a POST that still lands
    afterwards is harmless, as the results API keeps one payload per Idempotency-Key.
    """
    if deadline_s is None:
        return call()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qbq-delivery")
    try:
        return pool.submit(call).result(timeout=deadline_s)
    except FutureTimeout:
        raise DeliveryError(f"{what}: no complete answer within the {deadline_s:g} s "
                            "deadline") from None
    finally:
        pool.shutdown(wait=False)


def _refuse_redirect(response: httpx.Response, what: str) -> None:
    if response.is_redirect or 300 <= response.status_code < 400:
        location = safe_url(response.headers.get("Location", "(no Location)"))
        raise DeliveryError(
            f"{what} answered {response.status_code} redirecting to {location}; not followed "
            "(a redirect would resend the payload elsewhere or drop its body); fix "
            "QBQ_RESULTS_API_URL", status_code=response.status_code)


def safe_url(url: str) -> str:
    """A URL without its query string (presigned URLs carry credentials there)."""
    return url.split("?", 1)[0]


def post_results(client: httpx.Client, url: str, payload: dict[str, Any],
                 idempotency_key: str, *, deadline_s: float | None = None) -> int:
    """POST the payload once to `url` (never to a redirect's target); return the status code
    (2xx) or raise `DeliveryError` (unreachable, any other status, a 3xx naming its Location,
    or no answer within `deadline_s` seconds)."""
    where = f"results API at {safe_url(url)}"
    try:
        response = _within(deadline_s, where, lambda: client.post(
            url, content=json.dumps(payload).encode(),
            headers={"Idempotency-Key": idempotency_key, "Content-Type": "application/json"}))
    except httpx.HTTPError as exc:
        raise DeliveryError(
            f"results API unreachable at {safe_url(url)}: {type(exc).__name__}") from exc
    _refuse_redirect(response, where)
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"results API answered {response.status_code}",
                            status_code=response.status_code)
    return response.status_code


def lookup_results(client: httpx.Client, url_template: str, idempotency_key: str, *,
                   deadline_s: float | None = None) -> bool:
    """Whether the results API already holds the payload sent under `idempotency_key`.

    `url_template` contains `{key}` (e.g. "https://platform/api/results/{key}"): 200 means it
    arrived, 404 that it did not; anything else (a 3xx too, never followed, or no answer within
    `deadline_s` seconds) is a `DeliveryError` (we cannot tell).
    """
    url = url_template.replace("{key}", quote(idempotency_key, safe=""))
    where = f"results API lookup at {safe_url(url)}"
    try:
        response = _within(deadline_s, where, lambda: client.get(url))
    except httpx.HTTPError as exc:
        raise DeliveryError(
            f"results API lookup unreachable at {safe_url(url)}: {type(exc).__name__}") from exc
    _refuse_redirect(response, where)
    if response.status_code == 200:
        return True
    if response.status_code == 404:
        return False
    raise DeliveryError(f"results API lookup answered {response.status_code}",
                        status_code=response.status_code)
