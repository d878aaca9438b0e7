"""The `qbq` command line: grade, plan, submit, sample, demo, simulate, receiver.

Exit codes: 0 success, 1 grading failed, 2 invalid input or configuration, 3 the payload could
not be delivered (it stays in the outbox for the deliver-results flow).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qbq.cli_models import register as register_models
from qbq.cli_reports import register as register_reports
from qbq.errors import (
    InputError,
    PlanningError,
    QbqError,
    QuotaExhaustedError,
    RequestValidationError,
)
from qbq.payload import NativePayload
from qbq.settings import GradingPolicy, get_settings
from qbq.terminal import stderr, stdout

if TYPE_CHECKING:
    from qbq.pipeline import RunResult
    from qbq.planning import BatchPlan
    from qbq.preparation import Prepared

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Grade scanned student answers question by question with an OpenAI "
                       "vision model, as a Prefect flow.")
register_reports(app)
register_models(app)

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_NOT_DELIVERED = 0, 1, 2, 3


@contextmanager
def _input_errors() -> Iterator[None]:
    """Input, configuration and planning errors end the command with exit code 2."""
    try:
        yield
    except (InputError, PlanningError) as exc:
        stderr().print(f"[bold red]error:[/] {escape(exc.message)}", markup=True, highlight=False)
        raise typer.Exit(EXIT_INVALID) from exc


def _marks_table(payload: NativePayload, limit: int | None = None) -> Table:
    qnums: list[str] = []
    for student in payload.students:
        for a in student.answers:
            if a.question_number not in qnums:
                qnums.append(a.question_number)
    # Refs, ids and failure reasons are user text: escaped, so "[/b]" prints as itself.
    table = Table(title=f"{escape(payload.assessment_id)} — {payload.status}"
                  + (" (SIMULATED grades)" if payload.summary.simulated else ""))
    table.add_column("student")
    table.add_column("status")
    for q in qnums:
        table.add_column(f"Q{escape(q)}", justify="right")
    table.add_column("total", justify="right")
    table.add_column("review")
    reasons = {f.ref: f"{f.error_type}: {f.reason}" for f in payload.failures}
    if reasons:  # in full, wrapped at words
        table.add_column("why not graded", overflow="fold", ratio=3)
    shown = payload.students if limit is None else payload.students[:limit]
    for s in shown:
        marks = {a.question_number: a.mark for a in s.answers}
        cells = [f"{marks[q]:g}" if q in marks else "—" for q in qnums]
        total = f"{sum(marks.values()):g}" if s.status == "graded" else "—"
        why = [escape(reasons.get(s.ref, ""))] if reasons else []
        table.add_row(escape(s.ref), s.status, *cells, total, "yes" if s.needs_review else "",
                      *why)
    return table


def _preflight(request_path: Path) -> Prepared:
    """Validate, measure and plan before starting Prefect, so bad input costs nothing; check
    the provider settings (API key, rate limits) and reused page ids too."""
    from qbq.pipeline import check_page_ids
    from qbq.preparation import prepare
    from qbq.resources import check_provider_settings, open_store

    settings = get_settings()
    with _input_errors():
        prepared = prepare(request_path, settings=settings, policy=GradingPolicy())
        check_provider_settings(settings)
        store = open_store(settings)
        try:
            check_page_ids(store, prepared.request)
        finally:
            store.dispose()
    return prepared


def run_grade(request_path: Path, *, verbose: bool, out: Path | None) -> RunResult:
    """Run the grade-assessment flow in this process with a progress bar; return its result.

    The request is prepared once, here, and handed to the flow run (`handing_over`)."""
    # A person at a terminal gets the progress bar and warnings; JSON logs are for machines and
    # carry every batch event. Prefect's anonymous telemetry is off unless asked for.
    if not verbose and os.environ.get("QBQ_LOG_FORMAT", "text") != "json":
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Without PREFECT_API_URL the flow runs on an ephemeral server, whose first start migrates
    # its database: Prefect's 20 s limit is too short on a busy 2-core machine (measured ~40 s).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from qbq.observability.logs import configure_logging

    configure_logging()
    prepared = _preflight(request_path)
    from flows.grade_assessment import grade_assessment
    from qbq.preparation import handing_over
    from qbq.progress import BatchProgress, subscribed

    plan = prepared.plan
    stdout().print(f"process [bold]{plan.process_id}[/]: {plan.n_students} students, "
                   f"{len(plan.batches)} batches, model {escape(plan.model)}")
    columns = (TextColumn("grading"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stdout(), transient=False) as progress:
        bar = progress.add_task("batches", total=len(plan.batches))

        def on_batch(event: BatchProgress) -> None:
            if event.process_id == plan.process_id:
                progress.update(bar, completed=event.done)

        with subscribed(on_batch), handing_over(request_path, prepared, settings=get_settings(),
                                                policy=GradingPolicy()):
            result = grade_assessment(request_path=str(request_path.resolve()))
    if out is not None:
        out.write_text(result.payloads.outgoing.model_dump_json(indent=2))
        stdout().print(f"payload written to {out}")
    return result


@app.command()
def grade(
    request: Annotated[Path, typer.Argument(help="Request JSON (native or legacy).")],
    out: Annotated[Path | None, typer.Option(help="Also write the payload JSON here.")] = None,
    verbose: Annotated[bool, typer.Option(help="Show Prefect's logs.")] = False,
) -> None:
    """Grade a request: plan, grade every batch, reduce, deliver; prints the marks and, last,
    where the payload went. Exit 3 when its delivery failed, else 1 when grading failed."""
    from qbq.pipeline import delivery_line

    result = run_grade(request, verbose=verbose, out=out)
    payload = result.payloads.native
    stdout().print(_marks_table(payload))
    s = payload.summary
    stdout().print(f"{s.graded}/{s.students} graded, {s.model_calls} model calls, "
                   f"{s.prompt_tokens:,} prompt + {s.completion_tokens:,} completion tokens, "
                   f"est. ${s.estimated_cost_usd:.4f}")
    stopped = next((f.reason for f in payload.failures
                    if f.error_type == QuotaExhaustedError.__name__), None)
    if stopped is not None:  # what to do, in full (the table cuts reasons short)
        stderr().print(f"[bold red]stopped:[/] {escape(stopped)}", highlight=False)
    line, not_delivered = delivery_line(result)
    stdout().print(line, markup=False, highlight=False, soft_wrap=True)
    if not_delivered:
        raise typer.Exit(EXIT_NOT_DELIVERED)
    raise typer.Exit(EXIT_OK if payload.status == "success" else EXIT_FAILED)


def _estimates_table(p: BatchPlan) -> Table:
    """Estimated USD per mode the model is offered in, without and with prompt caching."""
    from qbq.cost import mode_estimates

    table = Table(title="estimated cost by mode")
    for col in ("mode", "no cache", "with cache"):
        table.add_column(col, justify="right")
    for e in mode_estimates(p):
        table.add_row(e.mode, f"${e.usd_uncached:.4f}", f"${e.usd_cached:.4f}")
    return table


@app.command()
def plan(
    request: Annotated[Path, typer.Argument(help="Request JSON (native or legacy).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Show how a request would be batched: batches, tokens and estimated cost."""
    from qbq.cost import mode_estimates
    from qbq.intake.report import intake_lines, intake_summary
    from qbq.preparation import prepare

    with _input_errors():
        prepared = prepare(request, settings=get_settings(), policy=GradingPolicy())
    p = prepared.plan
    body = {
        "process_id": p.process_id,
        "model": p.model,
        "students": p.n_students,
        "batches": [
            {"index": b.index, "idempotency_key": b.idempotency_key, "students": len(b.students),
             "images": b.n_images, "prompt_tokens": b.prompt_tokens,
             "max_completion_tokens": b.max_completion_tokens, "bytes": b.n_bytes}
            for b in p.batches
        ],
        "prompt_tokens": p.prompt_tokens,
        "expected_output_tokens": p.expected_output_tokens,
        "token_budget_per_request": p.token_budget,
        "estimated_cost_usd": round(p.estimated_cost_usd(), 6),
        "estimated_cost_usd_by_mode": {
            e.mode: {"uncached": round(e.usd_uncached, 6), "cached": round(e.usd_cached, 6)}
            for e in mode_estimates(p)},
        **intake_summary(prepared.request),
    }
    if as_json:
        sys.stdout.write(json.dumps(body, indent=2) + "\n")
        return
    table = Table(title=f"plan {p.process_id} ({escape(p.model)})")
    for col in ("batch", "students", "images", "prompt tokens", "max completion", "bytes"):
        table.add_column(col, justify="right")
    for b in p.batches:
        table.add_row(str(b.index), str(len(b.students)), str(b.n_images),
                      f"{b.prompt_tokens:,}", f"{b.max_completion_tokens:,}", f"{b.n_bytes:,}")
    stdout().print(table)
    stdout().print(f"{p.n_students} students in {len(p.batches)} batches; "
                   f"{p.prompt_tokens:,} prompt tokens; est. ${p.estimated_cost_usd():.4f}")
    stdout().print(_estimates_table(p))
    for line in intake_lines(prepared.request):
        stdout().print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def submit(
    request: Annotated[Path, typer.Argument(help="Request JSON (native or legacy).")],
) -> None:
    """Validate a request and store it in qbq's store; print its id for a `grade-assessment`
    run's `request_id` (Prefect then never holds the request's images, URLs or instructions)."""
    from qbq.resources import open_store
    from qbq.submission import submit_request

    with _input_errors():
        try:
            text = request.read_bytes()
        except OSError as exc:
            raise RequestValidationError([f"request file {request}: {exc.strerror}"]) from exc
        store = open_store(get_settings())
        try:
            request_id = submit_request(store, text, request.parent)
        finally:
            store.dispose()
    sys.stdout.write(request_id + "\n")


@app.command()
def sample(
    out: Annotated[Path, typer.Option(help="Folder to write request.json and pages/ into.")],
    students: Annotated[int, typer.Option(min=1)] = 12,
    pages: Annotated[int, typer.Option(min=1)] = 2,
    questions: Annotated[int, typer.Option(min=1)] = 4,
    seed: int = 0,
    model: str = "gpt-4.1-mini",
) -> None:
    """Write a sample request with generated PNG pages that carry their ground truth."""
    from qbq.sample import write_sample

    path = write_sample(out, students=students, pages=pages, questions=questions, seed=seed,
                        model=model)
    stdout().print(f"wrote {path}")


@app.command()
def simulate(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8700,
    host: Annotated[str, typer.Option(help="Loopback address to bind.")] = "127.0.0.1",
    rpm: Annotated[int | None, typer.Option(help="Requests per minute per API key.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute per API key.")] = None,
    latency_ms: Annotated[float | None, typer.Option(help="Base latency per reply.")] = None,
    ms_per_output_token: Annotated[float | None, typer.Option(
        help="Added latency per completion token.")] = None,
    jitter: Annotated[float | None, typer.Option(help="Sigma of a lognormal latency factor.")] = None,
    time_scale: Annotated[float | None, typer.Option(
        help="Simulated time runs this many times faster than wall time.")] = None,
    fault: Annotated[list[str] | None, typer.Option(
        help="KIND=RATE, repeatable: http500 http502 http503 http408 http409 timeout disconnect "
             "rate_limit rate_limit_no_headers insufficient_quota not_json schema_break "
             "rule_break truncate refusal.")] = None,
    fault_script: Annotated[str | None, typer.Option(
        help="Faults for the first requests in order, e.g. 'http500,ok,truncate'.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for faults and jitter.")] = None,
    hang_s: Annotated[float | None, typer.Option(help="How long a 'timeout' fault hangs.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help=(
        "NAME=VALUE, repeatable: any QBQ_SIM_* setting, e.g. reasoning_tokens=medium=2000, "
        "batch_completion_s=600, flex_unavailable_rate=0.1, prompt_cache_ttl_s=600."))] = None,
) -> None:
    """Run the OpenAI-compatible simulator (a test and demo device: its grades are simulated)."""
    from qbq.simulator import sim_config_from_cli
    from qbq.simulator.server import serve

    try:
        config = sim_config_from_cli(
            rpm=rpm, tpm=tpm, latency_ms=latency_ms, ms_per_output_token=ms_per_output_token,
            jitter=jitter, time_scale=time_scale, faults=fault or [], fault_script=fault_script,
            seed=seed, hang_s=hang_s, settings=set_ or [])
    except ValueError as exc:
        stderr().print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(EXIT_INVALID) from exc
    stdout().print(f"SIMULATED OpenAI API on http://{host}:{port}/v1 — replies are not real grades")
    serve(host, port, config)


@app.command()
def receiver(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8710,
    db: Annotated[Path, typer.Option(help="SQLite file for received payloads.")] = Path(
        ".qbq/receiver.db"),
    token: Annotated[str | None, typer.Option(help="Require this bearer token.")] = None,
) -> None:
    """Run the reference results API (POST /results, GET /results)."""
    import uvicorn

    from qbq.receiver import create_app

    db.parent.mkdir(parents=True, exist_ok=True)
    uvicorn.run(create_app(db, token=token), host="127.0.0.1", port=port, log_level="info")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Working folder for the demo.")] = Path(".qbq/demo"),
    students: Annotated[int, typer.Option(min=1)] = 12,
    pages: Annotated[int, typer.Option(min=1)] = 2,
    questions: Annotated[int, typer.Option(min=1)] = 4,
    batch_size: Annotated[int, typer.Option(min=1, help="Students per batch at most.")] = 4,
) -> None:
    """Sample + simulator + receiver on free loopback ports + grade; grades are SIMULATED."""
    from qbq.demo import run_demo

    with _input_errors():
        code = run_demo(out, students=students, pages=pages, questions=questions,
                        batch_size=batch_size, console=stdout(), table=_marks_table,
                        grade=lambda path: run_grade(path, verbose=False,
                                                     out=None).payloads.native)
    raise typer.Exit(code)


def main() -> None:
    try:
        app()
    except QbqError as exc:  # a runtime failure that escaped a command: report, exit 1
        stderr().print(f"[bold red]{exc.error_type}:[/] {escape(exc.message)}", highlight=False)
        raise SystemExit(EXIT_FAILED) from exc
