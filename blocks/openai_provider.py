"""The `qbq-openai-provider` block: credentials, endpoint and rate limits of one API key."""

from __future__ import annotations

from typing import Any, ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

__all__ = ["OpenAIProvider"]


class OpenAIProvider(Block):
    """An OpenAI (or compatible) API key with its endpoint and the limits OpenAI grants it.

    `rpm`/`tpm` are the key's organisation-wide limits: every worker that grades with this
    block shares them.
    """

    _block_type_name: ClassVar[str] = "qbq-openai-provider"
    _block_type_slug: ClassVar[str] = "qbq-openai-provider"
    _description: ClassVar[str] = (
        "qbq: the model provider's API key, base URL, organization, default model, "
        "rate limits and request timeout."
    )

    api_key: SecretStr = Field(..., description="API key of the provider (OpenAI: sk-...).")
    base_url: str | None = Field(
        None, description="Base URL of an OpenAI-compatible API; empty: api.openai.com."
    )
    organization: str | None = Field(None, description="OpenAI organization id, if any.")
    default_model: str | None = Field(
        None, description="Model for requests that do not name one (legacy requests); "
        "empty: keep the QBQ_DEFAULT_MODEL setting.",
    )
    rpm: int | None = Field(
        None, gt=0, description="Requests per minute allowed for this key (shared by all workers)."
    )
    tpm: int | None = Field(
        None, gt=0, description="Tokens per minute allowed for this key (shared by all workers)."
    )
    timeout_s: float = Field(120.0, gt=0, description="Timeout of one model request, in seconds.")

    def to_settings_overrides(self) -> dict[str, Any]:
        """The `QbqSettings` fields this block sets (unset optional fields keep the env's)."""
        overrides: dict[str, Any] = {
            "openai_api_key": self.api_key,
            "request_timeout_s": self.timeout_s,
            "openai_base_url": self.base_url,
            "openai_organization": self.organization,
            "default_model": self.default_model,
            "rpm": self.rpm,
            "tpm": self.tpm,
        }
        return {k: v for k, v in overrides.items() if v is not None}
