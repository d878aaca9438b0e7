"""The simulator's new settings: environment, `qbq simulate --set`, and their checks."""

from __future__ import annotations

import pytest

from qbq.simulator.config import SimConfig, sim_config_from_cli
from qbq.simulator.reasoning import DEFAULT_REASONING_TOKENS


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QBQ_SIM_REASONING_TOKENS", "low=10,high=99")
    monkeypatch.setenv("QBQ_SIM_REASONING_TOKENS_PER_ANSWER", '{"medium": 5}')
    monkeypatch.setenv("QBQ_SIM_FLEX_MODELS", "o3, gpt-5*")
    monkeypatch.setenv("QBQ_SIM_BATCH_FAULTS", "http500=0.1,truncate=0.2")
    monkeypatch.setenv("QBQ_SIM_PROMPT_CACHE_DEFAULT_RETENTION", "24h")
    monkeypatch.setenv("QBQ_SIM_BATCH_QUEUE_TOKENS", "90000")
    config = SimConfig()
    assert config.reasoning_tokens == {**DEFAULT_REASONING_TOKENS, "low": 10, "high": 99}
    assert config.reasoning_tokens_per_answer["medium"] == 5
    assert config.flex_models == ["o3", "gpt-5*"]
    assert config.batch_faults == {"http500": 0.1, "truncate": 0.2}
    assert config.prompt_cache_default_retention == "24h"
    assert config.batch_queue_tokens == 90_000


def test_set_flag_takes_any_setting() -> None:
    config = sim_config_from_cli(
        settings=["batch_completion_s=600", "QBQ_SIM_FLEX_UNAVAILABLE_RATE=0.25",
                  "reasoning_tokens=medium=2000", "batch_queue_tokens=none"],
        rpm=50,
    )
    assert config.batch_completion_s == 600
    assert config.flex_unavailable_rate == 0.25
    assert config.reasoning_tokens["medium"] == 2000
    assert config.batch_queue_tokens is None
    assert config.rpm == 50


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (["no_such_setting=1"], "--set takes NAME=VALUE"),
        (["reasoning_tokens=ultra=5"], "unknown reasoning effort 'ultra'"),
        (["batch_faults=rate_limit=0.5"], "cannot happen to a batch line"),
        (["flex_unavailable_rate=2"], "less than or equal to 1"),
    ],
)
def test_bad_settings_are_refused(settings: list[str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        sim_config_from_cli(settings=settings)
