"""The simulator's reasoning mode end to end below the flow: gpt-5-mini at effort medium grades
a 60-student request with every batch answered on its first attempt (no `length` finish, no
split), the store keeps the reasoning tokens, and `qbq report` shows them."""

from __future__ import annotations

from pathlib import Path

import httpx
from typer.testing import CliRunner

from qbq import pipeline
from qbq.cli import app
from qbq.grading import grade_batch
from qbq.preparation import prepare
from qbq.provider import OpenAIChatProvider, make_openai_client
from qbq.resources import open_store
from qbq.sample import write_sample
from qbq.settings import GradingPolicy, QbqSettings
from qbq.simulator import BackgroundServer, SimConfig, create_app
from qbq.testing.fakes import FakeClock, fake_run


def test_sixty_students_on_gpt5_mini_at_medium_effort_grade_without_a_length_finish(
        tmp_path: Path) -> None:
    # small pages: what is tested is the completion budget, not the images
    request_path = write_sample(tmp_path / "exam", students=60, pages=1, questions=2, seed=3,
                                model="gpt-5-mini", page_size=(400, 566), with_names=False)
    settings = QbqSettings(database_url=f"sqlite:///{tmp_path / 'qbq.db'}")
    policy = GradingPolicy(reasoning_effort="medium")
    prepared = prepare(request_path, settings=settings, policy=policy)
    plan = prepared.plan
    assert plan.reasoning_effort == "medium" and plan.n_students == 60
    store = open_store(settings)
    pipeline.register(store, prepared, settings)

    with BackgroundServer(create_app(SimConfig())) as sim:
        client = make_openai_client(api_key="sk-reason", base_url=sim.url + "/v1",
                                    loopback_only=True)
        deps = fake_run(store, OpenAIChatProvider(client), FakeClock(), policy=policy).deps
        outcomes = [grade_batch(b, prepared.request, deps, plan) for b in plan.batches]
        stats = httpx.get(sim.url + "/_sim/stats", timeout=10).json()
        client.close()

    assert [o.status for o in outcomes] == ["succeeded"] * len(plan.batches)
    assert sum(o.n_graded for o in outcomes) == 60
    # one request per batch: nothing was cut off (a `length` finish would split or re-ask)
    assert [o.attempts for o in outcomes] == [1] * len(plan.batches)
    assert stats["by_status"] == {"200": len(plan.batches)}
    reasoning = sum(o.usage.reasoning_tokens for o in outcomes)
    assert reasoning > 0 and stats["reasoning_tokens"] == reasoning

    result = CliRunner().invoke(app, ["report", plan.process_id, "--json"],
                                env={"QBQ_DATABASE_URL": settings.database_url})
    assert result.exit_code == 0, result.output
    assert f'"reasoning_tokens": {reasoning}' in result.output
    store.dispose()
