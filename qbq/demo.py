"""`qbq demo`: a sample request graded end to end against local stand-ins, checked against truth.

The simulator and the receiver run on free loopback ports in this process; every grade it
prints is SIMULATED (the simulator answers with the ground truth drawn into each page).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from qbq.payload import NativePayload
from qbq.receiver import create_app as create_receiver
from qbq.sample import truth_of, write_sample
from qbq.simulator.app import create_app as create_simulator
from qbq.simulator.config import SimConfig
from qbq.simulator.server import BackgroundServer

__all__ = ["run_demo"]


def run_demo(out: Path, *, students: int, pages: int, questions: int, batch_size: int,
             console: Console, table: Callable[[NativePayload], Table],
             grade: Callable[[Path], NativePayload]) -> int:
    """Run the demo in a fresh `out` folder; return the exit code (0 when every check holds)."""
    # Long: one readable script on purpose (start the stand-ins, grade, check, print): a reader of the
    # demo follows it top to bottom.
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    request_path = write_sample(out / "sample", students=students, pages=pages,
                                questions=questions, seed=7)
    truth = truth_of(request_path)
    with BackgroundServer(create_simulator(SimConfig())) as sim, \
            BackgroundServer(create_receiver(out / "receiver.db")) as receiver:
        os.environ.update({
            "OPENAI_BASE_URL": f"{sim.url}/v1",
            "OPENAI_API_KEY": "sk-simulated-demo",
            "QBQ_RESULTS_API_URL": f"{receiver.url}/results",
            "QBQ_DATABASE_URL": f"sqlite:///{(out / 'qbq.db').resolve()}",
            "QBQ_MAX_STUDENTS_PER_BATCH": str(batch_size),
            # Limits of a typical paid tier; the simulator itself is unlimited in the demo.
            "QBQ_RPM": os.environ.get("QBQ_RPM", "500"),
            "QBQ_TPM": os.environ.get("QBQ_TPM", "2000000"),
            "QBQ_LIMITER_DIR": str((out / "limiter").resolve()),
        })
        console.rule("[bold yellow]qbq demo — SIMULATED grades from the local OpenAI simulator")
        console.print(f"simulator {sim.url}/v1 · receiver {receiver.url}/results · "
                      f"request {request_path}")
        payload = grade(request_path)
        received = httpx.get(f"{receiver.url}/results", timeout=10).json()
        stats = httpx.get(f"{sim.url}/_sim/stats", timeout=10).json()
    console.print(table(payload))
    wrong = [
        f"{s.ref} Q{a.question_number}: {a.mark} != {truth[s.ref][a.question_number]}"
        for s in payload.students for a in s.answers
        if truth.get(s.ref, {}).get(a.question_number) not in (None, a.mark)
    ]
    graded = sum(1 for s in payload.students if s.status == "graded")
    checks = {
        "every student graded": graded == len(truth),
        "every mark equals the page's ground truth": not wrong,
        "the receiver holds exactly one payload": len(received["payloads"]) == 1,
        "students spread over several batches": payload.summary.batches > 1,
    }
    console.print(f"{payload.summary.batches} batches, {stats['requests']} simulated model "
                  f"requests, {stats['prompt_tokens']:,} prompt tokens; receiver: "
                  f"{len(received['payloads'])} payload(s), {received['duplicates']} duplicate(s)")
    for name, ok in checks.items():
        console.print(f"  {'[green]✓' if ok else '[red]✗'}[/] {name}")
    for line in wrong[:10]:
        console.print(f"    [red]{line}")
    console.rule("[bold yellow]these grades are SIMULATED — set OPENAI_API_KEY and run "
                 "`qbq grade` for real ones")
    return 0 if all(checks.values()) else 1
