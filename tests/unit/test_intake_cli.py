"""`qbq plan` on real scans: the class-scan split shown, hostile images refused with exit 2 and
every bad page named (no traceback)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from qbq.cli import app
from tests.pages import malformed_dds, malformed_spider, page, pdf, png_bomb_header


def write(folder: Path, **body: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    request = {"assessment_id": "x", "model": "gpt-4.1-mini",
               "questions": [{"question_number": "1", "max_mark": 2}], **body}
    path = folder / "request.json"
    path.write_text(json.dumps(request))
    return path


def test_plan_shows_the_class_scan_split(tmp_path: Path) -> None:
    (tmp_path / "class.pdf").write_bytes(pdf([page((620, 877)) for _ in range(6)]))
    path = write(tmp_path, class_scan={"path": "class.pdf", "pages_per_student": 2})
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 0, result.output
    assert "class scan class.pdf" in result.stdout
    assert "6 pages → 3 students × 2 pages" in result.stdout
    assert "S002: p3–p4" in result.stdout
    as_json = json.loads(CliRunner().invoke(app, ["plan", str(path), "--json"]).stdout)
    assert as_json["students"] == 3
    assert as_json["class_scan"]["students"][2] == {"ref": "S003", "pages": [5, 6]}


def test_hostile_images_exit_2_with_every_page_named(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(png_bomb_header())
    (tmp_path / "tex.dds").write_bytes(malformed_dds())
    (tmp_path / "scan.spi").write_bytes(malformed_spider())
    path = write(tmp_path, students=[{"ref": f"S{i}", "pages": [{"path": name}]}
                                     for i, name in enumerate(("bomb.png", "tex.dds", "scan.spi"))])
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 2
    err = " ".join(result.stderr.split())  # rich wraps long lines
    assert "students[0].pages[0].path (bomb.png): PNG image declares more than 50,000,000 pixels" in err
    assert "students[1].pages[0].path (tex.dds): a DDS texture" in err
    assert "students[2].pages[0].path (scan.spi): not a recognised image or PDF" in err
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # typer.Exit(2), not an image error
