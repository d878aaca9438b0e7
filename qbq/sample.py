"""Synthetic sample assessments: exam-like PNG pages with hidden true marks, plus their requests.

Each student's first page carries the truth twice: in the PNG tEXt chunk `qbq:truth`, and as a
QR code drawn on the page reading `qbq:truth:` + the same JSON, which survives what the chunk
does not (qbq's normalisation to JPEG, downscaling, rotation, a PDF or HEIC round trip). Output
is byte-for-byte deterministic for a given seed.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import segno
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from qbq.images import TRUTH_KEY, TRUTH_QR_PREFIX, read_truth

__all__ = ["stamp_truth", "truth_json", "truth_of", "truth_qr", "write_legacy_sample",
           "write_sample"]

#: The QR code's modules stay at least this many pixels wide after the strongest downscale qbq
#: applies (tile models: the short side to 768 px), so the truth still decodes.
_QR_MIN_MODULE_PX = 3.2
_QR_QUIET_MODULES = 4

MAX_MARK_CHOICES = (2, 3, 4, 5, 6, 8, 10)
DEFAULT_INSTRUCTIONS = (
    "Mark each question against its rubric. Award half marks for partially correct answers "
    "and never exceed the question's maximum mark."
)

_FIRST_NAMES = (
    "Ada", "Bram", "Cleo", "Dorian", "Elsie", "Felix", "Greta", "Hugo", "Ines", "Jonas",
    "Kira", "Lionel", "Mira", "Niko", "Odette", "Pavel", "Quinn", "Rosa", "Silas", "Tilda",
    "Ulric", "Vera", "Wren", "Yusuf", "Zora",
)  # fmt: skip
_LAST_NAMES = (
    "Ashcombe", "Brindle", "Corrow", "Dunmere", "Elsworth", "Fallowby", "Grantley", "Harrowgate",
    "Ivesdale", "Jessop", "Kettlewell", "Lorrimer", "Marchbank", "Nettleford", "Oakhurst",
    "Pellow", "Quarrie", "Redfern", "Stanwick", "Thistlewood", "Umberley", "Vantongeren",
    "Whitcombe", "Yarrow", "Zennor",
)  # fmt: skip
_TOPICS = (
    "the photosynthesis equation", "the causes of the First World War", "solving the quadratic",
    "the water cycle", "Newton's second law", "the main theme of the poem",
    "the structure of the cell membrane", "simplifying the fraction", "the rate of reaction",
    "supply and demand", "the area of the triangle", "the function of the heart valves",
)  # fmt: skip
_RUBRIC_TEMPLATES = (
    "Award one mark for each correct step on {topic}, with full marks only for a complete answer.",
    "Full marks for a clear, correct explanation of {topic}; half marks for a partial one.",
    "Credit correct working on {topic} even when the final answer is wrong.",
    "Award marks for naming, then explaining, the key points of {topic}.",
    "Deduct half a mark for each error in {topic}; do not go below zero.",
)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _scribble_line(
    draw: ImageDraw.ImageDraw, rng: random.Random, x0: int, y: int, x_max: int, scale: float
) -> None:
    """One line of fake handwriting: wavy strokes grouped into words."""
    x = x0
    end = x0 + int((x_max - x0) * rng.uniform(0.45, 1.0))
    width = max(1, round(2 * scale))
    while x < end:
        word_len = min(int(rng.uniform(30, 120) * scale), x_max - x)
        if word_len < 10 * scale:
            break
        amp = rng.uniform(5, 11) * scale
        freq = rng.uniform(0.18, 0.32) / scale
        phase = rng.uniform(0, math.tau)
        drift = rng.uniform(-3, 3) * scale
        points = []
        for i in range(0, word_len, max(1, round(3 * scale))):
            wobble = amp * math.sin(freq * i + phase) * (0.6 + 0.4 * math.sin(i / (9 * scale)))
            points.append((x + i, y + wobble + drift * i / max(word_len, 1)))
        if len(points) > 1:
            draw.line(points, fill=30, width=width, joint="curve")
        if rng.random() < 0.25:  # an ascender or descender
            px = x + rng.randrange(max(1, word_len))
            dy = int(rng.choice((-1, 1)) * rng.uniform(14, 22) * scale)
            draw.line([(px, y), (px + int(3 * scale), y + dy)], fill=30, width=width)
        x += word_len + int(rng.uniform(14, 30) * scale)


def truth_json(truth: dict[str, Any]) -> str:
    """The canonical JSON of a truth object (the PNG chunk and the QR code hold exactly this)."""
    return json.dumps(truth, sort_keys=True, separators=(",", ":"))


def truth_qr(truth: dict[str, Any], page_size: tuple[int, int]) -> Image.Image:
    """The truth as a QR code (`qbq:truth:` + JSON, error correction M, with its quiet zone),
    sized for a page of `page_size` pixels."""
    code = segno.make_qr(TRUTH_QR_PREFIX + truth_json(truth), error="m", boost_error=False)
    module = max(3, math.ceil(_QR_MIN_MODULE_PX * min(page_size) / 768))
    side = len(code.matrix) + 2 * _QR_QUIET_MODULES
    img = Image.new("L", (side, side), 255)
    dark = [(x + _QR_QUIET_MODULES, y + _QR_QUIET_MODULES)
            for y, row in enumerate(code.matrix) for x, bit in enumerate(row) if bit]
    for xy in dark:
        img.putpixel(xy, 0)
    return img.resize((side * module, side * module), Image.Resampling.NEAREST)


def stamp_truth(img: Image.Image, truth: dict[str, Any]) -> Image.Image:
    """`img` with the truth QR drawn in its bottom-right corner (over what was there)."""
    qr = truth_qr(truth, img.size)
    out = img.copy()
    margin = int(40 * img.width / 1240)
    out.paste(qr.convert(out.mode), (img.width - qr.width - margin, img.height - qr.height - margin))
    return out


def _qr_side(truth: dict[str, Any], page_size: tuple[int, int]) -> int:
    return truth_qr(truth, page_size).height


def _draw_page(
    *,
    size: tuple[int, int],
    title: str,
    student_line: str | None,
    page_label: str,
    questions: list[tuple[str, float, float]],
    rng: random.Random,
    continued: bool,
    reserve_bottom: int = 0,
) -> Image.Image:
    """An exam page; `questions` holds (number, max_mark, fraction of the answer written);
    `reserve_bottom` pixels above the bottom margin stay blank (for the truth QR)."""
    # Long: a page drawn top to bottom, one block per layout element; reads best in order.
    width, height = size
    scale = width / 1240
    img = Image.new("L", size, 255)
    draw = ImageDraw.Draw(img)
    draw.fontmode = "1"  # crisp, un-antialiased text keeps the PNG small
    margin = int(90 * scale)
    right = width - margin
    line_gap = int(46 * scale)

    y = int(70 * scale)
    draw.text((margin, y), title, fill=0, font=_font(max(10, int(40 * scale))))
    draw.text(
        (right, y + int(10 * scale)),
        page_label,
        fill=60,
        font=_font(max(8, int(24 * scale))),
        anchor="ra",
    )
    y += int(64 * scale)
    draw.line([(margin, y), (right, y)], fill=0, width=max(1, round(3 * scale)))
    y += int(30 * scale)
    if student_line is not None:
        draw.text((margin, y), student_line, fill=0, font=_font(max(8, int(28 * scale))))
        y += int(60 * scale)

    label_font = _font(max(8, int(30 * scale)))
    if continued:
        draw.text((margin, y), "(continued)", fill=80, font=label_font)
        y += int(56 * scale)
        for _ in range(rng.randint(4, 9)):
            if y > height - margin - line_gap:
                break
            _scribble_line(draw, rng, margin + int(40 * scale), y, right, scale)
            y += line_gap
    room = height - margin - y - reserve_bottom
    per_question = room // max(1, len(questions))
    label_h = int(54 * scale)
    compact = per_question < label_h + line_gap  # many questions: one inline line each
    if compact:
        label_font = _font(max(8, min(int(30 * scale), int(per_question * 0.7))))
    marks_font = _font(max(8, min(int(22 * scale), int(per_question * 0.6))))
    for qnum, max_mark, fraction in questions:
        top = y
        draw.text((margin, y), f"{qnum}.", fill=0, font=label_font)
        draw.text((right, y), f"[{max_mark:g} marks]", fill=60, font=marks_font, anchor="ra")
        if compact:
            mid = y + per_question // 3
            start = margin + int(60 * scale)
            # shorter lines for weaker answers, and an ink budget so crowded pages stay small
            share = (0.3 + 0.7 * fraction) * min(1.0, 30 / len(questions))
            end = start + int((right - int(150 * scale) - start) * share)
            _scribble_line(draw, rng, start, mid, end, scale)
        else:
            y += label_h
            capacity = max(1, (per_question - int(70 * scale)) // line_gap)
            for _ in range(max(1, round(capacity * fraction))):
                _scribble_line(draw, rng, margin + int(50 * scale), y, right, scale)
                y += line_gap
        y = top + per_question
    return img


def _save_png(img: Image.Image, path: Path, truth: dict[str, Any] | None = None) -> None:
    """Save a page; a truth goes into the `qbq:truth` chunk and onto the page as a QR code."""
    info = PngInfo()
    if truth is not None:
        info.add_text(TRUTH_KEY, truth_json(truth))
        img = stamp_truth(img, truth)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=True, pnginfo=info)


def _split(questions: list[str], pages: int) -> list[list[str]]:
    """Spread question numbers over the pages in order, as evenly as possible."""
    out: list[list[str]] = [[] for _ in range(pages)]
    for i, q in enumerate(questions):
        out[i * pages // len(questions)].append(q)
    return out


def _answer_file(number: int) -> str:
    return f"model-answer-p{number}.png"


def write_sample(
    out_dir: Path,
    *,
    students: int,
    pages: int,
    questions: int,
    seed: int = 0,
    assessment_id: str | None = None,
    model: str = "gpt-4.1-mini",
    page_size: tuple[int, int] = (1240, 1754),
    with_names: bool = True,
    model_answer_pages: int = 1,
) -> Path:
    """Write `out_dir/request.json` and its pages under `out_dir/pages/`; return the request path.

    The request's page paths are relative to `out_dir`; marks are multiples of 0.5;
    `model_answer_pages` model-answer pages (the questions spread over them) come first.
    """
    # Long: builds the marks, draws every page and writes the request in one seeded sequence, so a seed
    # always gives the same files.
    if students < 1 or pages < 1 or questions < 1:
        raise ValueError("students, pages and questions must each be at least 1")
    out_dir = Path(out_dir)
    pages_dir = out_dir / "pages"
    pages_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    assessment_id = assessment_id or f"sample-{seed}-{students}x{pages}x{questions}"
    title = f"Assessment {assessment_id}"
    qnums = [str(i) for i in range(1, questions + 1)]
    max_marks = {q: float(rng.choice(MAX_MARK_CHOICES)) for q in qnums}
    rubrics = {q: rng.choice(_RUBRIC_TEMPLATES).format(topic=rng.choice(_TOPICS)) for q in qnums}
    layout = _split(qnums, pages)

    answer_layout = _split(qnums, model_answer_pages)
    for a in range(1, model_answer_pages + 1):
        model_img = _draw_page(
            size=page_size,
            title=f"{title} - model answer",
            student_line=None,
            page_label="model answer" if model_answer_pages == 1 else f"model answer {a}",
            questions=[(q, max_marks[q], 1.0) for q in answer_layout[a - 1]],
            rng=random.Random(f"{seed}-model-answer" + ("" if a == 1 else f"-{a}")),
            continued=not answer_layout[a - 1],
        )
        _save_png(model_img, pages_dir / _answer_file(a))

    student_entries: list[dict[str, Any]] = []
    for s in range(1, students + 1):
        ref = f"S{s:03d}"
        marks = {q: rng.randint(0, int(max_marks[q] * 2)) / 2 for q in qnums}
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        truth: dict[str, Any] = {"student": ref, "marks": marks}
        if with_names:
            truth["name"] = {"first": first, "last": last}
        page_entries: list[dict[str, Any]] = []
        for p in range(1, pages + 1):
            page_id = f"{ref}-p{p}"
            on_page = layout[p - 1]
            img = _draw_page(
                size=page_size,
                title=title,
                student_line=(
                    f"Student: {first} {last}" if with_names else "Student: ____________"
                ),
                page_label=f"page {p} of {pages}",
                questions=[(q, max_marks[q], 0.2 + 0.8 * marks[q] / max_marks[q]) for q in on_page],
                rng=random.Random(f"{seed}-{page_id}"),
                continued=not on_page,
                reserve_bottom=_qr_side(truth, page_size) if p == 1 else 0,
            )
            _save_png(img, pages_dir / f"{page_id}.png", truth if p == 1 else None)
            page_entries.append(
                {
                    "path": f"pages/{page_id}.png",
                    "id": page_id,
                    "width": page_size[0],
                    "height": page_size[1],
                }
            )
        student_entries.append({"ref": ref, "pages": page_entries})

    request = {
        "assessment_id": assessment_id,
        "model": model,
        "instructions": DEFAULT_INSTRUCTIONS,
        "questions": [
            {"question_number": q, "max_mark": max_marks[q], "rubric": rubrics[q]} for q in qnums
        ],
        "model_answer_pages": [{"path": f"pages/{_answer_file(a)}"}
                               for a in range(1, model_answer_pages + 1)],
        "students": student_entries,
    }
    request_path = out_dir / "request.json"
    request_path.write_text(json.dumps(request, indent=2) + "\n", encoding="utf-8")
    return request_path


def truth_of(request_path: Path) -> dict[str, dict[str, float]]:
    """The true marks (ref → {question: mark}) read back from a native request's page images.

    Students whose pages carry no truth chunk are left out.
    """
    request_path = Path(request_path)
    request = json.loads(request_path.read_text(encoding="utf-8"))
    out: dict[str, dict[str, float]] = {}
    for student in request["students"]:
        for page in student["pages"]:
            truth = read_truth((request_path.parent / page["path"]).read_bytes())
            if truth is not None:
                out[student["ref"]] = {q: float(m) for q, m in truth["marks"].items()}
                break
    return out


def write_legacy_sample(
    out_dir: Path,
    *,
    base_url: str,
    students: int,
    pages: int,
    questions: int,
    seed: int = 0,
    page_size: tuple[int, int] = (1240, 1754),
    with_names: bool = True,
    external_assessment_id: int | None = None,
) -> Path:
    """Write a sample and `out_dir/legacy_request.json` whose image URLs start with `base_url`.

    Serve `out_dir` at `base_url` (e.g. over loopback http) so `{base_url}/pages/<file>` resolves.
    Images are listed student by student; `page_number` counts pages through the whole scan
    (1-based), so student k's pages are numbers (k-1)*pages+1 .. k*pages.
    """
    # Long: maps the native sample onto the legacy request shape field by field, as DESIGN.md lists them.
    out_dir = Path(out_dir)
    native_path = write_sample(
        out_dir,
        students=students,
        pages=pages,
        questions=questions,
        seed=seed,
        page_size=page_size,
        with_names=with_names,
    )
    native = json.loads(native_path.read_text(encoding="utf-8"))
    base = base_url.rstrip("/")
    assessment = external_assessment_id if external_assessment_id is not None else 1000 + seed
    images: list[dict[str, Any]] = []
    for student in native["students"]:
        for page in student["pages"]:
            n = len(images) + 1
            images.append(
                {"id": 50_000 + n, "page_number": n, "aws_path": f"{base}/{page['path']}"}
            )
    legacy = {
        "external_assessment_id": assessment,
        "external_assessment_settings_id": 2000 + seed,
        "external_assessment_file_id": 3000 + seed,
        "pages_per_student": pages,
        "prompt": native["instructions"],
        "images": images,
        "model_assessment": [f"{base}/{p['path']}" for p in native["model_answer_pages"]],
        "question_list": [
            {"question_number": q["question_number"], "max_mark": float(q["max_mark"])}
            for q in native["questions"]
        ],
    }
    legacy_path = out_dir / "legacy_request.json"
    legacy_path.write_text(json.dumps(legacy, indent=2) + "\n", encoding="utf-8")
    return legacy_path
