"""Validate, measure and plan a request: everything that happens before any model call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qbq.domain import GradingRequest
from qbq.intake.fetch import PageFetcher
from qbq.loading import load_request, load_request_file
from qbq.planning import BatchPlan, plan_batches
from qbq.request import parse_request
from qbq.settings import GradingPolicy, QbqSettings

__all__ = ["Prepared", "handed_over", "handing_over", "prepare"]


@dataclass(frozen=True)
class Prepared:
    """A validated, measured request and its batch plan."""

    request: GradingRequest
    plan: BatchPlan


def prepare(source: dict[str, Any] | str | Path, *, settings: QbqSettings,
            policy: GradingPolicy, base_dir: Path | None = None) -> Prepared:
    """Validate, read, fetch and normalise every page, and plan a request given as a decoded
    object or a file path."""
    with PageFetcher.from_settings(settings) as fetch:
        if isinstance(source, dict):
            request = load_request(parse_request(source), base_dir=base_dir or Path.cwd(),
                                   settings=settings, fetch=fetch)
        else:
            request = load_request_file(Path(source), settings=settings, fetch=fetch)
    return Prepared(request, plan_batches(request, policy, max_request_tokens=settings.tpm))


#: A request file this caller already prepared, with the settings and policy it used.
_HANDED_OVER: ContextVar[tuple[str, QbqSettings, GradingPolicy, Prepared] | None] = ContextVar(
    "qbq_prepared", default=None)


@contextmanager
def handing_over(path: Path, prepared: Prepared, *, settings: QbqSettings,
                 policy: GradingPolicy) -> Iterator[None]:
    """Let a flow run started inside this block, in this process, take `prepared` for the
    request file at `path` instead of preparing it again (`qbq grade` validates, measures and
    plans before it starts Prefect, so bad input costs nothing). Prefect never sees it."""
    token = _HANDED_OVER.set((str(path.resolve()), settings, policy, prepared))
    try:
        yield
    finally:
        _HANDED_OVER.reset(token)


def handed_over(source: dict[str, Any] | str, settings: QbqSettings,
                policy: GradingPolicy) -> Prepared | None:
    """The request handed over by `handing_over` for this file, settings and policy, if any."""
    found = _HANDED_OVER.get()
    if found is None or not isinstance(source, str):
        return None
    path, with_settings, with_policy, prepared = found
    same = path == str(Path(source).resolve()) and with_settings == settings
    return prepared if same and with_policy == policy else None
