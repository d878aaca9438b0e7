"""Normalisation: every format and defect schools send, each page made into what the model sees.

Every file here is generated in the test: HEIC photos, scanner TIFFs (LZW, G4), class PDFs,
animated GIFs, EXIF-rotated phone photos, CMYK and 16-bit images, colour scans; and the hostile
images of issue 15 (a PNG header claiming 20000×20000, a malformed DDS, a malformed SPIDER file).
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from qbq.catalog import get_model_spec
from qbq.errors import ImageError
from qbq.intake.normalise import NormalisedImage, normalise_file
from qbq.simulator.images import read_truth
from qbq.tokens import image_tokens, view_size
from tests.pages import (
    colour_scan,
    encode,
    exif_rotated,
    heic,
    is_upright,
    malformed_dds,
    malformed_spider,
    multipage,
    page,
    pdf,
    png_bomb_header,
)

PATCH = get_model_spec("gpt-5-mini")  # 32-px patches, at most 1,536
TILE = get_model_spec("gpt-4o")  # 512-px tiles after fitting 2048² and a 768-px short side
CAP = 50_000_000
TRUTH = {"marks": {"1": 2.5, "2": 0, "3": 4}, "name": {"first": "Ada", "last": "Brindle"},
         "student": "S007"}


def norm(data: bytes, spec: object = PATCH, **kw: object) -> list[NormalisedImage]:
    return normalise_file(data, spec=spec, what="students[0].pages[0]", max_pixels=CAP,  # type: ignore[arg-type]
                          **kw)  # type: ignore[arg-type]


def opened(n: NormalisedImage) -> Image.Image:
    """The normalised image, as L or RGB (a greyscale PNG is written as 16 palette greys)."""
    img = Image.open(io.BytesIO(n.data))
    assert img.format == {"image/jpeg": "JPEG", "image/png": "PNG"}[n.mime]
    assert img.size == (n.width, n.height) and img.mode in ("L", "RGB", "P")
    if img.mode == "P":
        colours = img.convert("RGB").getcolors(256)
        assert colours is not None
        if all(r == g == b for _, (r, g, b) in colours):
            return img.convert("L")
        return img.convert("RGB")
    return img


# --- formats ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_single_image_formats(fmt: str) -> None:
    [n] = norm(encode(page((620, 877)), fmt))
    assert (n.width, n.height, n.kind) == (620, 877, fmt if fmt != "WEBP" else "WEBP")
    assert is_upright(opened(n))


def test_progressive_jpeg() -> None:
    [n] = norm(encode(page((900, 1200), mode="RGB"), "JPEG", progressive=True, quality=90))
    assert n.kind == "JPEG" and is_upright(opened(n))


def test_heic_photo_is_converted_by_content_not_name() -> None:
    photo = page((756, 1008), mode="RGB", truth=TRUTH)
    [n] = norm(heic(photo))
    assert n.kind == "HEIF" and (n.source_width, n.source_height) == (756, 1008)
    img = opened(n)
    assert is_upright(img)
    assert read_truth(n.data) == TRUTH  # the QR survives HEVC and the resize


def test_two_page_lzw_tiff_and_one_page_g4_tiff() -> None:
    first, second = page((1240, 1754)), page((1240, 1754), marker=False)
    pages = norm(multipage([first, second], "TIFF", compression="tiff_lzw"))
    assert [p.kind for p in pages] == ["TIFF", "TIFF"]
    assert is_upright(opened(pages[0])) and not is_upright(opened(pages[1]))  # in order
    [g4] = norm(encode(page((1240, 1754)).convert("1"), "TIFF", compression="group4"))
    assert is_upright(opened(g4))


def test_animated_gif_frames_are_pages_in_order() -> None:
    frames = [page((400, 566)), page((400, 566), marker=False), page((400, 566))]
    pages = norm(multipage(frames, "GIF", duration=500, loop=0))
    assert len(pages) == 3
    assert [is_upright(opened(p)) for p in pages] == [True, False, True]


def test_pdf_pages_are_rendered_at_the_models_size() -> None:
    pages = norm(pdf([page((1240, 1754)), page((1240, 1754), marker=False)], dpi=150))
    assert len(pages) == 2 and {p.kind for p in pages} == {"PDF"}
    # An A4 page (8.27 × 11.69 in) measured at 300 dpi, sent at the patch model's size
    first = pages[0]
    assert (first.source_width, first.source_height) == (2480, 3508)
    assert (first.width, first.height) == (1024, 1449)  # fit 2048 px, then 1,536 patches
    assert image_tokens(PATCH, first.width, first.height) == image_tokens(PATCH, 2480, 3508)
    assert is_upright(opened(first)) and not is_upright(opened(pages[1]))


def test_frames_over_the_limit_are_refused() -> None:
    data = multipage([page((40, 40)), page((40, 40), marker=False)] * 2, "GIF")
    with pytest.raises(ImageError, match=r"GIF file has 4 frames, over the limit of 3 pages"):
        norm(data, max_pages=3)


# --- normalisation ------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_photo_is_sent_upright(orientation: int) -> None:
    upright = page((1512, 2016), mode="RGB", truth=TRUTH)
    [n] = norm(exif_rotated(upright, orientation))
    assert (n.source_width, n.source_height) == (1512, 2016)
    assert n.width < n.height  # portrait, as the photo was taken
    assert is_upright(opened(n))
    assert read_truth(n.data) == TRUTH


def test_300_dpi_colour_a4_scan_is_sent_under_1_mb_with_its_tokens_unchanged() -> None:
    scan = colour_scan((2480, 3508))
    data = encode(scan, "PNG", compress_level=1)
    assert len(data) > 2_000_000  # a lossless scan, as scanners write them
    for spec in (PATCH, TILE):
        [n] = norm(data, spec)
        assert len(n.data) < 1_000_000
        assert image_tokens(spec, n.width, n.height) == image_tokens(spec, 2480, 3508)
        assert opened(n).mode == "RGB"  # blue ink stays blue


def test_never_upscaled() -> None:
    [n] = norm(encode(page((300, 200)), "PNG"), TILE)
    assert (n.width, n.height) == (300, 200)


def test_cmyk_jpeg_becomes_rgb_with_its_colours() -> None:
    img = Image.new("CMYK", (200, 300), (0, 0, 0, 0))  # white
    ImageDraw.Draw(img).rectangle([0, 0, 99, 299], fill=(0, 255, 255, 0))  # red
    [n] = norm(encode(img, "JPEG", quality=95))
    rgb = opened(n)
    assert rgb.mode == "RGB"
    r, g, b = rgb.getpixel((40, 150))  # type: ignore[misc]
    assert r > 200 and g < 60 and b < 60
    assert min(rgb.getpixel((160, 150))) > 230  # type: ignore[arg-type]


def test_16_bit_greyscale_is_scaled_not_clipped() -> None:
    img = Image.new("I;16", (64, 64), 32768)  # mid-grey in 16 bits
    [n] = norm(encode(img, "PNG"))
    grey = opened(n)
    # mid-grey, within half of the 16-level step (clipping would give 255)
    assert grey.mode == "L" and abs(grey.getpixel((32, 32)) - 128) <= 9  # type: ignore[operator]


def test_alpha_and_palette_transparency_are_flattened_on_white() -> None:
    rgba = Image.new("RGBA", (50, 50), (255, 0, 0, 0))  # fully transparent red
    ImageDraw.Draw(rgba).rectangle([0, 0, 24, 49], fill=(0, 0, 0, 255))
    [n] = norm(encode(rgba, "PNG"))
    img = opened(n).convert("L")
    assert img.getpixel((40, 25)) > 250 and img.getpixel((10, 25)) < 5  # type: ignore[operator]
    pal = rgba.convert("P")
    pal.info["transparency"] = pal.getpixel((40, 25))
    [p] = norm(encode(pal, "PNG", transparency=pal.info["transparency"]))
    assert opened(p).convert("L").getpixel((40, 25)) > 250  # type: ignore[operator]


def test_colour_scan_of_black_text_is_sent_as_greyscale() -> None:
    grey_scan = page((1240, 1754)).convert("RGB")
    [n] = norm(encode(grey_scan, "PNG"))
    assert opened(n).mode == "L"


def test_metadata_is_not_sent() -> None:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # camera make; GPS would sit beside it
    [n] = norm(encode(page((300, 400), mode="RGB"), "JPEG", exif=exif))
    assert b"PhoneMaker" not in n.data and b"Exif" not in n.data


@pytest.mark.parametrize("spec", [PATCH, TILE], ids=["patch", "tile"])
def test_truth_qr_survives_normalisation_for_both_model_families(spec: object) -> None:
    [n] = norm(encode(page((2480, 3508), truth=TRUTH), "PNG"), spec)
    assert read_truth(n.data) == TRUTH


# --- defects and hostile files (issue 15) -------------------------------------------------------


HOSTILE = {
    "png-bomb-header": (png_bomb_header, "PNG image declares more than 50,000,000 pixels"),
    "malformed-dds": (malformed_dds, "a DDS texture - qbq reads PNG, JPEG, WebP, GIF, BMP, TIFF, "
                      "HEIC/HEIF, AVIF and PDF"),
    "malformed-spider": (malformed_spider, "not a recognised image or PDF"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_images_are_named_page_errors(name: str) -> None:
    make, words = HOSTILE[name]
    with pytest.raises(ImageError) as info:
        norm(make())
    assert info.value.message == f"students[0].pages[0]: {words}" or words in info.value.message
    assert info.value.message.startswith("students[0].pages[0]: ")


def test_only_qbqs_formats_reach_pillow_even_with_every_plugin_loaded() -> None:
    Image.init()  # as if another library had loaded all of Pillow's parsers
    # ... which would fail on these with NotImplementedError / AttributeError, not ours
    with pytest.raises(NotImplementedError):
        Image.open(io.BytesIO(malformed_dds()))
    with pytest.raises(AttributeError):
        Image.open(io.BytesIO(malformed_spider())).load()
    for make, _ in HOSTILE.values():
        with pytest.raises(ImageError):
            norm(make())


def test_normalising_every_format_does_not_import_pillows_other_plugins(tmp_path: Path) -> None:
    """In a fresh interpreter: reading every format qbq takes leaves Pillow's other parsers
    (DDS, SPIDER, PSD, ...) unimported. The files are made here, where Pillow's writers may
    load what they like."""
    p = page((200, 280))
    files = [encode(p, f) for f in ("PNG", "JPEG", "WEBP", "GIF", "BMP")]
    files += [multipage([p, p], "TIFF"), heic(p), pdf([p])]
    for i, data in enumerate(files):
        (tmp_path / f"{i}.bin").write_bytes(data)
    script = f"""
import pathlib, sys
from PIL import Image
from qbq.catalog import get_model_spec
from qbq.intake.normalise import normalise_file
for f in sorted(pathlib.Path({str(tmp_path)!r}).glob("*.bin")):
    normalise_file(f.read_bytes(), spec=get_model_spec("gpt-4.1-mini"), what="p", max_pixels=10**8)
loaded = sorted(m[4:-11] for m in sys.modules if m.startswith("PIL.") and m.endswith("ImagePlugin"))
assert Image._initialized < 2, "Pillow imported all its plugins"
print(",".join(loaded))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.strip().split(","))
    assert loaded <= {"Bmp", "Gif", "Jpeg", "Png", "Ppm", "Tiff", "WebP", "Avif", "Mpo"}, loaded
    assert not loaded & {"Dds", "Spider", "Psd", "Eps"}


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: encode(page((300, 400)), "JPEG")[:400], "a damaged JPEG file"),
        (lambda: encode(page((300, 400)), "PNG")[:300], "a damaged PNG file"),
        (lambda: b"", "an empty file"),
        (lambda: b"<!DOCTYPE html><html>AccessDenied</html>", "an HTML page"),
    ],
    ids=["truncated-jpeg", "truncated-png", "empty", "html"],
)
def test_damaged_files_are_refused_in_words(make: object, words: str) -> None:
    with pytest.raises(ImageError) as info:
        norm(make())  # type: ignore[operator]
    assert words in info.value.message
    assert "object at 0x" not in info.value.message and "BytesIO" not in info.value.message


@settings(max_examples=500, deadline=None)
@given(width=st.integers(1, 20_000), height=st.integers(1, 20_000),
       model=st.sampled_from(["gpt-4.1-mini", "gpt-4.1-nano", "o4-mini", "gpt-4o", "gpt-4o-mini",
                              "gpt-4.1", "o3", "gpt-5", "gpt-5-mini"]))
def test_the_view_size_costs_the_same_tokens_and_is_not_resized_again(
        width: int, height: int, model: str) -> None:
    spec = get_model_spec(model)
    assume(min(width, height) * 2048 // max(width, height) >= 1)  # not a 1-px-thin strip
    w, h = view_size(spec, width, height)
    assert w <= width and h <= height  # never upscaled
    assert image_tokens(spec, w, h) == image_tokens(spec, width, height)
    assert view_size(spec, w, h) == (w, h)  # the provider would not resize it again
