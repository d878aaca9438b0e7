"""Page files on disk: only regular files, within the byte cap, inside QBQ_PAGE_ROOTS when set —
and errors that name paths as the request does without telling whether a file exists."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from qbq.errors import ImageError, RequestValidationError
from qbq.loading import load_request_file
from qbq.settings import QbqSettings
from tests.pages import png


def request(folder: Path, *paths: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    body: dict[str, Any] = {
        "assessment_id": "x", "model": "gpt-4.1-mini",
        "questions": [{"question_number": "1", "max_mark": 1}],
        "students": [{"ref": f"S{i}", "pages": [{"path": p}]} for i, p in enumerate(paths)]}
    path = folder / "request.json"
    path.write_text(json.dumps(body))
    return path


def error(path: Path, settings: QbqSettings) -> str:
    with pytest.raises(ImageError) as info:
        load_request_file(path, settings=settings, fetch=None)
    return info.value.message


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """roots/exam (the request and its pages), and a folder outside the roots with a page."""
    roots = tmp_path / "roots"
    outside = tmp_path / "outside"
    (roots / "exam" / "pages").mkdir(parents=True)
    outside.mkdir()
    (roots / "exam" / "pages" / "p.png").write_bytes(png())
    (outside / "secret.png").write_bytes(png())
    return roots, outside


def test_paths_outside_the_roots_are_refused_whether_or_not_they_exist(
        layout: tuple[Path, Path]) -> None:
    roots, outside = layout
    settings = QbqSettings(page_roots=[str(roots)])
    (roots / "exam" / "pages" / "link.png").symlink_to(outside / "secret.png")
    path = request(roots / "exam", "pages/p.png", "../../outside/secret.png",
                   "../../outside/missing.png", str(outside / "secret.png"), "pages/link.png",
                   "/etc/passwd")
    message = error(path, settings)
    lines = message.splitlines()[1:]
    assert len(lines) == 5  # the page inside the roots is fine
    for line in lines:
        assert line.endswith("outside the folders pages may be read from (QBQ_PAGE_ROOTS)")
    # an existing and a missing file read the same
    assert "students[1].pages[0].path (../../outside/secret.png): outside" in message
    assert "students[2].pages[0].path (../../outside/missing.png): outside" in message
    assert "not found" not in message


def test_the_request_file_itself_must_be_inside_the_roots(layout: tuple[Path, Path]) -> None:
    roots, outside = layout
    path = request(outside / "exam", "../secret.png")
    with pytest.raises(RequestValidationError, match=r"request file .*outside the folders"):
        load_request_file(path, settings=QbqSettings(page_roots=[str(roots)]), fetch=None)


def test_roots_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QBQ_PAGE_ROOTS", f"{tmp_path}/a{os.pathsep}{tmp_path}/b")
    assert QbqSettings().page_roots == [f"{tmp_path}/a", f"{tmp_path}/b"]
    monkeypatch.setenv("QBQ_PAGE_ROOTS", json.dumps([f"{tmp_path}/with:colon"]))
    assert QbqSettings().page_roots == [f"{tmp_path}/with:colon"]


def test_devices_and_fifos_are_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.png")
    message = error(request(tmp_path, "/dev/zero", "fifo.png"), QbqSettings())
    assert "students[0].pages[0].path (/dev/zero): not a regular file (a device, FIFO or socket)" \
        in message
    assert "students[1].pages[0].path (fifo.png): not a regular file" in message


def test_files_over_the_byte_cap_are_refused_before_reading(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(png() + b"\0" * 2000)
    message = error(request(tmp_path, "big.png"), QbqSettings(max_page_bytes=1000))
    assert "students[0].pages[0].path (big.png): " in message
    assert "over the cap of 1,000 (QBQ_MAX_PAGE_BYTES)" in message


def test_nul_in_a_path_is_a_named_error(tmp_path: Path) -> None:
    # refused when the request is read, before any file is opened
    with pytest.raises(RequestValidationError) as info:
        load_request_file(request(tmp_path, "pages/a\u0000.png"), settings=QbqSettings(),
                          fetch=None)
    assert ("students[0].pages[0].path: must not contain control or format characters "
            "(found U+0000)") in info.value.message


def test_deployments_confine_page_paths() -> None:
    import yaml

    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())
    for deployment in spec["deployments"]:
        env = deployment["work_pool"]["job_variables"]["env"]
        assert env["QBQ_PAGE_ROOTS"] == "{{ checkout.stdout }}/intake"
