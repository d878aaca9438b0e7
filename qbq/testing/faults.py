"""Fault matrix: every simulator fault kind at several rates over a 200-student request.

For each fault and rate it grades the request through qbq's pipeline (prepare → register →
grade_batch on 8 threads → finalize, the functions the Prefect tasks wrap) against the
simulator over HTTP, then prints: students graded, failed with a reason, lost (neither — must
be 0), wrong (a graded mark that is not the page's truth or is out of bounds — must be 0),
model calls, tokens spent relative to a fault-free run, whether the retry budget held, crashes
(must be 0) and the final status.

The command is `python benchmarks/faults.py [--students 200] [--rates 0.1,0.3,0.6] [--kinds ...]`.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from qbq import pipeline
from qbq.errors import QbqError
from qbq.grading import grade_batch
from qbq.preparation import prepare
from qbq.resources import run_resources
from qbq.sample import truth_of, write_sample
from qbq.settings import GradingPolicy, QbqSettings
from qbq.simulator import BackgroundServer, SimConfig, create_app

KINDS = ("http500", "http502", "http503", "timeout", "disconnect", "rate_limit", "not_json",
         "schema_break", "rule_break", "truncate", "refusal")


@dataclass
class Row:
    kind: str
    rate: float
    students: int
    graded: int
    failed_with_reason: int
    lost: int
    wrong: int
    model_calls: int
    tokens: int
    budget_held: bool
    crashes: int
    status: str
    seconds: float
    injected: int


def policy() -> GradingPolicy:
    """Fast recovery for a benchmark: short backoffs and cool-downs, the default limits."""
    return GradingPolicy(max_students_per_batch=8, backoff_base_s=0.05, backoff_max_s=0.5,
                         breaker_cooldown_s=0.5, breaker_give_up_s=60.0, lease_poll_s=0.05)


def run_one(sim: BackgroundServer, request: Path, work: Path, kind: str, rate: float,
            seed: int, pol: GradingPolicy | None = None) -> Row:
    faults = {kind: rate} if kind != "none" and rate > 0 else {}
    httpx.post(f"{sim.url}/_sim/reset", timeout=10).raise_for_status()
    httpx.post(f"{sim.url}/_sim/config", json={"faults": faults, "seed": seed},
               timeout=10).raise_for_status()
    pol = pol or policy()
    run_id = f"{kind}-{rate}-{pol.max_students_per_batch}-{time.monotonic_ns()}"
    # a key of its own per run: the shared limiter's pauses never carry into the next run
    settings = QbqSettings(database_url=f"sqlite:///{work / run_id}.db",
                           request_timeout_s=1.0, output_tokens_per_s=1e9,  # 1 s in all
                           rpm=100_000, tpm=10**9, max_in_flight=8,
                           limiter_backend="memory", openai_base_url=f"{sim.url}/v1",
                           openai_api_key=f"sk-faults-simulated-{run_id}", loopback_only=True)
    prepared = prepare(request, settings=settings, policy=pol)
    plan = prepared.plan
    crashes = 0
    start = time.perf_counter()
    with run_resources(plan, settings, pol) as resources:
        pipeline.register(resources.store, prepared, settings)
        deps = resources.grading_deps()

        def grade(batch: Any) -> None:
            nonlocal crashes
            try:
                grade_batch(batch, prepared.request, deps)
            except QbqError:
                crashes += 1

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(grade, plan.batches))
        native = pipeline.finalize(resources.store, prepared, policy=pol,
                                   settings=settings).native
        budget = resources.guards.budget
    seconds = time.perf_counter() - start
    stats = httpx.get(f"{sim.url}/_sim/stats", timeout=10).json()
    truth = truth_of(request)
    top = prepared.request.max_marks
    graded = {s.ref: s for s in native.students if s.status == "graded"}
    reasons = {f.ref for f in native.failures if f.reason.strip()}
    wrong = sum(1 for ref, s in graded.items()
                if {a.question_number: a.mark for a in s.answers} != truth[ref]
                or any(not 0 <= a.mark <= top[a.question_number] for a in s.answers))
    lost = sum(1 for ref in truth if ref not in graded and ref not in reasons)
    return Row(kind, rate, len(truth), len(graded), len(reasons), lost, wrong,
               stats["requests"], stats["prompt_tokens"] + stats["completion_tokens"],
               budget.tokens <= budget.max_tokens and budget.retries <= budget.max_retries,
               crashes, native.status, seconds, sum(stats.get("faults", {}).values()))


def run_matrix(*, students: int, rates: list[float], kinds: list[str], seed: int = 1,
               log: Any = print) -> tuple[Row, list[Row]]:
    with tempfile.TemporaryDirectory(prefix="qbq-faults-") as tmp:
        work = Path(tmp)
        request = write_sample(work / "sample", students=students, pages=1, questions=3,
                               seed=seed, page_size=(400, 560), assessment_id="faults")
        with BackgroundServer(create_app(SimConfig(hang_s=3.0, seed=seed))) as sim:
            baseline = run_one(sim, request, work, "none", 0.0, seed)
            rows = []
            for kind in kinds:
                for rate in rates:
                    rows.append(run_one(sim, request, work, kind, rate, seed))
                    r = rows[-1]
                    log(f"{kind}={rate}: graded {r.graded}, failed {r.failed_with_reason}, "
                        f"lost {r.lost}, {r.seconds:.1f} s")
    return baseline, rows


def table(baseline: Row, rows: list[Row]) -> str:
    head = (f"{'fault':<13} {'rate':>5} {'inj':>4} {'graded':>6} {'failed':>6} {'lost':>4} "
            f"{'wrong':>5} {'calls':>5} {'tokens ×':>8} {'budget':>6} {'crash':>5} "
            f"{'status':>7} {'s':>5}")
    out = [head, "-" * len(head)]
    for r in [baseline, *rows]:
        out.append(f"{r.kind:<13} {r.rate:>5.2f} {r.injected:>4} {r.graded:>6} "
                   f"{r.failed_with_reason:>6} {r.lost:>4} {r.wrong:>5} {r.model_calls:>5} "
                   f"{r.tokens / max(1, baseline.tokens):>8.2f} "
                   f"{'ok' if r.budget_held else 'OVER':>6} {r.crashes:>5} {r.status:>7} "
                   f"{r.seconds:>5.1f}")
    return "\n".join(out)


def verdict(rows: list[Row]) -> bool:
    return all(r.lost == 0 and r.wrong == 0 and r.crashes == 0 and r.budget_held for r in rows)
