"""Settings of the OpenAI-compatible simulator, read from `QBQ_SIM_*` environment variables.

Times: `latency_ms` and `ms_per_output_token` are simulated milliseconds, which `time_scale`
compresses into wall time; `hang_s` and `image_fetch_timeout_s` are wall seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from qbq.simulator.faults import parse_fault_rates, parse_fault_script

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
        "faster, latencies shrink; retry-after and reset headers are in wall seconds.",
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
    {"rpm", "tpm", "latency_ms", "ms_per_output_token", "jitter", "faults", "fault_script", "hang_s", "seed"}
)


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
) -> SimConfig:
    """The simulator's settings: `QBQ_SIM_*` environment variables, overridden by CLI options.

    None (or an empty `faults`) leaves a setting to the environment. `faults` holds
    "KIND=RATE" strings (`--fault`, repeatable) and is merged kind by kind with
    `QBQ_SIM_FAULTS` (KIND=0 switches off a kind the environment sets); `fault_script` is a
    "KIND,ok,KIND" string that replaces `QBQ_SIM_FAULT_SCRIPT`. Raises ValueError (pydantic's
    ValidationError is one) for an unknown fault kind, naming the valid kinds, or a bad value.
    """
    overrides: dict[str, Any] = {
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
