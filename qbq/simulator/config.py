"""Settings of the OpenAI-compatible simulator, read from `QBQ_SIM_*` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["SimConfig"]


class SimConfig(BaseSettings):
    """How the simulator behaves; every answer it gives is labelled simulated."""

    model_config = SettingsConfigDict(env_prefix="QBQ_SIM_", extra="ignore")

    latency_ms: float = Field(
        0.0, ge=0.0, description="Delay before each successful answer, in milliseconds."
    )
    seed: int = Field(
        0, description="Seed for the simulator's random choices (reserved for faults and jitter)."
    )
    api_key: str | None = Field(
        None,
        description="Bearer key requests must carry. None: any non-empty bearer key is accepted.",
    )
    image_fetch_timeout_s: float = Field(
        10.0, gt=0.0, description="Timeout for downloading one http(s) image URL, in seconds."
    )
