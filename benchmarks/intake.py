"""Intake: what normalising pages buys, for a 300-dpi colour A4 scan, a phone photo and a class PDF.

Prints, per input: bytes per page before and after, tokens per page (unchanged by design),
normalisation time per page, and students per batch when the request byte cap (50 MB) binds,
before (originals sent as data URIs, the old behaviour) and after; then the JPEG quality
sweep behind `JPEG_QUALITY` (bytes, PSNR against the lossless resize, truth QR still read).

    python benchmarks/intake.py [--plot docs/intake.png] [--students 30]
"""

from __future__ import annotations

import argparse
import io
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageStat

from qbq.catalog import ModelSpec, get_model_spec
from qbq.images import data_uri_length
from qbq.intake.normalise import JPEG_QUALITY, normalise_file
from qbq.sample import stamp_truth, write_sample
from qbq.simulator.images import read_truth
from qbq.tokens import image_tokens, view_size

REQUEST_BYTES = 50_000_000  # OpenAI's cap on one request body
IMAGES_PER_REQUEST = 500
PAGES_PER_STUDENT = 2
TRUTH = {"marks": {"1": 2.5, "2": 4.0, "3": 1.0}, "name": {"first": "Ada", "last": "Brindle"},
         "student": "S001"}


def colour_scan(size: tuple[int, int] = (2480, 3508), seed: int = 1) -> Image.Image:
    """A 300-dpi colour scan: paper grain at full resolution, blue handwriting, the truth QR."""
    rng = random.Random(seed)
    w, h = size
    grain = Image.effect_noise(size, 24).point(lambda v: 190 + v // 4)
    tint = Image.merge("RGB", [grain, grain.point(lambda v: v - 3), grain.point(lambda v: v - 12)])
    draw = ImageDraw.Draw(tint)
    for y in range(h // 8, h * 6 // 8, h // 40):
        x = w // 10
        while x < w * 8 // 10:
            n = rng.randint(w // 40, w // 12)
            draw.line([(x + i, y + 9 * math.sin(i / 11 + x)) for i in range(0, n, 4)],
                      fill=(25, 35, 150), width=6)
            x += n + rng.randint(w // 80, w // 30)
    return stamp_truth(tint, TRUTH)


def phone_photo(size: tuple[int, int] = (4032, 3024)) -> bytes:
    """A 12-MP phone photo of a page, stored sideways with EXIF orientation 6 (as phones do)."""
    upright = colour_scan((size[1], size[0]), seed=2)
    shade = Image.linear_gradient("L").resize(upright.size).point(lambda v: 255 - v // 5)
    lit = ImageChops.multiply(upright, Image.merge("RGB", [shade] * 3))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    lit.rotate(90, expand=True).save(buf, format="JPEG", quality=92, exif=exif)
    return buf.getvalue()


def class_pdf(students: int) -> bytes:
    """A class scanned into one PDF (200 dpi JPEG pages), the first page of each with its QR."""
    with tempfile.TemporaryDirectory() as tmp:
        write_sample(Path(tmp), students=students, pages=PAGES_PER_STUDENT, questions=4, seed=5)
        pages = sorted((Path(tmp) / "pages").glob("S*.png"))
        images = [Image.open(p).convert("RGB") for p in pages]
        buf = io.BytesIO()
        images[0].save(buf, format="PDF", save_all=True, append_images=images[1:], resolution=150)
    return buf.getvalue()


@dataclass
class Row:
    name: str
    pages: int
    before: float  # bytes per page as received
    after: float  # bytes per page normalised
    tokens_before: int
    tokens_after: int
    ms_per_page: float
    students_before: int
    students_after: int


def students_per_batch(bytes_per_page: float) -> int:
    """Students per request when only the byte and image caps bind (0: one page alone is over)."""
    per_student = PAGES_PER_STUDENT * bytes_per_page
    return min(int(REQUEST_BYTES // per_student), IMAGES_PER_REQUEST // PAGES_PER_STUDENT)


def measure(name: str, data: bytes, spec: ModelSpec, *, pages_in_file: int = 1) -> Row:
    started = time.perf_counter()
    out = normalise_file(data, spec=spec, what=name, max_pixels=50_000_000)
    elapsed = time.perf_counter() - started
    first = out[0]
    before = len(data) / len(out)
    after = sum(data_uri_length(len(n.data), n.mime) for n in out) / len(out)
    assert read_truth(first.data) is not None or name == "class PDF"
    return Row(name, len(out), before, after,
               image_tokens(spec, first.source_width, first.source_height),
               image_tokens(spec, first.width, first.height), 1000 * elapsed / len(out),
               students_per_batch(data_uri_length(int(before), "image/png")),
               students_per_batch(after))


def psnr(a: Image.Image, b: Image.Image) -> float:
    diff = ImageChops.difference(a.convert("L"), b.convert("L"))
    mse = ImageStat.Stat(diff).rms[0] ** 2
    return 99.0 if mse == 0 else 10 * math.log10(255 * 255 / mse)


def quality_sweep(images: dict[str, Image.Image], spec: ModelSpec) -> list[tuple[str, ...]]:
    rows = []
    for name, img in images.items():
        target = view_size(spec, *img.size)
        small = img.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        png = io.BytesIO()
        if small.mode == "L":  # as qbq writes greyscale pages: 16 grey levels, 4-bit PNG
            levels = small.point(lambda v: round(v / 17) * 17)
            levels.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(
                png, format="PNG", bits=4)
        else:
            small.save(png, format="PNG", compress_level=6)
        for q in (50, 60, 70, 80, 85, 90, 95):
            buf = io.BytesIO()
            small.save(buf, format="JPEG", quality=q, optimize=True)
            decoded = Image.open(io.BytesIO(buf.getvalue()))
            qr = read_truth(buf.getvalue()) is not None
            rows.append((name, str(q), f"{buf.tell():,}", f"{png.tell():,}",
                         f"{psnr(small, decoded):.1f}", "yes" if qr else "NO"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", type=Path, help="write a PNG plot here")
    parser.add_argument("--students", type=int, default=30, help="students in the class PDF")
    parser.add_argument("--model", default="gpt-4.1-mini")
    args = parser.parse_args()
    spec = get_model_spec(args.model)
    scan = colour_scan()
    scan_png = io.BytesIO()
    scan.save(scan_png, format="PNG")
    inputs = {"300-dpi A4 colour scan (PNG)": scan_png.getvalue(),
              "phone photo 12 MP (JPEG, EXIF 6)": phone_photo(),
              f"class PDF ({args.students} × {PAGES_PER_STUDENT} pages)": class_pdf(args.students)}
    rows = [measure(name, data, spec) for name, data in inputs.items()]

    print(f"model {spec.name}; request cap {REQUEST_BYTES:,} bytes, {IMAGES_PER_REQUEST} images; "
          f"{PAGES_PER_STUDENT} pages per student; JPEG quality {JPEG_QUALITY}")
    head = (f"{'input':36} {'pages':>5} {'bytes/page before':>17} {'after':>9} {'ratio':>6} "
            f"{'tokens before':>13} {'after':>5} {'ms/page':>8} {'students/batch before':>21} "
            f"{'after':>5}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.name:36} {r.pages:>5} {r.before:>17,.0f} {r.after:>9,.0f} "
              f"{r.before / r.after:>6.1f} {r.tokens_before:>13,} {r.tokens_after:>5,} "
              f"{r.ms_per_page:>8.0f} {r.students_before:>21} {r.students_after:>5}")

    sample_dir = Path(tempfile.mkdtemp())
    write_sample(sample_dir, students=1, pages=1, questions=4, seed=3)
    sweep_images = {"colour scan": scan, "sample page (line art)":
                    Image.open(sample_dir / "pages" / "S001-p1.png").convert("L")}
    print(f"\nJPEG quality sweep at {spec.name}'s size (PSNR in dB against the lossless resize)")
    print(f"{'image':24} {'quality':>7} {'JPEG bytes':>10} {'PNG bytes':>10} {'PSNR':>6} "
          f"{'QR read':>7}   (PNG: 16 grey levels for the greyscale page, lossless for colour)")
    for row in quality_sweep(sweep_images, spec):
        print(f"{row[0]:24} {row[1]:>7} {row[2]:>10} {row[3]:>10} {row[4]:>6} {row[5]:>7}")
    worst = min(r.before / r.after for r in rows[:2])
    print(f"\nsummary: scan and photo {worst:.0f}× smaller or better, tokens unchanged "
          f"({all(r.tokens_before == r.tokens_after for r in rows)}), "
          f"{max(r.ms_per_page for r in rows):.0f} ms per page at most")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        names = [r.name.split(" (")[0] for r in rows]
        x = range(len(rows))
        ax1.bar([i - 0.2 for i in x], [r.before for r in rows], 0.4, label="as received")
        ax1.bar([i + 0.2 for i in x], [r.after for r in rows], 0.4, label="normalised")
        ax1.set_yscale("log")
        ax1.set_xticks(list(x), names, fontsize=8)
        ax1.set_ylabel("bytes per page (log)")
        ax1.legend()
        ax2.bar(list(x), [r.ms_per_page for r in rows])
        ax2.set_xticks(list(x), names, fontsize=8)
        ax2.set_ylabel("normalisation ms per page")
        fig.suptitle(f"qbq intake ({spec.name})")
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=100)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
