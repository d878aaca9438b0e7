"""Real scans through the whole flow against the simulator over HTTP: a class PDF cut into students
and a class of mixed formats graded with every mark right through the truth QR; an expired URL
that fails only its own student, with no signed query anywhere."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from flows.grade_assessment import grade_assessment
from qbq.sample import truth_of, write_sample
from qbq.simulator import BackgroundServer
from qbq.store import Store, queries
from tests.integration.conftest import received
from tests.pages import encode, exif_rotated, heic, multipage, pdf

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: intake does not touch the store's dialect (the flow tests cover both)."""
    return f"sqlite:///{tmp_path / 'qbq.db'}"


def _marks(payload: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {s["ref"]: {a["question_number"]: a["mark"] for a in s["answers"]}
            for s in payload["students"] if s["status"] == "graded"}


def _sample(folder: Path, students: int) -> tuple[dict[str, Any], list[list[Image.Image]]]:
    """A sample request and its students' page images (the first page of each carries the QR)."""
    path = write_sample(folder, students=students, pages=2, questions=3, seed=21)
    body = json.loads(path.read_text())
    pages = [[Image.open(folder / p["path"]) for p in s["pages"]] for s in body["students"]]
    return body, pages


def _wrapped(data: bytes) -> str:
    """Base64 wrapped at 76 columns, as MIME encoders write it."""
    text = base64.b64encode(data).decode()
    return "\n".join(text[i : i + 76] for i in range(0, len(text), 76))


def test_class_pdf_is_split_and_graded_with_every_mark_right(
        tmp_path: Path, grading_env: str, receiver: BackgroundServer, sim_stats: Any) -> None:
    folder = tmp_path / "exam"
    body, pages = _sample(folder, students=5)
    truth = truth_of(folder / "request.json")
    (folder / "class-scan.pdf").write_bytes(pdf([p for student in pages for p in student]))
    del body["students"]
    body["class_scan"] = {"path": "class-scan.pdf", "pages_per_student": 2}
    (folder / "class.json").write_text(json.dumps(body))

    result = grade_assessment(request_path=str(folder / "class.json"))

    assert result.status == "success" and result.summary.graded == 5
    payload = received(receiver)["payloads"][0]["payload"]
    assert _marks(payload) == truth  # S001.. in scan order, every mark through the QR
    assert [len(s["image_ids"]) for s in payload["students"]] == [2] * 5
    assert payload["students"][1]["image_ids"][0].endswith("#p3")


def test_a_class_in_every_format_is_graded_with_every_mark_right(
        tmp_path: Path, grading_env: str, receiver: BackgroundServer, sim_stats: Any,
        static_files: tuple[Path, str]) -> None:
    folder = tmp_path / "exam"
    body, pages = _sample(folder, students=6)
    truth = truth_of(folder / "request.json")
    root, base_url = static_files
    (root / "s6.jpg").write_bytes(encode(pages[5][0].convert("RGB"), "JPEG", quality=90))
    first = [p[0] for p in pages]
    files: list[dict[str, Any]] = [
        {"path": "s1.heic"},  # HEIC, read by content
        {"path": "s2.tif"},  # a two-page scanner TIFF
        {"path": "s3.jpg"},  # a phone photo stored sideways, EXIF orientation 6
        {"data_uri": "data:image/png;base64,\n" + _wrapped(encode(first[3], "PNG"))},
        {"path": "s5.png"},  # downscaled to a quarter
        {"url": f"{base_url}/s6.jpg?X-Amz-Signature=SIG6", "id": "s6"},  # fetched by qbq
    ]
    (folder / "s1.heic").write_bytes(heic(first[0]))
    (folder / "s2.tif").write_bytes(multipage(pages[1], "TIFF", compression="tiff_lzw"))
    (folder / "s3.jpg").write_bytes(exif_rotated(first[2].convert("RGB"), 6))
    (folder / "s5.png").write_bytes(encode(first[4].resize((930, 1316)), "PNG"))
    for student, page in zip(body["students"], files, strict=True):
        student["pages"] = [page]
    (folder / "mixed.json").write_text(json.dumps(body))

    result = grade_assessment(request_path=str(folder / "mixed.json"))

    assert result.status == "success" and result.summary.graded == 6
    assert _marks(received(receiver)["payloads"][0]["payload"]) == truth
    assert sim_stats()["by_status"].get("400") is None


def test_an_expired_url_fails_only_its_student_and_no_signed_query_is_kept(
        tmp_path: Path, grading_env: str, receiver: BackgroundServer, sim_stats: Any,
        static_files: tuple[Path, str]) -> None:
    root, base_url = static_files
    body, _ = _sample(root, students=4)
    truth = truth_of(root / "request.json")
    for i, student in enumerate(body["students"]):
        for j, page in enumerate(student["pages"]):
            expired = (i, j) == (2, 0)  # the link to S003's first page has expired
            name = "expired.png" if expired else Path(page["path"]).name
            page.clear()
            page.update({"url": f"{base_url}/pages/{name}?X-Amz-Signature=SIG{i}&X-Amz-"
                                f"Credential=CRED", "id": Path(name).stem + f"-{i}"})
    (root / "urls.json").write_text(json.dumps(body))

    result = grade_assessment(request_path=str(root / "urls.json"))

    assert result.summary.graded == 3 and result.summary.failed == 1
    assert sim_stats()["requests"] >= 1
    payload = received(receiver)["payloads"][0]["payload"]
    assert _marks(payload) == {ref: m for ref, m in truth.items() if ref != "S003"}
    assert [s["ref"] for s in payload["students"]] == ["S001", "S002", "S003", "S004"]
    [failure] = payload["failures"]
    assert failure == {"ref": "S003", "error_type": "PageFetchError",
                       "reason": "page expired-2: could not be fetched: HTTP 404 (host 127.0.0.1)"}
    store = Store(grading_env)
    with store.transaction() as session:
        rows = [f"{b.error_detail} {b.result}" for b in
                queries.process_batches(session, result.process_id)]
    store.dispose()
    everything = json.dumps(payload) + result.summary.model_dump_json() + "".join(rows)
    assert "SIG" not in everything and "X-Amz" not in everything and "CRED" not in everything


def test_a_class_whose_every_page_url_fails_ends_failed_with_every_student_listed(
        tmp_path: Path, grading_env: str, receiver: BackgroundServer, sim_stats: Any,
        static_files: tuple[Path, str]) -> None:
    _, base_url = static_files
    body = {"assessment_id": "all-gone", "model": "gpt-4.1-mini",
            "questions": [{"question_number": "1", "max_mark": 2}],
            "students": [{"ref": f"S{i}", "pages": [{"url": f"{base_url}/gone{i}.png?sig=x",
                                                     "id": f"p{i}"}]} for i in range(3)]}
    (tmp_path / "gone.json").write_text(json.dumps(body))

    result = grade_assessment(request_path=str(tmp_path / "gone.json"))

    assert result.status == "failed" and result.summary.failed == 3 and result.summary.batches == 0
    assert sim_stats()["requests"] == 0  # nothing was sent to the model
    payload = received(receiver)["payloads"][0]["payload"]
    assert [(f["ref"], f["error_type"]) for f in payload["failures"]] == [
        ("S0", "PageFetchError"), ("S1", "PageFetchError"), ("S2", "PageFetchError")]
