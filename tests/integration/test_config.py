"""Blocks saved on a Prefect server override the environment's settings, field by field."""

from __future__ import annotations

import pytest

from blocks import GradingPolicyBlock, OpenAIProvider, ResultsAPI
from flows.config import resolve_config
from qbq.errors import ConfigurationError

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_named_blocks_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QBQ_RESULTS_API_URL", "http://127.0.0.1:9/env-results")
    monkeypatch.setenv("QBQ_DELIVERY_TIMEOUT_S", "11")
    monkeypatch.setenv("QBQ_RPM", "10")
    monkeypatch.setenv("QBQ_REASKS", "4")
    OpenAIProvider(api_key="sk-saved", base_url="http://127.0.0.1:9/v1",
                   tpm=90_000).save("cfg-provider", overwrite=True)
    ResultsAPI(url="http://127.0.0.1:9/block-results", token="tok").save("cfg-results",
                                                                          overwrite=True)
    GradingPolicyBlock(min_coverage=0.75).save("cfg-policy", overwrite=True)

    settings, policy = resolve_config("cfg-provider", "qbq-results-api/cfg-results",
                                      "cfg-policy")

    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-saved"  # secret survives the server
    assert settings.openai_base_url == "http://127.0.0.1:9/v1"
    assert (settings.rpm, settings.tpm) == (10, 90_000)  # rpm unset in the block: env's
    assert settings.results_api_url == "http://127.0.0.1:9/block-results"
    assert settings.results_api_token is not None
    assert settings.results_api_token.get_secret_value() == "tok"
    assert settings.delivery_timeout_s == 30.0  # the block's default beats the env
    assert (policy.min_coverage, policy.reasks) == (0.75, 4)


@pytest.mark.parametrize("names", [("nope", None, None), (None, "nope", None),
                                   (None, None, "nope")])
def test_missing_block_is_a_configuration_error(names: tuple[str | None, ...]) -> None:
    with pytest.raises(ConfigurationError, match=r"'nope'.*prefect block register"):
        resolve_config(*names)


def test_block_of_another_type_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="not a qbq-grading-policy block name"):
        resolve_config(None, None, "qbq-results-api/cfg-results")
