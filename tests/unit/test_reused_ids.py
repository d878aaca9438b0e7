"""Reused page ids with new content (issue 15, item 7): refused naming the ids, exit 2, unless
the request says `"regrade": true`, which grades the new pages as a new process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from qbq.cli import app
from qbq.errors import PageIdConflictError
from qbq.pipeline import check_page_ids, register
from qbq.preparation import Prepared, prepare
from qbq.settings import GradingPolicy, QbqSettings
from qbq.store import Store
from qbq.testing.fakes import memory_store
from tests.pages import png


def body(**over: Any) -> dict[str, Any]:
    return {"assessment_id": "exam-1", "model": "gpt-4.1-mini",
            "questions": [{"question_number": "1", "max_mark": 2}],
            "students": [{"ref": "S1", "pages": [{"path": "s1.png", "id": "img-1"}]},
                         {"ref": "S2", "pages": [{"path": "s2.png", "id": "img-2"}]}], **over}


def scans(folder: Path, shade: int) -> None:
    """Two students' pages; another `shade` is other content under the same names."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "s1.png").write_bytes(png(300, 400, shade))
    (folder / "s2.png").write_bytes(png(300, 400, 200))


def prepared(folder: Path, **over: Any) -> Prepared:
    settings = QbqSettings(page_cache_dir=str(folder.parent / "cache"))
    return prepare(body(**over), settings=settings, policy=GradingPolicy(), base_dir=folder)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, Prepared, Path]:
    """A store where the first scans were registered, and a folder with new scans of S1."""
    root = tmp_path_factory.mktemp("reused")
    scans(root / "first", 0)
    scans(root / "second", 90)
    store = memory_store()
    first = prepared(root / "first")
    register(store, first, QbqSettings())
    return store, first, root / "second"


def test_same_content_under_the_same_ids_is_the_same_process(
        runs: tuple[Store, Prepared, Path]) -> None:
    store, first, second = runs
    again = prepared(second.parent / "first")
    check_page_ids(store, again.request)
    assert again.plan.process_id == first.plan.process_id


def test_new_content_under_old_ids_is_refused_naming_the_ids(
        runs: tuple[Store, Prepared, Path]) -> None:
    store, _first, second = runs
    with pytest.raises(PageIdConflictError) as info:
        register(store, prepared(second), QbqSettings())
    assert info.value.ids == ["img-1"]  # img-2 kept its content
    assert "'img-1'" in info.value.message and '"regrade": true' in info.value.message


def test_regrade_is_a_new_process_with_new_batches_and_stays_idempotent(
        runs: tuple[Store, Prepared, Path]) -> None:
    store, first, second = runs
    regrade = prepared(second, regrade=True)
    register(store, regrade, QbqSettings())
    assert regrade.plan.process_id != first.plan.process_id
    old_keys = {b.idempotency_key for b in first.plan.batches}
    assert not old_keys & {b.idempotency_key for b in regrade.plan.batches}
    assert prepared(second, regrade=True).plan.process_id == regrade.plan.process_id
    with pytest.raises(PageIdConflictError):  # the first content stays the ids' own
        check_page_ids(store, prepared(second).request)


def test_qbq_grade_refuses_reused_ids_with_exit_2_before_any_model_call(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QBQ_DATABASE_URL", f"sqlite:///{tmp_path / 'qbq.db'}")
    monkeypatch.setenv("QBQ_OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens
    scans(tmp_path / "first", 0)
    scans(tmp_path / "second", 90)
    settings = QbqSettings()
    store = Store(settings.database_url)
    store.migrate()
    register(store, prepare(body(), settings=settings, policy=GradingPolicy(),
                            base_dir=tmp_path / "first"), settings)
    store.dispose()
    path = tmp_path / "second" / "request.json"
    path.write_text(json.dumps(body()))
    result = CliRunner().invoke(app, ["grade", str(path)])
    assert result.exit_code == 2, result.output
    assert "page ids already used in assessment 'exam-1' with other content: 'img-1'" in " ".join(
        result.stderr.split())
    assert "Traceback" not in result.output
