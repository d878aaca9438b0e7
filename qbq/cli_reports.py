"""The `qbq report`, `review`, `status`, `purge` and `log-config` commands (see `register`).

They read the store named by `QBQ_DATABASE_URL`; output shows student refs, never names, and
feedback only on request. Exit code 2 for an unknown process or a bad option.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qbq.settings import get_settings

if TYPE_CHECKING:
    from qbq.store import Store

__all__ = ["register"]

console = Console()
err = Console(stderr=True)
EXIT_INVALID = 2


def _store() -> Store:
    from qbq.store import Store

    store = Store.from_settings(get_settings())
    store.migrate()
    return store


def _unknown(process_id: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] no process {escape(repr(process_id))} in this store",
              highlight=False)
    return typer.Exit(EXIT_INVALID)


def _print_json(body: Any) -> None:
    sys.stdout.write(json.dumps(body, indent=2, default=str) + "\n")


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".") if value % 1 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return escape(str(value))  # refs, reasons and feedback are user or model text


def report(
    process_id: Annotated[str, typer.Argument(help="The process id (qbq-...).")],
    csv: Annotated[Path | None, typer.Option("--csv", help="Export marks as CSV here.")] = None,
    parquet: Annotated[Path | None, typer.Option(help="Export marks as Parquet here.")] = None,
    chart: Annotated[Path | None, typer.Option(help="Draw mark distributions to this PNG.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Metrics of a process (success, latency, tokens, cost, retries, errors); stores them in the
    database; exports marks per student and question; charts mark distributions."""
    from qbq.observability.metrics import process_metrics, save_metrics
    from qbq.observability.reports import draw_mark_chart, export_marks, marks_frame

    store = _store()
    found = process_metrics(store, process_id)
    if found is None:
        raise _unknown(process_id)
    metrics, _batches = found
    save_metrics(store, metrics)
    body = metrics.to_dict()
    if as_json:
        _print_json(body)
    else:
        title = f"process {escape(process_id)}" + (" (SIMULATED grades)" if metrics.simulated else "")
        table = Table(title=title, show_header=False)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in body.items():
            if name.endswith("_rate"):
                table.add_row(name.replace("_", " "), f"{value:.1%}")
            elif name not in ("process_id", "errors_by_type"):
                table.add_row(name.replace("_", " "), _fmt(value))
        for error_type, count in metrics.errors_by_type.items():
            table.add_row(f"errors: {error_type}", _fmt(count))
        console.print(table)
    if csv or parquet or chart:
        frame = marks_frame(store, process_id)
        out = err if as_json else console
        if csv:
            out.print(f"marks written to {export_marks(frame, csv, 'csv')}")
        if parquet:
            out.print(f"marks written to {export_marks(frame, parquet, 'parquet')}")
        if chart:
            label = " (SIMULATED grades)" if metrics.simulated else ""
            panels = draw_mark_chart(frame, chart, title=f"Marks per question — {process_id}{label}")
            out.print(f"chart with {panels} panels written to {chart}")


def review(
    process_id: Annotated[str, typer.Argument(help="The process id (qbq-...).")],
    show_feedback: Annotated[bool, typer.Option(help="Also print the model's feedback.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the queue as JSON.")] = False,
) -> None:
    """Answers a person should check: low confidence, blank or unreadable (refs, not names)."""
    from qbq.observability.reports import marks_frame, review_frame

    store = _store()
    try:
        frame = marks_frame(store, process_id, with_feedback=show_feedback)
    except KeyError:
        raise _unknown(process_id) from None
    queue = review_frame(frame)
    columns = ["ref", "question_number", "mark", "max_mark", "confidence", "status", "reason",
               *(["feedback"] if show_feedback else [])]
    records = [
        {c: (None if (v := row[c]) is None or (isinstance(v, float) and v != v) else v)
         for c in columns}
        for row in queue.to_dict(orient="records")
    ]
    if as_json:
        _print_json(records)
        return
    table = Table(title=f"review queue of {escape(process_id)}: {len(records)} item(s)")
    for c in columns:
        table.add_column(c.replace("_", " "), overflow="fold")
    for record in records:
        table.add_row(*(_fmt(record[c]) for c in columns))
    console.print(table)


def status(
    process_id: Annotated[str, typer.Argument(help="The process id (qbq-...).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Where a process stands: its status, batches by status, delivery, times."""
    from qbq.observability.logs import redact
    from qbq.store import queries
    from qbq.store import repository as repo

    store = _store()
    with store.transaction() as session:
        process = repo.get_process(session, process_id)
        if process is None:
            raise _unknown(process_id)
        counts = queries.batch_status_counts(session, process_id)
        outbox = repo.get_outbox(session, process_id)
        raw = queries.raw_response_count(session, process_id)
    delivery: dict[str, Any] | None = None
    if outbox is not None:
        delivery = {
            "status": outbox.status,
            "attempts": outbox.attempts,
            "next_attempt_at": outbox.next_attempt_at,
            "delivered_at": outbox.delivered_at,
            "last_error": redact(outbox.last_error) if outbox.last_error else None,
            "payload_purged": "purged_at" in (outbox.payload or {}),
        }
    body: dict[str, Any] = {
        "process_id": process.id,
        "status": process.status,
        "model": process.model,
        "students": process.n_students,
        "batches": process.n_batches,
        "batches_by_status": dict(sorted(counts.items())),
        "raw_replies_kept": raw,
        "delivery": delivery,
        "created_at": process.created_at,
        "updated_at": process.updated_at,
        "completed_at": process.completed_at,
    }
    if as_json:
        _print_json(body)
        return
    table = Table(title=f"process {escape(process_id)}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    for name, value in body.items():
        if name == "batches_by_status":
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
        elif name == "delivery":
            value = "no delivery queued" if value is None else ", ".join(
                f"{k} {_fmt(v)}" for k, v in value.items() if v is not None)
        table.add_row(name.replace("_", " "), _fmt(value))
    console.print(table)


def purge(
    older_than: Annotated[str, typer.Option(help="Age such as 30d, 12h or 90m.")] = "30d",
) -> None:
    """Drop raw model replies and delivered payloads older than this; marks, usage, errors and
    delivery records stay."""
    from qbq.observability.lifecycle import parse_age
    from qbq.observability.lifecycle import purge as run_purge

    try:
        age = parse_age(older_than)
    except ValueError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_INVALID) from exc
    done = run_purge(_store(), age)
    console.print(f"purged {done.raw_responses} raw model replies and {done.outbox_payloads} "
                  f"delivered payloads last written before {done.cutoff:%Y-%m-%d %H:%M:%S} UTC")


def log_config() -> None:
    """Print the path of qbq's Prefect logging config (JSON lines): set
    PREFECT_LOGGING_SETTINGS_PATH to it, with QBQ_LOG_FORMAT=json, in deployments."""
    from qbq.observability.logs import LOGGING_CONFIG_PATH

    sys.stdout.write(f"{LOGGING_CONFIG_PATH}\n")


def register(app: typer.Typer) -> None:
    """Add the reporting commands to the `qbq` app."""
    app.command()(report)
    app.command()(review)
    app.command()(status)
    app.command()(purge)
    app.command("log-config")(log_config)
