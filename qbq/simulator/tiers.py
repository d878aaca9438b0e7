"""`service_tier` and flex processing as OpenAI documents them.

- https://platform.openai.com/docs/api-reference/chat/create (`service_tier`: auto, default,
  flex, scale, priority, fast; the response's `service_tier` says which tier served it).
- https://platform.openai.com/docs/guides/flex-processing: flex is for the models on the
  pricing page (o3, o4-mini and the gpt-5 family), slower, and "may sometimes lack sufficient
  resources to handle your requests, resulting in a 429 Resource Unavailable error code. You
  will not be charged when this occurs."

The simulator answers a request for an unsupported model with OpenAI's 400 ("Unsupported
service_tier: flex", as reported by users of the API; the code is not documented), serves
`auto` and `default` on the default tier, and serves `scale`, `priority` and `fast` on the
default tier too (it has no faster tier; OpenAI reports a downgraded priority request as
"default" the same way).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any

from qbq.simulator.validation import SimAPIError

__all__ = [
    "DEFAULT_FLEX_MODELS",
    "FLEX_UNAVAILABLE_MESSAGE",
    "SERVICE_TIERS",
    "check_service_tier",
    "flex_supported",
    "flex_unavailable_error",
]

SERVICE_TIERS: tuple[str, ...] = ("auto", "default", "flex", "scale", "priority", "fast")
#: Model-name patterns (fnmatch) flex serves; from OpenAI's pricing page (flex tab).
DEFAULT_FLEX_MODELS: tuple[str, ...] = ("o3", "o4-mini", "gpt-5", "gpt-5-*", "gpt-5.*")
FLEX_UNAVAILABLE_MESSAGE = (
    "Resource Unavailable: flex processing does not have capacity for this request right now. "
    "Please retry later, or send it with service_tier 'auto'. You are not charged for this "
    "request."
)
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def flex_supported(model: str, patterns: Iterable[str]) -> bool:
    """True when `model` (a dated snapshot counts as its base model) matches a flex pattern."""
    base = _SNAPSHOT.sub("", model)
    return any(fnmatch.fnmatchcase(base, pattern) for pattern in patterns)


def check_service_tier(body: Mapping[str, Any], model: str, flex_models: Iterable[str]) -> str:
    """The tier that serves the request ("default" or "flex"); 400 for a bad `service_tier`."""
    tier = body.get("service_tier")
    if tier is None:
        return "default"
    if not isinstance(tier, str) or tier not in SERVICE_TIERS:
        allowed = ", ".join(f"'{t}'" for t in SERVICE_TIERS[:-1]) + f", and '{SERVICE_TIERS[-1]}'"
        raise SimAPIError(
            400,
            f"Invalid value: '{tier}'. Supported values are: {allowed}.",
            param="service_tier",
            code="invalid_value",
        )
    if tier != "flex":
        return "default"
    if not flex_supported(model, flex_models):
        raise SimAPIError(400, "Unsupported service_tier: flex", param="service_tier")
    return "flex"


def flex_unavailable_error() -> SimAPIError:
    """The 429 flex answers when it lacks capacity (unbilled; no retry-after is sent)."""
    return SimAPIError(
        429, FLEX_UNAVAILABLE_MESSAGE, type="resource_unavailable", code="resource_unavailable"
    )
