"""Run resources: built once per run, found by its tasks, released however the run ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from qbq.errors import ProviderConnectionError
from qbq.preparation import Prepared, prepare
from qbq.resources import RunResources, resources_for, run_resources
from qbq.sample import write_sample
from qbq.settings import GradingPolicy, QbqSettings


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    request = write_sample(tmp_path_factory.mktemp("s"), students=4, pages=1, questions=2)
    return prepare(request, settings=QbqSettings(), policy=GradingPolicy())


@pytest.fixture
def settings(tmp_path: Path) -> QbqSettings:
    # a key of its own: an open breaker pauses every sender of its key in this process
    return QbqSettings(database_url=f"sqlite:///{tmp_path / 'q.db'}", rpm=100, tpm=100_000,
                       limiter_backend="memory", openai_base_url="http://127.0.0.1:9/v1",
                       openai_api_key=f"sk-test-{tmp_path.name}")


def test_a_run_that_raised_leaves_nothing_to_the_next(prepared: Prepared,
                                                      settings: QbqSettings) -> None:
    policy = GradingPolicy(breaker_threshold=1)
    with pytest.raises(RuntimeError), run_resources(prepared.plan, settings, policy) as first:
        first.guards.budget.spend(10)
        first.guards.breaker.record_failure()
        assert first.guards.breaker.state == "open"
        assert resources_for(first.ref) is first  # its tasks find it by the run's token
        raise RuntimeError("the flow stopped mid-run")
    assert first.http.is_closed  # released in `finally`

    with run_resources(prepared.plan, settings, policy) as second:
        assert second.ref.token != first.ref.token
        assert second.guards.breaker.state == "closed" and second.guards.budget.retries == 0
        assert second.ref.store_id == first.ref.store_id  # the same database


def test_a_worker_process_builds_the_run_resources_once(prepared: Prepared,
                                                        settings: QbqSettings) -> None:
    with run_resources(prepared.plan, settings, GradingPolicy()) as flow_side:
        ref = flow_side.ref
    # another process (a Dask worker) has no such run open: it builds its own, once
    built = resources_for(ref)
    assert built is not flow_side and resources_for(ref) is built
    assert built.guards.budget.max_retries == ref.max_retries
    built.close()


def test_the_budget_is_sized_from_the_plan(prepared: Prepared, settings: QbqSettings) -> None:
    plan = prepared.plan
    with run_resources(plan, settings, GradingPolicy(retry_budget_token_ratio=0.5)) as run:
        planned = plan.prompt_tokens + sum(b.max_completion_tokens for b in plan.batches)
        assert run.ref.max_retries == 2 * len(plan.batches) + 10
        assert run.ref.max_retry_tokens == int(0.5 * planned)


def test_the_provider_inside_is_guarded(prepared: Prepared, settings: QbqSettings) -> None:
    with run_resources(prepared.plan, settings, GradingPolicy(breaker_threshold=1)) as run:
        assert isinstance(run, RunResources)
        # nothing listens on port 9: the connection error reaches the breaker
        from qbq.provider import ChatRequest

        with pytest.raises(ProviderConnectionError):
            run.provider.complete(ChatRequest(model="gpt-4.1-mini", messages=[],
                                              response_format={}, max_completion_tokens=1))
        assert run.guards.breaker.failures == 1
