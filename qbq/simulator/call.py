"""One chat completion request on its way through the simulator's stages, sync or batch line."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from qbq.catalog import ModelSpec
from qbq.simulator.config import SimConfig
from qbq.simulator.faults import Fault
from qbq.simulator.images import LoadedImage

if TYPE_CHECKING:
    from qbq.simulator.state import SimState

__all__ = ["ChatCall", "Stage"]


@dataclass
class ChatCall:
    """One chat completion request; each stage fills a part.

    `request` is None for a line of a batch (it has no HTTP connection of its own): its body
    and key come from the batch.
    """

    request: Request | None
    config: SimConfig
    state: SimState | None = None
    raw_body: bytes = b""
    body: dict[str, Any] = field(default_factory=dict)
    spec: ModelSpec | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    response_format: dict[str, Any] | None = None
    max_completion_tokens: int | None = None
    #: The `reasoning_effort` in force (the model's default when none was sent); None for
    #: models that do not reason.
    reasoning_effort: str | None = None
    #: The tier that serves the request, as the response's `service_tier` reports it.
    service_tier: str = "default"
    #: `prompt_cache_key` (None: none sent) and the retention asked for.
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    images: dict[str, LoadedImage] = field(default_factory=dict)
    prompt_tokens: int = 0
    #: The bearer key: the rate limits and prompt caches are kept per key.
    api_key: str = ""
    #: Simulated time the request reached the server (None: a batch line): the rate limits
    #: charge it then, however long decoding its images and counting its tokens took after.
    arrived: float | None = None
    #: Its place in arrival order among chat requests (None: a batch line); charged in it.
    ticket: int | None = None
    #: The fault drawn for this request (None: none) and the script entry it came from.
    fault: Fault | None = None
    script_entry: str | None = None
    #: True once the rate limits accepted the request (it is then in flight until answered).
    accepted: bool = False
    #: Extra headers for the response, success or error (x-ratelimit-*, retry-after, faults).
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def model(self) -> ModelSpec:
        if self.spec is None:
            raise RuntimeError("the model stage has not run")
        return self.spec

    @property
    def sim(self) -> SimState:
        if self.state is None:
            raise RuntimeError("this call has no simulator state")
        return self.state

    @property
    def http(self) -> Request:
        if self.request is None:
            raise RuntimeError("a batch line has no HTTP request")
        return self.request

    @property
    def charged_tokens(self) -> int:
        """What the rate limits charge: prompt tokens plus the completion budget."""
        budget = self.max_completion_tokens
        return self.prompt_tokens + (budget if budget is not None else self.model.max_output_tokens)


Stage = Callable[[ChatCall], Awaitable[None]]
