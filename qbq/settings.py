"""Typed settings: every `QBQ_*` environment variable qbq reads, with its default and meaning."""

from __future__ import annotations

import json
import os
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from qbq.model_spec import Mode

__all__ = [
    "DEFAULT_REASONING_TOKENS_PER_REQUEST",
    "DEFAULT_REASONING_TOKENS_PER_STUDENT",
    "GradingPolicy",
    "QbqSettings",
    "get_settings",
    "task_threads",
]

#: Expected reasoning tokens per student by effort: documented starting points (README,
#: "Reasoning allowance"), replaced by what a run observes once it has graded a batch.
DEFAULT_REASONING_TOKENS_PER_STUDENT: dict[str, int] = {
    "none": 0, "minimal": 64, "low": 256, "medium": 1024, "high": 3072, "xhigh": 6144,
    "max": 12288,
}
#: Expected reasoning tokens per request (reading the rubric and model answers), by effort.
DEFAULT_REASONING_TOKENS_PER_REQUEST: dict[str, int] = {
    "none": 0, "minimal": 0, "low": 512, "medium": 1024, "high": 2048, "xhigh": 4096,
    "max": 8192,
}


class GradingPolicy(BaseSettings):
    """Margins, batch sizes and retry limits: the numbers that shape planning and grading."""

    model_config = SettingsConfigDict(env_prefix="QBQ_", extra="ignore")

    context_margin: float = Field(
        0.10, ge=0.0, lt=1.0,
        description="Share of the context window kept free as a safety margin when planning.",
    )
    output_tokens_per_answer: int = Field(
        110, gt=0, description="Expected completion tokens for one answer (mark + feedback)."
    )
    output_tokens_per_student: int = Field(
        40, ge=0, description="Expected completion tokens per student besides the answers."
    )
    output_headroom: float = Field(
        1.5, ge=1.0,
        description="max_completion_tokens = expected output × this (capped at the model's max).",
    )
    max_students_per_batch: int | None = Field(
        None, gt=0,
        description="Upper bound on students per batch (smaller batches fail smaller). "
        "None: only the model's limits bound a batch.",
    )
    max_images_per_request: int = Field(
        500, gt=0, description="Provider cap on image inputs in one request."
    )
    max_request_bytes: int = Field(
        50_000_000, gt=0, description="Provider cap on one request's body size in bytes."
    )
    max_attempts: int = Field(
        4, ge=1, description="Attempts per batch for transient provider errors (1 = no retry)."
    )
    backoff_base_s: float = Field(
        1.0, ge=0.0, description="First retry delay; doubles each attempt, with full jitter."
    )
    backoff_max_s: float = Field(60.0, ge=0.0, description="Longest retry delay.")
    rate_limit_pause_s: float = Field(
        2.0, gt=0.0, description="A 429 that states no wait (no retry-after, no "
        "x-ratelimit-reset-*) pauses every sender at least this long (seconds), doubling for "
        "each such 429 in a row up to QBQ_BACKOFF_MAX_S: 4 attempts take ≥ 14 s, never a second.",
    )
    breaker_threshold: int = Field(
        5, ge=1, description="Provider failures in a row that open the circuit breaker."
    )
    breaker_cooldown_s: float = Field(
        10.0, ge=0.0, description="How long every sender pauses when the breaker opens."
    )
    breaker_give_up_s: float = Field(
        300.0, gt=0.0, description="An outage longer than this ends the run's grading with "
        "a clear reason instead of more retries."
    )
    retry_budget_attempts: int | None = Field(
        None, ge=0, description="Retries and re-asks one run may make (None: 2 per batch + 10)."
    )
    retry_budget_token_ratio: float = Field(
        1.0, ge=0.0, description="Tokens retries may spend, as a share of the planned tokens."
    )
    lease_s: float = Field(
        600.0, gt=0.0, description="How long a claim on a batch or delivery holds without "
        "renewal; a crashed run's claim on another host is taken over after this (on the same "
        "host at once)."
    )
    lease_poll_s: float = Field(
        0.5, gt=0.0, description="How often a run waiting for another run's batch looks again."
    )
    min_coverage: float = Field(
        1.0, ge=0.0, le=1.0,
        description="Share of students that must be graded for the run to count as a success.",
    )
    reasks: int = Field(
        2, ge=0, description="Re-asks with the validation errors after an invalid reply."
    )
    reasoning_effort: str | None = Field(
        None, description="reasoning_effort sent to reasoning models (none, minimal, low, "
        "medium, high, xhigh or max, as the model accepts; `qbq models` lists them). None: "
        "the model's default. Refused for models that do not reason.",
    )
    reasoning_tokens_per_student: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_REASONING_TOKENS_PER_STUDENT),
        description="Expected reasoning tokens per student, by effort (JSON object). Starting "
        "points until a run has observed its own figure; see README 'Reasoning allowance'.",
    )
    reasoning_tokens_per_request: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_REASONING_TOKENS_PER_REQUEST),
        description="Expected reasoning tokens per request besides the students', by effort.",
    )
    reasoning_headroom: float = Field(
        2.0, ge=1.0, description="max_completion_tokens reserves expected reasoning × this "
        "(reasoning varies far more than the visible JSON).",
    )
    reasoning_min_completion_tokens: int = Field(
        25_000, ge=0, description="When the model reasons, raise max_completion_tokens to at "
        "least this where the context window and max output allow (OpenAI's reasoning guide "
        "recommends reserving at least 25,000 tokens for reasoning and outputs). Unused room "
        "costs nothing; it is reserved against the rate limit and refunded on settle.",
    )
    avoid_long_context_pricing: bool = Field(
        True, description="Keep each prompt under a model's long-context threshold (272k on "
        "gpt-5.4/5.5/5.6), above which OpenAI bills the whole request at 2x input, 1.5x output.",
    )
    mode: Mode = Field(
        "sync", description="How requests are processed and billed: sync (standard prices), "
        "batch (the Batch API: 50% off, results within 24 h) or flex (service_tier=flex: "
        "Batch prices, slower, for the models that offer it; "
        "https://platform.openai.com/docs/guides/flex-processing).",
    )
    batch_poll_s: float = Field(
        30.0, gt=0.0, description="Batch mode: first wait before asking the Batch API whether "
        "the job is done, in seconds; doubles after each look, up to batch_poll_max_s.",
    )
    batch_poll_max_s: float = Field(
        600.0, gt=0.0, description="Batch mode: longest wait between two looks, in seconds.",
    )


class QbqSettings(BaseSettings):
    """Process-wide settings; Prefect blocks override them in deployments."""

    model_config = SettingsConfigDict(env_prefix="QBQ_", extra="ignore")

    database_url: str = Field(
        "sqlite:///.qbq/qbq.db",
        description="SQLAlchemy URL of the store (SQLite file by default; "
        "postgresql+psycopg://... for PostgreSQL).",
    )
    db_outage_s: float = Field(
        120.0, ge=0, description="How long a store call waits out a database outage (connection "
        "refused or lost, server restarting, SQLite busy), in seconds, retrying with backoff; "
        "then, or at once for a persistent error (read-only, disk full), StoreUnavailableError."
    )
    spill_dir: str = Field(
        ".qbq/spill", description="Folder where a paid model reply is kept (owner-only files) "
        "when the store fails for good, or longer than QBQ_DB_OUTAGE_S, as it is written; the "
        "next run writes it to the store instead of paying again. Put it on another disk than "
        "the store if a full disk is the risk."
    )
    results_api_url: str | None = Field(
        None, description="Full URL the results payload is POSTed to. None: no delivery."
    )
    results_api_lookup_url: str | None = Field(
        None, description="URL template with {key} that answers 200 when the results API holds "
        "the payload of that Idempotency-Key (404 when not). With it, a delivery interrupted by a "
        "crash is checked before it is sent again, so the payload arrives once even if the API "
        "did not deduplicate."
    )
    results_api_token: SecretStr | None = Field(
        None, description="Bearer token sent to the results API, if it needs one."
    )
    openai_api_key: SecretStr | None = Field(
        None, description="API key for the model provider; None: the SDK reads OPENAI_API_KEY."
    )
    openai_base_url: str | None = Field(
        None, description="Provider base URL; None: the SDK reads OPENAI_BASE_URL (or OpenAI)."
    )
    openai_organization: str | None = Field(None, description="OpenAI organization id.")
    rpm: int | None = Field(
        None, gt=0, description="Requests per minute allowed for this API key (shared by all "
        "workers). None (with QBQ_TPM None): the limits the provider states in its "
        "x-ratelimit-limit-* headers, learned from the first reply."
    )
    tpm: int | None = Field(
        None, gt=0, description="Tokens per minute allowed for this API key (prompt tokens + "
        "max_completion_tokens are charged up front, as OpenAI does). None: learned, as QBQ_RPM."
    )
    unthrottled: bool = Field(
        False, description="Grade without rate limits (only sensible against a local simulator)."
    )
    limiter_backend: Literal["memory", "file", "redis", "postgres"] = Field(
        "file", description="Where the shared limiter state lives: file (processes of one host, "
        "no server), redis or postgres (several hosts), memory (one process)."
    )
    limiter_url: str | None = Field(
        None, description="redis://... or postgresql+psycopg://... for those backends."
    )
    limiter_burst_s: float = Field(
        1.0, gt=0.0, description="Seconds of rate qbq may send at once. Keep it well below the "
        "provider's enforcement window (OpenAI may enforce per-minute limits per second)."
    )
    limiter_dir: str = Field(
        "~/.cache/qbq/limiter", description="Folder of the file backend's state (one host)."
    )
    default_model: str = Field(
        "gpt-4.1-mini", description="Model for requests that do not name one (legacy requests)."
    )
    model_context_window: int | None = Field(
        None, gt=0, description="Context window for a model missing from the catalogue."
    )
    model_max_output_tokens: int | None = Field(
        None, gt=0, description="Max output tokens for a model missing from the catalogue."
    )
    max_in_flight: int = Field(
        4, gt=0, description="Model requests in flight at once from one process (raise it when "
        "latency × the allowed request rate is larger; the limiter still paces the rate)."
    )
    request_timeout_s: float = Field(
        120.0, gt=0, description="Fixed part of a model request's timeout, in seconds (reading "
        "the prompt, queueing); the time its expected output takes at QBQ_OUTPUT_TOKENS_PER_S "
        "is added."
    )
    output_tokens_per_s: float = Field(
        20.0, gt=0, description="The slowest output speed expected from the provider, tokens "
        "per second, visible and reasoning tokens alike; sizes each request's timeout. OpenAI "
        "publishes no speed (latency is 'mostly the model and the number of tokens generated', "
        "https://platform.openai.com/docs/guides/latency-optimization): 20 is a deliberately "
        "slow assumption; raise it when replies come faster, lower it when they time out.",
    )
    flex_timeout_s: float = Field(
        900.0, gt=0, description="Timeout of one model request in flex mode, in seconds (flex "
        "is slower; OpenAI's flex guide raises the SDK's timeout to 15 minutes)."
    )
    delivery_timeout_s: float = Field(30.0, gt=0, description="Timeout of one results POST.")
    delivery_deadline_s: float = Field(
        120.0, gt=0, description="Overall deadline of one results POST or lookup, in seconds "
        "(delivery_timeout_s bounds each read; this bounds the whole exchange)."
    )
    delivery_backoff_s: float = Field(
        30.0, ge=0, description="Wait before re-sending a failed delivery; doubles per attempt "
        "(at most an hour)."
    )
    payload_format: Literal["auto", "native", "legacy"] = Field(
        "auto", description="Payload form; auto: legacy for legacy requests, else native."
    )
    prefect_cache: bool = Field(
        True, description="Also cache grade_batch in Prefect (persisted results, 'Cached' in the "
        "UI). The store already skips finished batches; turning this off saves Prefect's "
        "per-task result write (~5 ms a batch, measured)."
    )
    keep_raw_responses: bool = Field(
        False, description="Keep raw model replies after reduce (they may hold personal data)."
    )
    log_format: Literal["text", "json"] = Field("text", description="Console log format.")
    loopback_only: bool = Field(
        False, description="Refuse every model request to a host that is not a loopback "
        "address (the test suite sets QBQ_LOOPBACK_ONLY=true, so no test can call a real model)."
    )

    # --- intake: reading, fetching and normalising pages (qbq/intake) ---
    max_page_bytes: int = Field(
        50_000_000, gt=0, description="Largest page file qbq reads, in bytes (a local file, a "
        "data URI or a download, counted after any gzip decoding, enforced while streaming)."
    )
    max_page_pixels: int = Field(
        50_000_000, gt=0, description="Largest page image qbq decodes, in pixels (width × "
        "height from the header, checked before decoding). 50 MP holds a 600-dpi A4 scan "
        "(35 MP) and a 48-50 MP phone photo; Pillow's own default refuses only at 179 MP."
    )
    page_urls: Literal["fetch", "pass"] = Field(
        "fetch", description="fetch: qbq downloads URL pages at intake (safely) and sends the "
        "normalised image inline; pass: URL pages go to the provider as URLs (not normalised; "
        "class scans are always fetched)."
    )
    allow_private_urls: bool = Field(
        False, description="Allow page URLs whose host is a loopback, private, link-local or "
        "otherwise non-public address (local test servers); off, such URLs are refused."
    )
    page_roots: Annotated[list[str] | None, NoDecode] = Field(
        None, description="Folders page files (and request files) must lie in, after "
        "resolving '..' and symlinks; a JSON list or paths separated by ':'. None: any path."
    )
    page_cache_dir: str = Field(
        "~/.cache/qbq/pages", description="Folder of normalised page images, keyed by content "
        "hash and model family: read by every worker of this host, so a resume or a re-ask "
        "never normalises a page twice."
    )
    page_cache_max_age_days: float = Field(
        14.0, gt=0, description="Normalised pages not used for this many days are deleted from "
        "the page cache (they hold student work)."
    )
    page_fetch_timeout_s: float = Field(
        10.0, gt=0, description="Connect and read timeout of one page download, in seconds."
    )
    page_fetch_deadline_s: float = Field(
        60.0, gt=0, description="Longest time one page download may take in all, in seconds."
    )

    @field_validator("page_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return None
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part.strip()]
        return value


def task_threads(settings: QbqSettings) -> int:
    """Threads for mapped grade tasks: more than the requests in flight, so Prefect's per-task
    bookkeeping for the next batch overlaps the model calls instead of idling a slot."""
    return settings.max_in_flight * 2 + 2


def get_settings() -> QbqSettings:
    """Read the settings from the environment now (not cached: tests change the environment)."""
    return QbqSettings()
