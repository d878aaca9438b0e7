"""The one backoff rule: exponential growth from a base, capped, optionally with full jitter."""

from __future__ import annotations

import random

__all__ = ["backoff_ceiling", "floored_backoff", "full_jitter"]


def backoff_ceiling(attempt: int, *, base_s: float, max_s: float) -> float:
    """Seconds to wait before retry number `attempt` (1-based): `base_s · 2^(attempt-1)`, at
    most `max_s`."""
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    # the exponent is capped so a long-failing row never overflows a float
    return min(max_s, base_s * 2.0 ** min(attempt - 1, 64))


def full_jitter(attempt: int, *, base_s: float, max_s: float, rng: random.Random) -> float:
    """Uniform in [0, `backoff_ceiling`] ("full jitter", which spreads retrying clients best:
    https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/)."""
    return rng.uniform(0.0, backoff_ceiling(attempt, base_s=base_s, max_s=max_s))


def floored_backoff(attempt: int, *, floor_s: float, max_s: float, rng: random.Random) -> float:
    """Uniform in [c, 1.25·c] with c = `backoff_ceiling(attempt, base_s=floor_s)`: never below
    `floor_s`, so retries cannot be spent within a second. For a 429 that states no wait (the
    OpenAI SDK likewise backs off 0.5 s doubling to 8 s there, jittered down by up to 25%:
    `openai._base_client.BaseClient._calculate_retry_timeout`)."""
    ceiling = backoff_ceiling(attempt, base_s=floor_s, max_s=max(max_s, floor_s))
    return rng.uniform(ceiling, 1.25 * ceiling)
