"""Reasoning models as OpenAI runs them: hidden reasoning tokens spent inside the output budget.

Rules emulated (https://platform.openai.com/docs/guides/reasoning and the Chat Completions
reference, https://platform.openai.com/docs/api-reference/chat/create):

- `max_completion_tokens` bounds reasoning plus visible output. When reasoning and the reply
  do not fit, the reply is cut (possibly to nothing) and `finish_reason` is "length"; usage
  reports the reasoning in `completion_tokens_details.reasoning_tokens`, counted inside
  `completion_tokens`.
- `reasoning_effort` is accepted only by reasoning models, and only with a value the model
  supports; otherwise a 400 in OpenAI's words ("Unsupported parameter: 'reasoning_effort' is
  not supported with this model." / "Unsupported value: 'reasoning_effort' does not support
  'none' with this model. Supported values are: ..."). Without it OpenAI uses "medium".
- Reasoning models refuse `max_tokens` ("Use 'max_completion_tokens' instead") and a
  `temperature` other than the default 1.

How many tokens the simulator reasons is a setting, not a fact: per request
`reasoning_tokens[effort] + reasoning_tokens_per_answer[effort] × answers`, where answers is
students × questions in a qbq prompt (0 for other prompts), so a bigger batch thinks more.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qbq.catalog import ModelSpec
from qbq.simulator.validation import SimAPIError

__all__ = [
    "DEFAULT_REASONING_TOKENS",
    "DEFAULT_REASONING_TOKENS_PER_ANSWER",
    "EFFORTS",
    "OPENAI_DEFAULT_EFFORT",
    "ReasoningSplit",
    "check_reasoning_params",
    "parse_effort_tokens",
    "reasoning_tokens",
    "split_budget",
]

#: Every `reasoning_effort` value of the API spec (`ReasoningEffort` in openai/openai-openapi).
EFFORTS: tuple[str, ...] = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
#: What OpenAI uses when a request names no effort (the spec's default).
OPENAI_DEFAULT_EFFORT = "medium"
#: Simulated reasoning tokens per request, by effort (a setting; see the module docstring).
DEFAULT_REASONING_TOKENS: dict[str, int] = {
    "none": 0, "minimal": 0, "low": 256, "medium": 1024, "high": 4096, "xhigh": 8192, "max": 16384,
}
#: Simulated reasoning tokens per graded answer (student × question), by effort.
DEFAULT_REASONING_TOKENS_PER_ANSWER: dict[str, int] = {
    "none": 0, "minimal": 8, "low": 24, "medium": 64, "high": 160, "xhigh": 320, "max": 640,
}


def parse_effort_tokens(value: Any) -> dict[str, int]:
    """Tokens per effort from a mapping or a string "low=256,medium=1024" (a JSON object too).

    Efforts left out keep no entry (callers merge with the defaults); unknown efforts and
    negative counts raise ValueError.
    """
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            import json

            return parse_effort_tokens(json.loads(text))
        pairs: list[tuple[str, str]] = []
        for chunk in text.split(","):
            if not chunk.strip():
                continue
            name, sep, raw = chunk.partition("=")
            if not sep:
                raise ValueError(f"{chunk.strip()!r} must be written EFFORT=TOKENS, e.g. medium=1024")
            pairs.append((name.strip(), raw.strip()))
        items: list[tuple[Any, Any]] = list(pairs)
    elif isinstance(value, Mapping):
        items = list(value.items())
    else:
        raise ValueError("reasoning tokens must be a mapping of effort to tokens or 'EFFORT=N,...'")
    tokens: dict[str, int] = {}
    for name, raw in items:
        if name not in EFFORTS:
            raise ValueError(f"unknown reasoning effort {name!r}; efforts: {', '.join(EFFORTS)}")
        try:
            count = int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"reasoning tokens for {name!r} must be an integer, got {raw!r}") from None
        if count < 0:
            raise ValueError(f"reasoning tokens for {name!r} must not be negative, got {count}")
        tokens[str(name)] = count
    return tokens


def _listed(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def _default_effort(spec: ModelSpec) -> str:
    if OPENAI_DEFAULT_EFFORT in spec.reasoning_efforts or not spec.reasoning_efforts:
        return OPENAI_DEFAULT_EFFORT
    return spec.default_reasoning_effort or spec.reasoning_efforts[0]


def check_reasoning_params(body: Mapping[str, Any], spec: ModelSpec) -> str | None:
    """The effort a request runs at (None for a model that does not reason); 400 as OpenAI.

    Checks `reasoning_effort` against the model (`spec.reasoning`, `spec.reasoning_efforts`;
    an empty tuple means every effort of the spec), and refuses `max_tokens` and a
    non-default `temperature` on reasoning models.
    """
    # Long: one check per parameter OpenAI refuses on reasoning models, each with its own documented message.
    effort = body.get("reasoning_effort")
    if not spec.reasoning:
        if effort is not None:
            raise SimAPIError(
                400,
                "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
                param="reasoning_effort",
                code="unsupported_parameter",
            )
        return None
    if body.get("max_tokens") is not None:
        raise SimAPIError(
            400,
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            param="max_tokens",
            code="unsupported_parameter",
        )
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise SimAPIError(
            400,
            f"Unsupported value: 'temperature' does not support {temperature} with this model. "
            "Only the default (1) value is supported.",
            param="temperature",
            code="unsupported_value",
        )
    if effort is None:
        return _default_effort(spec)
    if not isinstance(effort, str) or effort not in EFFORTS:
        raise SimAPIError(
            400,
            f"Invalid value: '{effort}'. Supported values are: {_listed(EFFORTS)}.",
            param="reasoning_effort",
            code="invalid_value",
        )
    supported = spec.reasoning_efforts or EFFORTS
    if effort not in supported:
        raise SimAPIError(
            400,
            f"Unsupported value: 'reasoning_effort' does not support '{effort}' with this model. "
            f"Supported values are: {_listed(supported)}.",
            param="reasoning_effort",
            code="unsupported_value",
        )
    return effort


def reasoning_tokens(
    effort: str,
    answers: int,
    per_request: Mapping[str, int],
    per_answer: Mapping[str, int],
) -> int:
    """Hidden reasoning tokens for one request at `effort` grading `answers` answers."""
    base = per_request.get(effort, DEFAULT_REASONING_TOKENS.get(effort, 0))
    each = per_answer.get(effort, DEFAULT_REASONING_TOKENS_PER_ANSWER.get(effort, 0))
    return base + each * max(0, answers)


@dataclass(frozen=True)
class ReasoningSplit:
    """How a completion budget is spent: reasoning first, then the visible reply.

    `visible_limit` is None when the whole reply fits; else the most visible tokens left
    (0 when reasoning used the whole budget) and the reply ends with finish_reason "length".
    """

    reasoning: int
    visible_limit: int | None


def split_budget(reasoning: int, visible: int, budget: int) -> ReasoningSplit:
    """Reasoning and visible tokens within `budget` (tokens): reasoning is spent first."""
    spent = min(reasoning, budget)
    left = budget - spent
    return ReasoningSplit(spent, None if visible <= left else left)
