"""The page cache: a page is normalised once per content and model family, read back by
`page_url` from any process of the host, checked against its hash; plans use the normalised
sizes, so the requests they promise are the requests sent."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import qbq.intake.reader as reader_module
from qbq.domain import GradingRequest
from qbq.errors import ImageError
from qbq.grading import page_url
from qbq.intake.cache import PageCache
from qbq.loading import load_request_file
from qbq.planning import plan_batches
from qbq.prompts import StudentPages, build_messages, response_format
from qbq.settings import GradingPolicy, QbqSettings
from tests.pages import colour_scan, encode, page


def write(folder: Path, model: str = "gpt-5-mini", n: int = 3, scans: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    students = []
    for i in range(n):
        img = colour_scan((1240, 1754), seed=i) if scans else page((1240, 1754), marker=i % 2 == 0)
        (folder / f"p{i}.png").write_bytes(encode(img, "PNG", compress_level=1))
        students.append({"ref": f"S{i}", "pages": [{"path": f"p{i}.png", "id": f"p{i}"}]})
    body: dict[str, Any] = {"assessment_id": "x", "model": model, "students": students,
                            "questions": [{"question_number": "1", "max_mark": 1}]}
    (folder / "request.json").write_text(json.dumps(body))
    return folder / "request.json"


def load(path: Path, cache_dir: Path) -> GradingRequest:
    return load_request_file(path, settings=QbqSettings(page_cache_dir=str(cache_dir)), fetch=None)


def test_a_resumed_run_does_not_normalise_again(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "exam")
    first = load(path, tmp_path / "cache")

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("normalised twice")

    monkeypatch.setattr(reader_module, "normalise_file", never)
    again = load(path, tmp_path / "cache")
    assert again.students == first.students
    assert again.process_id() == first.process_id()


def test_each_model_family_gets_its_own_image(tmp_path: Path) -> None:
    path = write(tmp_path / "patch", "gpt-5-mini", n=1)  # 1,536 patches: a downscaled page
    tile = write(tmp_path / "tile", "gpt-4o", n=1)
    [p] = load(path, tmp_path / "cache").students[0].pages
    [t] = load(tile, tmp_path / "cache").students[0].pages
    assert (p.width, p.height) == (1024, 1448) and (t.width, t.height) == (768, 1086)
    assert p.image_id == t.image_id == "p0"  # ids, and so keys, are of the original content


def test_page_url_works_in_another_process_of_the_host(tmp_path: Path) -> None:
    req = load(write(tmp_path / "exam", n=1), tmp_path / "cache")
    [page_] = req.students[0].pages
    blob = tmp_path / "page.pickle"
    blob.write_bytes(pickle.dumps(page_))
    script = ("import pickle, sys; from qbq.grading import page_url; "
              f"sys.stdout.write(page_url(pickle.loads(open({str(blob)!r}, 'rb').read())))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=120, env={**os.environ, "QBQ_PAGE_CACHE_DIR": "/nonexistent"})
    assert out.stdout == page_url(page_) and out.stdout.startswith("data:image/")


def test_a_damaged_or_missing_cached_image_is_never_sent(tmp_path: Path) -> None:
    req = load(write(tmp_path / "exam", n=2), tmp_path / "cache")
    damaged, missing = (s.pages[0] for s in req.students)
    Path(damaged.location).write_bytes(b"\xff\xd8\xff swapped")
    Path(missing.location).unlink()
    with pytest.raises(ImageError, match="page p0: its normalised image in the page cache is "
                                         "damaged; run the request again"):
        page_url(damaged)
    with pytest.raises(ImageError, match="page p1: its normalised image is missing"):
        page_url(missing)
    again = load(tmp_path / "exam" / "request.json", tmp_path / "cache")  # rebuilt
    assert page_url(again.students[1].pages[0]).startswith("data:image/")


def test_cache_files_are_private_and_old_ones_are_pruned(tmp_path: Path) -> None:
    req = load(write(tmp_path / "exam", n=1), tmp_path / "cache")
    blob = Path(req.students[0].pages[0].location)
    assert blob.stat().st_mode & 0o077 == 0 and blob.parent.stat().st_mode & 0o077 == 0
    cache = PageCache(tmp_path / "cache", max_age_days=0.1)
    now = time.time()
    assert cache.prune(now=now + 0.5 * 86400) == 0  # intake pruned less than a day ago: skipped
    assert blob.exists()
    assert cache.prune(now=now + 2 * 86400) == 2  # the image and its index entry
    assert not blob.exists()


def test_the_plan_counts_the_bytes_actually_sent(tmp_path: Path) -> None:
    """Every batch's real request body (data URIs of the normalised pages) fits what the plan
    counted, and the plan packs by those sizes, not by the original files'."""
    path = write(tmp_path / "exam", n=4, scans=True)
    req = load(path, tmp_path / "cache")
    originals = sum(p.original_bytes for s in req.students for p in s.pages)
    sent = sum(p.n_bytes for s in req.students for p in s.pages)
    assert sent < originals
    policy = GradingPolicy(max_request_bytes=2 * sent // 4 + 6000)
    plan = plan_batches(req, policy)
    assert len(plan.batches) == 2
    for batch in plan.batches:
        messages = build_messages(
            instructions=req.instructions, questions=[], model_answer_urls=[],
            students=[StudentPages(s.ref, [page_url(p) for p in s.pages]) for s in batch.students])
        body = json.dumps({"model": req.model, "messages": messages,
                           "response_format": response_format(["1"])})
        assert len(body) <= batch.n_bytes <= policy.max_request_bytes


def test_an_unwritable_cache_is_a_configuration_error(tmp_path: Path) -> None:
    from qbq.errors import ConfigurationError

    (tmp_path / "not-a-folder").write_text("")
    with pytest.raises(ConfigurationError, match="cannot write normalised pages to the page cache"):
        load(write(tmp_path / "exam", n=1), tmp_path / "not-a-folder")
