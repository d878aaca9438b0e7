"""Blocks are configuration: each maps onto the settings fields it names, and nothing else."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from blocks import GradingPolicyBlock, OpenAIProvider, ResultsAPI
from flows.config import resolve_config
from qbq.settings import GradingPolicy, QbqSettings


def test_block_type_slugs() -> None:
    assert OpenAIProvider.get_block_type_slug() == "qbq-openai-provider"
    assert ResultsAPI.get_block_type_slug() == "qbq-results-api"
    assert GradingPolicyBlock.get_block_type_slug() == "qbq-grading-policy"
    assert GradingPolicyBlock.get_block_type_name() == "qbq-grading-policy"


def test_provider_overrides_only_what_it_sets() -> None:
    block = OpenAIProvider(api_key=SecretStr("sk-block"), rpm=500, tpm=200_000)
    overrides = block.to_settings_overrides()
    assert set(overrides) == {"openai_api_key", "request_timeout_s", "rpm", "tpm"}
    assert overrides["openai_api_key"].get_secret_value() == "sk-block"
    assert "sk-block" not in repr(block) and "sk-block" not in str(overrides)
    full = OpenAIProvider(api_key="k", base_url="http://127.0.0.1:9/v1", organization="org-1",
                          default_model="gpt-4.1", timeout_s=5)
    assert full.to_settings_overrides() | {"openai_api_key": None} == {
        "openai_api_key": None, "openai_base_url": "http://127.0.0.1:9/v1",
        "openai_organization": "org-1", "default_model": "gpt-4.1", "request_timeout_s": 5.0}
    assert set(full.to_settings_overrides()) <= set(QbqSettings.model_fields)


def test_provider_rejects_non_positive_limits() -> None:
    with pytest.raises(ValidationError):
        OpenAIProvider(api_key="k", rpm=0)


def test_results_api_client_sends_token_and_timeout() -> None:
    block = ResultsAPI(url="http://127.0.0.1:9/results", token="t0k", timeout_s=7)
    assert block.to_settings_overrides()["delivery_timeout_s"] == 7
    assert set(block.to_settings_overrides()) <= set(QbqSettings.model_fields)
    with block.get_client() as client:
        assert client.headers["Authorization"] == "Bearer t0k"
        assert client.timeout.read == 7
    anonymous = ResultsAPI(url="http://127.0.0.1:9/results")
    assert "results_api_token" not in anonymous.to_settings_overrides()
    with anonymous.get_client() as client:
        assert "Authorization" not in client.headers


def test_policy_block_mirrors_grading_policy() -> None:
    fields = set(GradingPolicyBlock.model_fields)
    assert fields <= set(GradingPolicy.model_fields)
    assert {"min_coverage", "reasks", "max_attempts", "context_margin",
            "max_students_per_batch"} <= fields
    for name in fields:
        assert GradingPolicyBlock.model_fields[name].default is None


def test_policy_block_keeps_the_environment_for_empty_fields(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QBQ_REASKS", "5")
    policy = GradingPolicyBlock(max_students_per_batch=2, min_coverage=0.9).to_policy()
    assert policy.max_students_per_batch == 2 and policy.min_coverage == 0.9
    assert policy.reasks == 5  # from the environment
    assert policy.max_attempts == GradingPolicy.model_fields["max_attempts"].default
    with pytest.raises(ValidationError):
        GradingPolicyBlock(min_coverage=1.5)


def test_resolve_config_without_blocks_is_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QBQ_RESULTS_API_URL", "http://127.0.0.1:9/results")
    monkeypatch.setenv("QBQ_MAX_ATTEMPTS", "2")
    settings, policy = resolve_config(None, None, None)
    assert settings.results_api_url == "http://127.0.0.1:9/results"
    assert policy.max_attempts == 2
