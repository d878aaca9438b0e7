"""Prefect artifacts of a grading run: a table of its batches and a markdown summary.

Both are built from the store (counts, tokens, timings, error types) and never carry student
refs, names, answers or feedback. Keys derive from the process id, so each run of a process
adds a version to the same two artifacts. The progress artifact lives in the flow itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from qbq.observability.metrics import BatchFigures, ProcessMetrics, process_metrics, save_metrics
from qbq.store import Store

__all__ = ["RunArtifacts", "artifact_key", "batches_table", "publish_run_artifacts",
           "summary_markdown"]

_KEY_MAX = 100


def artifact_key(process_id: str, kind: str) -> str:
    """`<process-id>-<kind>` in the only alphabet Prefect allows: lowercase, digits, dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", process_id.lower()).strip("-") or "process"
    return f"{slug[: _KEY_MAX - len(kind) - 1].rstrip('-')}-{kind}"


@dataclass(frozen=True)
class RunArtifacts:
    table_key: str
    summary_key: str
    metrics: ProcessMetrics


def batches_table(batches: list[BatchFigures]) -> list[dict[str, Any]]:
    """One row per batch: index, status, attempts, tokens, latency, error type (no refs)."""
    return [
        {
            "batch": b.index,
            "status": b.status,
            "students": b.students,
            "graded": b.graded,
            "attempts": b.attempts,
            "model_replies": b.model_replies,
            "tokens_in": b.tokens_in,
            "tokens_out": b.tokens_out,
            "cached_tokens": b.cached_tokens,
            "reasoning_tokens": b.reasoning_tokens,
            "latency_ms": b.latency_ms,
            "error_type": b.error_type or "",
        }
        for b in batches
    ]


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} ms"


def summary_markdown(m: ProcessMetrics) -> str:
    """The run at a glance, for the Prefect UI."""
    cost = "unknown (model not in the price table)" if m.estimated_cost_usd is None \
        else f"${m.estimated_cost_usd:.4f}"
    lines = [
        f"# Grading run `{m.process_id}`",
        "",
        *(["> **SIMULATED**: these grades came from qbq's simulator, not a real model.", ""]
          if m.simulated else []),
        "| | |",
        "|---|---|",
        f"| status | {m.status} |",
        f"| model | `{m.model}` |",
        f"| coverage | {m.student_success_rate:.1%} ({m.students_graded} of {m.students} "
        "students graded) |",
        f"| students needing review | {m.students_needs_review} |",
        f"| batches | {m.batches_succeeded} succeeded, {m.batches_failed} failed, "
        f"{m.batches_unfinished} unfinished of {m.batches} |",
        f"| model requests | {m.requests} ({m.model_replies} replies) |",
        f"| retries | {m.retries} |",
        f"| HTTP 429 (rate limited) | {m.rate_limited} |",
        f"| tokens | {m.tokens_in:,} in ({m.cached_tokens:,} cached), {m.tokens_out:,} out "
        f"({m.reasoning_tokens:,} reasoning) |",
        f"| estimated cost | {cost} |",
        f"| batch latency | p50 {_ms(m.latency_p50_ms)}, p95 {_ms(m.latency_p95_ms)}, "
        f"max {_ms(m.latency_max_ms)} |",
    ]
    if m.errors_by_type:
        lines += ["", "## Failed attempts by error type", "", "| error type | attempts |",
                  "|---|---|"]
        lines += [f"| {name} | {count} |" for name, count in m.errors_by_type.items()]
    return "\n".join(lines) + "\n"


def publish_run_artifacts(process_id: str, store: Store, *,
                          max_marks: Mapping[str, float] | None = None) -> RunArtifacts | None:
    """Create the batches table and the summary artifacts of the process and store its metrics
    (plus `max_marks`, which `qbq report` uses to scale the charts). None if no such process."""
    found = process_metrics(store, process_id)
    if found is None:
        return None
    metrics, batches = found
    save_metrics(store, metrics, max_marks)
    table_key = artifact_key(process_id, "batches")
    summary_key = artifact_key(process_id, "summary")
    create_table_artifact(batches_table(batches), key=table_key,
                          description=f"Batches of {process_id}: status, attempts, tokens, "
                                      "latency, error type")
    create_markdown_artifact(summary_markdown(metrics), key=summary_key,
                             description=f"Summary of {process_id}")
    return RunArtifacts(table_key, summary_key, metrics)
