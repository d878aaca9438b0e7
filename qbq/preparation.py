"""Validate, measure and plan a request: everything that happens before any model call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qbq.domain import GradingRequest
from qbq.intake.fetch import PageFetcher
from qbq.loading import load_request, load_request_file
from qbq.planning import BatchPlan, plan_batches
from qbq.request import parse_request
from qbq.settings import GradingPolicy, QbqSettings

__all__ = ["Prepared", "prepare"]


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
