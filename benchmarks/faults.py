"""Fault matrix: every simulator fault kind at several rates over a 200-student request.

For each fault and rate it grades the request through qbq's pipeline (prepare → register →
grade_batch on 8 threads → finalize, the functions the Prefect tasks wrap) against the
simulator over HTTP, then prints: students graded, failed with a reason, lost (neither — must
be 0), wrong (a graded mark that is not the page's truth or is out of bounds — must be 0),
model calls, tokens spent relative to a fault-free run, whether the retry budget held, crashes
(must be 0) and the final status.

Usage: python benchmarks/faults.py [--students 200] [--rates 0.1,0.3,0.6] [--kinds http500,...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qbq import pipeline  # noqa: E402
from qbq.errors import QbqError  # noqa: E402
from qbq.grading import GradingDeps, grade_batch  # noqa: E402
from qbq.limiter import Limits, MemoryBackend, RateLimiter  # noqa: E402
from qbq.provider import OpenAIChatProvider, make_openai_client  # noqa: E402
from qbq.recovery import BatchSizeHint, CircuitBreaker, RetryBudget, RunGuards  # noqa: E402
from qbq.sample import truth_of, write_sample  # noqa: E402
from qbq.settings import GradingPolicy, QbqSettings  # noqa: E402
from qbq.simulator import BackgroundServer, SimConfig, create_app  # noqa: E402
from qbq.store import Store  # noqa: E402

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
    db = work / f"{kind}-{rate}-{pol.max_students_per_batch}-{time.monotonic_ns()}.db"
    settings = QbqSettings(database_url=f"sqlite:///{db}",
                           request_timeout_s=1.0, rpm=100_000, tpm=10**9,
                           openai_base_url=f"{sim.url}/v1")
    prepared = pipeline.prepare(request, settings=settings, policy=pol)
    store = Store(settings.database_url)
    store.migrate()
    pipeline.register(store, prepared, settings)
    plan = prepared.plan
    planned = plan.prompt_tokens + sum(b.max_completion_tokens for b in plan.batches)
    limiter = RateLimiter(MemoryBackend(), Limits(rpm=100_000, tpm=10**9), kind)
    attempts = pol.retry_budget_attempts
    budget = RetryBudget(max_retries=attempts if attempts is not None else 2 * len(plan.batches) + 10,
                         max_tokens=int(pol.retry_budget_token_ratio * planned))
    guards = RunGuards(CircuitBreaker(threshold=pol.breaker_threshold,
                                      cooldown_s=pol.breaker_cooldown_s,
                                      give_up_after_s=pol.breaker_give_up_s,
                                      on_open=limiter.cool_down),
                       budget, BatchSizeHint())
    client = make_openai_client(api_key="sk-faults-simulated", base_url=f"{sim.url}/v1",
                                timeout_s=settings.request_timeout_s)
    deps = GradingDeps(provider=OpenAIChatProvider(client), store=store, policy=pol,
                       guards=guards, limiter=limiter)
    crashes = 0
    start = time.perf_counter()

    def grade(batch: Any) -> None:
        nonlocal crashes
        try:
            grade_batch(batch, prepared.request, deps)
        except QbqError:
            crashes += 1

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(grade, plan.batches))
    native = pipeline.finalize(store, prepared, policy=pol, settings=settings)
    seconds = time.perf_counter() - start
    stats = httpx.get(f"{sim.url}/_sim/stats", timeout=10).json()
    store.dispose()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=200)
    parser.add_argument("--rates", default="0.1,0.3,0.6")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    kinds = [k for k in args.kinds.split(",") if k]
    baseline, rows = run_matrix(students=args.students, rates=rates, kinds=kinds, seed=args.seed,
                                log=lambda m: print(m, file=sys.stderr, flush=True))
    print(table(baseline, rows))
    ok = verdict([baseline, *rows])
    total_lost = sum(r.lost for r in rows)
    total_wrong = sum(r.wrong for r in rows)
    print(f"summary: {len(rows)} fault runs × {args.students} students: lost {total_lost}, "
          f"wrong {total_wrong}, crashes {sum(r.crashes for r in rows)}, budget "
          f"{'held' if all(r.budget_held for r in rows) else 'EXCEEDED'} "
          f"({'OK' if ok else 'FAILED'})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
