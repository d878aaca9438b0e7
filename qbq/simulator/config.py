"""Settings of the OpenAI-compatible simulator, read from `QBQ_SIM_*` environment variables.

Times: `latency_ms` and `ms_per_output_token` are simulated milliseconds, `prompt_cache_*_s`
and `batch_*_s` simulated seconds, all of which `time_scale` compresses into wall time;
`hang_s` and `image_fetch_timeout_s` are wall seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from qbq.simulator.faults import parse_batch_fault_rates, parse_fault_rates, parse_fault_script
from qbq.simulator.reasoning import (
    DEFAULT_REASONING_TOKENS,
    DEFAULT_REASONING_TOKENS_PER_ANSWER,
    parse_effort_tokens,
)
from qbq.simulator.tiers import DEFAULT_FLEX_MODELS

__all__ = ["RUNTIME_FIELDS", "SimConfig", "sim_config_from_cli"]


class SimConfig(BaseSettings):
    """How the simulator behaves; every answer it gives is labelled simulated."""

    model_config = SettingsConfigDict(env_prefix="QBQ_SIM_", extra="ignore", env_ignore_empty=True)

    # --- rate limits ------------------------------------------------------------------------
    rpm: int | None = Field(
        None, gt=0, description="Requests per minute per API key; None: unlimited."
    )
    tpm: int | None = Field(
        None,
        gt=0,
        description="Tokens per minute per API key (prompt + completion budget, charged on "
        "arrival); None: unlimited.",
    )
    # --- latency ----------------------------------------------------------------------------
    latency_ms: float = Field(
        0.0, ge=0.0, description="Base latency of each answer, in simulated milliseconds."
    )
    ms_per_output_token: float = Field(
        0.0, ge=0.0, description="Added latency per completion token, in simulated milliseconds."
    )
    jitter: float = Field(
        0.0,
        ge=0.0,
        description="Sigma of a lognormal latency multiplier with median 1; 0: no jitter.",
    )
    time_scale: float = Field(
        1.0,
        ge=1.0,
        description="Simulated time runs this many times faster than wall time: buckets refill "
        "faster, latencies shrink; retry-after and reset headers are in wall seconds, and the "
        "x-ratelimit-limit-* headers state the limits per wall minute (rpm/tpm × time_scale).",
    )
    # --- faults -----------------------------------------------------------------------------
    faults: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        description='Fault kind → rate in [0, 1] (env: "http500=0.1,truncate=0.2").',
    )
    fault_script: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description='Faults for the first requests, one each, "ok" for none (env: '
        '"http500,ok,truncate"); the rates apply after it.',
    )
    hang_s: float = Field(
        30.0, gt=0.0, description="How long a `timeout` fault hangs before answering, in wall seconds."
    )
    seed: int = Field(0, description="Seed for fault draws, fault variants and latency jitter.")
    # --- other ------------------------------------------------------------------------------
    api_key: str | None = Field(
        None,
        description="Bearer key requests must carry. None: any non-empty bearer key is accepted.",
    )
    image_fetch_timeout_s: float = Field(
        10.0, gt=0.0, description="Timeout for downloading one http(s) image URL, in seconds."
    )
    # --- reasoning (https://platform.openai.com/docs/guides/reasoning) -----------------------
    reasoning_tokens: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_REASONING_TOKENS),
        description='Hidden reasoning tokens per request of a reasoning model, by effort (env: '
        '"minimal=0,low=256,medium=1024,high=4096"; efforts left out keep their default).',
    )
    reasoning_tokens_per_answer: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_REASONING_TOKENS_PER_ANSWER),
        description="Added reasoning tokens per graded answer (student × question in the "
        'prompt), by effort (env: "medium=64,high=160").',
    )
    # --- prompt caching (https://platform.openai.com/docs/guides/prompt-caching) -------------
    prompt_cache: bool = Field(
        True, description="Emulate prompt caching (cached_tokens); false: never a cache hit."
    )
    prompt_cache_ttl_s: float = Field(
        300.0,
        gt=0.0,
        description='How long an unused prefix stays cached with in-memory retention (OpenAI: '
        '5-10 minutes of inactivity), in simulated seconds.',
    )
    prompt_cache_extended_ttl_s: float = Field(
        86_400.0,
        gt=0.0,
        description='How long a prefix stays cached with prompt_cache_retention "24h", in '
        "simulated seconds.",
    )
    prompt_cache_default_retention: Literal["in_memory", "24h"] = Field(
        "in_memory",
        description="Retention of requests that send no prompt_cache_retention (OpenAI: "
        "in_memory for zero-data-retention organizations, else 24h on the models that offer it).",
    )
    # --- flex processing (https://platform.openai.com/docs/guides/flex-processing) ----------
    flex_models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_FLEX_MODELS),
        description='Model-name patterns (fnmatch) that accept service_tier "flex" (env: '
        '"o3,o4-mini,gpt-5*").',
    )
    flex_latency_multiplier: float = Field(
        3.0, ge=1.0, description="Flex requests take this many times the usual latency."
    )
    flex_unavailable_rate: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description='Share of flex requests answered 429 "Resource Unavailable" (unbilled).',
    )
    # --- Batch API (https://platform.openai.com/docs/guides/batch) ---------------------------
    batch_validation_s: float = Field(
        1.0, ge=0.0, description="How long a batch stays `validating`, in simulated seconds."
    )
    batch_completion_s: float = Field(
        30.0,
        ge=0.0,
        description="How long a batch takes to answer all its lines once `in_progress` (lines "
        "finish evenly spread over it), in simulated seconds.",
    )
    batch_finalizing_s: float = Field(
        1.0, ge=0.0, description="How long a batch stays `finalizing`, in simulated seconds."
    )
    batch_cancel_s: float = Field(
        1.0,
        ge=0.0,
        description="How long a batch stays `cancelling` (OpenAI: up to 10 minutes), in "
        "simulated seconds.",
    )
    batch_window_s: float = Field(
        86_400.0,
        gt=0.0,
        description='The completion window "24h" in simulated seconds: a batch not done by then '
        "ends `expired`, its unfinished lines in the error file as `batch_expired`.",
    )
    batch_faults: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        description='Fault kind → share of batch lines (env: "http500=0.1,truncate=0.05"); '
        "5xx and timeout lines go to the error file, content faults to the output file.",
    )
    batch_queue_tokens: int | None = Field(
        None,
        gt=0,
        description="Enqueued-token limit per API key and model (prompt tokens of the batches "
        "not yet finished); a batch over it fails with token_limit_exceeded. None: unlimited.",
    )

    @field_validator("reasoning_tokens", mode="before")
    @classmethod
    def _parse_reasoning(cls, value: Any) -> dict[str, int]:
        return {**DEFAULT_REASONING_TOKENS, **parse_effort_tokens(value)}

    @field_validator("reasoning_tokens_per_answer", mode="before")
    @classmethod
    def _parse_reasoning_per_answer(cls, value: Any) -> dict[str, int]:
        return {**DEFAULT_REASONING_TOKENS_PER_ANSWER, **parse_effort_tokens(value)}

    @field_validator("flex_models", mode="before")
    @classmethod
    def _parse_flex_models(cls, value: Any) -> list[str]:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return list(value)

    @field_validator("batch_faults", mode="before")
    @classmethod
    def _parse_batch_faults(cls, value: Any) -> dict[str, float]:
        return parse_batch_fault_rates(value)

    @field_validator("faults", mode="before")
    @classmethod
    def _parse_faults(cls, value: Any) -> dict[str, float]:
        return parse_fault_rates(value)

    @field_validator("fault_script", mode="before")
    @classmethod
    def _parse_script(cls, value: Any) -> list[str]:
        return parse_fault_script(value)


#: Fields `POST /_sim/config` may change while the simulator runs.
RUNTIME_FIELDS = frozenset(
    {
        "rpm", "tpm", "latency_ms", "ms_per_output_token", "jitter", "faults", "fault_script",
        "hang_s", "seed", "reasoning_tokens", "reasoning_tokens_per_answer", "prompt_cache",
        "prompt_cache_ttl_s", "prompt_cache_extended_ttl_s", "prompt_cache_default_retention",
        "flex_models", "flex_latency_multiplier", "flex_unavailable_rate", "batch_validation_s",
        "batch_completion_s", "batch_finalizing_s", "batch_cancel_s", "batch_window_s",
        "batch_faults", "batch_queue_tokens",
    }
)


def _named_settings(settings: Sequence[str]) -> dict[str, Any]:
    named: dict[str, Any] = {}
    for setting in settings:
        name, sep, value = setting.partition("=")
        name = name.strip().lower().removeprefix("qbq_sim_")
        if not sep or name not in SimConfig.model_fields:
            raise ValueError(
                f"--set takes NAME=VALUE with NAME a simulator setting, got {setting!r}; settings: "
                + ", ".join(sorted(SimConfig.model_fields))
            )
        named[name] = None if value.strip().lower() in ("", "none", "null") else value.strip()
    return named


def sim_config_from_cli(
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    latency_ms: float | None = None,
    ms_per_output_token: float | None = None,
    jitter: float | None = None,
    time_scale: float | None = None,
    faults: Sequence[str] = (),
    fault_script: str | None = None,
    seed: int | None = None,
    hang_s: float | None = None,
    api_key: str | None = None,
    settings: Sequence[str] = (),
) -> SimConfig:
    """The simulator's settings: `QBQ_SIM_*` environment variables, overridden by CLI options.

    None (or an empty `faults`) leaves a setting to the environment. `faults` holds
    "KIND=RATE" strings (`--fault`, repeatable) and is merged kind by kind with
    `QBQ_SIM_FAULTS` (KIND=0 switches off a kind the environment sets); `fault_script` is a
    "KIND,ok,KIND" string that replaces `QBQ_SIM_FAULT_SCRIPT`. Raises ValueError (pydantic's
    ValidationError is one) for an unknown fault kind, naming the valid kinds, or a bad value.
    `settings` holds "NAME=VALUE" strings (`--set`, repeatable) for any other field, written
    as its `QBQ_SIM_NAME` environment variable would be; they apply before the options above.
    """
    overrides: dict[str, Any] = _named_settings(settings)
    overrides |= {
        name: value
        for name, value in {
            "rpm": rpm,
            "tpm": tpm,
            "latency_ms": latency_ms,
            "ms_per_output_token": ms_per_output_token,
            "jitter": jitter,
            "time_scale": time_scale,
            "seed": seed,
            "hang_s": hang_s,
            "api_key": api_key,
        }.items()
        if value is not None
    }
    if fault_script is not None:
        overrides["fault_script"] = parse_fault_script(fault_script)
    if faults:
        cli_rates = parse_fault_rates(",".join(faults))
        env_rates = SimConfig().faults
        overrides["faults"] = {**env_rates, **cli_rates}
    return SimConfig(**overrides)
