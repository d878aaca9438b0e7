"""The shared limiter backends for several hosts (Redis, PostgreSQL) keep one state per key:
what one sender reserves or pauses, every other sender of the key sees."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from qbq.limiter import Limits, RateLimiter, make_backend
from tests.support import PgServer, require_pg

REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture(params=["redis", "postgres"])
def backend_url(request: pytest.FixtureRequest, pg_server: PgServer | None) -> Iterator[str]:
    if request.param == "redis":
        try:
            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        except redis.ConnectionError as exc:
            pytest.fail(f"Redis must be reachable at {REDIS_URL}: {exc}")
        yield REDIS_URL
    else:
        yield require_pg(pg_server).create()


def _limiter(url: str, key: str, starts: list[float]) -> RateLimiter:
    """A limiter that sleeps for nothing and records when each wait would end (wall seconds),
    so the schedule it hands out does not depend on how busy the machine is."""
    kind = "redis" if url.startswith("redis") else "postgres"
    # a new backend object each time, as a separate process or host would have
    return RateLimiter(make_backend(kind, url=url, folder=None),  # type: ignore[arg-type]
                       Limits(rpm=600, tpm=10_000_000), key,
                       sleep=lambda s: starts.append(time.time() + s))


def test_reservations_and_pauses_are_shared_across_backend_clients(backend_url: str) -> None:
    key = uuid.uuid4().hex
    a_sleeps: list[float] = []
    b_sleeps: list[float] = []
    a, b = _limiter(backend_url, key, a_sleeps), _limiter(backend_url, key, b_sleeps)

    # 600 a minute = 10 a second, burst 10: 30 reservations from two clients and 3 threads
    def reserve(limiter: RateLimiter) -> None:
        for _ in range(5):
            limiter.acquire(100)

    threads = [threading.Thread(target=reserve, args=(x,)) for x in (a, b, a, b, a, b)]
    began = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # the 30 slots are spread at 0.1 s after the first 10, whichever client took them: the last
    # starts 2 s after the first reservation (two unshared buckets would give each 15 slots,
    # the last 0.5 s after the first)
    last = max(a_sleeps + b_sleeps) - began
    assert 1.9 <= last <= 4.0, sorted(x - began for x in a_sleeps + b_sleeps)

    a.cool_down(30.0)
    assert 25.0 <= b.paused_for() <= 30.0  # one sender's 429 pauses the other client too
