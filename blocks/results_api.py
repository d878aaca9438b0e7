"""The `qbq-results-api` block: where payloads are delivered, and how to authenticate."""

from __future__ import annotations

from typing import Any, ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from qbq.http import HttpClient, make_http_client

__all__ = ["ResultsAPI"]


class ResultsAPI(Block):
    """The school platform's results endpoint: payloads are POSTed here with an Idempotency-Key."""

    _block_type_name: ClassVar[str] = "qbq-results-api"
    _block_type_slug: ClassVar[str] = "qbq-results-api"
    _description: ClassVar[str] = (
        "qbq: the results API URL payloads are POSTed to, its bearer token and timeout."
    )

    url: str = Field(..., description="Full URL the results payload is POSTed to.")
    token: SecretStr | None = Field(
        None, description="Bearer token sent with every POST, if the API needs one."
    )
    timeout_s: float = Field(30.0, gt=0, description="Timeout of one results POST, in seconds.")

    def to_settings_overrides(self) -> dict[str, Any]:
        """The `QbqSettings` fields this block sets (no token: keep the env's)."""
        overrides: dict[str, Any] = {"results_api_url": self.url,
                                     "delivery_timeout_s": self.timeout_s}
        if self.token is not None:
            overrides["results_api_token"] = self.token
        return overrides

    def get_client(self) -> HttpClient:
        """An HTTP client that sends this block's token and honours its timeout."""
        token = self.token.get_secret_value() if self.token is not None else None
        return make_http_client(timeout_s=self.timeout_s, token=token)
