"""Hostile request fields through the CLI (issue 15): `qbq plan` and `qbq grade` exit 2 with the
field named and no traceback, before any model call; user text prints as itself, never as rich
markup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from qbq.cli import _marks_table, app
from qbq.payload import NativePayload
from tests.pages import png


def write(folder: Path, students: Any = None, raw: str | None = None) -> Path:
    (folder / "p.png").write_bytes(png(400, 560))
    request = {"assessment_id": "x", "model": "gpt-4.1-mini",
               "questions": [{"question_number": "1", "max_mark": 2}],
               "students": students or [{"ref": "S1", "pages": [{"path": "p.png"}]}]}
    path = folder / "request.json"
    path.write_text(raw if raw is not None else json.dumps(request))
    return path


CASES = {
    "3000-deep": (None, '{"students": ' + "[" * 3000 + "]" * 3000 + "}",
                  "request: JSON nested deeper than 32 levels"),
    "50000-char ref": ([{"ref": "R" * 50_000, "pages": [{"path": "p.png"}]}], None,
                       "students[0].ref: String should have at most 64 characters"),
    "ref with newline": ([{"ref": "S1\nforged", "pages": [{"path": "p.png"}]}], None,
                         "students[0].ref: must not contain control or format characters "
                         "(found U+000A)"),
    "ref with [/b]": ([{"ref": "[/b]", "pages": [{"path": "p.png"}]},
                       {"ref": "[/b]", "pages": [{"path": "p.png"}]}], None,
                      "students: duplicate ref '[/b]' at positions [0, 1]"),
    "path with [/b]": ([{"ref": "[/b]", "pages": [{"path": "[/b].png"}]}], None,
                       "students[0].pages[0].path ([/b].png)"),
}


@pytest.mark.parametrize("command", ["plan", "grade"])
@pytest.mark.parametrize("case", CASES)
def test_hostile_fields_exit_2_naming_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                command: str, case: str) -> None:
    students, raw, expected = CASES[case]
    monkeypatch.chdir(tmp_path)
    # No API key and an unreachable provider: grading cannot reach a model even by mistake.
    monkeypatch.setenv("QBQ_OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    result = CliRunner().invoke(app, [command, str(write(tmp_path, students, raw))])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert expected in " ".join(result.stderr.split())
    assert "Traceback" not in result.output


def test_marks_table_prints_markup_in_refs_and_reasons_as_text() -> None:
    summary = {"model": "m", "students": 1, "graded": 0, "failed": 1, "needs_review": 0,
               "coverage": 0, "min_coverage": 0, "batches": 1, "batches_failed": 1,
               "model_calls": 1, "prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0,
               "estimated_cost_usd": 0, "simulated": False}
    payload = NativePayload.model_validate({
        "assessment_id": "[bold]exam", "process_id": "qbq-1", "status": "failed",
        "students": [{"ref": "[/b]", "image_ids": [], "status": "failed", "needs_review": False,
                      "answers": []}],
        "failures": [{"ref": "[/b]", "error_type": "E", "reason": "[red]x[/red]"}],
        "summary": summary})
    console = Console(record=True, width=200)
    console.print(_marks_table(payload))
    text = console.export_text()
    assert "[/b]" in text and "[bold]exam" in text and "[red]x[/red]" in text
