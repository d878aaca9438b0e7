"""The sample generator: files, hidden truth, determinism, page size and the legacy request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from qbq.images import inspect_image, read_truth
from qbq.sample import MAX_MARK_CHOICES, truth_of, write_legacy_sample, write_sample

MAX_PAGE_BYTES = 60 * 1024


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample(tmp_path_factory.mktemp("sample"), students=3, pages=2, questions=5, seed=7)


def test_request_shape_and_files(sample: Path) -> None:
    assert sample.name == "request.json"
    req = json.loads(sample.read_text(encoding="utf-8"))
    assert req["assessment_id"] == "sample-7-3x2x5"
    assert req["model"] == "gpt-4.1-mini"
    assert isinstance(req["instructions"], str)
    assert [q["question_number"] for q in req["questions"]] == ["1", "2", "3", "4", "5"]
    for q in req["questions"]:
        assert q["max_mark"] in MAX_MARK_CHOICES
        assert isinstance(q["rubric"], str) and q["rubric"].endswith(".")
    assert req["model_answer_pages"] == [{"path": "pages/model-answer-p1.png"}]
    assert (sample.parent / "pages/model-answer-p1.png").is_file()
    assert [s["ref"] for s in req["students"]] == ["S001", "S002", "S003"]
    for s in req["students"]:
        assert [p["id"] for p in s["pages"]] == [f"{s['ref']}-p1", f"{s['ref']}-p2"]
        for p in s["pages"]:
            assert p["path"] == f"pages/{p['id']}.png"
            assert (sample.parent / p["path"]).is_file()
            assert (p["width"], p["height"]) == (1240, 1754)


def test_pages_are_small_grayscale_pngs_of_the_declared_size(sample: Path) -> None:
    files = sorted((sample.parent / "pages").glob("*.png"))
    assert len(files) == 3 * 2 + 1
    for f in files:
        data = f.read_bytes()
        info = inspect_image(data, what=f.name)
        assert (info.width, info.height, info.mime) == (1240, 1754, "image/png")
        assert len(data) <= MAX_PAGE_BYTES, f"{f.name} is {len(data)} bytes"
        with Image.open(f) as img:
            assert img.mode == "L"


def test_truth_only_on_first_pages(sample: Path) -> None:
    req = json.loads(sample.read_text(encoding="utf-8"))
    max_marks = {q["question_number"]: q["max_mark"] for q in req["questions"]}
    assert read_truth((sample.parent / "pages/model-answer-p1.png").read_bytes()) is None
    for s in req["students"]:
        first, second = (sample.parent / p["path"] for p in s["pages"])
        assert read_truth(second.read_bytes()) is None
        truth = read_truth(first.read_bytes())
        assert truth is not None
        assert truth["student"] == s["ref"]
        assert set(truth["name"]) == {"first", "last"}
        assert set(truth["marks"]) == set(max_marks)
        for q, mark in truth["marks"].items():
            assert 0 <= mark <= max_marks[q]
            assert (mark * 2) == int(mark * 2)


def test_truth_of_matches_page_chunks(sample: Path) -> None:
    truth = truth_of(sample)
    assert set(truth) == {"S001", "S002", "S003"}
    page = read_truth((sample.parent / "pages/S002-p1.png").read_bytes())
    assert page is not None
    assert truth["S002"] == {q: float(m) for q, m in page["marks"].items()}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = write_sample(tmp_path / "a", students=2, pages=2, questions=3, seed=11)
    b = write_sample(tmp_path / "b", students=2, pages=2, questions=3, seed=11)
    c = write_sample(tmp_path / "c", students=2, pages=2, questions=3, seed=12)
    assert a.read_bytes() == b.read_bytes()
    names = sorted(p.name for p in (a.parent / "pages").iterdir())
    for name in names:
        assert (a.parent / "pages" / name).read_bytes() == (b.parent / "pages" / name).read_bytes()
    assert truth_of(a) == truth_of(b)
    assert (a.parent / "pages/S001-p1.png").read_bytes() != (
        c.parent / "pages/S001-p1.png"
    ).read_bytes()


def test_without_names_and_custom_size(tmp_path: Path) -> None:
    req_path = write_sample(
        tmp_path,
        students=1,
        pages=1,
        questions=2,
        seed=3,
        assessment_id="quiz-9",
        model="gpt-4.1",
        page_size=(620, 877),
        with_names=False,
    )
    req = json.loads(req_path.read_text(encoding="utf-8"))
    assert (req["assessment_id"], req["model"]) == ("quiz-9", "gpt-4.1")
    page = req["students"][0]["pages"][0]
    assert (page["width"], page["height"]) == (620, 877)
    data = (tmp_path / page["path"]).read_bytes()
    info = inspect_image(data, what="page")
    assert (info.width, info.height) == (620, 877)
    truth = read_truth(data)
    assert truth is not None and "name" not in truth


@pytest.mark.parametrize(("pages", "questions"), [(1, 1), (1, 40), (3, 1)])
def test_extreme_layouts_stay_small(tmp_path: Path, pages: int, questions: int) -> None:
    req = write_sample(tmp_path, students=2, pages=pages, questions=questions, seed=1)
    for f in (req.parent / "pages").glob("*.png"):
        assert f.stat().st_size <= MAX_PAGE_BYTES, f.name


def test_rejects_empty_sample(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_sample(tmp_path, students=0, pages=1, questions=1)


def test_legacy_sample_shape(tmp_path: Path) -> None:
    path = write_legacy_sample(
        tmp_path, base_url="http://127.0.0.1:8765/", students=3, pages=2, questions=4, seed=5
    )
    assert path == tmp_path / "legacy_request.json"
    legacy = json.loads(path.read_text(encoding="utf-8"))
    for key in (
        "external_assessment_id",
        "external_assessment_settings_id",
        "external_assessment_file_id",
        "pages_per_student",
    ):
        assert type(legacy[key]) is int
    assert legacy["pages_per_student"] == 2
    assert isinstance(legacy["prompt"], str)
    images = legacy["images"]
    assert len(images) == 3 * 2
    assert [i["page_number"] for i in images] == list(range(1, 7))
    assert len({i["id"] for i in images}) == 6
    assert all(type(i["id"]) is int for i in images)
    expected = [f"S{s:03d}-p{p}.png" for s in (1, 2, 3) for p in (1, 2)]
    assert [i["aws_path"] for i in images] == [
        f"http://127.0.0.1:8765/pages/{name}" for name in expected
    ]
    for name in expected:
        assert (tmp_path / "pages" / name).is_file()
    assert legacy["model_assessment"] == ["http://127.0.0.1:8765/pages/model-answer-p1.png"]
    native = json.loads((tmp_path / "request.json").read_text(encoding="utf-8"))
    assert legacy["question_list"] == [
        {"question_number": q["question_number"], "max_mark": float(q["max_mark"])}
        for q in native["questions"]
    ]
    assert all(type(q["max_mark"]) is float for q in legacy["question_list"])
