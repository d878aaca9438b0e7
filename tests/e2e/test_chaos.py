"""Short chaos run: SIGKILL `qbq grade` mid-flight, duplicate runs, the receiver down for a while.

The full version is `python benchmarks/chaos.py --kills 50`.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.chaos import format_report, run_chaos


def test_kills_duplicates_and_outages_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    report = run_chaos(kills=3, seed=7, students=6,
                       scenarios=["kill", "duplicate", "receiver_down", "kill"],
                       work=tmp_path / "chaos")
    print(format_report(report))
    kills = sum(t.kills for t in report.by_scenario.values())
    assert kills >= 3
    assert report.by_scenario["duplicate"].runs >= 3
    assert report.by_scenario["receiver_down"].runs >= 2
    assert report.calls_for_completed_batches == 0
    assert report.rows_written_twice == 0
    assert report.payloads_more_than_once == 0
    assert report.students_lost == 0 and report.students >= 24
    assert all(t.failed_final_runs == 0 for t in report.by_scenario.values())
