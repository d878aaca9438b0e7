"""Structured logs: a JSON-lines formatter, a redaction filter and `log_batch_event`.

Only allow-listed context fields reach a log line through `log_batch_event`, so a student's
name, answer or feedback cannot get into one by accident; `configure_logging` applies
`QBQ_LOG_FORMAT` (text | json) to qbq's loggers and to Prefect's console handler.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, ParamSpec, TypeVar

from qbq.errors import QbqError, RedactedError

__all__ = [
    "ALLOWED_FIELDS",
    "CONTEXT_FIELDS",
    "LOGGING_CONFIG_PATH",
    "EventObserver",
    "JsonLinesFormatter",
    "QbqConsoleHandler",
    "RedactingTextFormatter",
    "RedactionFilter",
    "add_event_observer",
    "configure_logging",
    "log_batch_event",
    "redact",
    "redacting",
    "remove_event_observer",
]

#: The context fields a qbq log line may carry (the issue's list).
CONTEXT_FIELDS: Final = (
    "process_id", "batch_id", "idempotency_key", "model", "tokens_in", "tokens_out",
    "cached_tokens", "latency_ms", "attempt", "retry_count", "error_type", "stage",
)  # fmt: skip
#: Everything `log_batch_event` lets through: the context fields plus a few counts and states.
ALLOWED_FIELDS: Final = frozenset(
    (*CONTEXT_FIELDS, "status", "n_students", "n_graded", "from_store", "delay_s", "http_status",
     "batches", "done", "total", "reasoning_tokens")
)
#: Prefect's run metadata, rendered when the record carries it.
_RUN_FIELDS: Final = ("flow_run_id", "flow_run_name", "flow_name", "task_run_id",
                      "task_run_name", "task_name")
#: A logging config for Prefect that writes JSON lines (point PREFECT_LOGGING_SETTINGS_PATH at it).
LOGGING_CONFIG_PATH: Final = Path(__file__).with_name("logging.yml")

_EVENT_NAME = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")
_MAX_VALUE_CHARS = 200

# --- redaction ---------------------------------------------------------------------------------

_REDACTIONS: Final = (
    # inline images: keep the media type, drop the bytes
    (re.compile(r"(data:[\w.+-]+/[\w.+-]+;base64,)[A-Za-z0-9+/=_-]+"), r"\1[redacted]"),
    # query strings of URLs (presigned URLs carry their signature there)
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#\"'<>]+)\?[^\s#\"'<>]*"), r"\1?[redacted]"),
    # API keys (OpenAI style) and bearer tokens
    (re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"), "sk-[redacted]"),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{6,}"), r"\1[redacted]"),
)


def redact(text: str) -> str:
    """`text` with URL query strings, inline image bytes, API keys and bearer tokens masked."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


_P = ParamSpec("_P")
_R = TypeVar("_R")


def redacting(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """`fn`, whose outside exceptions leave it redacted like log lines: one whose message
    `redact` would change is re-raised as `RedactedError` (type named, message masked, the
    original chain dropped); qbq's own errors and clean messages pass unchanged. Put it under
    Prefect's `@task`, so task-run states and events get the masked message."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except QbqError:
            raise
        except Exception as exc:  # the task boundary: record safely and re-raise
            text = str(exc)
            masked = redact(text)
            if masked == text:
                raise
            name = type(exc).__name__
            raise RedactedError(f"{name}: {masked}", name) from None

    return wrapper


class RedactionFilter(logging.Filter):
    """Masks secrets in a record's message, string extras and exception text (never drops it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_qbq_redacted", False):
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a broken %-format: keep what the caller wrote
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        for name in (*CONTEXT_FIELDS, "event"):
            value = record.__dict__.get(name)
            if isinstance(value, str):
                record.__dict__[name] = redact(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        record.__dict__["_qbq_redacted"] = True
        return True


# --- formatters --------------------------------------------------------------------------------


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record, on one line: time, level, logger, message, run and context.

    Only known fields are rendered (never the whole record dict), and every string is redacted,
    so a stray `extra` cannot leak what it holds.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # dictConfig passes fmt/datefmt/style; none of them applies to JSON.
        super().__init__()

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        body: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(message),
        }
        event = record.__dict__.get("event")
        if isinstance(event, str):
            body["event"] = event
        if "flow_run_id" not in record.__dict__:
            body.update(_prefect_run_ids())
        for name in (*_RUN_FIELDS, *sorted(ALLOWED_FIELDS), "dropped_fields"):
            value = record.__dict__.get(name)
            if value is not None:
                body[name] = _json_value(value)
        if record.exc_info or record.exc_text:
            exc_type = record.exc_info[0] if record.exc_info else None
            text = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
            body["exc_type"] = exc_type.__name__ if exc_type else None
            body["exc_text"] = redact(text)
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str)


class RedactingTextFormatter(logging.Formatter):
    """The human-readable line (time, level, logger, message, then the context as key=value)."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None,
                 style: Literal["%", "{", "$"] = "%", **kwargs: Any) -> None:
        super().__init__(fmt or "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s",
                         datefmt or "%H:%M:%S", style)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _prefect_run_ids() -> dict[str, str]:
    """The current Prefect flow/task run ids, for qbq's own (non-Prefect) loggers; nothing
    when Prefect is not loaded or no run is active."""
    context = sys.modules.get("prefect.context")
    if context is None:
        return {}
    ids: dict[str, str] = {}
    task_run = getattr(context.TaskRunContext.get(), "task_run", None)
    flow_run = getattr(context.FlowRunContext.get(), "flow_run", None)
    if task_run is not None:
        ids["task_run_id"] = str(task_run.id)
        ids["task_run_name"] = str(task_run.name)
        ids["flow_run_id"] = str(task_run.flow_run_id)
    if flow_run is not None:
        ids["flow_run_id"] = str(flow_run.id)
        ids["flow_run_name"] = str(flow_run.name)
    return ids


def _json_value(value: Any) -> Any:
    if isinstance(value, bool | int | float) or value is None:
        return value
    return redact(str(value))


# --- log_batch_event ---------------------------------------------------------------------------

EventObserver = Callable[[str, Mapping[str, Any]], None]
_observers: list[EventObserver] = []
_observers_lock = threading.Lock()


def add_event_observer(observer: EventObserver) -> None:
    """Call `observer(event, fields)` for every `log_batch_event` (e.g. Prometheus counters)."""
    with _observers_lock:
        if observer not in _observers:
            _observers.append(observer)


def remove_event_observer(observer: EventObserver) -> None:
    with _observers_lock:
        if observer in _observers:
            _observers.remove(observer)


def _safe_value(value: Any) -> str | int | float | bool | None:
    """Scalars pass; strings are redacted and cut; anything else is refused (None)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, str):
        return redact(value)[:_MAX_VALUE_CHARS]
    return None


def log_batch_event(logger: logging.Logger | logging.LoggerAdapter[Any], event: str,
                    level: int = logging.INFO, **fields: Any) -> dict[str, Any]:
    """Log `event` with the allowed context `fields`; returns what was logged.

    Fields outside `ALLOWED_FIELDS`, and values that are not scalars, are dropped (their
    names are counted in `dropped_fields`, never their values): personal data cannot reach a
    log line through here. The message repeats the fields as key=value, because Prefect's API
    handler keeps only the message. `event` must be a lowercase identifier.
    """
    name = event if _EVENT_NAME.match(event) else "invalid_event_name"
    kept: dict[str, Any] = {}
    dropped = 0
    for key, value in fields.items():
        safe = _safe_value(value) if key in ALLOWED_FIELDS else None
        if safe is None:
            dropped += value is not None or key not in ALLOWED_FIELDS
            continue
        kept[key] = safe
    extra: dict[str, Any] = {"event": name, **kept}
    if dropped:
        extra["dropped_fields"] = dropped
    text = " ".join(f"{k}={v}" for k, v in kept.items())
    logger.log(level, "%s %s", name, text, extra=extra)
    with _observers_lock:
        observers = list(_observers)
    for observer in observers:
        observer(name, kept)
    return extra


# --- configuration -----------------------------------------------------------------------------

_configure_lock = threading.Lock()


def _resolve_format(fmt: str | None) -> Literal["text", "json"]:
    value = (fmt or os.environ.get("QBQ_LOG_FORMAT") or "text").strip().lower()
    if value not in ("text", "json"):
        raise ValueError(f"QBQ_LOG_FORMAT must be text or json, not {value!r}")
    return "json" if value == "json" else "text"


def _all_loggers() -> list[logging.Logger]:
    found = [logging.getLogger()]
    for item in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(item, logging.Logger):
            found.append(item)
    return found


def _add_redaction(target: logging.Handler | logging.Logger) -> None:
    if not any(isinstance(f, RedactionFilter) for f in target.filters):
        target.addFilter(RedactionFilter())


def configure_logging(fmt: str | None = None, *, stream: Any = None,
                      level: str | int | None = None) -> Literal["text", "json"]:
    """Apply `fmt` (default: `QBQ_LOG_FORMAT`, else text) to qbq's and Prefect's console logs.

    json: every Prefect console handler is replaced by a plain stream handler writing JSON
    lines (rich would restyle them); text: Prefect's handler stays. A `QbqConsoleHandler`
    (from an earlier call, or from qbq's logging.yml) takes the chosen format. Every handler
    redacts, and the `qbq` logger gets the level of `PREFECT_LOGGING_LEVEL` (INFO by default).
    Without any console handler, `qbq` gets its own. Calling it again switches the format.
    """
    chosen = _resolve_format(fmt)
    out = stream
    _ensure_prefect_logging()
    formatter: logging.Formatter = (
        JsonLinesFormatter() if chosen == "json" else RedactingTextFormatter()
    )
    with _configure_lock:
        qbq_logger = logging.getLogger("qbq")
        qbq_logger.setLevel(level or os.environ.get("PREFECT_LOGGING_LEVEL", "INFO").upper())
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            _add_redaction(logging.getLogger(name))
        for own in [h for h in qbq_logger.handlers if isinstance(h, QbqConsoleHandler)]:
            qbq_logger.removeHandler(own)
        shared: logging.Handler | None = None
        console_found = False
        for logger in _all_loggers():
            for handler in list(logger.handlers):
                if isinstance(handler, QbqConsoleHandler):  # ours: earlier call or logging.yml
                    console_found = True
                    handler.setFormatter(formatter)
                elif _is_prefect_console(handler):
                    console_found = True
                    if chosen == "json":
                        shared = shared or _stream_handler(out, formatter, handler.level)
                        logger.removeHandler(handler)
                        logger.addHandler(shared)
                    else:
                        _add_redaction(handler)
                else:
                    _add_redaction(handler)
        if not console_found:
            qbq_logger.addHandler(_stream_handler(out, formatter, logging.NOTSET))
    return chosen


def _ensure_prefect_logging() -> None:
    """Let Prefect build its handlers first (it does so lazily), so they can be adjusted here
    and a later Prefect setup, being incremental, keeps the adjustment."""
    try:
        from prefect.logging.configuration import ensure_logging_setup
    except ImportError:  # pragma: no cover - Prefect is a dependency; qbq logs work without it
        return
    ensure_logging_setup()


def _is_prefect_console(handler: logging.Handler) -> bool:
    return type(handler).__name__ == "PrefectConsoleHandler"


class QbqConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler for qbq's console lines; without a stream it writes to whatever
    `sys.stderr` is at the time of each record (test runners and CLIs swap it)."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self._follow_stderr = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow_stderr:
            self.stream = sys.stderr
        super().emit(record)


def _stream_handler(stream: Any, formatter: logging.Formatter, level: int) -> logging.Handler:
    handler = QbqConsoleHandler(stream)
    handler.setLevel(level)
    handler.setFormatter(formatter)
    handler.addFilter(RedactionFilter())
    return handler
