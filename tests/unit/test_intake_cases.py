"""The field cases as kinds of input (generated here): HEIC photos however named or sent, scanner
TIFFs, whole-class PDFs, EXIF-rotated phone photos, data URIs written in every way people do."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from qbq.domain import GradingRequest, Page
from qbq.errors import ImageError, RequestValidationError
from qbq.loading import load_request, load_request_file
from qbq.request import parse_request
from qbq.settings import QbqSettings
from qbq.simulator.images import read_truth
from tests.pages import encode, exif_rotated, heic, is_upright, multipage, page, pdf

SETTINGS = QbqSettings()


def truth(ref: str, q1: float = 1.0) -> dict[str, Any]:
    return {"marks": {"1": q1, "2": 2.0}, "student": ref}


def request(folder: Path, students: list[dict[str, Any]] | None = None, **over: Any) -> Path:
    body: dict[str, Any] = {"assessment_id": "case", "model": "gpt-4.1-mini",
                            "questions": [{"question_number": "1", "max_mark": 4},
                                          {"question_number": "2", "max_mark": 3}]}
    if students is not None:
        body["students"] = students
    body.update(over)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "request.json"
    path.write_text(json.dumps(body))
    return path


def sent(p: Page) -> Image.Image:
    return Image.open(io.BytesIO(Path(p.location).read_bytes()))


def sent_truth(p: Page) -> dict[str, Any] | None:
    return read_truth(Path(p.location).read_bytes())


def load(path: Path) -> GradingRequest:
    return load_request_file(path, settings=SETTINGS, fetch=None)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- 01: HEIC photos, as .heic, renamed .jpg and as data:image/heic --------------------------------


def test_heic_photo_however_named_or_sent(tmp_path: Path) -> None:
    photo = heic(page((756, 1008), mode="RGB", truth=truth("S002")))
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "S002.heic").write_bytes(photo)
    (tmp_path / "pages" / "S003.jpg").write_bytes(photo)  # renamed by a person, still HEIC
    req = load(request(tmp_path, [
        {"ref": "S001", "pages": [{"data_uri": "data:image/heic;base64," + b64(photo)}]},
        {"ref": "S002", "pages": [{"path": "pages/S002.heic"}]},
        {"ref": "S003", "pages": [{"path": "pages/S003.jpg"}]},
    ]))
    for s in req.students:
        [p] = s.pages
        assert sent(p).format in ("JPEG", "PNG") and is_upright(sent(p))
        assert sent_truth(p) == truth("S002")


# --- 02: scanner TIFFs -------------------------------------------------------------------------


def test_tiff_pages_become_the_students_pages_in_order(tmp_path: Path) -> None:
    (tmp_path / "a.tif").write_bytes(multipage(
        [page(truth=truth("S001")), page(marker=False)], "TIFF", compression="tiff_lzw"))
    (tmp_path / "b.tif").write_bytes(encode(page(truth=truth("S002")).convert("1"), "TIFF",
                                            compression="group4"))
    (tmp_path / "c.png").write_bytes(encode(page(truth=truth("S003")), "PNG"))
    req = load(request(tmp_path, [
        {"ref": "S001", "pages": [{"path": "a.tif", "id": "scan-a"}]},
        {"ref": "S002", "pages": [{"path": "b.tif"}]},
        {"ref": "S003", "pages": [{"path": "c.png"}]},
    ]))
    s1, s2, s3 = req.students
    assert [p.image_id for p in s1.pages] == ["scan-a#p1", "scan-a#p2"]
    assert sent_truth(s1.pages[0]) == truth("S001") and sent_truth(s1.pages[1]) is None
    assert [sent_truth(s.pages[0]) for s in (s2, s3)] == [truth("S002"), truth("S003")]


# --- 03: a whole class in one PDF -----------------------------------------------------------------


def class_pdf(n_students: int, per: int) -> bytes:
    pages = []
    for i in range(n_students):
        pages.append(page(truth=truth(f"S{i + 1:03d}", q1=float(i))))
        pages.extend(page(marker=False) for _ in range(per - 1))
    return pdf(pages)


def test_class_pdf_is_cut_into_students(tmp_path: Path) -> None:
    data = class_pdf(3, 2)
    (tmp_path / "class-scan.pdf").write_bytes(data)
    req = load(request(tmp_path, class_scan={"path": "class-scan.pdf", "pages_per_student": 2}))
    import hashlib

    sha16 = hashlib.sha256(data).hexdigest()[:16]
    assert [s.ref for s in req.students] == ["S001", "S002", "S003"]
    assert [s.image_ids for s in req.students] == [
        [f"{sha16}#p1", f"{sha16}#p2"], [f"{sha16}#p3", f"{sha16}#p4"],
        [f"{sha16}#p5", f"{sha16}#p6"]]
    assert [sent_truth(s.pages[0]) for s in req.students] == [
        truth(f"S{i + 1:03d}", q1=float(i)) for i in range(3)]
    split = req.class_scan
    assert split is not None
    assert (split.name, split.n_pages, split.pages_per_student, split.refs) == (
        "class-scan.pdf", 6, 2, ("S001", "S002", "S003"))


def test_class_pdf_with_a_roster_and_as_one_students_pages(tmp_path: Path) -> None:
    (tmp_path / "class.pdf").write_bytes(class_pdf(3, 2))
    req = load(request(tmp_path, class_scan={"path": "class.pdf", "pages_per_student": 2,
                                             "refs": ["ana", "ben", "cy"]}))
    assert [s.ref for s in req.students] == ["ana", "ben", "cy"]
    one = load(request(tmp_path / "one", [{"ref": "S001", "pages": [{"path": "../class.pdf"}]}]))
    assert len(one.students[0].pages) == 6


@pytest.mark.parametrize(
    ("scan", "problem"),
    [
        ({"pages_per_student": 4}, "class_scan: the scan has 6 pages, not a multiple of "
         "pages_per_student=4 (1 whole students and 2 pages left over)"),
        ({"pages_per_student": 2, "refs": ["a", "b"]}, "class_scan.refs: 2 refs given, but the "
         "scan's 6 pages at pages_per_student=2 make 3 students"),
    ],
    ids=["not-a-multiple", "roster-too-short"],
)
def test_class_scan_split_problems_give_the_numbers(tmp_path: Path, scan: dict[str, Any],
                                                    problem: str) -> None:
    data = class_pdf(3, 2)
    body = {"data_uri": "data:application/pdf;base64," + b64(data), **scan}
    with pytest.raises(RequestValidationError) as info:
        load(request(tmp_path, class_scan=body))
    assert info.value.problems == [problem]


# --- 05: EXIF-rotated phone photos ------------------------------------------------------------


@pytest.mark.parametrize("orientation", [6, 3])
def test_rotated_phone_photo_is_sent_upright(tmp_path: Path, orientation: int) -> None:
    (tmp_path / "IMG_0412.jpg").write_bytes(
        exif_rotated(page((1512, 2016), mode="RGB", truth=truth("S001")), orientation))
    [s] = load(request(tmp_path, [{"ref": "S001", "pages": [{"path": "IMG_0412.jpg"}]}])).students
    img = sent(s.pages[0])
    assert img.width < img.height and is_upright(img)
    assert sent_truth(s.pages[0]) == truth("S001")


# --- 08: data URIs as people write them ---------------------------------------------------------


def _wrapped(text: str, width: int = 76) -> str:
    return "\n".join(text[i : i + width] for i in range(0, len(text), width))


PNG = encode(page((620, 877), truth=truth("S001")), "PNG")
JPEG = encode(page((620, 877), mode="RGB", truth=truth("S001")), "JPEG", quality=90)


@pytest.mark.parametrize(
    "uri",
    [
        "data:image/png;base64," + _wrapped(b64(PNG)),
        "data:image/png;base64,\r\n" + _wrapped(b64(PNG), 64).replace("\n", "\r\n"),
        "data:image/png;base64, " + b64(PNG),
        "data:image/png;base64," + base64.urlsafe_b64encode(PNG).decode(),
        "data:image/png;base64," + base64.urlsafe_b64encode(PNG).decode().rstrip("="),
        "data:image/png;base64," + b64(JPEG),  # labelled PNG, holds a JPEG
        "data:image/jpeg;base64," + b64(PNG),  # labelled JPEG, holds a PNG
    ],
    ids=["mime-wrapped-76", "crlf-64", "space-after-comma", "urlsafe", "urlsafe-unpadded",
         "png-label-jpeg-bytes", "jpeg-label-png-bytes"],
)
def test_data_uris_written_every_way_are_read_and_sent_under_their_true_type(
        tmp_path: Path, uri: str) -> None:
    [s] = load(request(tmp_path, [{"ref": "S001", "pages": [{"data_uri": uri}]}])).students
    [p] = s.pages
    assert sent_truth(p) == truth("S001")
    from qbq.grading import page_url

    url = page_url(p)
    label = url[5 : url.index(";")]
    assert label == Image.MIME[sent(p).format or ""]  # re-encoded, and labelled as it is


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("data:image/png," + b64(PNG), "has no ';base64' marker"),
        (b64(PNG), "no 'data:' prefix; the text looks like raw base64 of a PNG file"),
    ],
    ids=["missing-base64-flag", "raw-base64"],
)
def test_data_uris_that_are_not_base64_data_uris_are_refused(tmp_path: Path, uri: str,
                                                              words: str) -> None:
    with pytest.raises(RequestValidationError) as info:
        load(request(tmp_path, [{"ref": "S001", "pages": [{"data_uri": uri}]}]))
    [problem] = info.value.problems
    assert problem.startswith("students[0].pages[0]: data_uri: ") and words in problem


def test_data_uri_with_bad_characters_names_the_character(tmp_path: Path) -> None:
    body = parse_request({"assessment_id": "x", "model": "gpt-4.1-mini",
                          "questions": [{"question_number": "1", "max_mark": 1}],
                          "students": [{"ref": "S1", "pages": [
                              {"data_uri": "data:image/png;base64,iVBO*RK"}]}]})
    with pytest.raises(ImageError, match=r"not valid base64 \(a '\*' at character 4\)"):
        load_request(body, base_dir=tmp_path, settings=SETTINGS, fetch=None)
