"""The `qbq` command as a user runs it: bad input refused with exit 2 before any model call."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from qbq.sample import write_sample
from qbq.simulator import BackgroundServer, SimConfig, create_app

QBQ = [sys.executable, "-m", "qbq"]


@pytest.fixture(scope="module")
def simulator() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(SimConfig())) as server:
        yield server


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample(tmp_path_factory.mktemp("sample"), students=3, pages=1, questions=2)


def run(args: list[str], env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*QBQ, *args], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=300, check=False)


def _request(sample: Path, mutate: Any) -> dict[str, Any]:
    body = json.loads(sample.read_text())
    mutate(body)
    return dict(body)


BAD_INPUTS: dict[str, tuple[Any, str]] = {
    "no students": (lambda b: b.update(students=[]), "students: no students"),
    "student without pages": (lambda b: b["students"][0].update(pages=[]),
                              "students[0].pages: student 'S001' has no pages"),
    "duplicate refs": (lambda b: b["students"][1].update(ref="S001"),
                       "students: duplicate ref 'S001'"),
    "duplicate question numbers": (lambda b: b["questions"][1].update(question_number="1"),
                                   "questions: duplicate question_number '1'"),
    "max_mark zero": (lambda b: b["questions"][0].update(max_mark=0),
                      "questions[0].max_mark: must be > 0"),
    "max_mark negative": (lambda b: b["questions"][0].update(max_mark=-2),
                          "questions[0].max_mark: must be > 0"),
    "missing image file": (lambda b: b["students"][2]["pages"][0].update(path="pages/nope.png"),
                           "students[2].pages[0].path (pages/nope.png): file not found"),
    "unreadable image": (lambda b: b["students"][0]["pages"][0].update(path="request.json"),
                         "students[0].pages[0].path"),
    "unknown model": (lambda b: b.update(model="gpt-imaginary"), "gpt-imaginary"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_exits_2_without_model_call(case: str, sample: Path, tmp_path: Path,
                                              simulator: BackgroundServer) -> None:
    mutate, expected = BAD_INPUTS[case]
    bad = sample.parent / f"bad-{case.replace(' ', '-')}.json"
    bad.write_text(json.dumps(_request(sample, mutate)))
    httpx.post(f"{simulator.url}/_sim/reset", timeout=10)

    result = run(["grade", str(bad)], env={"OPENAI_BASE_URL": f"{simulator.url}/v1",
                                           "QBQ_DATABASE_URL": f"sqlite:///{tmp_path / 'q.db'}"})

    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in " ".join(result.stderr.split()), result.stderr
    assert httpx.get(f"{simulator.url}/_sim/stats", timeout=10).json()["requests"] == 0


def test_malformed_json_and_page_major_legacy_exit_2(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"assessment_id": "x", ')
    result = run(["plan", str(broken)])
    assert result.returncode == 2 and "malformed JSON" in result.stderr

    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({
        "external_assessment_id": 1, "external_assessment_settings_id": 2,
        "external_assessment_file_id": 3, "pages_per_student": 2, "prompt": None,
        "images": [{"id": i, "page_number": n, "aws_path": f"https://x.test/{i}.png"}
                   for i, n in zip(range(1, 5), (1, 1, 2, 2), strict=True)],
        "model_assessment": None,
        "question_list": [{"question_number": "1", "max_mark": 2}],
    }))
    result = run(["plan", str(legacy)])
    assert result.returncode == 2
    assert "images[0:2] (student 1): page_number 1 appears 2 times" in result.stderr


def test_unknown_model_accepted_when_limits_are_given(sample: Path, tmp_path: Path) -> None:
    body = _request(sample, lambda b: b.update(model="my-finetune"))
    path = sample.parent / "custom-model.json"
    path.write_text(json.dumps(body))
    result = run(["plan", str(path), "--json"], env={"QBQ_MODEL_CONTEXT_WINDOW": "128000",
                                                      "QBQ_MODEL_MAX_OUTPUT_TOKENS": "16384"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"] == "my-finetune"


def test_missing_api_key_exits_2(sample: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    result = subprocess.run([*QBQ, "grade", str(sample)], capture_output=True, text=True,
                            env={**env, "QBQ_DATABASE_URL": f"sqlite:///{tmp_path / 'q.db'}"},
                            timeout=120, check=False)
    assert result.returncode == 2
    assert "OPENAI_API_KEY" in result.stderr


def test_plan_json(sample: Path) -> None:
    result = run(["plan", str(sample), "--json"], env={"QBQ_MAX_STUDENTS_PER_BATCH": "2"})
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [b["students"] for b in plan["batches"]] == [2, 1]
    assert plan["students"] == 3 and plan["estimated_cost_usd"] > 0
    assert all(b["prompt_tokens"] + b["max_completion_tokens"] <= plan["token_budget_per_request"]
               for b in plan["batches"])


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = run(["demo", "--out", str(tmp_path / "demo")], cwd=tmp_path,
                 env={"QBQ_LOG_FORMAT": "json"})
    out = result.stdout
    # JSON logs on stderr: one object per line, each batch with the fields operators need
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    batches = [e for e in events if e.get("event") == "batch_finished"]
    assert len(batches) == 3, result.stderr[-2000:]
    for event in batches:
        assert {"process_id", "batch_id", "idempotency_key", "model", "tokens_in", "tokens_out",
                "cached_tokens", "latency_ms", "attempt", "retry_count", "stage"} <= set(event)
    assert result.returncode == 0, out + result.stderr
    assert "SIMULATED" in out
    rows = [line for line in out.splitlines() if line.startswith("│ S0")]
    assert len(rows) == 12
    assert "✗" not in out
    assert "the receiver holds exactly one payload" in out


def test_half_set_rate_limits_fail_loudly(sample: Path, tmp_path: Path,
                                          simulator: BackgroundServer) -> None:
    """Both limits, or neither (then the provider's stated limits are used): one alone is a
    configuration error before any model call."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QBQ_RPM", "QBQ_TPM"))}
    env.update({"OPENAI_BASE_URL": f"{simulator.url}/v1", "QBQ_RPM": "500",
                "QBQ_DATABASE_URL": f"sqlite:///{tmp_path / 'q.db'}"})
    httpx.post(f"{simulator.url}/_sim/reset", timeout=10)
    result = subprocess.run([*QBQ, "grade", str(sample)], capture_output=True, text=True,
                            env=env, timeout=120, check=False)
    assert result.returncode == 2
    assert "set both QBQ_RPM and QBQ_TPM" in " ".join(result.stderr.split())
    assert httpx.get(f"{simulator.url}/_sim/stats", timeout=10).json()["requests"] == 0


def test_an_unreachable_store_ends_grade_in_one_line_naming_it(sample: Path,
                                                              simulator: BackgroundServer) -> None:
    """QBQ_DATABASE_URL names a PostgreSQL nobody listens on: after QBQ_DB_OUTAGE_S `qbq grade`
    prints one error naming the store (password hidden) and the driver's reason, no traceback,
    exit 1, and no model call is made."""
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    httpx.post(f"{simulator.url}/_sim/reset", timeout=10)
    result = run(["grade", str(sample)], env={
        "OPENAI_BASE_URL": f"{simulator.url}/v1", "OPENAI_API_KEY": "sk-test",
        "QBQ_RPM": "500", "QBQ_TPM": "2000000", "QBQ_DB_OUTAGE_S": "1",
        "QBQ_DATABASE_URL": f"postgresql+psycopg://qbq:s3cret-pw@127.0.0.1:{port}/qbq",
        "COLUMNS": "300"})
    assert result.returncode == 1, result.stderr
    err = " ".join(result.stderr.split())
    assert re.search(rf"StoreUnavailableError: the store postgresql\+psycopg://qbq:\*\*\*@127\.0\.0\.1:"
                     rf"{port}/qbq was unreachable for \d+ s \(QBQ_DB_OUTAGE_S=1\): "
                     r"OperationalError: ", err), err
    assert "Connection refused" in err
    assert "Traceback" not in result.stderr
    assert "s3cret-pw" not in result.stdout + result.stderr
    assert httpx.get(f"{simulator.url}/_sim/stats", timeout=10).json()["requests"] == 0
