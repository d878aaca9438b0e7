"""The `qbq-grading-policy` block: a named `qbq.settings.GradingPolicy` for deployments."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from prefect.blocks.core import Block
from pydantic import Field

from qbq.settings import GradingPolicy

__all__ = ["GradingPolicyBlock"]


def _doc(name: str) -> str:
    """The policy field's own description, so the block's form says what the setting says."""
    description = GradingPolicy.model_fields[name].description or name
    return f"{description} Empty: keep the environment's value (QBQ_{name.upper()})."


class GradingPolicyBlock(Block):
    """Coverage threshold, re-ask and retry limits, margins and batch sizes for grading runs.

    Every field is optional: an empty field keeps the value the environment (or the
    default) gives, so a block names only what a deployment changes.
    """

    _block_type_name: ClassVar[str] = "qbq-grading-policy"
    _block_type_slug: ClassVar[str] = "qbq-grading-policy"
    _description: ClassVar[str] = (
        "qbq: grading policy — coverage threshold, re-asks, attempts, back-off, margins and "
        "batch sizes."
    )

    min_coverage: float | None = Field(None, ge=0.0, le=1.0, description=_doc("min_coverage"))
    reasks: int | None = Field(None, ge=0, description=_doc("reasks"))
    max_attempts: int | None = Field(None, ge=1, description=_doc("max_attempts"))
    backoff_base_s: float | None = Field(None, ge=0.0, description=_doc("backoff_base_s"))
    backoff_max_s: float | None = Field(None, ge=0.0, description=_doc("backoff_max_s"))
    context_margin: float | None = Field(None, ge=0.0, lt=1.0,
                                         description=_doc("context_margin"))
    max_students_per_batch: int | None = Field(None, gt=0,
                                               description=_doc("max_students_per_batch"))
    max_images_per_request: int | None = Field(None, gt=0,
                                               description=_doc("max_images_per_request"))
    max_request_bytes: int | None = Field(None, gt=0, description=_doc("max_request_bytes"))
    output_tokens_per_answer: int | None = Field(None, gt=0,
                                                 description=_doc("output_tokens_per_answer"))
    output_tokens_per_student: int | None = Field(
        None, ge=0, description=_doc("output_tokens_per_student"))
    output_headroom: float | None = Field(None, ge=1.0, description=_doc("output_headroom"))
    breaker_threshold: int | None = Field(None, ge=1, description=_doc("breaker_threshold"))
    breaker_cooldown_s: float | None = Field(None, ge=0.0,
                                             description=_doc("breaker_cooldown_s"))
    breaker_give_up_s: float | None = Field(None, gt=0.0, description=_doc("breaker_give_up_s"))
    retry_budget_attempts: int | None = Field(None, ge=0,
                                              description=_doc("retry_budget_attempts"))
    retry_budget_token_ratio: float | None = Field(None, ge=0.0,
                                                   description=_doc("retry_budget_token_ratio"))
    lease_s: float | None = Field(None, gt=0.0, description=_doc("lease_s"))
    mode: Literal["sync", "batch", "flex"] | None = Field(None, description=_doc("mode"))
    reasoning_effort: str | None = Field(None, description=_doc("reasoning_effort"))
    rate_limit_pause_s: float | None = Field(None, gt=0.0, description=_doc("rate_limit_pause_s"))

    def to_settings_overrides(self) -> dict[str, Any]:
        """The `GradingPolicy` fields this block sets (the non-empty ones)."""
        return {name: value for name in type(self).model_fields
                if name in GradingPolicy.model_fields
                and (value := getattr(self, name)) is not None}

    def to_policy(self, base: GradingPolicy | None = None) -> GradingPolicy:
        """`base` (default: the environment's policy) with this block's fields applied."""
        start = base if base is not None else GradingPolicy()
        return GradingPolicy.model_validate({**start.model_dump(), **self.to_settings_overrides()})
