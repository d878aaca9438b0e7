"""Chaos benchmark: SIGKILL `qbq grade` at chosen points, rerun until done, count what broke
(see `qbq.testing.chaos`). Every loss/duplicate column must be 0.

Usage: python benchmarks/chaos.py [--kills 50] [--seed 1] [--store sqlite|postgres]
       [--scenarios revision,kill]   (these episodes first, in order; then random ones)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qbq.testing.chaos import format_report, run_chaos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--students", type=int, default=9)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--scenarios", default="",
                        help="Comma-separated episodes to run first, e.g. revision,kill.")
    args = parser.parse_args()
    fixed = [s for s in args.scenarios.split(",") if s]
    report = run_chaos(kills=args.kills, seed=args.seed, students=args.students, store=args.store,
                       scenarios=fixed)
    print(format_report(report))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
