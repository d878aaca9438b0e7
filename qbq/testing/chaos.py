"""Chaos benchmark: SIGKILL `qbq grade` at chosen points, rerun until done, count what broke.

Each episode grades a fresh request with the real CLI in a separate process against a real
Prefect server, the OpenAI simulator and the reference receiver (all on loopback), and kills it
with SIGKILL during planning, with batches in flight, after reduce, or during delivery — also
with two runs of the same request started together, with the receiver refusing requests for
a while, and during the delivery of a corrected payload (revision 2, after a first run in which
the model refused a batch). Then it reruns the request until it completes. It prints, per
scenario and in total: runs, kills, model calls for batches that had already completed, results
rows written twice, payloads the receiver got more than once (what it would have stored twice
without its own dedup), students lost or wrong (in the newest revision the platform holds), and
corrected payloads delivered. Every loss/duplicate column must be 0.

The command is `python benchmarks/chaos.py [--kills 50] [--seed 1] [--store sqlite|postgres]`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from qbq.receiver import create_app as create_receiver
from qbq.sample import truth_of, write_sample
from qbq.simulator import BackgroundServer, SimConfig
from qbq.simulator import create_app as create_simulator
from qbq.store import BatchRow, OutboxRow, ProcessRow, Store
from qbq.testing.harness import batch_refs, buffer_body, pg_database, prefect_server

PHASES = ("planning", "grading", "after_reduce", "delivery")
SCENARIOS = ("kill", "kill", "kill", "duplicate", "receiver_down", "revision")


# --- instrumented stand-ins ---------------------------------------------------------------------


class CallRecorder:
    """ASGI middleware in front of the simulator: which batch each model call is for, and whether
    that batch had already succeeded in the store when the call arrived."""

    def __init__(self, app: Any, store: Store) -> None:
        self.app = app
        self.store = store
        self.lock = threading.Lock()
        self.in_flight: Counter[str] = Counter()
        self.calls = 0
        self.calls_for_completed: list[tuple[str, ...]] = []

    def _completed(self, refs: tuple[str, ...]) -> bool:
        with self.store.transaction() as session:
            rows = session.scalars(select(BatchRow.student_refs)
                                   .where(BatchRow.status == "succeeded")).all()
        return any(tuple(r) == refs for r in rows)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            await self.app(scope, receive, send)
            return
        body, replay = await buffer_body(receive)
        refs = batch_refs(body)
        prefix = refs[0].split("-")[0] if refs else "?"
        completed: bool = bool(refs) and await asyncio.to_thread(self._completed, refs)
        if completed:
            self.calls_for_completed.append(refs)
        with self.lock:
            self.calls += 1
            self.in_flight[prefix] += 1
        try:
            await self.app(scope, replay, send)
        finally:
            with self.lock:
                self.in_flight[prefix] -= 1


class SlowResults:
    """ASGI middleware in front of the receiver: POST /results is stored at once but answered only
    after `delay_s`, so a kill "during delivery" lands after the payload arrived and before the
    sender learned it — the case where a blind resend would deliver twice."""

    def __init__(self, app: Any, delay_s: float) -> None:
        self.app = app
        self.delay_s = delay_s
        self.posting: set[str] = set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/results":
            key = dict(scope["headers"]).get(b"idempotency-key", b"").decode()
            held: list[Any] = []

            async def hold(message: Any) -> None:
                held.append(message)

            self.posting.add(key)
            try:
                await self.app(scope, receive, hold)
                await asyncio.sleep(self.delay_s)
                for message in held:
                    await send(message)
            finally:
                self.posting.discard(key)
            return
        await self.app(scope, receive, send)


# --- episodes ------------------------------------------------------------------------------------


@dataclass
class Tally:
    runs: int = 0
    kills: int = 0
    kills_by_phase: Counter[str] = field(default_factory=Counter)
    missed_kills: int = 0
    failed_final_runs: int = 0


@dataclass
class ChaosReport:
    episodes: int
    by_scenario: dict[str, Tally]
    model_calls: int
    calls_for_completed_batches: int
    rows_written_twice: int
    payloads_more_than_once: int
    students: int
    students_lost: int
    seconds: float
    #: Payloads received with revision > 1 (corrections that reached the platform).
    revisions_delivered: int = 0

    @property
    def ok(self) -> bool:
        return (self.calls_for_completed_batches == 0 and self.rows_written_twice == 0
                and self.payloads_more_than_once == 0 and self.students_lost == 0
                and all(t.failed_final_runs == 0 for t in self.by_scenario.values()))


class Chaos:
    def __init__(self, work: Path, *, store_url: str, api_url: str, sim: BackgroundServer,
                 recorder: CallRecorder, receiver: BackgroundServer, slow: SlowResults,
                 rng: random.Random, students: int) -> None:
        self.work = work
        self.store = Store(store_url)
        self.sim, self.recorder = sim, recorder
        self.receiver, self.slow = receiver, slow
        self.rng = rng
        self.students = students
        self.env = {
            **os.environ,
            "PREFECT_API_URL": api_url,
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "OPENAI_BASE_URL": f"{sim.url}/v1",
            "OPENAI_API_KEY": "sk-chaos-simulated",
            "QBQ_DATABASE_URL": store_url,
            "QBQ_RESULTS_API_URL": f"{receiver.url}/results",
            "QBQ_RESULTS_API_LOOKUP_URL": f"{receiver.url}/results/{{key}}",
            "QBQ_MAX_STUDENTS_PER_BATCH": "3",
            "QBQ_MAX_IN_FLIGHT": "2",
            "QBQ_RPM": "6000",
            "QBQ_TPM": "50000000",
            "QBQ_LIMITER_DIR": str(work / "limiter"),
            "QBQ_LEASE_POLL_S": "0.2",
        }
        self.snapshots: dict[str, Any] = {}
        self.rewritten: set[str] = set()
        self.requests: list[Path] = []

    # requests ----------------------------------------------------------------------------------

    def new_request(self, i: int) -> Path:
        path = write_sample(self.work / f"r{i}", students=self.students, pages=1, questions=3,
                            seed=100 + i, assessment_id=f"chaos-{i}")
        body = json.loads(path.read_text())
        for student in body["students"]:  # refs unique across requests: the recorder keys on them
            student["ref"] = f"R{i}-{student['ref']}"
        path.write_text(json.dumps(body))
        self.requests.append(path)
        return path

    # processes ---------------------------------------------------------------------------------

    def start(self, request: Path, tally: Tally) -> subprocess.Popen[bytes]:
        tally.runs += 1
        return subprocess.Popen([sys.executable, "-m", "qbq", "grade", str(request)],
                                env=self.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd=self.work)

    def _process(self, assessment_id: str) -> ProcessRow | None:
        with self.store.transaction() as session:
            return session.scalars(select(ProcessRow)
                                   .where(ProcessRow.assessment_id == assessment_id)).first()

    def _outbox_pending(self, process_id: str) -> bool:
        with self.store.transaction() as session:
            return session.scalars(select(OutboxRow.id).where(
                OutboxRow.process_id == process_id, OutboxRow.status == "pending")).first() \
                is not None

    def wait_for_phase(self, proc: subprocess.Popen[bytes], phase: str, index: int,
                       timeout: float = 90.0) -> bool:
        """Poll until the run reaches `phase`; False if it ended first."""
        prefix, assessment = f"R{index}", f"chaos-{index}"
        start = time.monotonic()
        delay = self.rng.uniform(0.3, 2.5)
        while time.monotonic() - start < timeout:
            if proc.poll() is not None:
                return False
            self.snapshot()
            process = self._process(assessment)
            if phase == "planning" and (process is None and time.monotonic() - start >= delay):
                return True
            if phase == "planning" and process is not None:
                return True  # planned already: kill right after registration
            if phase == "grading" and self.recorder.in_flight[prefix] > 0:
                time.sleep(self.rng.uniform(0.0, 0.2))
                return True
            if phase == "after_reduce" and process is not None and \
                    process.status in ("completed", "failed") and self._outbox_pending(process.id):
                return True
            if phase == "delivery" and process is not None and any(
                    k.startswith(process.id) for k in self.slow.posting):
                time.sleep(self.rng.uniform(0.0, 0.15))
                return True
            time.sleep(0.02)
        return False

    def kill(self, proc: subprocess.Popen[bytes], phase: str, tally: Tally, index: int) -> None:
        if self.wait_for_phase(proc, phase, index):
            proc.send_signal(signal.SIGKILL)
            tally.kills += 1
            tally.kills_by_phase[phase] += 1
        else:
            tally.missed_kills += 1
        proc.wait()

    def finish(self, request: Path, tally: Tally) -> None:
        """Rerun until the request completes (exit 0), at most three times."""
        for _ in range(3):
            proc = self.start(request, tally)
            while proc.poll() is None:
                self.snapshot()
                time.sleep(0.05)
            if proc.returncode == 0:
                return
        tally.failed_final_runs += 1

    # episodes ----------------------------------------------------------------------------------

    def episode(self, index: int, scenario: str, tally: Tally) -> None:
        request = self.new_request(index)
        if scenario == "kill":
            for _ in range(self.rng.choice((1, 1, 2))):
                self.kill(self.start(request, tally), self.rng.choice(PHASES), tally, index)
        elif scenario == "duplicate":
            first, second = self.start(request, tally), self.start(request, tally)
            if self.rng.random() < 0.7:
                self.kill(first, self.rng.choice(PHASES[1:]), tally, index)
            else:
                first.wait()
            second.wait()
        elif scenario == "revision":
            # revision 1: the model refuses one batch, the run ends failed and delivers that;
            # then a clean rerun is killed while revision 2 is being posted
            self._fault_script(["refusal"])
            try:
                self.start(request, tally).wait()
            finally:
                self._fault_script([])
            self.kill(self.start(request, tally), "delivery", tally, index)
        elif scenario == "receiver_down":
            httpx.post(f"{self.receiver.url}/_control", json={"refuse_next": 3}, timeout=10)
            proc = self.start(request, tally)
            if self.rng.random() < 0.5:
                self.kill(proc, self.rng.choice(("grading", "after_reduce")), tally, index)
            else:
                proc.wait()
            httpx.post(f"{self.receiver.url}/_control", json={"refuse_next": 0}, timeout=10)
        self.finish(request, tally)

    def _fault_script(self, faults: list[str]) -> None:
        httpx.post(f"{self.sim.url}/_sim/config", json={"fault_script": faults}, timeout=10)

    def snapshot(self) -> None:
        """Remember when each succeeded batch was written; a later change is a rewrite."""
        with self.store.transaction() as session:
            rows = session.execute(select(BatchRow.idempotency_key, BatchRow.updated_at)
                                   .where(BatchRow.status == "succeeded")).all()
        for key, updated in rows:
            seen = self.snapshots.setdefault(key, updated)
            if seen != updated:
                self.rewritten.add(key)

    def students_lost(self) -> tuple[int, int]:
        got = httpx.get(f"{self.receiver.url}/results", timeout=30).json()
        # the newest revision of each assessment is what the platform keeps
        by_assessment: dict[str, Any] = {}
        for p in sorted(got["payloads"], key=lambda p: p["payload"].get("revision", 1)):
            by_assessment[p["payload"]["assessment_id"]] = p["payload"]
        total = lost = 0
        for i, request in enumerate(self.requests):
            truth = truth_of(request)  # keyed by the request's (rewritten) refs
            total += len(truth)
            payload = by_assessment.get(f"chaos-{i}")
            if payload is None:
                lost += len(truth)
                continue
            marks = {s["ref"]: {a["question_number"]: a["mark"] for a in s["answers"]}
                     for s in payload["students"] if s["status"] == "graded"}
            lost += sum(1 for ref, m in truth.items() if marks.get(ref) != m)
        return total, lost


def run_chaos(*, kills: int, seed: int = 1, students: int = 9, store: str = "sqlite",
              scenarios: list[str] | None = None, work: Path | None = None,
              log: Callable[[str], None] = print) -> ChaosReport:
    """Run episodes until `kills` SIGKILLs have landed; `scenarios` fixes their order (then
    random), so a short run can cover every scenario."""
    # Long: it owns every server of the run (Prefect, simulator, receiver, databases) and
    # must release them all in one `finally`.
    rng = random.Random(seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qbq-chaos-") as tmp:
        root = work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        cleanups: list[Callable[[], None]] = []
        store_url = f"sqlite:///{root / 'qbq.db'}"
        if store == "postgres":
            made = pg_database()
            if made is None:
                raise RuntimeError("PostgreSQL is not reachable at 127.0.0.1:5432")
            store_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{made[0]}"
            cleanups.append(made[1])
        prefect_db = pg_database()
        if prefect_db is not None:
            cleanups.append(prefect_db[1])
        db_store = Store(store_url)
        db_store.migrate()
        try:
            pg_url = (f"postgresql+asyncpg://postgres@127.0.0.1:5432/{prefect_db[0]}"
                      if prefect_db else None)
            (root / "prefect").mkdir(exist_ok=True)
            with prefect_server(root / "prefect", pg_url) as api_url:
                recorder = CallRecorder(create_simulator(SimConfig(latency_ms=300)), db_store)
                slow = SlowResults(create_receiver(root / "receiver.db"), delay_s=0.3)
                with BackgroundServer(recorder) as sim, BackgroundServer(slow) as receiver:
                    chaos = Chaos(root, store_url=store_url, api_url=api_url, sim=sim,
                                  recorder=recorder, receiver=receiver, slow=slow, rng=rng,
                                  students=students)
                    tallies = {s: Tally() for s in dict.fromkeys(SCENARIOS)}
                    index = 0
                    fixed = list(scenarios or [])
                    while sum(t.kills for t in tallies.values()) < kills or fixed:
                        scenario = fixed.pop(0) if fixed else rng.choice(SCENARIOS)
                        chaos.episode(index, scenario, tallies[scenario])
                        total_kills = sum(t.kills for t in tallies.values())
                        log(f"episode {index}: {scenario}, kills so far {total_kills}/{kills}")
                        index += 1
                    chaos.snapshot()
                    n_students, lost = chaos.students_lost()
                    held = httpx.get(f"{receiver.url}/results", timeout=30).json()
                    dup = held["duplicates"]
                    revised = sum(1 for p in held["payloads"]
                                  if p["payload"].get("revision", 1) > 1)
                    return ChaosReport(
                        episodes=index, by_scenario=tallies, model_calls=recorder.calls,
                        calls_for_completed_batches=len(recorder.calls_for_completed),
                        rows_written_twice=len(chaos.rewritten), payloads_more_than_once=dup,
                        students=n_students, students_lost=lost,
                        seconds=time.monotonic() - started, revisions_delivered=revised)
        finally:
            db_store.dispose()
            for cleanup in cleanups:
                cleanup()


def format_report(report: ChaosReport) -> str:
    lines = [f"{'scenario':<14} {'runs':>5} {'kills':>6} {'missed':>7} {'failed':>7}  kills by phase"]
    for name, t in report.by_scenario.items():
        phases = ", ".join(f"{p} {n}" for p, n in sorted(t.kills_by_phase.items())) or "-"
        lines.append(f"{name:<14} {t.runs:>5} {t.kills:>6} {t.missed_kills:>7} "
                     f"{t.failed_final_runs:>7}  {phases}")
    runs = sum(t.runs for t in report.by_scenario.values())
    kills = sum(t.kills for t in report.by_scenario.values())
    lines += [
        "",
        f"{'runs':<44} {runs}",
        f"{'kills':<44} {kills}",
        f"{'model calls':<44} {report.model_calls}",
        f"{'model calls for already-completed batches':<44} {report.calls_for_completed_batches}",
        f"{'results rows written twice':<44} {report.rows_written_twice}",
        f"{'payloads received more than once (no dedup)':<44} {report.payloads_more_than_once}",
        f"{'students lost or wrong':<44} {report.students_lost} of {report.students}",
        f"{'corrected payloads delivered (revision > 1)':<44} {report.revisions_delivered}",
        "",
        f"summary: {report.episodes} episodes, {runs} runs, {kills} SIGKILLs in "
        f"{report.seconds:.0f} s — duplicates/losses: {report.calls_for_completed_batches}/"
        f"{report.rows_written_twice}/{report.payloads_more_than_once}/{report.students_lost} "
        f"({'OK' if report.ok else 'FAILED'})",
    ]
    return "\n".join(lines)
