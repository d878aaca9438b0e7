"""The simulator's OpenAI-style rate limits, latency model and timeline, through the real SDK.

`time_scale` compresses the one-minute windows into a second or two of wall time.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest

from qbq.catalog import get_model_spec
from qbq.simulator import BackgroundServer, SimConfig, SimState, create_app
from qbq.simulator.limits import openai_duration

MODEL = "gpt-4.1-mini"
HI: list[Any] = [{"role": "user", "content": "hi"}]
DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s|(\d+)ms)$")
LIMIT_HEADERS = {
    f"x-ratelimit-{what}-{dim}"
    for what in ("limit", "remaining", "reset")
    for dim in ("requests", "tokens")
}


def seconds(duration: str) -> float:
    """An OpenAI duration header ("1.5s", "6m0s", "20ms") in seconds."""
    match = DURATION.match(duration)
    assert match, duration
    hours, minutes, secs, ms = match.groups()
    return (
        int(hours or 0) * 3600
        + int(minutes or 0) * 60
        + float(secs or 0)
        + int(ms or 0) / 1000
    )


@contextmanager
def simulator(**settings: Any) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(SimConfig(**settings))) as server:
        yield server


@contextmanager
def sdk(server: BackgroundServer, key: str = "sk-test-a") -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0) as client:
        yield client


def ask(client: openai.OpenAI, max_tokens: int | None = 10) -> Any:
    """One raw chat call (headers + parsed body available)."""
    return client.chat.completions.with_raw_response.create(
        model=MODEL, messages=HI, max_completion_tokens=max_tokens
    )


def stats(server: BackgroundServer) -> Any:
    return httpx.get(server.url + "/_sim/stats", timeout=10).json()


def configure(server: BackgroundServer, **changes: Any) -> httpx.Response:
    return httpx.post(server.url + "/_sim/config", json=changes, timeout=10)


def test_duration_format() -> None:
    assert openai_duration(0) == "0s"
    assert openai_duration(0.02) == "20ms"
    assert openai_duration(0.0201) == "21ms"  # rounded up: waiting that long is enough
    assert openai_duration(1) == "1s"
    assert openai_duration(1.2) == "1.2s"
    assert openai_duration(8.64) == "8.64s"
    assert openai_duration(360) == "6m0s"
    assert openai_duration(3723.5) == "1h2m3.5s"


def test_headers_present_and_decreasing() -> None:
    # Few tokens per minute, so the refill between requests (0.1 token per ms) stays small.
    with simulator(rpm=100, tpm=6000) as sim, sdk(sim) as client:
        started = time.monotonic()
        raws = [ask(client) for _ in range(3)]
        elapsed = time.monotonic() - started
        prompt = raws[0].parse().usage.prompt_tokens
        for raw in raws:
            assert set(raw.headers) >= LIMIT_HEADERS
            assert raw.headers["x-ratelimit-limit-requests"] == "100"
            assert raw.headers["x-ratelimit-limit-tokens"] == "6000"
            assert DURATION.match(raw.headers["x-ratelimit-reset-requests"])
            assert DURATION.match(raw.headers["x-ratelimit-reset-tokens"])
        # Each answer reports what is left after its charge, plus the refill since the first
        # (at most the measured time's worth, so a loaded machine cannot make this flaky).
        remaining = [int(r.headers["x-ratelimit-remaining-requests"]) for r in raws]
        assert remaining[0] == 99
        for i, left in enumerate(remaining):
            assert 99 - i <= left <= 99 - i + elapsed * 100 / 60
        tokens = [int(r.headers["x-ratelimit-remaining-tokens"]) for r in raws]
        charged = prompt + 10
        assert tokens[0] == 6000 - charged
        for i, left in enumerate(tokens):
            assert 6000 - (i + 1) * charged <= left <= 6000 - (i + 1) * charged + elapsed * 100 + 1
        # One request refills in 60/100 s; the first answer says so.
        assert seconds(raws[0].headers["x-ratelimit-reset-requests"]) == pytest.approx(0.6, abs=0.01)


def test_unlimited_dimension_has_no_headers() -> None:
    with simulator(rpm=10) as sim, sdk(sim) as client:
        raw = ask(client)
        assert raw.headers["x-ratelimit-limit-requests"] == "10"
        assert "x-ratelimit-limit-tokens" not in raw.headers


def test_rpm_exceeded_then_retry_after_succeeds() -> None:
    # 3 requests per simulated minute, 20x faster: one request back per wall second.
    with simulator(rpm=3, time_scale=20) as sim, sdk(sim) as client:
        started = time.monotonic()
        for _ in range(3):
            ask(client)
        with pytest.raises(openai.RateLimitError) as refused:
            ask(client)
        elapsed = time.monotonic() - started
        error = refused.value
        assert error.status_code == 429
        assert error.code == "rate_limit_exceeded"
        assert isinstance(error.body, dict) and error.body["type"] == "requests"
        assert re.match(
            rf"Rate limit reached for {MODEL} in organization \S+ on requests per min \(RPM\): "
            r"Limit 3, Used 3, Requested 1\. Please try again in [\d.]+m?s\.",
            error.body["message"],
        ), error.body["message"]
        headers = error.response.headers
        assert {h for h in LIMIT_HEADERS if h.endswith("requests")} <= set(headers)
        assert headers["x-ratelimit-remaining-requests"] == "0"
        # the limit per wall minute: 3 a simulated minute, 20 simulated minutes a wall minute
        assert headers["x-ratelimit-limit-requests"] == "60"
        retry_after = float(headers["retry-after"])
        assert int(headers["retry-after-ms"]) == pytest.approx(retry_after * 1000, abs=1)
        # time_scale compresses the wait: 20 simulated seconds are reported as 1 wall second,
        # less what has come back since the first request (measured: load cannot flake this).
        assert 1.0 - elapsed - 0.01 <= retry_after <= 1.0

        time.sleep(retry_after)
        assert ask(client).parse().choices[0].finish_reason in ("stop", "length")

        snapshot = stats(sim)
        assert snapshot["by_status"] == {"200": 4, "429": 1}
        assert snapshot["limits"] == {"rpm": 3, "tpm": None}
        assert snapshot["time_scale"] == 20


def test_refused_requests_count_against_the_limit() -> None:
    with simulator(rpm=3, time_scale=20) as sim, sdk(sim) as client:
        for _ in range(3):
            ask(client)
        with pytest.raises(openai.RateLimitError) as first:
            ask(client)
        assert float(first.value.response.headers["retry-after"]) > 0.8
        # Half a request has come back; the refused request spends it, so the wait is a full
        # request again (never below zero), not the half left.
        time.sleep(0.5)
        with pytest.raises(openai.RateLimitError) as second:
            ask(client)
        assert float(second.value.response.headers["retry-after"]) > 0.8


def test_tpm_charges_prompt_plus_completion_budget() -> None:
    with simulator(tpm=3000) as sim, sdk(sim) as client:
        started = time.monotonic()
        first = ask(client, max_tokens=1000)
        prompt = first.parse().usage.prompt_tokens
        charged = prompt + 1000
        assert int(first.headers["x-ratelimit-remaining-tokens"]) == 3000 - charged
        second = ask(client, max_tokens=1000)
        # The bucket refills 50 tokens per second between the two charges: at most the time
        # both requests took (measured, so a loaded machine cannot make this flaky).
        refill = math.ceil(50 * (time.monotonic() - started))
        assert 0 <= int(second.headers["x-ratelimit-remaining-tokens"]) - (3000 - 2 * charged) <= refill
        with pytest.raises(openai.RateLimitError) as refused:
            ask(client, max_tokens=1000)
        body = refused.value.body
        assert isinstance(body, dict) and body["type"] == "tokens"
        pattern = r"on tokens per min \(TPM\): Limit 3000, Used (\d+), Requested (\d+)\."
        used = re.search(pattern, body["message"])
        assert used, body["message"]
        # Used: the two charges, less the refill since (50 tokens per second).
        refill = math.ceil(50 * (time.monotonic() - started))
        assert 2 * charged - refill <= int(used[1]) <= 2 * charged
        assert int(used[2]) == charged
        assert float(refused.value.response.headers["retry-after"]) > 0

        # No budget set: the model's maximum output is charged, more than the whole limit.
        with pytest.raises(openai.RateLimitError) as too_large:
            ask(client, max_tokens=None)
        body = too_large.value.body
        assert isinstance(body, dict) and body["type"] == "tokens"
        requested = prompt + get_model_spec(MODEL).max_output_tokens
        assert body["message"].startswith(f"Request too large for {MODEL}")
        assert f"Limit 3000, Requested {requested}" in body["message"]
        assert "retry-after" not in too_large.value.response.headers

        tokens = sum(s["tokens"] for s in stats(sim)["timeline"])
        assert tokens == 2 * charged  # refused requests are charged no tokens


def test_refill_is_continuous() -> None:
    # 33,000 tokens per simulated minute, 30x faster: the bucket refills fully in 2 wall s.
    with simulator(tpm=33_000, time_scale=30) as sim, sdk(sim) as client:
        big = get_model_spec(MODEL).max_output_tokens
        drained_at = time.monotonic()
        drained = ask(client, max_tokens=big)
        left = int(drained.headers["x-ratelimit-remaining-tokens"])
        assert left < 1000
        reset = seconds(drained.headers["x-ratelimit-reset-tokens"])
        assert reset == pytest.approx(2.0 * (33_000 - left) / 33_000, abs=0.01)

        time.sleep(1.0)  # half the window
        probe = ask(client, max_tokens=1)
        since = time.monotonic() - drained_at
        charged = probe.parse().usage.prompt_tokens + 1
        back = int(probe.headers["x-ratelimit-remaining-tokens"]) + charged - left
        # 16,500 tokens per wall second came back: at least the second slept, at most the
        # whole measured time (a loaded machine stretches it, never shrinks it).
        assert 16_500 * 0.99 <= back <= 16_500 * since + 1


def test_api_keys_have_separate_buckets() -> None:
    with simulator(rpm=2) as sim, sdk(sim, "sk-key-a") as a, sdk(sim, "sk-key-b") as b:
        ask(a)
        ask(a)
        with pytest.raises(openai.RateLimitError):
            ask(a)
        assert ask(b).headers["x-ratelimit-remaining-requests"] == "1"
        ask(b)
        with pytest.raises(openai.RateLimitError):
            ask(b)


def test_timeline_adds_up() -> None:
    # 30 requests per simulated minute, 30x faster; each answer takes 3 simulated seconds.
    with simulator(rpm=30, time_scale=30, latency_ms=3000) as sim, sdk(sim) as client:
        statuses: list[int] = []
        charged: list[int] = []

        def one(_: int) -> None:
            try:
                raw = ask(client, max_tokens=5)
            except openai.RateLimitError:
                statuses.append(429)
                return
            statuses.append(200)
            charged.append(raw.parse().usage.prompt_tokens + 5)

        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(100)))
        elapsed = time.monotonic() - start

        snapshot = stats(sim)
        timeline = snapshot["timeline"]
        assert statuses.count(429) > 0 and statuses.count(200) >= 30
        assert [s["t"] for s in timeline] == list(range(len(timeline)))
        assert len(timeline) == pytest.approx(elapsed * 30, abs=30)
        assert sum(s["started"] for s in timeline) == statuses.count(200)
        assert sum(s["rejected"] for s in timeline) == statuses.count(429)
        assert sum(s["tokens"] for s in timeline) == sum(charged)
        assert snapshot["by_status"] == {"200": statuses.count(200), "429": statuses.count(429)}
        assert 2 <= max(s["in_flight"] for s in timeline) <= 8
        # Never more than the bucket allows: a full minute plus what refills during the span.
        for t in range(len(timeline)):
            window = timeline[t : t + 60]
            assert sum(s["started"] for s in window) <= 30 + len(window) / 2 + 1

        assert httpx.post(sim.url + "/_sim/reset", timeout=10).status_code == 200
        cleared = stats(sim)
        assert cleared["timeline"] == [] and cleared["requests"] == 0
        # Reset refills the buckets too.
        assert ask(client).headers["x-ratelimit-remaining-requests"] == "29"


def test_config_changes_limits_live() -> None:
    with simulator() as sim, sdk(sim) as client:
        assert "x-ratelimit-limit-requests" not in ask(client).headers
        assert configure(sim, rpm=2).json()["rpm"] == 2
        ask(client)
        ask(client)
        for _ in range(3):  # a 429 storm
            with pytest.raises(openai.RateLimitError):
                ask(client)
        # Raised limits keep what was used: 2 of 1000, so 997 are left after this request.
        assert configure(sim, rpm=1000).status_code == 200
        assert ask(client).headers["x-ratelimit-remaining-requests"] == "997"
        assert configure(sim, rpm=None).status_code == 200
        assert "x-ratelimit-limit-requests" not in ask(client).headers
        assert stats(sim)["by_status"] == {"200": 5, "429": 3}

        current = httpx.get(sim.url + "/_sim/config", timeout=10).json()
        assert current["rpm"] is None and "api_key" not in current

        for bad in ({"time_scale": 5}, {"rpm": 0}, {"faults": {"explode": 0.5}}, {"nope": 1}):
            response = configure(sim, **bad)
            assert response.status_code == 400, bad
            assert response.json()["error"]["message"].startswith("Invalid simulator settings")


def test_latency_model_is_scaled_and_overlaps() -> None:
    # 2 simulated seconds + 100 ms per output token, 20x faster.
    with simulator(latency_ms=2000, ms_per_output_token=100, time_scale=20) as sim, sdk(sim) as c:
        start = time.monotonic()
        completion = ask(c, max_tokens=None).parse()
        took = time.monotonic() - start
        tokens = completion.usage.completion_tokens
        expected = (2000 + 100 * tokens) / 1000 / 20
        # Never sooner than the scaled latency, and nowhere near the unscaled one.
        assert expected <= took < 20 * expected

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda _: ask(c, max_tokens=None), range(6)))
        # They wait together: the simulator counted several in flight at once.
        assert max(second["in_flight"] for second in stats(sim)["timeline"]) >= 2


def test_jitter_is_lognormal_with_median_one_and_seeded() -> None:
    def draws(seed: int) -> list[float]:
        state = SimState(SimConfig(latency_ms=1000, jitter=0.5, seed=seed), [])
        return [state.latency_s(0) for _ in range(2000)]

    first = draws(7)
    assert first == draws(7)
    assert first != draws(8)
    assert statistics.median(first) == pytest.approx(1.0, rel=0.05)
    assert min(first) < 0.6 and max(first) > 1.6


def test_limiter_on_a_fixed_clock() -> None:
    from qbq.simulator.limits import ProviderBuckets

    limiter = ProviderBuckets(rpm=2, tpm=600)  # tokens refill at 10 per simulated second
    assert limiter.acquire("k", 300, now=0).accepted
    refused = limiter.acquire("k", 400, now=0)
    assert not refused.accepted and refused.limited == "tokens"
    assert (refused.used, refused.requested) == (300, 400)
    # 100 tokens short (10 s), but the refusal spent the last request: 30 s until one is back.
    assert refused.requests is not None and refused.requests.remaining == 0
    assert refused.wait_s == pytest.approx(30.0)
    assert limiter.acquire("k", 400, now=30).accepted  # 30 s: +300 tokens, +1 request
    too_large = limiter.acquire("k", 601, now=1000)
    assert too_large.wait_s is None and too_large.limited == "tokens"
    injected = limiter.refuse("other", 10, now=0)
    assert injected.limited == "requests" and injected.wait_s == 0.0
    limiter.configure(rpm=None, tpm=1200, now=1000)
    outcome = limiter.acquire("k", 1000, now=1000)
    assert outcome.accepted and outcome.requests is None
    assert outcome.tokens is not None and outcome.tokens.limit == 1200


def test_requests_are_charged_when_they_arrived_not_when_the_simulator_got_to_them() -> None:
    """A client paces three requests at the limit (1 a wall second, with room); the simulator's
    own work then holds all three until the same moment. Charged at arrival they all fit;
    charged when processed, the second and third would be refused."""
    import asyncio

    from qbq.simulator.stages import enforce_rate_limits

    app = create_app(SimConfig(rpm=1, time_scale=60))  # one request back per wall second
    sim: SimState = app.state.sim
    held: list[float] = []
    release_at: list[float] = []

    async def slow_work(call: Any) -> None:  # decoding and counting, much delayed
        index = len(held)
        held.append(time.monotonic())
        if not release_at:
            release_at.append(time.monotonic() + 3.0)
        await asyncio.sleep(max(0.0, release_at[0] + 0.05 * index - time.monotonic()))

    sim.stages.insert(sim.stages.index(enforce_rate_limits), slow_work)
    with BackgroundServer(app) as server, sdk(server) as client:
        statuses: list[int] = []

        def one() -> None:
            try:
                ask(client)
                statuses.append(200)
            except openai.RateLimitError:
                statuses.append(429)

        with ThreadPoolExecutor(3) as pool:
            futures = []
            for _ in range(3):
                futures.append(pool.submit(one))
                time.sleep(1.2)
            for future in futures:
                future.result()
        assert len(held) == 3 and held[2] < release_at[0]  # all three were held together
        assert statuses == [200, 200, 200]
        started = [s["t"] for s in stats(server)["timeline"] if s["started"]]
        # the timeline starts them at their arrivals, 1.2 wall s (72 simulated s) apart
        assert len(started) == 3
        assert [b - a for a, b in itertools.pairwise(started)] == [pytest.approx(72, abs=15)] * 2


def test_requests_are_charged_in_arrival_order_whichever_finishes_its_checks_first() -> None:
    """The first request's images take 1.5 wall s to check, the second (sent 1.2 s later) none:
    charged in arrival order both fit one request a wall second; charged in the order their
    checks finished, the first would be refused (buckets do not refill backwards)."""
    import asyncio

    from qbq.simulator.stages import enforce_rate_limits

    app = create_app(SimConfig(rpm=1, time_scale=60))
    sim: SimState = app.state.sim
    order: list[int] = []

    async def uneven_work(call: Any) -> None:
        first = not order
        order.append(call.ticket)
        await asyncio.sleep(1.5 if first else 0.0)

    sim.stages.insert(sim.stages.index(enforce_rate_limits), uneven_work)
    with BackgroundServer(app) as server, sdk(server) as client:
        statuses: dict[int, int] = {}

        def one(i: int) -> None:
            try:
                ask(client)
                statuses[i] = 200
            except openai.RateLimitError:
                statuses[i] = 429

        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(one, 0)
            time.sleep(1.2)
            second = pool.submit(one, 1)
            first.result()
            second.result()
        assert order == sorted(order) and len(order) == 2
        assert statuses == {0: 200, 1: 200}
