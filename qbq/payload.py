"""The results payloads qbq posts: its native form and the legacy form of the replaced system."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "LegacyAnswer",
    "LegacyPayload",
    "LegacyStudent",
    "NativePayload",
    "PayloadAnswer",
    "PayloadFailure",
    "PayloadStudent",
    "RunSummary",
    "StudentName",
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
    model_config = _STRICT
    first_name: str
    last_name: str
    image_ids: list[str]
    answers: list[LegacyAnswer]
    ref: str
    status: Literal["graded", "failed"]
    failure_reason: str | None = None


class LegacyPayload(BaseModel):
    model_config = _STRICT
    assessment_id: int | str
    assessment_settings_id: int | None
    status: Literal["success", "failed"]
    data: list[LegacyStudent]
    process_id: str
    simulated: bool
