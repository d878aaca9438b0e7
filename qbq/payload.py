"""The results payloads qbq posts: its native form and the legacy form of the replaced system.

Both carry `revision` (1 for the first payload of a process; a finalize whose payload changed
queues the next) and are told apart by `content_hash`; `delivery_key` is the Idempotency-Key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DELIVERY_HASH_CHARS",
    "LegacyAnswer",
    "LegacyFailure",
    "LegacyPayload",
    "LegacyStudent",
    "NativePayload",
    "PayloadAnswer",
    "PayloadFailure",
    "PayloadStudent",
    "RunSummary",
    "StudentName",
    "content_hash",
    "delivery_key",
]

_STRICT = ConfigDict(extra="forbid")


class StudentName(BaseModel):
    model_config = _STRICT
    first: str
    last: str


class PayloadAnswer(BaseModel):
    model_config = _STRICT
    question_number: str
    mark: float = Field(ge=0)
    feedback: str
    confidence: Literal["low", "medium", "high"]
    status: Literal["answered", "blank", "unreadable"]


class PayloadStudent(BaseModel):
    model_config = _STRICT
    ref: str
    image_ids: list[str]
    status: Literal["graded", "failed"]
    needs_review: bool
    name: StudentName | None = None
    answers: list[PayloadAnswer]


class PayloadFailure(BaseModel):
    model_config = _STRICT
    ref: str
    reason: str
    error_type: str


class RunSummary(BaseModel):
    model_config = _STRICT
    model: str
    students: int
    graded: int
    failed: int
    needs_review: int
    coverage: float
    min_coverage: float
    batches: int
    batches_failed: int
    model_calls: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    reasoning_tokens: int = 0
    estimated_cost_usd: float = Field(
        description="USD of the replies received, each batch at the prices of the mode it ran "
        "in, cached tokens at the cached-input price (catalogue prices).")
    mode: Literal["sync", "batch", "flex"] = Field(
        "sync", description="The processing mode of this run (QBQ_MODE or the flow's `mode`).")
    simulated: bool = Field(description="True when the grades came from qbq's simulator.")


class NativePayload(BaseModel):
    model_config = _STRICT
    assessment_id: str
    process_id: str
    revision: int = Field(1, ge=1, description="1 for a process's first payload, then + 1 for "
                          "each finalize whose payload changed.")
    status: Literal["success", "failed"]
    students: list[PayloadStudent]
    failures: list[PayloadFailure]
    summary: RunSummary


class LegacyAnswer(BaseModel):
    model_config = _STRICT
    question_number: str
    mark: float
    feedback: str


class LegacyStudent(BaseModel):
    """One graded student, as the replaced system sent it (plus qbq's `ref`, `image_ids` and
    `needs_review`, which the old platform ignores). `image_ids` keep the request's JSON type:
    integers for a legacy request."""

    model_config = _STRICT
    first_name: str
    last_name: str
    image_ids: list[int] | list[str]
    answers: list[LegacyAnswer]
    ref: str
    needs_review: bool = False


class LegacyFailure(BaseModel):
    """A student that was not graded (an extra list the old platform ignores)."""

    model_config = _STRICT
    ref: str
    image_ids: list[int] | list[str]
    reason: str
    error_type: str


class LegacyPayload(BaseModel):
    """The replaced system's results shape: `data` holds graded students only (as it did);
    failed students are in `failures`; `status` follows qbq's coverage policy."""

    model_config = _STRICT
    assessment_id: int | str
    assessment_settings_id: int | None
    status: Literal["success", "failed"]
    data: list[LegacyStudent]
    failures: list[LegacyFailure] = Field(default_factory=list)
    process_id: str
    revision: int = Field(1, ge=1, description="As in the native payload.")
    simulated: bool


#: Hex digits of the body's SHA-256 kept in the Idempotency-Key.
DELIVERY_HASH_CHARS = 16
#: Top-level fields that say how a payload was made, not what it grades: a rerun that changes
#: only these (token counts, cost) queues no new revision.
_NOT_CONTENT = frozenset({"revision", "summary"})


def _sha256(body: Mapping[str, Any], leave_out: frozenset[str]) -> str:
    kept = {k: v for k, v in body.items() if k not in leave_out}
    canonical = json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def content_hash(body: Mapping[str, Any]) -> str:
    """SHA-256 (64 hex digits) of what a payload body (JSON object) grades: every field but
    `revision` and the native `summary`. Equal hashes: an unchanged payload, nothing to send."""
    return _sha256(body, _NOT_CONTENT)


def delivery_key(process_id: str, revision: int, body: Mapping[str, Any]) -> str:
    """The Idempotency-Key of one payload revision: `<process_id>/r<revision>-<hash>`, the hash
    being the first 16 hex digits of the SHA-256 of the whole body but `revision` (summary
    included). So one key never names two different payloads, even across stores that grade
    the same request."""
    return f"{process_id}/r{revision}-{_sha256(body, frozenset({'revision'}))[:DELIVERY_HASH_CHARS]}"
