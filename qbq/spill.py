"""Paid model replies the store could not take (it failed for good: read-only, disk full, or an
outage longer than QBQ_DB_OUTAGE_S), kept in a file until it works again.

`spill` writes one batch's record to `QBQ_SPILL_DIR` (owner-only: it holds marks, feedback and
names); the next run that claims the batch `take`s it and writes it to the store instead of
paying the model again, then `discard`s the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qbq.store import repository as repo
from qbq.usage import Usage

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["BatchRecord", "discard", "spill", "spill_path", "take"]


@dataclass(frozen=True)
class BatchRecord:
    """What `grade_batch` writes for a batch: its result, usage, attempts and, when some
    students failed, the last error."""

    key: str
    result: dict[str, Any]
    usage: Usage
    attempts: int
    raw_response: str | None = None
    error_type: str | None = None
    stage: str | None = None
    detail: str | None = None

    def write(self, session: Session) -> None:
        """Record the batch's success or failure (safe to replay: `Store.run`)."""
        if self.error_type is not None:
            repo.record_batch_failure(session, self.key, error_type=self.error_type,
                                      stage=self.stage or "grade", detail=self.detail or "",
                                      attempts=self.attempts, result=self.result,
                                      usage=self.usage, raw_response=self.raw_response)
        else:
            repo.record_batch_success(session, self.key, result=self.result, usage=self.usage,
                                      attempts=self.attempts, raw_response=self.raw_response)

    @property
    def n_graded(self) -> int:
        return len(self.result.get("students", {}))


def spill_path(directory: Path, key: str) -> Path:
    """The file that holds `key`'s record (named by a hash: keys are not file names)."""
    return directory / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def spill(directory: Path, record: BatchRecord) -> Path:
    """Write `record` atomically, readable by its owner only; returns the file."""
    directory.mkdir(parents=True, exist_ok=True)
    path = spill_path(directory, record.key)
    body = {"key": record.key, "result": record.result, "usage": record.usage.as_dict(),
            "attempts": record.attempts, "raw_response": record.raw_response,
            "error_type": record.error_type, "stage": record.stage, "detail": record.detail}
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(body, handle)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    return path


def take(directory: Path, key: str) -> BatchRecord | None:
    """The record spilled for `key`, or None (the file stays until `discard`)."""
    path = spill_path(directory, key)
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if body.get("key") != key:  # a hash collision or a foreign file: not ours
        return None
    return BatchRecord(key=key, result=body["result"], usage=Usage(**body["usage"]),
                       attempts=int(body["attempts"]), raw_response=body.get("raw_response"),
                       error_type=body.get("error_type"), stage=body.get("stage"),
                       detail=body.get("detail"))


def discard(directory: Path, key: str) -> None:
    """Remove `key`'s record once the store holds it."""
    spill_path(directory, key).unlink(missing_ok=True)
