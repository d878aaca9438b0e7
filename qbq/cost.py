"""What grading costs: a plan's estimate in each processing mode, with and without prompt
caching, and the actual cost of the replies a run received (pure; prices from `qbq.catalog`,
USD per 1M tokens from https://platform.openai.com/docs/pricing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from qbq.domain import GradingRequest, Student
from qbq.model_spec import MODES, Mode, ModelSpec
from qbq.planning import BatchPlan
from qbq.tokens import image_tokens
from qbq.usage import Usage

__all__ = ["ModeEstimate", "billed_input_tokens", "mode_estimates",
           "own_page_tokens", "result_mode", "usage_by_mode",
           "usage_cost_usd"]


def billed_input_tokens(usage: Usage) -> int:
    """Prompt tokens billed at the full input price: those not served from the prompt cache."""
    return usage.prompt_tokens - usage.cached_tokens


def own_page_tokens(request: GradingRequest, student: Student) -> int:
    """Input tokens of `student`'s own page images as sent (detail "high"), label excluded."""
    return sum(image_tokens(request.spec, p.width, p.height, "high") for p in student.pages)


def usage_cost_usd(spec: ModelSpec, usage: Usage, mode: Mode) -> float:
    """USD the replies in `usage` cost in `mode` (cached tokens at the cached price, reasoning
    tokens as output). Raises `ConfigurationError` when the model is not offered in `mode`."""
    return spec.cost_usd_in_mode(mode, usage.prompt_tokens, usage.cached_tokens,
                                 usage.completion_tokens)


def result_mode(result: Mapping[str, Any] | None) -> Mode:
    """The mode a stored batch result was graded in ("sync" for results from before modes)."""
    mode = (result or {}).get("mode")
    return mode if mode in MODES else "sync"


def usage_by_mode(batches: Iterable[tuple[Mode, Usage]]) -> dict[Mode, Usage]:
    """`(mode, usage)` pairs (one per stored batch) added up per mode, in `MODES` order."""
    usage: dict[Mode, Usage] = {}
    for mode, used in batches:
        usage[mode] = usage.get(mode, Usage()) + used
    return {m: usage[m] for m in MODES if m in usage}


@dataclass(frozen=True)
class ModeEstimate:
    """A plan's estimated cost in one mode: USD without and with prompt caching."""

    mode: Mode
    usd_uncached: float
    usd_cached: float


def mode_estimates(plan: BatchPlan) -> list[ModeEstimate]:
    """`ModeEstimate` for every mode the plan's model is offered in (sync always first)."""
    if plan.spec is None:
        return []
    return [ModeEstimate(m, plan.estimated_cost_usd(m, cache=False), plan.estimated_cost_usd(m))
            for m in MODES if m in plan.spec.modes]
