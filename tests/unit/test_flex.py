"""Flex processing: service_tier "flex" on every request, a longer timeout, and OpenAI's rule for
flex's capacity 429 (retry with backoff; it is not a rate limit)."""

from __future__ import annotations

import httpx2
import openai
import pytest

from qbq import pipeline
from qbq.errors import ConfigurationError, FlexUnavailableError, RateLimitedError
from qbq.grading import grade_batch
from qbq.preparation import Prepared, prepare
from qbq.provider import translate_error
from qbq.resources import RunRef, make_provider
from qbq.sample import write_sample
from qbq.settings import GradingPolicy, QbqSettings
from qbq.testing.fakes import FakeClock, ScriptedProvider, fake_run, memory_store

FLEX = GradingPolicy(mode="flex", backoff_base_s=1.0)


def _status_error(code: int, error_code: str | None) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    response = httpx2.Response(code, request=request)
    # The SDK hands the exception the body's "error" object.
    body = {"message": "Resource Unavailable", "type": error_code, "code": error_code}
    return openai.RateLimitError(f"Error code: {code}", response=response, body=body)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    request = write_sample(tmp_path_factory.mktemp("flex"), students=2, pages=1, questions=1,
                           seed=2, page_size=(300, 420), model="gpt-5-mini")
    return prepare(request, settings=QbqSettings(), policy=FLEX)


def test_flex_capacity_429_is_its_own_transient_error() -> None:
    flex = translate_error(_status_error(429, "resource_unavailable"))
    assert isinstance(flex, FlexUnavailableError) and flex.transient
    # A 429 with another code is still a rate limit, paced by the shared limiter.
    assert isinstance(translate_error(_status_error(429, "rate_limit_exceeded")),
                      RateLimitedError)


def test_flex_mode_sends_flex_and_retries_capacity_errors_with_backoff(
        prepared: Prepared) -> None:
    store = memory_store()
    pipeline.register(store, prepared, QbqSettings(database_url="sqlite://"))
    unavailable = FlexUnavailableError("flex capacity unavailable (429)", status_code=429)
    provider = ScriptedProvider([q.question_number for q in prepared.request.questions],
                                [lambda r, m: unavailable, lambda r, m: unavailable])
    clock = FakeClock()
    batch = prepared.plan.batches[0]
    outcome = grade_batch(batch, prepared.request, fake_run(store, provider, clock,
                                                            policy=FLEX).deps)
    assert outcome.status == "succeeded" and outcome.n_graded == len(batch.students)
    assert [c.service_tier for c in provider.calls] == ["flex"] * 3
    assert len(clock.slept) == 2  # backed off before each retry
    native, _ = pipeline.build_payload(prepared, pipeline.collect(store, prepared.plan),
                                       policy=FLEX, settings=QbqSettings())
    assert native.summary.mode == "flex"


def test_sync_mode_sends_no_service_tier(prepared: Prepared) -> None:
    store = memory_store()
    pipeline.register(store, prepared, QbqSettings(database_url="sqlite://"))
    provider = ScriptedProvider([q.question_number for q in prepared.request.questions])
    grade_batch(prepared.plan.batches[0], prepared.request,
                fake_run(store, provider, FakeClock(), policy=GradingPolicy()).deps)
    assert provider.calls[0].service_tier is None
    assert "service_tier" not in provider.calls[0].body()


def test_flex_requests_get_the_longer_timeout() -> None:
    settings = QbqSettings(openai_api_key="sk-test", openai_base_url="http://127.0.0.1:9/v1",
                           request_timeout_s=120, flex_timeout_s=900)
    for mode, timeout in (("sync", 120), ("flex", 900)):
        provider = make_provider(settings, mode)  # type: ignore[arg-type]
        try:
            assert provider._client.timeout == timeout
        finally:
            provider.close()


def test_flex_is_refused_before_sending_for_a_model_without_it(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    request = write_sample(tmp_path_factory.mktemp("noflex"), students=1, pages=1, questions=1,
                           page_size=(200, 280), model="gpt-4.1-mini")
    plan = prepare(request, settings=QbqSettings(), policy=FLEX).plan
    with pytest.raises(ConfigurationError, match="not offered in flex"):
        RunRef.for_plan(plan, QbqSettings(), FLEX)


