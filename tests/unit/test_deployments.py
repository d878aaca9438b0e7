"""prefect.yaml and deployments/serve.py describe the same three deployments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

from deployments.serve import (
    DELIVERY_INTERVAL_S,
    EXAM_SESSION_CRON,
    EXAM_SESSION_TIMEZONE,
    build_deployments,
)

REPO = Path(__file__).resolve().parents[2]


def _yaml() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return data


def test_prefect_yaml_declares_the_three_deployments_on_the_process_pool() -> None:
    spec = _yaml()
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert set(by_name) == {"grade-assessment", "exam-session", "deliver-results"}
    assert {d["work_pool"]["name"] for d in by_name.values()} == {"qbq-process"}
    for d in by_name.values():
        path, func = d["entrypoint"].split(":")
        assert (REPO / path).is_file() and f"def {func}(" in (REPO / path).read_text()
    exam = by_name["exam-session"]
    assert exam["schedules"] == [{"cron": EXAM_SESSION_CRON, "timezone": EXAM_SESSION_TIMEZONE,
                                  "active": True}]
    assert exam["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    assert by_name["deliver-results"]["schedules"][0]["interval"] == DELIVERY_INTERVAL_S
    pull = spec["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert pull["directory"] == "{{ checkout.stdout }}"


def test_serve_builds_the_same_deployments() -> None:
    spec = {d["name"]: d for d in _yaml()["deployments"]}
    served = {d.name: d for d in build_deployments()}
    assert set(served) == set(spec)
    for name, deployment in served.items():
        assert deployment.entrypoint == spec[name]["entrypoint"]
    exam = served["exam-session"]
    assert exam.concurrency_limit == 1
    assert exam.concurrency_options is not None
    assert exam.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    cron = exam.schedules[0].schedule
    assert isinstance(cron, CronSchedule)
    assert (cron.cron, cron.timezone) == (EXAM_SESSION_CRON, EXAM_SESSION_TIMEZONE)
    interval = served["deliver-results"].schedules[0].schedule
    assert isinstance(interval, IntervalSchedule)
    assert interval.interval.total_seconds() == DELIVERY_INTERVAL_S
