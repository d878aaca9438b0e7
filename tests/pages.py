"""Page files for intake tests, made here in every format and defect (nothing read from disk)."""

from __future__ import annotations

import io
import random
import struct
import zlib
from typing import Any

from PIL import Image, ImageDraw

from qbq.sample import stamp_truth


def page(size: tuple[int, int] = (1240, 1754), *, mode: str = "L",
         truth: dict[str, Any] | None = None, marker: bool = True) -> Image.Image:
    """A white page with ruled lines of 'handwriting', a black square at its top-left corner (to
    tell which way up it is) and, given a truth, the truth QR."""
    img = Image.new("L", size, 255)
    draw = ImageDraw.Draw(img)
    w, h = size
    if marker:
        draw.rectangle([0, 0, w // 8, h // 16], fill=0)
    for y in range(h // 5, h * 3 // 5, max(8, h // 30)):
        draw.line([(w // 10, y), (w * 7 // 10, y + 3)], fill=40, width=max(1, w // 400))
    if truth is not None:
        img = stamp_truth(img, truth)
    return img.convert(mode) if mode != "L" else img


def encode(img: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def png(width: int = 30, height: int = 40, color: int = 0) -> bytes:
    return encode(Image.new("L", (width, height), color), "PNG")


def heic(img: Image.Image, **options: Any) -> bytes:
    from pillow_heif import from_pillow

    buf = io.BytesIO()
    from_pillow(img.convert("RGB")).save(buf, format="HEIF", quality=80, **options)
    return buf.getvalue()


def multipage(frames: list[Image.Image], fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], **options)
    return buf.getvalue()


def pdf(frames: list[Image.Image], dpi: int = 150) -> bytes:
    """A PDF of scanned pages (JPEG images), as scanners write them."""
    return multipage([f.convert("RGB") for f in frames], "PDF", resolution=dpi)


def exif_rotated(upright: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    """The photo a phone stores for `upright` with EXIF `orientation` (3, 6 or 8)."""
    stored = {3: upright.rotate(180), 6: upright.rotate(90, expand=True),
              8: upright.rotate(-90, expand=True)}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, fmt, exif=exif)


def is_upright(img: Image.Image) -> bool:
    """The black marker square is at the top-left (and nowhere else in the corners)."""
    grey = img.convert("L")
    w, h = grey.size

    def dark(box: tuple[int, int, int, int]) -> bool:
        region = grey.crop(box)
        return sum(region.histogram()[i] * i for i in range(256)) / (region.width * region.height) < 80

    corner_w, corner_h = w // 20, h // 40
    return dark((0, 0, corner_w, corner_h)) and not dark((w - corner_w, 0, w, corner_h)) and \
        not dark((0, h - corner_h, corner_w, h)) and not dark((w - corner_w, h - corner_h, w, h))


def colour_scan(size: tuple[int, int], seed: int = 1) -> Image.Image:
    """A 300-dpi colour scan: off-white paper with grain, blue handwriting, the truth QR."""
    rng = random.Random(seed)
    w, h = size
    noise = Image.effect_noise((w // 4, h // 4), 18).resize(size, Image.Resampling.BILINEAR)
    paper = Image.merge("RGB", [noise.point(lambda v: 200 + v // 5)] * 3)
    draw = ImageDraw.Draw(paper)
    for y in range(h // 8, h * 7 // 8, h // 40):
        x = w // 10
        while x < w * 8 // 10:
            length = rng.randint(w // 40, w // 12)
            draw.line([(x, y + rng.randint(-6, 6)), (x + length, y + rng.randint(-6, 6))],
                      fill=(20, 30, 140), width=5)
            x += length + rng.randint(w // 80, w // 30)
    return paper


# --- the hostile images of issue 15 ---------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb_header() -> bytes:
    """68 bytes of PNG that claim 20000×20000 pixels."""
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\0" * 3)[:11]) + _chunk(b"IEND", b""))
    assert len(data) == 68
    return data


def malformed_dds() -> bytes:
    """A DDS header with a DX10 pixel format Pillow's DDS plugin does not implement."""
    return (b"DDS " + struct.pack("<7I", 124, 0x1007, 16, 16, 0, 0, 0) + b"\0" * 44
            + struct.pack("<2I", 32, 4) + b"DX10" + b"\0" * 40 + struct.pack("<5I", 999, 3, 0, 1, 0))


def malformed_spider() -> bytes:
    """A SPIDER file whose header says 'image within a stack' without a stack."""
    buf = io.BytesIO()
    Image.new("F", (8, 8)).save(buf, format="SPIDER")
    data = bytearray(buf.getvalue())
    header = list(struct.unpack("<27f", data[:108]))
    header[26] = 1.0
    data[:108] = struct.pack("<27f", *header)
    return bytes(data)
