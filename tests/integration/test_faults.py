"""Provider faults end to end against the simulator: the short fault matrix, and truncation at
any batch size resolved by splitting. The full matrix is `python benchmarks/faults.py`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qbq.sample import write_sample
from qbq.simulator import BackgroundServer, SimConfig, create_app
from qbq.testing.faults import KINDS, policy, run_matrix, run_one, table


def test_every_fault_kind_ends_graded_or_failed_with_a_reason() -> None:
    baseline, rows = run_matrix(students=24, rates=[0.3], kinds=list(KINDS), seed=3,
                                log=lambda _m: None)
    print(table(baseline, rows))
    assert baseline.graded == 24 and baseline.status == "success"
    for row in rows:
        assert row.lost == 0, row
        assert row.wrong == 0, row
        assert row.crashes == 0, row
        assert row.budget_held, row
        assert row.graded + row.failed_with_reason == 24, row
        assert row.injected > 0, row  # the fault really happened
    by_kind = {r.kind: r for r in rows}
    for transient in ("http500", "http502", "http503", "disconnect", "rate_limit"):
        assert by_kind[transient].graded == 24, by_kind[transient]  # retried to success


@pytest.fixture(scope="module")
def quiet_sim() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(SimConfig())) as sim:
        yield sim


@pytest.mark.parametrize("batch_size", [2, 5, 12])
def test_truncation_at_any_batch_size_is_resolved_by_splitting(
        batch_size: int, tmp_path: Path, quiet_sim: BackgroundServer) -> None:
    """max_completion_tokens far too small for the batch: the simulator cuts every reply off
    (finish_reason "length") until the batch is split small enough and a lone student is given
    more room."""
    request = write_sample(tmp_path / "s", students=12, pages=1, questions=3, seed=4,
                           page_size=(400, 560), assessment_id=f"trunc-{batch_size}")
    pol = policy().model_copy(update={"max_students_per_batch": batch_size,
                                      "output_tokens_per_answer": 4,
                                      "output_tokens_per_student": 0, "output_headroom": 1.0,
                                      "retry_budget_token_ratio": 20.0,
                                      "retry_budget_attempts": 200})
    row = run_one(quiet_sim, request, tmp_path, "none", 0.0, 4, pol)
    assert row.graded == 12 and row.lost == 0 and row.wrong == 0, row
    assert row.status == "success"
    assert row.model_calls > 12 // batch_size  # it really had to split
