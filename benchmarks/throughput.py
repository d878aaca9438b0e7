"""Throughput benchmark: how close qbq grades to the provider's limits, beside two baselines.

Drives the real `qbq grade` (a Prefect flow, in 1 or 2 concurrent processes sharing one API
key) against the OpenAI simulator with time compressed 60×, in four regimes — token-bound,
request-bound, latency/concurrency-bound, and realistic (requests of 6.4-13.8 s of the token
rate, 10.6 s on average, with 2,172 max_completion_tokens each, and qbq's default 1 s burst in
simulated time, so every request is far bigger than the burst) — and runs the same batches
through two baselines: Prefect's `rate_limit`/`concurrency` used directly, and a cookbook-style
processor (minute-sized token buckets, a fixed 15 s pause after a 429). Prints batches, ideal
makespan (from the limits), actual makespan, ratio (ideal/actual), 429s and per-batch
orchestration overhead, then the 1,000-batch overhead run. `--plot out.png` draws tokens/s and
requests in flight over time against the limit. The last line is a one-line summary.

`--learned` adds qbq runs without QBQ_RPM/QBQ_TPM: the first request probes alone, then
every process paces at the limits the simulator's x-ratelimit-limit-* headers state. Their
ideal adds one service time: until the probe's reply no sender knows the limits.

Usage: python benchmarks/throughput.py [--plot out.png] [--skip-overhead] [--batches 60]
       [--skip-baselines] [--learned] [--regime NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qbq.planning import PlannedBatch  # noqa: E402
from qbq.preparation import Prepared, prepare  # noqa: E402
from qbq.prompts import StudentPages, build_messages, response_format  # noqa: E402
from qbq.sample import write_sample  # noqa: E402
from qbq.settings import GradingPolicy, QbqSettings  # noqa: E402
from qbq.simulator import BackgroundServer, SimConfig, create_app, stamp_arrival  # noqa: E402
from qbq.testing.harness import batch_refs, buffer_body, pg_database, prefect_server  # noqa: E402

TIME_SCALE = 60.0
STUDENTS_PER_BATCH = 3


@dataclass(frozen=True)
class Regime:
    name: str
    sim_rpm: int | None  # per simulated minute
    sim_tpm: int | None
    latency_ms: float  # simulated
    max_in_flight: int
    students_per_batch: int = 3
    #: qbq's and the ideal sender's burst in real seconds; None: QBQ_BURST_S and IDEAL_BURST_S
    burst_s: float | None = None
    questions: int = 3
    #: each student's page count is drawn from this range (seeded), so request sizes spread
    pages: tuple[int, int] = (1, 1)

    def real_rate(self, per_sim_minute: int | None) -> float:
        """Per real second."""
        return math.inf if per_sim_minute is None else per_sim_minute / 60.0 * TIME_SCALE

    @property
    def latency_s(self) -> float:
        return self.latency_ms / 1000.0 / TIME_SCALE


# A simulated minute passes in one real second, so the provider's minute bucket holds one
# second of rate — like a provider that enforces its per-minute limits per second, and a much
# tighter test than a full minute's burst. Simulated per-minute limits equal real per-second rates.
REGIMES = (
    # ~3,400 tokens a batch: 12,000 tokens/s ≈ 3.5 batches/s; 0.15 s latency
    Regime("token-bound", sim_rpm=1_000, sim_tpm=12_000, latency_ms=9_000, max_in_flight=8),
    # 3 requests/s; tokens plenty
    Regime("request-bound", sim_rpm=3, sim_tpm=50_000_000, latency_ms=9_000, max_in_flight=8),
    # 1 s latency, 3 in flight per process: 3 batches/s per process
    Regime("latency-bound", sim_rpm=100_000, sim_tpm=500_000_000, latency_ms=60_000,
           max_in_flight=3),
    # 3 students a batch of 1-6 pages each (seeded draw), 4 questions: as planned, 4,270-9,200
    # tokens charged (2,172 of them max_completion_tokens) = 6.4-13.8 s of a 40,000 TPM key,
    # 10.6 s on average; 30 s latency; qbq's default burst of 1 s, here in simulated time
    Regime("realistic", sim_rpm=10_000, sim_tpm=40_000, latency_ms=30_000, max_in_flight=8,
           students_per_batch=3, burst_s=1.0 / TIME_SCALE, questions=4, pages=(1, 6)),
)
#: qbq's burst: half the provider's one-second bucket, leaving room for arrival jitter.
QBQ_BURST_S = "0.5"


# --- measuring at the simulator ----------------------------------------------------------------


class Timing:
    """ASGI middleware: when the first model request arrived and the last answer left, overall
    and per request group (the ref prefix before '-', one per flow process)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.first: float | None = None
        self.last: float | None = None
        self.group_first: dict[str, float] = {}
        self.group_batches: dict[str, int] = {}
        self.busy_ok_s = 0.0
        self.ok = 0
        #: (arrival, status) of every model request, perf_counter seconds: explains each 429
        self.arrivals: list[tuple[float, int]] = []
        self.lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        stamp_arrival(scope, self.app.state.sim)  # the arrival, before this wrapper's own work
        body, replay = await buffer_body(receive)
        refs = batch_refs(body)
        group = refs[0].split("-")[0] if refs else "?"

        async def watch(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.lock:
            self.first = start if self.first is None else min(self.first, start)
            self.group_first.setdefault(group, start)
        try:
            await self.app(scope, replay, watch)
        finally:
            end = time.perf_counter()
            with self.lock:
                self.arrivals.append((start, status))
                self.last = end if self.last is None else max(self.last, end)
                if status == 200:
                    self.busy_ok_s += end - start
                    self.ok += 1
                    self.group_batches[group] = self.group_batches.get(group, 0) + 1

    def start_skew(self) -> float:
        """How much later than the first group the last group started."""
        starts = list(self.group_first.values())
        return max(starts) - min(starts) if starts else 0.0

    @property
    def makespan(self) -> float:
        return (self.last or 0.0) - (self.first or 0.0)


@contextmanager
def simulator(regime: Regime) -> Iterator[tuple[BackgroundServer, Timing]]:
    config = SimConfig(rpm=regime.sim_rpm, tpm=regime.sim_tpm, latency_ms=regime.latency_ms,
                       time_scale=TIME_SCALE)
    timing = Timing(create_app(config))
    with BackgroundServer(timing) as server:
        yield server, timing


def sim_stats(server: BackgroundServer) -> dict[str, Any]:
    return dict(httpx.get(f"{server.url}/_sim/stats", timeout=30).json())


# --- the workload ----------------------------------------------------------------------------


def write_requests(work: Path, batches: int, parts: int, tag: str, regime: Regime) -> list[Path]:
    """`batches` × the regime's students per batch, split into `parts` requests (one per flow
    process); each student keeps a seeded draw of the regime's page range (the truth is on the
    first page, so every student still has one)."""
    per_part = batches // parts * regime.students_per_batch
    low, high = regime.pages
    paths = []
    for i in range(parts):
        path = write_sample(work / f"{tag}-{i}", students=per_part, pages=high,
                            questions=regime.questions, seed=i, page_size=(400, 560),
                            assessment_id=f"{tag}-{i}")
        body = json.loads(path.read_text())
        draw = random.Random(i)
        for student in body["students"]:  # one ref prefix per process, for per-group timing
            student["ref"] = f"P{i}-{student['ref']}"
            student["pages"] = student["pages"][:draw.randint(low, high)]
        path.write_text(json.dumps(body))
        paths.append(path)
    return paths


@functools.lru_cache(maxsize=32)
def plan_of(request: Path, per_batch: int = STUDENTS_PER_BATCH) -> Prepared:
    """The request planned once per process (runners and `largest_request` share it)."""
    settings = QbqSettings(database_url="sqlite://")
    policy = GradingPolicy(max_students_per_batch=per_batch)
    return prepare(request, settings=settings, policy=policy)


@dataclass
class Result:
    name: str
    regime: str
    batches: int
    ideal_s: float
    actual_s: float
    requests: int
    rejected: int
    timeline: list[dict[str, Any]] = field(default_factory=list)
    service_s: float = 0.0
    #: per 429: requests arriving in the second before it and the longest arrival gap in the
    #: two seconds before (a stall that lets the provider's bucket overflow shows as a gap)
    context_429: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.ideal_s / self.actual_s if self.actual_s else 0.0

    @property
    def share_429(self) -> float:
        return self.rejected / self.requests if self.requests else 0.0

    @property
    def overhead_ms(self) -> float:
        return max(0.0, self.actual_s - self.ideal_s) / self.batches * 1000.0


#: Burst the ideal sender may use at the start, in seconds of rate (the provider's bucket starts
#: full, but real providers enforce limits over short periods: sending at the allowed rate after
#: one second's burst is the fastest schedule that never risks a 429).
IDEAL_BURST_S = 1.0


def ideal_makespan(regime: Regime, n_batches: int, charged_tokens: int, processes: int,
                   service_s: float, largest: float = 0.0) -> float:
    """The shortest time the limits allow: the work at the allowed rate after a one-second
    burst (the regime's own burst when it sets one), plus the last answer's time; or, when
    concurrency binds, rounds of `slots` requests each lasting the simulator's measured mean
    service time (its latency plus its own work). `largest`: the biggest request's tokens (the
    ideal sender sends it last; 0: the mean request)."""
    r_req, r_tok = regime.real_rate(regime.sim_rpm), regime.real_rate(regime.sim_tpm)
    burst = regime.burst_s if regime.burst_s is not None else IDEAL_BURST_S
    by_requests = max(0.0, n_batches - max(1.0, r_req * burst)) / r_req
    # the last request starts once the others' tokens are paid for, less the burst; a request
    # bigger than the burst starts on a full bucket, so then its own size stands in for it
    largest = largest or charged_tokens / max(1, n_batches)
    by_tokens = max(0.0, charged_tokens - max(r_tok * burst, largest)) / r_tok
    slots = regime.max_in_flight * processes
    by_latency = math.ceil(n_batches / slots) * service_s
    return max(by_requests + service_s, by_tokens + service_s, by_latency)


def largest_request(requests: list[Path], per_batch: int) -> int:
    """Tokens charged for the biggest planned request (prompt + `max_completion_tokens`)."""
    return max(b.prompt_tokens + b.max_completion_tokens
               for r in requests for b in plan_of(r, per_batch).plan.batches)


def _result(name: str, regime: Regime, server: BackgroundServer, timing: Timing,
            processes: int, requests: list[Path], learned: bool = False) -> Result:
    stats = sim_stats(server)
    ok = stats["by_status"].get("200", 0)
    charged = sum(second["tokens"] for second in stats["timeline"])
    service_s = timing.busy_ok_s / max(1, timing.ok)
    largest = largest_request(requests, regime.students_per_batch)
    # processes start a little apart (their CLI start-up differs): the ideal starts each at its
    # own first request, so start-up skew is not counted as orchestration overhead
    ideal = ideal_makespan(regime, ok, charged, processes, service_s, largest)
    if learned:
        # a sender that has not yet been told the limits can only send one request and wait
        # for its reply (the probe): the shortest schedule starts one service time later
        ideal += service_s
    if processes > 1:  # (a process that waited for the other's probe started that much later)
        per_group = [ideal_makespan(regime, n, 0, 1, service_s) + timing.group_first[g]
                     - min(timing.group_first.values())
                     for g, n in timing.group_batches.items()]
        ideal = max(ideal, *per_group)
    return Result(name, regime.name, ok, ideal,
                  timing.makespan, stats["requests"], stats["by_status"].get("429", 0),
                  stats["timeline"], service_s, explain_429(timing.arrivals))


def explain_429(arrivals: list[tuple[float, int]]) -> list[str]:
    """One line per 429: when (s after the first request), how many requests arrived in the
    second before it against the rate's per-second count, and the longest gap between arrivals
    in the two seconds before it."""
    arrivals = sorted(arrivals)
    if not arrivals:
        return []
    first = arrivals[0][0]
    lines = []
    for t, status in arrivals:
        if status != 429:
            continue
        before = [a for a, _ in arrivals if t - 2.0 <= a < t]
        last_second = sum(1 for a in before if a >= t - 1.0)
        gaps = [b - a for a, b in zip(before, [*before[1:], t], strict=True)]
        lines.append(f"429 at {t - first:.2f} s: {last_second} arrivals in the second before, "
                     f"longest gap in the 2 s before {max(gaps, default=0.0):.2f} s")
    return lines


# --- qbq ---------------------------------------------------------------------------------------


def run_qbq(regime: Regime, requests: list[Path], work: Path, api_url: str,
            learned: bool = False) -> Result:
    """`qbq grade` in one process per request; `learned`: without QBQ_RPM/QBQ_TPM, so qbq
    probes and paces at the limits the simulator states (per wall minute)."""
    tag = f"{regime.name}-{len(requests)}{'-learned' if learned else ''}"
    with simulator(regime) as (server, timing):
        env = {
            **os.environ,
            "PREFECT_API_URL": api_url,
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "OPENAI_BASE_URL": f"{server.url}/v1",
            "OPENAI_API_KEY": "sk-bench-simulated",
            "QBQ_DATABASE_URL": f"sqlite:///{work / f'{tag}.db'}",
            "QBQ_MAX_STUDENTS_PER_BATCH": str(regime.students_per_batch),
            "QBQ_MAX_IN_FLIGHT": str(regime.max_in_flight),
            "QBQ_LIMITER_DIR": str(work / f"limiter-{tag}"),
            "QBQ_LIMITER_BURST_S": (QBQ_BURST_S if regime.burst_s is None
                                    else repr(regime.burst_s)),
        }
        for name in ("QBQ_RPM", "QBQ_TPM"):
            env.pop(name, None)
        if regime.sim_rpm and not learned:
            env["QBQ_RPM"] = str(int(regime.sim_rpm * TIME_SCALE))
        if regime.sim_tpm and not learned:
            env["QBQ_TPM"] = str(int(regime.sim_tpm * TIME_SCALE))
        procs = [subprocess.Popen([sys.executable, "-m", "qbq", "grade", str(r)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=work)
                 for r in requests]
        for proc in procs:
            _, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"qbq grade failed ({proc.returncode}): {err.decode()[-2000:]}")
        name = (f"qbq ({len(requests)} process{'es' if len(requests) > 1 else ''}"
                f"{', learned' if learned else ''})")
        return _result(name, regime, server, timing, len(requests), requests, learned)


# --- baseline 1: Prefect's rate_limit / concurrency used directly --------------------------------


def _call(client: Any, model: str, batch: PlannedBatch, prepared: Prepared) -> int:
    """One model request for `batch`, made with the SDK directly; returns the HTTP status."""
    import openai

    from qbq.grading import page_url
    from qbq.planning import prompt_questions

    request = prepared.request
    messages = build_messages(
        instructions=request.instructions, questions=prompt_questions(request),
        model_answer_urls=[page_url(p) for p in request.model_answer_pages],
        students=[StudentPages(s.ref, [page_url(p) for p in s.pages]) for s in batch.students])
    try:
        client.chat.completions.create(
            model=model, messages=messages, max_completion_tokens=batch.max_completion_tokens,
            response_format=response_format(list(request.max_marks)))
    except openai.RateLimitError:
        return 429
    return 200


def prefect_baseline_main(request: str, sim_url: str, rpm: float, tpm: float, slots: int,
                          per_batch: int = STUDENTS_PER_BATCH) -> None:
    """Runs in a subprocess against the benchmark's Prefect server."""
    import openai
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency, rate_limit
    from prefect.task_runners import ThreadPoolTaskRunner

    prepared = plan_of(Path(request), per_batch)
    client = openai.OpenAI(base_url=f"{sim_url}/v1", api_key="sk-bench", max_retries=0)
    limits = {"bench-rpm": (max(1, int(rpm)), rpm), "bench-tpm": (max(1, int(tpm)), tpm),
              "bench-inflight": (slots, None)}
    with get_client(sync_client=True) as api:
        for name, (limit, decay) in limits.items():
            with contextlib.suppress(Exception):  # absent on the first run
                api.delete_global_concurrency_limit_by_name(name)
            api.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
                name=name, limit=limit, slot_decay_per_second=decay or 0.0, active=True))

    @task
    def grade(batch: PlannedBatch) -> int:
        tokens = batch.prompt_tokens + batch.max_completion_tokens
        rate_limit("bench-rpm", occupy=1, strict=True)
        rate_limit("bench-tpm", occupy=min(tokens, int(tpm)), strict=True)
        with concurrency("bench-inflight", occupy=1, strict=True):
            return _call(client, prepared.request.model, batch, prepared)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=slots + 8))
    def baseline() -> list[int]:
        return [f.result() for f in grade.map(list(prepared.plan.batches))]

    baseline()


def run_prefect_baseline(regime: Regime, request: Path, api_url: str) -> Result:
    with simulator(regime) as (server, timing):
        # one second of burst, like qbq: slots decay at the per-second rate
        rpm_s = regime.real_rate(regime.sim_rpm) if regime.sim_rpm else 1e6
        tpm_s = regime.real_rate(regime.sim_tpm) if regime.sim_tpm else 1e9
        env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_LOGGING_LEVEL": "ERROR"}
        code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); "
                "from benchmarks.throughput import prefect_baseline_main as m; "
                f"m({str(request)!r}, {server.url!r}, {rpm_s!r}, {tpm_s!r}, "
                f"{regime.max_in_flight}, {regime.students_per_batch})")
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=900,
                       capture_output=True)
        return _result("prefect rate_limit/concurrency", regime, server, timing, 1, [request])


# --- baseline 2: the cookbook's parallel processor ---------------------------------------------


#: The cookbook's advice: "run at 50–75% of the limit"; we give it the upper end.
COOKBOOK_SHARE = 0.75


def run_cookbook(regime: Regime, request: Path) -> Result:
    """Token buckets holding a minute, refilled continuously, set to 75% of the limits as the
    cookbook advises; after a 429 every sender pauses 15 s (compressed like the simulator's
    clock) and the request is retried."""
    import openai

    prepared = plan_of(request, regime.students_per_batch)
    with simulator(regime) as (server, timing):
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="sk-bench",
                                    max_retries=0)
        rpm = regime.real_rate(regime.sim_rpm) * 60 * COOKBOOK_SHARE if regime.sim_rpm else 1e9
        tpm = regime.real_rate(regime.sim_tpm) * 60 * COOKBOOK_SHARE if regime.sim_tpm else 1e12
        pause_s = 15.0 / TIME_SCALE

        async def main() -> None:
            queue = list(prepared.plan.batches)
            cap_req, cap_tok = rpm, tpm
            last = time.monotonic()
            last_429 = -1e9
            in_flight: set[asyncio.Task[None]] = set()
            sem = asyncio.Semaphore(regime.max_in_flight)

            async def send(batch: PlannedBatch) -> None:
                nonlocal last_429
                async with sem:
                    status = await asyncio.to_thread(_call_sync, batch)
                if status == 429:
                    last_429 = time.monotonic()
                    queue.append(batch)

            def _call_sync(batch: PlannedBatch) -> int:
                sync = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-bench",
                                     max_retries=0)
                return _call(sync, prepared.request.model, batch, prepared)

            while queue or in_flight:
                now = time.monotonic()
                cap_req = min(rpm, cap_req + rpm * (now - last) / 60)
                cap_tok = min(tpm, cap_tok + tpm * (now - last) / 60)
                last = now
                if queue and now - last_429 >= pause_s:
                    batch = queue[0]
                    cost = batch.prompt_tokens + batch.max_completion_tokens
                    if cap_req >= 1 and cap_tok >= cost:
                        queue.pop(0)
                        cap_req -= 1
                        cap_tok -= cost
                        t = asyncio.create_task(send(batch))
                        in_flight.add(t)
                        t.add_done_callback(in_flight.discard)
                        continue
                await asyncio.sleep(0.001)

        asyncio.run(main())
        del client
        return _result("cookbook processor (75%)", regime, server, timing, 1, [request])


# --- orchestration overhead: 1,000 batches, zero latency, no limits -----------------------------


@dataclass
class Overhead:
    batches: int
    qbq_s: float
    direct_s: float
    flow_wall_s: float

    @property
    def per_batch_ms(self) -> float:
        return (self.qbq_s - self.direct_s) / self.batches * 1000.0


def run_overhead(work: Path, api_url: str, batches: int) -> Overhead:
    regime = Regime("overhead", None, None, 0.0, 8)
    request = write_sample(work / "overhead", students=batches, pages=1, questions=2, seed=3,
                           page_size=(200, 280), assessment_id="overhead")
    prepared = plan_of(request)
    direct = _direct(regime, prepared)
    with simulator(regime) as (server, timing):
        env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_LOGGING_LEVEL": "WARNING",
               "OPENAI_BASE_URL": f"{server.url}/v1", "OPENAI_API_KEY": "sk-bench",
               "QBQ_DATABASE_URL": f"sqlite:///{work / 'overhead.db'}",
               "QBQ_MAX_STUDENTS_PER_BATCH": "1", "QBQ_MAX_IN_FLIGHT": "8",
               "QBQ_RPM": "100000000", "QBQ_TPM": "100000000000",
               "QBQ_LIMITER_DIR": str(work / "limiter-overhead"),
               "QBQ_PREFECT_CACHE": os.environ.get("QBQ_PREFECT_CACHE", "true")}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "qbq", "grade", str(request)], env=env, check=True,
                       capture_output=True, timeout=1800, cwd=work)
        wall = time.perf_counter() - start
        return Overhead(batches, timing.makespan, direct, wall)


def _direct(regime: Regime, prepared: Prepared) -> float:
    """The same model calls made straight from 8 threads: the floor qbq adds to."""
    import openai

    with simulator(regime) as (server, timing):
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-bench", max_retries=0)
        batches = list(prepared.plan.batches)
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    if not batches:
                        return
                    batch = batches.pop()
                _call(client, prepared.request.model, batch, prepared)

        threads = [threading.Thread(target=worker) for _ in range(regime.max_in_flight)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return timing.makespan


# --- report --------------------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    head = (f"{'regime':<14} {'runner':<32} {'batches':>7} {'svc ms':>7} {'ideal s':>8} "
            f"{'actual s':>8} {'ratio':>6} {'429s':>5} {'429 %':>6} {'ovh ms/batch':>12}")
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(f"{r.regime:<14} {r.name:<32} {r.batches:>7} {1000 * r.service_s:>7.0f} "
                    f"{r.ideal_s:>8.2f} "
                     f"{r.actual_s:>8.2f} {r.ratio:>6.3f} {r.rejected:>5} "
                     f"{100 * r.share_429:>5.1f}% {r.overhead_ms:>12.1f}")
    return "\n".join(rows)


def _per_real_second(timeline: list[dict[str, Any]]) -> tuple[list[float], list[float],
                                                               list[float]]:
    """Re-bin the simulator's per-simulated-second timeline into real seconds: tokens charged
    are summed, requests in flight is the most seen."""
    width = int(TIME_SCALE)
    times, tokens, in_flight = [], [], []
    for start in range(0, len(timeline), width):
        chunk = timeline[start:start + width]
        times.append(start / TIME_SCALE)
        tokens.append(float(sum(s["tokens"] for s in chunk)))
        in_flight.append(float(max(s["in_flight"] for s in chunk)))
    return times, tokens, in_flight


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = [r for r in REGIMES if any(x.regime == r.name for x in results)]
    fig, axes = plt.subplots(2, len(regimes), figsize=(6 * len(regimes), 7), squeeze=False)
    for col, regime in enumerate(regimes):
        top, bottom = axes[0][col], axes[1][col]
        for r in (x for x in results if x.regime == regime.name):
            t, tokens, in_flight = _per_real_second(r.timeline)
            top.step(t, tokens, where="post", label=r.name)
            bottom.step(t, in_flight, where="post", label=r.name)
        if regime.sim_tpm and regime.sim_tpm < 10_000_000:
            top.axhline(regime.real_rate(regime.sim_tpm), color="black", linestyle="--",
                        label="token limit")
        top.set_title(f"{regime.name}: tokens charged per second")
        bottom.set_title(f"{regime.name}: most requests in flight in each second")
        bottom.set_xlabel("seconds")
        if regime.name == "latency-bound":
            bottom.axhline(regime.max_in_flight, color="black", linestyle="--",
                           label="slots per process")
        top.legend(fontsize=7)
        bottom.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--overhead-batches", type=int, default=1000)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--learned", action="store_true",
                        help="also run qbq without QBQ_RPM/QBQ_TPM (limits learned from the "
                             "simulator's headers)")
    parser.add_argument("--regime", action="append", help="only these regimes")
    parser.add_argument("--save", type=Path, help="also write the results as JSON here")
    parser.add_argument("--replot", type=Path, help="only redraw --plot from a --save file")
    args = parser.parse_args()
    if args.replot:
        saved = [Result(**r) for r in json.loads(args.replot.read_text())]
        plot(saved, args.plot)
        print(table(saved))
        return
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    results: list[Result] = []
    overhead: Overhead | None = None
    with tempfile.TemporaryDirectory(prefix="qbq-throughput-") as tmp:
        work = Path(tmp)
        db = pg_database()
        try:
            pg = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db[0]}" if db else None
            with prefect_server(work / "prefect", pg) as api_url:
                for regime in REGIMES:
                    if args.regime and regime.name not in args.regime:
                        continue
                    one = write_requests(work, args.batches, 1, f"{regime.name}-one", regime)
                    two = write_requests(work, args.batches, 2, f"{regime.name}-two", regime)
                    runners: list[tuple[str, Callable[[], Result]]] = [
                        ("qbq 1 process",
                         lambda r=regime, q=one: run_qbq(r, q, work, api_url)),
                        ("qbq 2 processes",
                         lambda r=regime, q=two: run_qbq(r, q, work, api_url)),
                        ("qbq 1 process, learned",
                         lambda r=regime, q=one: run_qbq(r, q, work, api_url, learned=True)),
                        ("qbq 2 processes, learned",
                         lambda r=regime, q=two: run_qbq(r, q, work, api_url, learned=True)),
                        ("prefect baseline",
                         lambda r=regime, q=one: run_prefect_baseline(r, q[0], api_url)),
                        ("cookbook baseline", lambda r=regime, q=one: run_cookbook(r, q[0])),
                    ]
                    for label, runner in runners:
                        if ((args.skip_baselines and "baseline" in label)
                                or (not args.learned and "learned" in label)):
                            continue
                        log(f"{regime.name}: {label} ...")
                        results.append(runner())
                        log(f"  {results[-1].actual_s:.2f} s, ratio {results[-1].ratio:.3f}")
                if not args.skip_overhead:
                    log(f"overhead: {args.overhead_batches} batches ...")
                    overhead = run_overhead(work, api_url, args.overhead_batches)
        finally:
            if db:
                db[1]()
    print(f"time scale {TIME_SCALE:g}× (simulated minutes pass in {60 / TIME_SCALE:g} s); "
          "ideal = the limits' shortest makespan; ratio = ideal / actual")
    print(table(results))
    for r in results:  # qbq's 429s explained (the baselines' are many and by design)
        if r.name.startswith("qbq"):
            for line in r.context_429:
                print(f"  {r.regime} / {r.name}: {line}")
    if overhead is not None:
        print(f"\noverhead: {overhead.batches} batches, zero latency, no limits: qbq "
              f"{overhead.qbq_s:.2f} s (first to last model call; whole command "
              f"{overhead.flow_wall_s:.1f} s) vs direct SDK calls {overhead.direct_s:.2f} s → "
              f"{overhead.per_batch_ms:.1f} ms orchestration overhead per batch")
    if args.save:
        args.save.write_text(json.dumps([r.__dict__ for r in results]))
    if args.plot:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    qbq_rows = [r for r in results if r.name.startswith("qbq")]
    worst = min((r.ratio for r in qbq_rows), default=0.0)
    worst_429 = max((r.share_429 for r in qbq_rows), default=0.0)
    base = {r.name: r.ratio for r in results if not r.name.startswith("qbq")}
    summary = (f"summary: qbq worst ratio {worst:.3f} (target ≥ 0.95), worst 429 share "
               f"{100 * worst_429:.2f}% (≤ 1%)")
    if base:
        summary += "; baselines best " + ", ".join(
            f"{n} {max(r.ratio for r in results if r.name == n):.3f}" for n in base)
    if overhead is not None:
        summary += f"; overhead {overhead.per_batch_ms:.1f} ms/batch (< 15)"
    print(summary)


if __name__ == "__main__":
    main()
