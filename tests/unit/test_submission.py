"""`qbq submit`: a request validated and kept in qbq's store, referenced by id in a flow run
(issue 15, item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qbq.cli import app
from qbq.errors import RequestValidationError
from qbq.store import Store
from qbq.submission import load_submitted


def test_submit_prints_an_id_the_flow_can_load(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'qbq.db'}"
    monkeypatch.setenv("QBQ_DATABASE_URL", url)
    body = {"assessment_id": "x", "model": "gpt-4.1-mini", "instructions": "Be kind.",
            "questions": [{"question_number": "1", "max_mark": 2}],
            "students": [{"ref": "S1", "pages": [{"path": "p.png"}]}]}
    path = tmp_path / "exam" / "request.json"
    path.parent.mkdir()
    path.write_text(json.dumps(body))
    first = CliRunner().invoke(app, ["submit", str(path)])
    assert first.exit_code == 0, first.output
    request_id = first.stdout.strip()
    assert request_id.startswith("req-") and len(request_id) == 28
    assert CliRunner().invoke(app, ["submit", str(path)]).stdout.strip() == request_id
    store = Store(url)
    try:
        loaded, base_dir = load_submitted(store, request_id)
        assert loaded == body and base_dir == path.parent.resolve()
        with pytest.raises(RequestValidationError, match="request_id: no submitted request"):
            load_submitted(store, "req-unknown")
    finally:
        store.dispose()


def test_submit_refuses_an_invalid_request_with_exit_2(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QBQ_DATABASE_URL", f"sqlite:///{tmp_path / 'qbq.db'}")
    path = tmp_path / "request.json"
    path.write_text('{"students": ' + "[" * 3000 + "]" * 3000 + "}")
    result = CliRunner().invoke(app, ["submit", str(path)])
    assert result.exit_code == 2
    assert "request: JSON nested deeper than 32 levels" in result.stderr
    missing = CliRunner().invoke(app, ["submit", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2
    assert "No such file or directory" in " ".join(missing.stderr.split())
