"""The GCRA limiter: exact pacing, window bounds, corrections, and sharing across processes."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qbq.errors import ConfigurationError
from qbq.limiter import (
    BucketState,
    FileBackend,
    Limits,
    MemoryBackend,
    RateLimiter,
    observe_remaining,
    pause,
    refund,
    reserve,
)


def _schedule(limits: Limits, arrivals: list[tuple[float, int]]) -> list[tuple[float, int]]:
    state = BucketState()
    out = []
    for now, tokens in arrivals:
        state, start = reserve(state, now, limits, tokens)
        assert start >= now
        out.append((start, tokens))
    return out


def _max_in_window(starts: list[tuple[float, int]], window: float) -> tuple[int, int]:
    starts = sorted(starts)
    most_req = most_tok = 0
    for i, (t0, _) in enumerate(starts):
        inside = [(t, n) for t, n in starts[i:] if t < t0 + window]
        most_req = max(most_req, len(inside))
        most_tok = max(most_tok, sum(n for _, n in inside))
    return most_req, most_tok


def test_equal_requests_are_paced_exactly_at_the_token_rate() -> None:
    limits = Limits(rpm=10_000, tpm=60_000)  # 1,000 tokens/s
    starts = [s for s, _ in _schedule(limits, [(0.0, 500)] * 10)]
    # one second of burst (1,000 tokens = 2 requests) at once, then one every 0.5 s
    assert starts[:2] == [0.0, 0.0]
    gaps = [b - a for a, b in itertools.pairwise(starts[1:])]
    assert all(abs(g - 0.5) < 1e-9 for g in gaps)


def test_requests_worth_seconds_of_rate_go_back_to_back_at_the_full_rate() -> None:
    """4,000-token requests on 1,000 tokens/s with a 1 s burst: one every 4 s, no idle gap
    (waiting until the bucket could hold a whole request would space them 7 s apart)."""
    limits = Limits(rpm=10_000, tpm=60_000)
    starts = [s for s, _ in _schedule(limits, [(0.0, 4_000)] * 5)]
    assert starts == pytest.approx([0.0, 4.0, 8.0, 12.0, 16.0])


def test_request_rate_binds_when_tokens_are_plenty() -> None:
    limits = Limits(rpm=120, tpm=10_000_000)  # 2 requests/s
    starts = [s for s, _ in _schedule(limits, [(0.0, 10)] * 6)]
    assert starts == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.5, 2.0])


@settings(max_examples=60, deadline=None)
@given(
    rpm=st.integers(10, 2_000),
    tpm=st.integers(20_000, 2_000_000),
    burst=st.floats(0.5, 5.0),
    requests=st.lists(st.tuples(st.floats(0, 120), st.integers(1, 20_000)), min_size=1,
                      max_size=80),
)
def test_no_60s_window_exceeds_the_limit_plus_one_burst(rpm: int, tpm: int, burst: float,
                                                        requests: list[tuple[float, int]]) -> None:
    limits = Limits(rpm=rpm, tpm=tpm, burst_s=burst)
    arrivals = sorted((t, min(n, tpm)) for t, n in requests)
    starts = _schedule(limits, arrivals)
    most_req, most_tok = _max_in_window(starts, 60.0)
    biggest = max(n for _, n in arrivals)
    assert most_req <= rpm + limits.request_capacity + 1
    assert most_tok <= tpm + limits.token_capacity + biggest


def test_a_request_above_the_minute_limit_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="can never fit"):
        reserve(BucketState(), 0.0, Limits(rpm=10, tpm=1_000), 1_001)


def test_refund_observe_and_pause() -> None:
    limits = Limits(rpm=600, tpm=60_000)  # 1,000 tokens/s, capacity 1,000
    state, _ = reserve(BucketState(), 100.0, limits, 1_000)
    assert state.t_tok == pytest.approx(101.0)
    assert refund(state, limits, 400).t_tok == pytest.approx(100.6)
    # the provider says its bucket is nearly empty: wait until one burst is back
    assert observe_remaining(state, 100.0, limits, None, 0).t_tok == pytest.approx(101.0)
    assert observe_remaining(state, 100.0, limits, None, 10_000).t_tok == state.t_tok
    paused = pause(state, 130.0)
    _, start = reserve(paused, 100.0, limits, 10)
    assert start == 130.0


def test_limiter_sleeps_until_its_reservation() -> None:
    slept: list[float] = []
    limiter = RateLimiter(MemoryBackend(), Limits(rpm=60, tpm=1_000_000), "k", sleep=slept.append)
    for _ in range(3):
        limiter.acquire(10)
    assert slept[0] == pytest.approx(1.0, abs=0.05)
    assert slept[1] == pytest.approx(2.0, abs=0.05)


def _worker(folder: str, out: str, n: int) -> None:
    limiter = RateLimiter(FileBackend(Path(folder)), Limits(rpm=3_000, tpm=10_000_000), "shared")
    starts = []
    for _ in range(n):
        limiter.acquire(100)
        starts.append(time.time())
    Path(out).write_text(json.dumps(starts))


def test_two_processes_share_one_file_backed_limit(tmp_path: Path) -> None:
    """3,000 RPM = 50/s shared by two processes: together they stay at 50/s (+ one burst)."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "lim"), str(tmp_path / f"{i}.json"),
                                               60)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    starts = [(t, 100) for i in range(2)
              for t in json.loads((tmp_path / f"{i}.json").read_text())]
    most_req, _ = _max_in_window(starts, 1.0)
    # 50 per second plus a burst of 50 (one second) plus scheduling slack of one request
    assert most_req <= 50 + 50 + 1
    span = max(t for t, _ in starts) - min(t for t, _ in starts)
    # 120 requests at 50/s after a 50-request burst: at least (120 - 50) / 50 = 1.4 s
    assert span >= 1.3


def test_a_429_pauses_every_sender_of_the_key(tmp_path: Path) -> None:
    """Two limiters (as two processes would hold) on one file backend: one sender's 429 makes
    the other wait out the pause too, then both resume at the normal pace."""
    slept_a: list[float] = []
    slept_b: list[float] = []
    limits = Limits(rpm=6_000, tpm=10_000_000)
    a = RateLimiter(FileBackend(tmp_path), limits, "key", sleep=slept_a.append)
    b = RateLimiter(FileBackend(tmp_path), limits, "key", sleep=slept_b.append)
    a.acquire(100)
    a.cool_down(3.0)  # a got a 429 with retry-after: 3

    b.acquire(100)

    assert slept_b and 2.9 <= slept_b[0] <= 3.0
    assert b.paused_for() <= 3.0
    other = RateLimiter(FileBackend(tmp_path), limits, "another-key", sleep=slept_a.append)
    other.acquire(100)
    assert slept_a == []  # another API key is not paused


# --- limits learned from the provider's headers ----------------------------------------------

STATED = {"x-ratelimit-limit-requests": "600", "x-ratelimit-limit-tokens": "60000"}


def test_without_limits_one_probe_goes_first_and_its_headers_pace_every_sender(
        tmp_path: Path) -> None:
    """Two limiters on one file backend (two processes): the first request is a probe that
    holds the other sender back; once its reply states the limits, both pace at them."""
    slept_a: list[float] = []
    slept_b: list[float] = []
    a = RateLimiter(FileBackend(tmp_path), None, "key", sleep=slept_a.append, poll_s=0.01)
    b = RateLimiter(FileBackend(tmp_path), None, "key", sleep=slept_b.append, poll_s=0.01)

    probe = a.acquire(1_000)
    assert probe.probe and probe.limits is None and slept_a == []

    waits = 0

    def settle_during_b_wait(seconds: float) -> None:
        nonlocal waits
        waits += 1
        slept_b.append(seconds)
        if waits == 3:  # the probe's reply arrives while b waits
            a.settle(probe, 1_000, STATED)

    b._sleep = settle_during_b_wait
    paced = b.acquire(1_000)

    assert waits >= 3  # b waited for the probe rather than sending blind
    assert not paced.probe
    assert paced.limits == Limits(rpm=600, tpm=60_000)
    # 60,000 TPM = 1,000 tokens/s with a 1 s burst: the probe's 1,000 tokens filled the burst,
    # so b's 1,000 tokens start about 1 s after the probe's reply
    assert paced.start_at - probe.start_at == pytest.approx(1.0, abs=0.3)


def test_learned_limits_follow_a_change_the_provider_states(tmp_path: Path) -> None:
    limiter = RateLimiter(FileBackend(tmp_path), None, "key", sleep=lambda s: None)
    limiter.settle(limiter.acquire(100), 100, STATED)
    limiter.settle(limiter.acquire(100), 100, {"x-ratelimit-limit-requests": "60",
                                                "x-ratelimit-limit-tokens": "6000"})
    assert limiter.acquire(100).limits == Limits(rpm=60, tpm=6_000)


def test_a_provider_without_limit_headers_leaves_the_key_unpaced_and_says_so_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    slept: list[float] = []
    limiter = RateLimiter(FileBackend(tmp_path), None, "key", sleep=slept.append)
    limiter.settle(limiter.acquire(10**9), None, {})
    for _ in range(20):  # far beyond any burst: nothing waits
        reservation = limiter.acquire(10**9)
        assert reservation.limits is None and not reservation.probe
        limiter.settle(reservation, None, {})
    assert slept == []
    said = [r for r in caplog.records if "QBQ_MAX_IN_FLIGHT alone" in r.getMessage()]
    assert len(said) == 1


def test_a_probe_without_a_reply_lets_the_next_sender_probe(tmp_path: Path) -> None:
    limiter = RateLimiter(FileBackend(tmp_path), None, "key", sleep=lambda s: None)
    first = limiter.acquire(100)
    limiter.release(first)  # a 5xx or a timeout: no headers came
    assert limiter.acquire(100).probe


def test_explicit_limits_win_over_stated_ones() -> None:
    limits = Limits(rpm=60, tpm=1_000_000)
    limiter = RateLimiter(MemoryBackend(), limits, "k", sleep=lambda s: None)
    reservation = limiter.acquire(10)
    limiter.settle(reservation, 10, {"x-ratelimit-limit-requests": "100000",
                                     "x-ratelimit-limit-tokens": "100000000"})
    assert limiter.acquire(10).limits == limits
