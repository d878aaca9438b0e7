"""Fault matrix: every simulator fault kind at several rates over a 200-student request.

For each fault and rate it grades the request through qbq's pipeline against the simulator over
HTTP and prints one row (see `qbq.testing.faults`): students graded, failed with a reason, lost
(must be 0), wrong (must be 0), model calls, tokens relative to a fault-free run, whether the
retry budget held, crashes (must be 0) and the final status.

Usage: python benchmarks/faults.py [--students 200] [--rates 0.1,0.3,0.6] [--kinds http500,...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qbq.testing.faults import KINDS, run_matrix, table, verdict


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
    print(f"summary: {len(rows)} fault runs × {args.students} students: lost "
          f"{sum(r.lost for r in rows)}, wrong {sum(r.wrong for r in rows)}, crashes "
          f"{sum(r.crashes for r in rows)}, budget "
          f"{'held' if all(r.budget_held for r in rows) else 'EXCEEDED'} "
          f"({'OK' if ok else 'FAILED'})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
