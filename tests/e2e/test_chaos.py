"""Short chaos run: SIGKILL `qbq grade` mid-flight, duplicate runs, the receiver down for a while.

The full version is `python benchmarks/chaos.py --kills 50`.
"""

from __future__ import annotations

from pathlib import Path

from qbq.testing.chaos import format_report, run_chaos


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


def test_two_runs_of_one_request_started_together_call_the_model_once_per_batch(
        tmp_path: Path) -> None:
    """Two `qbq grade` processes (as two workers would run them) on the same request at the
    same moment: each batch is graded by whichever run leases it; the other waits for it."""
    import os
    import subprocess
    import sys

    import httpx

    from qbq.receiver import create_app as create_receiver
    from qbq.sample import truth_of, write_sample
    from qbq.simulator import BackgroundServer, SimConfig, create_app
    from qbq.testing.harness import prefect_server

    request = write_sample(tmp_path / "s", students=8, pages=1, questions=2, seed=21)
    with prefect_server(tmp_path / "prefect", None) as api_url, \
            BackgroundServer(create_app(SimConfig(latency_ms=2500))) as sim, \
            BackgroundServer(create_receiver(tmp_path / "r.db")) as receiver:
        env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_LOGGING_LEVEL": "WARNING",
               "OPENAI_BASE_URL": f"{sim.url}/v1", "OPENAI_API_KEY": "sk-test-simulated",
               "QBQ_DATABASE_URL": f"sqlite:///{tmp_path / 'q.db'}",
               "QBQ_RESULTS_API_URL": f"{receiver.url}/results",
               "QBQ_MAX_STUDENTS_PER_BATCH": "2", "QBQ_MAX_IN_FLIGHT": "2",
               "QBQ_RPM": "6000", "QBQ_TPM": "100000000",
               "QBQ_LIMITER_DIR": str(tmp_path / "limiter"), "QBQ_LEASE_POLL_S": "0.1"}
        runs = [subprocess.Popen([sys.executable, "-m", "qbq", "grade", str(request)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                for _ in range(2)]
        codes = [run.wait(300) for run in runs]
        stats = httpx.get(f"{sim.url}/_sim/stats", timeout=10).json()
        got = httpx.get(f"{receiver.url}/results", timeout=10).json()

    assert codes == [0, 0]
    assert stats["requests"] == 4  # 8 students in batches of 2: one call per batch in all
    assert len(got["payloads"]) == 1
    payload = got["payloads"][0]["payload"]
    marks = {s["ref"]: {a["question_number"]: a["mark"] for a in s["answers"]}
             for s in payload["students"]}
    assert marks == truth_of(request)
