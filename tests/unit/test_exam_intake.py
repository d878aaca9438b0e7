"""The intake folder of the exam-session flow: what counts as waiting, and claims that race."""

from __future__ import annotations

import os
import time
from pathlib import Path

from flows.exam_session import claim, pending_entries, reclaim_stale


def _intake(tmp_path: Path) -> Path:
    intake = tmp_path / "intake"
    (intake / "folder-request" / "pages").mkdir(parents=True)
    (intake / "folder-request" / "request.json").write_text("{}")
    (intake / "legacy.json").write_text("{}")
    (intake / ".partial.json").write_text("{")  # still being written
    (intake / "notes.txt").write_text("")
    (intake / "empty-folder").mkdir()
    (intake / "done").mkdir()
    return intake


def test_pending_entries_are_json_files_and_request_folders(tmp_path: Path) -> None:
    intake = _intake(tmp_path)
    assert [p.name for p in pending_entries(intake)] == ["folder-request", "legacy.json"]
    assert pending_entries(tmp_path / "missing") == []


def test_a_request_is_claimed_once(tmp_path: Path) -> None:
    intake = _intake(tmp_path)
    entry = intake / "legacy.json"
    first = claim(intake, entry)
    second = claim(intake, entry)  # a second run that listed the same entry
    assert first == intake / "processing" / "legacy.json" and first.is_file()
    assert second is None
    folder = claim(intake, intake / "folder-request")
    assert folder is not None and (folder / "request.json").is_file()
    assert [p.name for p in pending_entries(intake)] == []


def test_a_resubmitted_name_does_not_overwrite(tmp_path: Path) -> None:
    intake = _intake(tmp_path)
    claim(intake, intake / "legacy.json")
    (intake / "legacy.json").write_text('{"again": true}')
    again = claim(intake, intake / "legacy.json")
    assert again == intake / "processing" / "legacy-2.json"
    assert (intake / "processing" / "legacy.json").read_text() == "{}"


def test_only_stale_claims_are_requeued(tmp_path: Path) -> None:
    intake = _intake(tmp_path)
    old = claim(intake, intake / "legacy.json")
    fresh = claim(intake, intake / "folder-request")
    assert old is not None and fresh is not None
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert reclaim_stale(intake, older_than_s=600) == [intake / "legacy.json"]
    assert fresh.exists() and [p.name for p in pending_entries(intake)] == ["legacy.json"]
