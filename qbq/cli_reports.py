"""The `qbq report`, `review`, `status`, `purge` and `log-config` commands (see `register`).

They read the store named by `QBQ_DATABASE_URL` and never create one: a missing SQLite file is
an error naming the path looked at. Output shows student refs, never names, and feedback only on
request. Exit code 2 for a missing store, an unknown process or a bad option.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from qbq.settings import get_settings
from qbq.terminal import stderr, stdout

if TYPE_CHECKING:
    from qbq.observability.metrics import ProcessMetrics
    from qbq.store import Store

__all__ = ["register"]

EXIT_INVALID = 2


def _store() -> Store:
    """The store of QBQ_DATABASE_URL, migrated; exit 2 when its SQLite file does not exist."""
    from qbq.store import Store, sqlite_file

    url = get_settings().database_url
    path = sqlite_file(url)
    if path is not None and not path.exists():
        stderr().print(f"[bold red]error:[/] no qbq store at {path} (QBQ_DATABASE_URL); run this "
                       "where `qbq grade` ran, or set QBQ_DATABASE_URL to its store",
                       highlight=False, markup=True)
        raise typer.Exit(EXIT_INVALID)
    store = Store(url)
    store.migrate()
    return store


def _unknown(process_id: str, store: Store) -> typer.Exit:
    stderr().print(f"[bold red]error:[/] no process {escape(repr(process_id))} in the store at "
                   f"{escape(store.label)}",
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


def _metrics_table(process_id: str, metrics: ProcessMetrics, body: dict[str, Any]) -> Table:
    """`qbq report`'s table: one row per figure, errors by type, the cost in each mode."""
    title = f"process {escape(process_id)}" + (" (SIMULATED grades)" if metrics.simulated else "")
    table = Table(title=title, show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in body.items():
        if name.endswith("_rate"):
            table.add_row(name.replace("_", " "), f"{value:.1%}")
        elif name not in ("process_id", "errors_by_type", "cost_by_mode"):
            table.add_row(name.replace("_", " "), _fmt(value))
    for error_type, count in metrics.errors_by_type.items():
        table.add_row(f"errors: {error_type}", _fmt(count))
    for mode, used in metrics.cost_by_mode.items():
        usd = "n/a" if used["cost_usd"] is None else f"${used['cost_usd']:,.4f}"
        table.add_row(f"cost in {mode} mode",
                      f"{usd} ({_fmt(used['prompt_tokens'])} prompt of which "
                      f"{_fmt(used['cached_tokens'])} cached, "
                      f"{_fmt(used['completion_tokens'])} completion of which "
                      f"{_fmt(used['reasoning_tokens'])} reasoning)")
    return table


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
        raise _unknown(process_id, store)
    metrics, _batches = found
    save_metrics(store, metrics)
    body = metrics.to_dict()
    if as_json:
        _print_json(body)
    else:
        table = _metrics_table(process_id, metrics, body)
        stdout().print(table)
    if csv or parquet or chart:
        frame = marks_frame(store, process_id)
        out = stderr() if as_json else stdout()
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
    """What a person should check (`qbq.review`): answers with low confidence or unreadable,
    students flagged as a whole, and every student not graded, with the reason in full (refs,
    not names)."""
    from qbq.observability.reports import marks_frame, review_frame
    from qbq.store import repository as repo

    store = _store()
    try:
        frame = marks_frame(store, process_id, with_feedback=show_feedback)
    except KeyError:
        raise _unknown(process_id, store) from None
    with store.transaction() as session:
        process = repo.get_process(session, process_id)
        stored = (process.summary or {}).get("review") if process is not None else None
    columns = ["ref", "question_number", "mark", "max_mark", "confidence", "status", "reason",
               *(["feedback"] if show_feedback else [])]
    if stored is not None:  # the queue read off the payload when the run finished
        feedback = ({(r["ref"], r["question_number"]): r["feedback"]
                     for r in frame.to_dict(orient="records")} if show_feedback else {})
        records = [{**{c: item.get(c) for c in columns if c != "feedback"},
                    **({"feedback": feedback.get((item["ref"], item["question_number"]))}
                       if show_feedback else {})} for item in stored]
    else:  # a run finished before the queue was stored
        records = [
            {c: (None if (v := row[c]) is None or (isinstance(v, float) and v != v) else v)
             for c in columns}
            for row in review_frame(frame).to_dict(orient="records")
        ]
    if as_json:
        _print_json(records)
        return
    table = Table(title=f"review queue of {escape(process_id)}: {len(records)} item(s)")
    for c in columns:
        # reasons and feedback wrap at words; a long ref or URL folds rather than being cut
        table.add_column(c.replace("_", " "), overflow="fold",
                         ratio=3 if c in ("reason", "feedback") else None)
    for record in records:
        table.add_row(*(_fmt(record[c]) for c in columns))
    stdout().print(table)


def status(
    process_id: Annotated[str, typer.Argument(help="The process id (qbq-...).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Where a process stands: its status, batches by status, each payload revision (when
    queued, where to, delivered or not and why), times."""
    # Long: gathers every part of one process's status in one transaction, then prints it as
    # JSON or a table.
    from qbq.http import safe_url
    from qbq.observability.logs import redact
    from qbq.store import queries
    from qbq.store import repository as repo

    store = _store()
    with store.transaction() as session:
        process = repo.get_process(session, process_id)
        if process is None:
            raise _unknown(process_id, store)
        counts = queries.batch_status_counts(session, process_id)
        outbox = repo.get_outbox(session, process_id)
        revisions = repo.list_outbox(session, process_id)
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
    newest = revisions[-1].revision if revisions else 0
    deliveries = [
        {
            "revision": row.revision,
            "status": row.status,
            "queued_at": row.created_at,
            "url": safe_url(row.target_url),
            "idempotency_key": row.idempotency_key,
            "attempts": row.attempts,
            "delivered_at": row.delivered_at,
            "why": (redact(row.last_error) if row.last_error and row.status != "delivered"
                    else f"superseded by revision {newest} before it was sent"
                    if row.status == "superseded" else None),
        }
        for row in revisions
    ]
    body: dict[str, Any] = {
        "store": store.label,
        "process_id": process.id,
        "status": process.status,
        "model": process.model,
        "students": process.n_students,
        "batches": process.n_batches,
        "batches_by_status": dict(sorted(counts.items())),
        "raw_replies_kept": raw,
        "delivery": delivery,
        "deliveries": deliveries,
        "created_at": process.created_at,
        "updated_at": process.updated_at,
        "completed_at": process.completed_at,
    }
    if as_json:
        _print_json(body)
        return
    table = Table(title=f"process {escape(process_id)}", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for name, value in body.items():
        if name == "batches_by_status":
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
        elif name == "delivery":
            continue
        elif name == "deliveries":
            for d in value:
                when = (f"delivered {d['delivered_at']:%Y-%m-%d %H:%M:%S}" if d["delivered_at"]
                        else d["status"])
                why = f" — {d['why']}" if d["why"] else ""
                table.add_row(f"revision {d['revision']}",
                              f"{when}; queued {d['queued_at']:%Y-%m-%d %H:%M:%S} for {d['url']} "
                              f"(key {d['idempotency_key']}, {d['attempts']} attempt(s)){why}")
            if not value:
                table.add_row("delivery", "no delivery queued")
            continue
        table.add_row(name.replace("_", " "), _fmt(value))
    stdout().print(table)


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
        stderr().print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_INVALID) from exc
    done = run_purge(_store(), age)
    stdout().print(f"purged {done.raw_responses} raw model replies and {done.outbox_payloads} "
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
