"""Per-process metrics computed from the store, saved on the process summary, optionally Prometheus.

`process_metrics` reads processes + batches + batch_attempts; `save_metrics` stores the result
as `processes.summary["metrics"]`. `start_prometheus` is optional: it serves counters fed by
`log_batch_event` for a long-running worker.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from qbq.catalog import get_model_spec
from qbq.cost import result_mode, usage_by_mode, usage_cost_usd
from qbq.errors import UnknownModelError
from qbq.observability.logs import add_event_observer
from qbq.review import answers_need_review
from qbq.store import BatchAttemptRow, BatchRow, ProcessRow, Store, queries
from qbq.store import repository as repo
from qbq.usage import Usage

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = [
    "RATE_LIMIT_ERROR",
    "BatchFigures",
    "ProcessMetrics",
    "batch_figures",
    "compute_metrics",
    "percentile",
    "process_metrics",
    "save_metrics",
    "start_prometheus",
]

#: The error type recorded for an HTTP 429 (see qbq.errors.RateLimitedError).
RATE_LIMIT_ERROR = "RateLimitedError"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation (numpy's default); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class BatchFigures:
    """What the reports show of one batch: counts and timings, never refs, names or feedback."""

    index: int
    status: str
    attempts: int
    model_replies: int
    tokens_in: int
    tokens_out: int
    cached_tokens: int
    reasoning_tokens: int
    latency_ms: float | None
    error_type: str | None
    students: int
    graded: int


def batch_figures(batch: BatchRow) -> BatchFigures:
    result = batch.result or {}
    usage = batch.usage
    return BatchFigures(
        index=batch.batch_index,
        status=batch.status,
        attempts=batch.attempts,
        model_replies=usage.replies,
        tokens_in=usage.prompt_tokens,
        tokens_out=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        latency_ms=None if batch.latency_ms is None else round(batch.latency_ms, 1),
        error_type=batch.error_type,
        students=len(batch.student_refs),
        graded=len(result.get("students", {})),
    )


@dataclass(frozen=True)
class ProcessMetrics:
    """The run's numbers: success rates, latency, tokens, cost, retries and errors by type."""

    process_id: str
    model: str
    status: str
    simulated: bool
    students: int
    students_graded: int
    students_failed: int
    students_needs_review: int
    student_success_rate: float
    batches: int
    batches_succeeded: int
    batches_failed: int
    batches_unfinished: int
    batch_success_rate: float
    #: Model requests sent (every attempt, including failed ones).
    requests: int
    #: Requests that came back with a reply (HTTP 200).
    model_replies: int
    retries: int
    rate_limited: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_max_ms: float | None
    tokens_in: int
    tokens_out: int
    cached_tokens: int
    reasoning_tokens: int
    estimated_cost_usd: float | None
    errors_by_type: dict[str, int] = field(default_factory=dict)
    #: Per processing mode the batches ran in: replies, prompt, cached, completion and
    #: reasoning tokens, and USD at that mode's prices (None: the model's prices are unknown).
    cost_by_mode: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _needs_review(student: Mapping[str, Any]) -> bool:
    return answers_need_review((a.get("confidence"), a.get("status"))
                               for a in student.get("answers") or [])


def compute_metrics(process: ProcessRow, batches: Iterable[BatchRow],
                    attempts: Iterable[BatchAttemptRow]) -> ProcessMetrics:
    """The metrics of one process from its rows (pure)."""
    # Long: only because `ProcessMetrics` has one field per figure; each is one line below.
    rows = list(batches)
    errors = Counter(a.error_type for a in attempts)
    graded = review = 0
    simulated = False
    for batch in rows:
        result = batch.result or {}
        students: Mapping[str, Any] = result.get("students", {})
        graded += len(students)
        review += sum(1 for s in students.values() if _needs_review(s))
        review += sum(1 for f in result.get("failures", {}).values() if f.get("needs_review"))
        simulated = simulated or bool(result.get("simulated"))
    n_students = process.n_students
    by_status = Counter(b.status for b in rows)
    n_batches = max(process.n_batches, len(rows))
    latencies = [b.latency_ms for b in rows if b.latency_ms is not None and b.attempts > 0]
    usage = sum((b.usage for b in rows), Usage())
    by_mode = _cost_by_mode(process.model, rows)
    cost = (None if any(m["cost_usd"] is None for m in by_mode.values())
            else round(sum(m["cost_usd"] for m in by_mode.values()), 6))
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    return ProcessMetrics(
        process_id=process.id,
        model=process.model,
        status=process.status,
        simulated=simulated,
        students=n_students,
        students_graded=graded,
        students_failed=n_students - graded,
        students_needs_review=review,
        student_success_rate=round(graded / n_students, 6) if n_students else 0.0,
        batches=n_batches,
        batches_succeeded=by_status["succeeded"],
        batches_failed=by_status["failed"],
        batches_unfinished=n_batches - by_status["succeeded"] - by_status["failed"],
        batch_success_rate=round(by_status["succeeded"] / n_batches, 6) if n_batches else 0.0,
        requests=sum(b.attempts for b in rows),
        model_replies=usage.replies,
        retries=sum(max(b.attempts - 1, 0) for b in rows),
        rate_limited=errors[RATE_LIMIT_ERROR],
        latency_p50_ms=None if p50 is None else round(p50, 1),
        latency_p95_ms=None if p95 is None else round(p95, 1),
        latency_max_ms=round(max(latencies), 1) if latencies else None,
        tokens_in=usage.prompt_tokens,
        tokens_out=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        estimated_cost_usd=cost,
        errors_by_type=dict(sorted(errors.items())),
        cost_by_mode=by_mode,
    )


def _cost_by_mode(model: str, rows: Sequence[BatchRow]) -> dict[str, dict[str, Any]]:
    """Tokens and USD per mode the batches ran in (USD None when the prices are unknown)."""
    by_mode = usage_by_mode((result_mode(b.result), b.usage) for b in rows)
    try:
        spec = get_model_spec(model)
    except UnknownModelError:  # unknown prices: the cost is unknown, not zero
        return {m: {**_tokens(u), "cost_usd": None} for m, u in by_mode.items()}
    return {m: {**_tokens(u), "cost_usd": round(usage_cost_usd(spec, u, m), 6)}
            for m, u in by_mode.items()}


def _tokens(usage: Usage) -> dict[str, Any]:
    return {"replies": usage.replies, "prompt_tokens": usage.prompt_tokens,
            "cached_tokens": usage.cached_tokens, "completion_tokens": usage.completion_tokens,
            "reasoning_tokens": usage.reasoning_tokens}


def process_metrics(store: Store, process_id: str) -> tuple[ProcessMetrics, list[BatchFigures]] | None:
    """The process's metrics and per-batch figures, or None when there is no such process."""
    def read(session: Session) -> tuple[ProcessMetrics, list[BatchFigures]] | None:
        process = repo.get_process(session, process_id)
        if process is None:
            return None
        batches = queries.process_batches(session, process_id)
        attempts = queries.process_attempt_errors(session, process_id)
        return compute_metrics(process, batches, attempts), [batch_figures(b) for b in batches]

    return store.run(read)  # replayed when the connection drops mid-way


def save_metrics(store: Store, metrics: ProcessMetrics,
                 max_marks: Mapping[str, float] | None = None) -> bool:
    """Store the metrics (and the question list, if given) on the process's summary JSON."""
    parts: dict[str, Any] = {"metrics": metrics.to_dict()}
    if max_marks is not None:
        parts["max_marks"] = {str(q): float(m) for q, m in max_marks.items()}
    return store.run(lambda session: queries.merge_process_summary(
        session, metrics.process_id, parts))


# --- optional Prometheus exposition ------------------------------------------------------------

_prom_lock = threading.Lock()
_prom: dict[str, Any] = {}


def start_prometheus(port: int, addr: str = "127.0.0.1") -> int:
    """Serve qbq's counters at http://addr:port/metrics (optional; for a long-running worker).

    Fed by `log_batch_event`: `batch_finished` events count batches by status, tokens by kind,
    retries and the batch latency histogram; `batch_attempt_failed` counts errors by type.
    Returns the bound port (pass 0 for a free one). A second call returns the first port.
    """
    from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

    with _prom_lock:
        if "port" in _prom:
            return int(_prom["port"])
        registry = CollectorRegistry()
        _prom.update(
            registry=registry,
            batches=Counter("qbq_batches", "Batches finished, by status.", ["status"],
                            registry=registry),
            tokens=Counter("qbq_tokens", "Model tokens, by kind (in, out, cached, reasoning).", ["kind"],
                           registry=registry),
            retries=Counter("qbq_retries", "Batch attempts beyond the first.", registry=registry),
            errors=Counter("qbq_errors", "Failed batch attempts, by error type.", ["error_type"],
                           registry=registry),
            latency=Histogram("qbq_batch_latency_seconds", "Model time per batch.",
                              buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
                              registry=registry),
        )
        server, _thread = start_http_server(port, addr=addr, registry=registry)
        _prom["server"] = server
        _prom["port"] = server.server_port
        add_event_observer(_observe)
        return int(_prom["port"])


def _observe(event: str, fields: Mapping[str, Any]) -> None:
    if event == "batch_finished":
        _prom["batches"].labels(status=str(fields.get("status", "unknown"))).inc()
        for kind, key in (("in", "tokens_in"), ("out", "tokens_out"), ("cached", "cached_tokens"),
                          ("reasoning", "reasoning_tokens")):
            value = fields.get(key)
            if isinstance(value, int) and value > 0:
                _prom["tokens"].labels(kind=kind).inc(value)
        retries = fields.get("retry_count")
        if isinstance(retries, int) and retries > 0:
            _prom["retries"].inc(retries)
        latency = fields.get("latency_ms")
        if isinstance(latency, int | float) and not fields.get("from_store"):
            _prom["latency"].observe(latency / 1000)
    elif event == "batch_attempt_failed":
        _prom["errors"].labels(error_type=str(fields.get("error_type", "unknown"))).inc()
