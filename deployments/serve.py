"""Serve the three qbq flows from one long-running process (`python -m deployments.serve`).

The single-machine alternative to prefect.yaml + a work pool + workers: the same deployments,
schedules and concurrency limits, run by this process against PREFECT_API_URL. Runs execute
in this process's environment (QBQ_* / OPENAI_* variables, or blocks named in parameters).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron, Interval

from flows.deliver_results import deliver_results
from flows.exam_session import exam_session
from flows.grade_assessment import grade_assessment

__all__ = ["build_deployments", "main"]

EXAM_SESSION_CRON = "0 7 * * 1-5"
EXAM_SESSION_TIMEZONE = "Europe/London"
DELIVERY_INTERVAL_S = 300


def _one_at_a_time() -> ConcurrencyLimitConfig:
    """A run that would overlap a running one of the same deployment is cancelled."""
    return ConcurrencyLimitConfig(limit=1,
                                  collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)


def _built(deployment: RunnerDeployment | Coroutine[Any, Any, RunnerDeployment]
           ) -> RunnerDeployment:
    # to_deployment dispatches to its async twin inside an event loop; serve() runs outside
    if not isinstance(deployment, RunnerDeployment):
        raise TypeError("build_deployments() must be called outside an event loop")
    return deployment


def build_deployments(intake_dir: str = "intake") -> list[RunnerDeployment]:
    """The deployments prefect.yaml declares, as objects `prefect.serve` can run."""
    return [_built(d) for d in (
        grade_assessment.to_deployment(
            name="grade-assessment", tags=["qbq", "grading"],
            description="Grade one request (request_id from `qbq submit`, or "
                        "request_path on this machine)."),
        exam_session.to_deployment(
            name="exam-session", tags=["qbq", "grading", "scheduled"],
            parameters={"intake_dir": intake_dir},
            schedules=[Cron(EXAM_SESSION_CRON, timezone=EXAM_SESSION_TIMEZONE)],
            concurrency_limit=_one_at_a_time(),
            description="Grade each request waiting in the intake folder exactly once."),
        deliver_results.to_deployment(
            name="deliver-results", tags=["qbq", "delivery", "scheduled"],
            schedules=[Interval(DELIVERY_INTERVAL_S)],
            concurrency_limit=_one_at_a_time(),
            description="POST every payload still due in the outbox."),
    )]


def main() -> None:
    serve(*build_deployments())


if __name__ == "__main__":
    main()
