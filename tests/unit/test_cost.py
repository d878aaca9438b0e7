"""The cacheable prefix of an assessment and the cost arithmetic, on scripted doubles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qbq import pipeline
from qbq.cli import app
from qbq.cost import (
    billed_input_tokens,
    mode_estimates,
    own_page_tokens,
    result_mode,
    usage_by_mode,
    usage_cost_usd,
)
from qbq.grading import grade_batch
from qbq.observability.metrics import process_metrics
from qbq.preparation import Prepared, prepare
from qbq.provider import ChatRequest
from qbq.sample import write_sample
from qbq.settings import GradingPolicy, QbqSettings
from qbq.store import Store
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
def request_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample(tmp_path_factory.mktemp("c"), students=5, pages=1, questions=2,
                        seed=3, page_size=(620, 877))


@pytest.fixture(scope="module")
def prepared(request_path: Path) -> Prepared:
    return prepare(request_path, settings=QbqSettings(), policy=POLICY)


def _graded_store(prepared: Prepared, provider: ScriptedProvider,
                  policy: GradingPolicy = POLICY) -> Store:
    store = memory_store()
    pipeline.register(store, prepared, QbqSettings(database_url="sqlite://"))
    deps = fake_run(store, provider, FakeClock(), policy=policy).deps
    for batch in prepared.plan.batches:
        grade_batch(batch, prepared.request, deps)
    return store


def _stable(request: ChatRequest) -> str:
    """Everything before the students' pages: schema, system and questions/model answers."""
    return json.dumps([request.response_format, request.messages[:2]], sort_keys=True)


def test_every_batch_sends_the_same_prefix_and_cache_key(prepared: Prepared) -> None:
    provider = ScriptedProvider([q.question_number for q in prepared.request.questions])
    _graded_store(prepared, provider)
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


# --- cost everywhere: qbq plan, qbq report, the payload summary -------------------------------

#: What every scripted reply costs: 60% of the prompt from the cache, some reasoning.
WARM = Usage(replies=1, prompt_tokens=5_000, cached_tokens=3_000, completion_tokens=400,
             reasoning_tokens=100, latency_ms=5.0)


def _warm_provider(prepared: Prepared) -> ScriptedProvider:
    qnums = [q.question_number for q in prepared.request.questions]

    def warm(refs: list[str], _: ChatRequest) -> object:
        return reply(json.dumps(answers(refs, qnums)), usage=WARM)

    return ScriptedProvider(qnums, [warm] * len(prepared.plan.batches))  # type: ignore[list-item]


def test_qbq_plan_prints_the_estimate_per_mode_with_and_without_the_cache(
        request_path: Path, prepared: Prepared) -> None:
    env = {"QBQ_MAX_STUDENTS_PER_BATCH": "2"}
    result = CliRunner().invoke(app, ["plan", "--json", str(request_path)], env=env)
    assert result.exit_code == 0, result.output
    by_mode = json.loads(result.output)["estimated_cost_usd_by_mode"]
    expected = {e.mode: e for e in mode_estimates(prepared.plan)}
    assert set(by_mode) == set(expected) == {"sync", "batch"}  # gpt-4.1-mini: no flex
    assert by_mode["sync"]["cached"] == pytest.approx(expected["sync"].usd_cached, abs=1e-6)
    assert by_mode["sync"]["cached"] < by_mode["sync"]["uncached"]
    table = CliRunner().invoke(app, ["plan", str(request_path)], env={**env, "COLUMNS": "200"})
    assert "with cache" in table.output and "batch" in table.output


def test_report_and_summary_carry_the_cost_by_mode_with_cached_and_reasoning_tokens(
        prepared: Prepared) -> None:
    store = _graded_store(prepared, _warm_provider(prepared))
    n = len(prepared.plan.batches)
    spent = Usage(replies=n, prompt_tokens=n * 5_000, cached_tokens=n * 3_000,
                  completion_tokens=n * 400, reasoning_tokens=n * 100)
    usd = usage_cost_usd(prepared.request.spec, spent, "sync")
    found = process_metrics(store, prepared.plan.process_id)
    assert found is not None
    metrics = found[0]
    sync = metrics.cost_by_mode["sync"]
    assert (sync["cached_tokens"], sync["reasoning_tokens"]) == (n * 3_000, n * 100)
    assert sync["cost_usd"] == pytest.approx(usd, abs=1e-6)
    assert metrics.estimated_cost_usd == pytest.approx(usd, abs=1e-6)
    native, _ = pipeline.build_payload(prepared, pipeline.collect(store, prepared.plan),
                                       policy=POLICY, settings=QbqSettings())
    summary = native.summary
    assert summary.mode == "sync" and summary.cached_tokens == n * 3_000
    assert summary.estimated_cost_usd == pytest.approx(usd, abs=1e-6)


def test_each_stored_batch_is_priced_in_the_mode_it_ran_in(prepared: Prepared) -> None:
    spec = prepared.request.spec
    assert result_mode({"mode": "batch"}) == "batch"
    assert result_mode({}) == result_mode(None) == "sync"  # results from before modes
    by_mode = usage_by_mode([("batch", WARM), ("sync", WARM), ("batch", WARM)])
    assert list(by_mode) == ["sync", "batch"] and by_mode["batch"] == WARM + WARM
    assert usage_cost_usd(spec, by_mode["batch"], "batch") < usage_cost_usd(spec, WARM + WARM,
                                                                            "sync")
