"""The `exam-session` flow: grade every request waiting in an intake folder, each exactly once.

Intake layout: a request is either a bare `<intake>/<name>.json` (pages as URLs or absolute
paths, as legacy requests have them) or a folder `<intake>/<name>/` holding `request.json` with
its pages beside it (relative page paths resolve inside the folder). Writers should create an
entry under a name starting with "." and rename it when complete; such names are skipped.
A run claims an entry by renaming it into `processing/` (atomic: of two runs only one wins),
grades it with the `grade-assessment` subflow, then moves it into `done/` (the run completed;
its payload is recorded) or `failed/` (the run failed; `<name>.error.txt` says why).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.grade_assessment import grade_assessment
from qbq.errors import GradingFailedError
from qbq.pipeline import RunResult

__all__ = ["claim", "exam_session", "pending_entries"]

PROCESSING, DONE, FAILED = "processing", "done", "failed"
_STATE_DIRS = {PROCESSING, DONE, FAILED}
REQUEST_FILE = "request.json"


def pending_entries(intake: Path) -> list[Path]:
    """Complete requests waiting in `intake`, oldest name first."""
    if not intake.is_dir():
        return []
    entries = []
    for entry in sorted(intake.iterdir()):
        if entry.name.startswith(".") or entry.name in _STATE_DIRS:
            continue
        if (entry.is_file() and entry.suffix == ".json") or (entry / REQUEST_FILE).is_file():
            entries.append(entry)
    return entries


def _free_name(folder: Path, name: str) -> Path:
    """`folder/name`, or `folder/name-2`, ... when a request of that name was seen before."""
    target = folder / name
    stem, suffix = (name[: -len(".json")], ".json") if name.endswith(".json") else (name, "")
    n = 1
    while target.exists():
        n += 1
        target = folder / f"{stem}-{n}{suffix}"
    return target


def claim(intake: Path, entry: Path) -> Path | None:
    """Move `entry` into `processing/`; None when another run claimed it first."""
    folder = intake / PROCESSING
    folder.mkdir(exist_ok=True)
    target = _free_name(folder, entry.name)
    try:
        entry.rename(target)
    except FileNotFoundError:
        return None
    os.utime(target)  # the claim time, for reclaiming entries of a crashed run
    return target


def _move(intake: Path, entry: Path, state: str) -> Path:
    folder = intake / state
    folder.mkdir(exist_ok=True)
    return entry.rename(_free_name(folder, entry.name))


def reclaim_stale(intake: Path, older_than_s: float) -> list[Path]:
    """Put entries left in `processing/` by a crashed run back into the intake."""
    folder = intake / PROCESSING
    if not folder.is_dir():
        return []
    cutoff = time.time() - older_than_s
    return [entry.rename(_free_name(intake, entry.name))
            for entry in sorted(folder.iterdir()) if entry.stat().st_mtime < cutoff]


def _request_file(entry: Path) -> Path:
    return entry if entry.is_file() else entry / REQUEST_FILE


@flow(name="exam-session", log_prints=False)
def exam_session(
    intake_dir: str = "intake",
    provider_block: str | None = None,
    results_block: str | None = None,
    policy_block: str | None = None,
    reclaim_after_minutes: float = 240.0,
    mode: Literal["sync", "batch", "flex"] = "sync",
) -> dict[str, Any]:
    """Grade every request waiting in the intake folder once, one grade-assessment subflow each.

    Args:
        intake_dir: Intake folder on the worker (relative: to the deployment's working
            directory).
        provider_block: Name of a `qbq-openai-provider` block; empty: OPENAI_* / QBQ_* env.
        results_block: Name of a `qbq-results-api` block; empty: QBQ_RESULTS_API_* env.
        policy_block: Name of a `qbq-grading-policy` block; empty: QBQ_* env.
        reclaim_after_minutes: Entries left in processing/ for this long are taken to belong
            to a crashed run and are graded again (the store makes finished work a no-op).
        mode: How each request is graded: sync, flex, or batch (the Batch API: half price,
            results within 24 h; the exam-session deployment sets it, as suits a session that
            can wait).
    """
    logger = get_run_logger()
    intake = Path(intake_dir).resolve()
    reclaimed = reclaim_stale(intake, reclaim_after_minutes * 60.0)
    if reclaimed:
        logger.warning("re-queued %d request(s) left in processing/ by an earlier run",
                       len(reclaimed))
    rows: list[dict[str, Any]] = []
    for entry in pending_entries(intake):
        claimed = claim(intake, entry)
        if claimed is None:
            logger.info("%s was claimed by another run", entry.name)
            continue
        state = grade_assessment(request_path=str(_request_file(claimed)),
                                 provider_block=provider_block, results_block=results_block,
                                 policy_block=policy_block, mode=mode, return_state=True)
        if state.is_completed():
            graded: RunResult = state.result()
            _move(intake, claimed, DONE)
            rows.append({"request": entry.name, "outcome": "done", "status": graded.status,
                         "process_id": graded.process_id, "graded": graded.summary.graded,
                         "students": graded.summary.students})
        else:
            failed = _move(intake, claimed, FAILED)
            failed.with_name(failed.name + ".error.txt").write_text(
                f"{state.type.value}: {state.message}\n", encoding="utf-8")
            rows.append({"request": entry.name, "outcome": "failed", "status": state.type.value,
                         "process_id": None, "graded": None, "students": None})
        logger.info("%s → %s", entry.name, rows[-1]["outcome"])
    if rows:
        create_table_artifact(rows, key="exam-session-intake",
                              description=f"intake {intake}: requests graded by this run")
    failed_names = [r["request"] for r in rows if r["outcome"] == "failed"]
    result = {"intake": str(intake), "reclaimed": len(reclaimed),
              "done": [r["request"] for r in rows if r["outcome"] == "done"],
              "failed": failed_names}
    if failed_names:
        raise GradingFailedError(f"{len(failed_names)} of {len(rows)} intake request(s) failed "
                                 f"(see {intake / FAILED}): {', '.join(failed_names)}")
    return result
