"""`Usage`: what model replies cost, carried unchanged from the provider reply to the store,
the payload summary and the logs (one type with addition, like pydantic-ai's `usage.py`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Usage"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts and latency of zero or more model replies; `a + b` adds every field.

    Counts follow OpenAI's `usage` object
    (https://platform.openai.com/docs/api-reference/chat/object#chat/object-usage):
    `cached_tokens` is the part of `prompt_tokens` served from the prompt cache
    (`prompt_tokens_details.cached_tokens`), `reasoning_tokens` the part of `completion_tokens`
    spent on hidden reasoning (`completion_tokens_details.reasoning_tokens`). `replies` counts
    the replies added up; `latency_ms` is their summed wall time in milliseconds.
    """

    replies: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    latency_ms: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                        for f in fields(self)})

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens: what the provider bills and rate-limits."""
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        """Every field by name (for logs, reports and JSON)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_counts(cls, *, replies: int | None = None, prompt_tokens: int | None = None,
                    cached_tokens: int | None = None, completion_tokens: int | None = None,
                    reasoning_tokens: int | None = None,
                    latency_ms: float | None = None) -> Usage:
        """A `Usage` from nullable counts (database columns), missing counts as 0."""
        return cls(replies or 0, prompt_tokens or 0, cached_tokens or 0, completion_tokens or 0,
                   reasoning_tokens or 0, latency_ms or 0.0)
