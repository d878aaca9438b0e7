"""The cacheable prefix of an assessment and the cost arithmetic, on scripted doubles."""

from __future__ import annotations

import json

import pytest

from qbq import pipeline
from qbq.cost import billed_input_tokens, mode_estimates, own_page_tokens, usage_cost_usd
from qbq.grading import grade_batch
from qbq.preparation import Prepared, prepare
from qbq.provider import ChatRequest
from qbq.sample import write_sample
from qbq.settings import GradingPolicy, QbqSettings
from qbq.testing.fakes import (
    FakeClock,
    ScriptedProvider,
    answers,
    fake_run,
    memory_store,
    reply,
)
from qbq.usage import Usage

POLICY = GradingPolicy(max_students_per_batch=2, backoff_base_s=1.0)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    request = write_sample(tmp_path_factory.mktemp("c"), students=5, pages=1, questions=2,
                           seed=3, page_size=(620, 877))
    return prepare(request, settings=QbqSettings(), policy=POLICY)


def _stable(request: ChatRequest) -> str:
    """Everything before the students' pages: schema, system and questions/model answers."""
    return json.dumps([request.response_format, request.messages[:2]], sort_keys=True)


def test_every_batch_sends_the_same_prefix_and_cache_key(prepared: Prepared) -> None:
    store = memory_store()
    pipeline.register(store, prepared, QbqSettings(database_url="sqlite://"))
    provider = ScriptedProvider([q.question_number for q in prepared.request.questions])
    deps = fake_run(store, provider, FakeClock(), policy=POLICY).deps
    for batch in prepared.plan.batches:
        grade_batch(batch, prepared.request, deps)
    assert len(provider.calls) == len(prepared.plan.batches) == 3
    assert len({_stable(c) for c in provider.calls}) == 1
    keys = {c.prompt_cache_key for c in provider.calls}
    assert len(keys) == 1 and None not in keys
    assert all("enum" not in json.dumps(c.response_format["json_schema"]["schema"]["properties"]
                                        ["students"]["items"]["properties"]["ref"])
               for c in provider.calls)


def test_an_invented_ref_is_reasked_now_that_the_schema_allows_any(prepared: Prepared) -> None:
    store = memory_store()
    pipeline.register(store, prepared, QbqSettings(database_url="sqlite://"))
    qnums = [q.question_number for q in prepared.request.questions]

    def invent(refs: list[str], _: ChatRequest) -> object:
        return reply(json.dumps(answers([refs[0], "S999"], qnums)))

    provider = ScriptedProvider(qnums, [invent])  # type: ignore[list-item]
    batch = prepared.plan.batches[0]
    outcome = grade_batch(batch, prepared.request,
                          fake_run(store, provider, FakeClock(), policy=POLICY).deps)
    assert outcome.status == "succeeded" and outcome.n_graded == 2
    assert provider.refs_per_call == [batch.refs, batch.refs[1:]]


def test_usage_cost_bills_cached_tokens_at_the_cached_price(prepared: Prepared) -> None:
    spec = prepared.request.spec
    cold = Usage(replies=1, prompt_tokens=10_000, completion_tokens=1_000)
    warm = Usage(replies=1, prompt_tokens=10_000, cached_tokens=8_000, completion_tokens=1_000)
    assert billed_input_tokens(warm) == 2_000
    saved = 8_000 * (spec.price_input_per_m - spec.price_cached_input_per_m) / 1e6
    assert usage_cost_usd(spec, cold, "sync") - usage_cost_usd(spec, warm, "sync") == \
        pytest.approx(saved)
    batch = spec.prices("batch")
    assert usage_cost_usd(spec, warm, "batch") == pytest.approx(
        (2_000 * batch.input + 8_000 * batch.cached_input + 1_000 * batch.output) / 1e6)


def test_plan_estimates_each_mode_with_and_without_the_cache(prepared: Prepared) -> None:
    plan = prepared.plan
    assert plan.prefix_tokens >= 1_024  # the prefix is long enough to cache at all
    estimates = {e.mode: e for e in mode_estimates(plan)}
    assert list(estimates) == list(prepared.request.spec.modes)
    sync = estimates["sync"]
    spec = prepared.request.spec
    cached_prefix = plan.prefix_tokens - plan.prefix_tokens % 128
    saving = (len(plan.batches) - 1) * cached_prefix * (
        spec.price_input_per_m - spec.price_cached_input_per_m) / 1e6
    assert sync.usd_uncached - sync.usd_cached == pytest.approx(saving)
    # The Batch API halves the uncached price (gpt-4.1-mini publishes no Batch cache discount).
    assert estimates["batch"].usd_uncached == pytest.approx(sync.usd_uncached / 2)


def test_own_page_tokens_count_only_the_students_pages(prepared: Prepared) -> None:
    batch = prepared.plan.batches[0]
    own = sum(own_page_tokens(prepared.request, s) for s in batch.students)
    # The planned prompt is the prefix plus each student's label and pages.
    assert 0 < batch.prompt_tokens - batch.prefix_tokens - own < 20 * len(batch.students)
