"""The prompt prefix of an assessment caches: every batch after the first is served its prefix
from the simulator's prompt cache, and a student costs little more than its own pages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qbq import pipeline
from qbq.cost import billed_input_tokens, own_page_tokens
from qbq.grading import BatchOutcome, grade_batch
from qbq.preparation import Prepared, prepare
from qbq.provider import OpenAIChatProvider, make_openai_client
from qbq.sample import write_sample
from qbq.settings import GradingPolicy, QbqSettings
from qbq.simulator import BackgroundServer, SimConfig, create_app
from qbq.testing.fakes import FakeClock, fake_run, memory_store


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[tuple[Prepared, list[BatchOutcome]]]:
    request = write_sample(tmp_path_factory.mktemp("cache"), students=6, pages=1, questions=3,
                           seed=4, page_size=(620, 877))
    # Batches of 3 students: the model's limits alone would put all 6 in one request.
    policy = GradingPolicy(max_students_per_batch=3)
    prepared = prepare(request, settings=QbqSettings(), policy=policy)
    store = memory_store()
    pipeline.register(store, prepared, QbqSettings(database_url="sqlite://"))
    with BackgroundServer(create_app(SimConfig())) as sim:
        provider = OpenAIChatProvider(make_openai_client(
            api_key="sk-test", base_url=f"{sim.url}/v1", loopback_only=True))
        deps = fake_run(store, provider, FakeClock(), policy=policy).deps
        outcomes = [grade_batch(b, prepared.request, deps) for b in prepared.plan.batches]
        provider.close()
    yield prepared, outcomes


def test_every_batch_after_the_first_reads_its_prefix_from_the_cache(
        run: tuple[Prepared, list[BatchOutcome]]) -> None:
    prepared, outcomes = run
    assert len(outcomes) == 2 and all(o.status == "succeeded" for o in outcomes)
    first, *rest = outcomes
    assert first.usage.cached_tokens == 0
    # The whole stable prefix (schema, system, questions, both model answers) is cached,
    # give or take the 128-token step the cache works in.
    assert all(o.usage.cached_tokens >= prepared.plan.prefix_tokens - 128 for o in rest)


def test_billed_input_per_student_is_within_ten_percent_of_its_own_pages(
        run: tuple[Prepared, list[BatchOutcome]]) -> None:
    prepared, outcomes = run
    later = outcomes[1:]
    students = [s for o in later for s in prepared.plan.batches[o.index].students]
    billed = sum(billed_input_tokens(o.usage) for o in later)
    own = sum(own_page_tokens(prepared.request, s) for s in students)
    assert billed <= 1.10 * own
    # Without the cache the prefix alone would have been billed again in every batch.
    assert sum(o.usage.prompt_tokens for o in later) > 1.10 * own
