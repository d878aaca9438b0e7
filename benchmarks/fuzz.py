"""Fuzz: a long hypothesis search over request parsing, loading and planning (issue 15).

Draws hostile requests (`qbq.testing.fuzz`), runs each through parsing, loading (pages from a
temporary folder, URLs from a fake fetcher, with QBQ_PAGE_URLS=fetch and =pass) and planning,
and stops at the first exception that is not a qbq error, printing it; else prints a table of
how the requests ended (planned, or the qbq error type). Findings go to tests/unit/test_fuzz.py
as regression cases once fixed.

    python benchmarks/fuzz.py [--seconds 900] [--seed 0] [--plot docs/fuzz.png]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings
from PIL import Image
from rich.console import Console
from rich.table import Table

from qbq.testing.fuzz import FuzzWorld, check_request_text, hostile_requests, make_world


def _page_png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (400, 560), 255).save(out, "PNG")
    return out.getvalue()


def run(world: FuzzWorld, seconds: float, seed_value: int) -> tuple[Counter[str], int]:
    """Searches of 200 examples with successive seeds until `seconds` pass; a non-qbq
    exception ends it, shrunk by hypothesis to a small example."""
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    round_seed = seed_value
    while time.monotonic() < deadline:

        @seed(round_seed)
        @settings(max_examples=200, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(text=hostile_requests())
        def search(text: str) -> None:
            for pass_urls in (False, True):
                error = check_request_text(text, world, pass_urls=pass_urls)
                outcomes[type(error).__name__ if error else "planned"] += 1

        search()
        round_seed += 1
    return outcomes, sum(outcomes.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=900.0, help="how long to search")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, help="write a PNG bar chart of the outcomes here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        world = make_world(Path(folder), _page_png())
        started = time.monotonic()
        outcomes, total = run(world, args.seconds, args.seed)
        elapsed = time.monotonic() - started
    table = Table(title=f"fuzz: {total:,} runs in {elapsed:,.0f} s, no non-qbq exception")
    table.add_column("outcome")
    table.add_column("runs", justify="right")
    table.add_column("share", justify="right")
    for name, count in outcomes.most_common():
        table.add_row(name, f"{count:,}", f"{count / max(total, 1):.1%}")
    Console().print(table)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [n for n, _ in outcomes.most_common()]
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.barh(names, [outcomes[n] for n in names])
        ax.set_xlabel("runs")
        ax.set_title("How fuzzed requests ended (only qbq errors allowed)")
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
