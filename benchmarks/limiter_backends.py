"""Benchmark: cost of one limiter transaction per backend (memory, file, Redis, PostgreSQL),
beside acquiring a Prefect global concurrency limit, to choose the shared backend by numbers.

Each backend serves 2 processes × 4 threads reserving requests with limits far above the load
(so nothing waits: this measures the coordination itself). Prints µs per reservation and
reservations per second. Usage: python benchmarks/limiter_backends.py [--n 2000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qbq.limiter import Limits, RateLimiter, make_backend  # noqa: E402

LIMITS = Limits(rpm=10**9, tpm=10**12)


def _work(kind: str, url: str | None, folder: str, n: int, threads: int, key: str,
          out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    limiter = RateLimiter(make_backend(kind, url=url, folder=Path(folder)), LIMITS, key)

    def loop() -> None:
        for _ in range(n // threads):
            limiter.acquire(1000)

    start = time.perf_counter()
    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put((time.perf_counter() - start, limiter.transactions))


def measure(kind: str, url: str | None, n: int, processes: int, threads: int) -> tuple[float, int]:
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    folder = tempfile.mkdtemp()
    key = uuid.uuid4().hex
    procs = [ctx.Process(target=_work, args=(kind, url, folder, n, threads, key, out))
             for _ in range(processes)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    wall = max(r[0] for r in results)
    del start
    return wall, sum(r[1] for r in results)


def prefect_gcl(n: int) -> float | None:
    """µs per `concurrency(...)` acquire+release of a Prefect global limit on the ephemeral
    server in this process (one thread), for comparison."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
        from prefect.concurrency.sync import concurrency
        from prefect.testing.utilities import prefect_test_harness
    except ImportError:
        return None
    with prefect_test_harness():
        with get_client(sync_client=True) as client:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name="bench", limit=10**6, active=True))
        start = time.perf_counter()
        for _ in range(n):
            with concurrency("bench", occupy=1, strict=True):
                pass
        return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="reservations per process")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--skip-prefect", action="store_true")
    args = parser.parse_args()
    rows = []
    for kind, url in (("memory", None), ("file", None), ("redis", args.redis),
                      ("postgres", args.postgres)):
        processes = 1 if kind == "memory" else 2
        wall, transactions = measure(kind, url, args.n, processes, 4)
        total = args.n * processes
        rows.append((kind, processes, total, wall, transactions))
    print(f"{'backend':<10} {'procs':>5} {'reservations':>12} {'wall s':>7} {'per s':>9} "
          f"{'µs each':>8} {'transactions':>12}")
    for kind, processes, total, wall, transactions in rows:
        print(f"{kind:<10} {processes:>5} {total:>12} {wall:>7.2f} {total / wall:>9.0f} "
              f"{wall / total * 1e6:>8.0f} {transactions:>12}")
    gcl = None if args.skip_prefect else prefect_gcl(200)
    if gcl is not None:
        print(f"{'prefect GCL':<10} {1:>5} {200:>12} {'':>7} {1e6 / gcl:>9.0f} {gcl:>8.0f} "
              f"{'(acquire+release, ephemeral server)':>12}")
    best_shared = min((r for r in rows if r[0] != "memory"), key=lambda r: r[3] / r[2])
    print(f"summary: fastest shared backend {best_shared[0]} at "
          f"{best_shared[3] / best_shared[2] * 1e6:.0f} µs per reservation"
          + (f"; Prefect GCL {gcl:.0f} µs" if gcl is not None else ""))


if __name__ == "__main__":
    main()
