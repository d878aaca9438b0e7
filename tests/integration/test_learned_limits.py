"""Limits learned from the provider: with the simulator's limits set and no QBQ_RPM/QBQ_TPM,
two senders of one key (two limiter clients on one shared file backend, as two processes hold
them) grade together at the limits the simulator states, with no 429."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx

from qbq.guards import InFlightLimited, RatePaced
from qbq.limiter import FileBackend, RateLimiter
from qbq.provider import ChatRequest, OpenAIChatProvider, make_openai_client
from qbq.simulator import BackgroundServer, SimConfig, create_app

RPM = 300  # 5 a second: a burst of 5, then one every 0.2 s
REQUESTS_PER_THREAD = 3
THREADS_PER_SENDER = 3


def _sender(server: BackgroundServer, folder: Path) -> RatePaced | InFlightLimited:
    """One process's stack: its own backend object and SDK client; limits unset."""
    client = make_openai_client(api_key="sk-learn", base_url=server.url + "/v1",
                                loopback_only=True)
    limiter = RateLimiter(FileBackend(folder), None, "sk-learn-key", poll_s=0.01)
    paced = RatePaced(OpenAIChatProvider(client), limiter, fallback_pause_s=lambda n: 1.0)
    return InFlightLimited(paced, threading.Semaphore(4))


def test_two_senders_pace_at_the_limits_the_simulator_states(tmp_path: Path) -> None:
    request = ChatRequest(model="gpt-4.1-mini", messages=[{"role": "user", "content": "hi"}],
                          response_format={"type": "text"}, max_completion_tokens=50,
                          planned_prompt_tokens=10)
    with BackgroundServer(create_app(SimConfig(rpm=RPM, tpm=10_000_000))) as server:
        senders = [_sender(server, tmp_path / "limiter") for _ in range(2)]
        errors: list[BaseException] = []

        def work(sender: Any) -> None:
            try:
                for _ in range(REQUESTS_PER_THREAD):
                    sender.complete(request)
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(s,))
                   for s in senders for _ in range(THREADS_PER_SENDER)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stats = httpx.get(server.url + "/_sim/stats", timeout=10).json()

    assert errors == []
    total = 2 * THREADS_PER_SENDER * REQUESTS_PER_THREAD
    assert stats["by_status"] == {"200": total}  # 0 × 429
    timeline = stats["timeline"]
    starts = [s["started"] for s in timeline]
    # within the stated limit in every 60 s window of the timeline
    assert all(sum(starts[i:i + 60]) <= RPM for i in range(len(starts)))
    # paced at the learned 5 a second (a burst of 5 after the probe), not sent at once: an
    # unpaced sender would start all 18 in the first second
    assert max(starts) <= 1 + 5 + 5 + 1
    assert len(timeline) >= (total - 1 - 5) // 5
