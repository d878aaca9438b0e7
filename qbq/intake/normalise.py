"""Every page of a file, decoded once and made into what the model sees: upright, 8-bit, resized
to the model's own resolution and encoded as the smaller of JPEG and PNG.

Formats: PNG, JPEG (CMYK and progressive too), GIF, WebP, BMP, TIFF, HEIC/HEIF (pillow-heif),
AVIF (Pillow) and PDF (pypdfium2). A file of several pages or frames gives that many pages.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from PIL import Image, ImageChops, ImageOps

from qbq.catalog import ModelSpec
from qbq.errors import ImageError
from qbq.images import FORMAT_NAMES, describe_unknown, open_image, sniff
from qbq.tokens import view_size

__all__ = [
    "JPEG_QUALITY",
    "MAX_PAGES_PER_FILE",
    "NORMALISER_VERSION",
    "PDF_NOMINAL_DPI",
    "NormalisedImage",
    "normalise_file",
    "profile_of",
]

#: Changes whenever the bytes the normaliser writes for an input change (part of the cache key).
NORMALISER_VERSION: Final = "n1"
#: JPEG quality of normalised pages: at 85 handwriting and the truth QR stay sharp at the model's
#: resolution; see the README's intake table for the bytes and PSNR measured at 60-95.
JPEG_QUALITY: Final = 85
#: A file with more pages or frames than this is refused (a class of 100 × 8 pages fits).
MAX_PAGES_PER_FILE: Final = 2_000
#: PDF pages are measured as if scanned at this resolution (A4: 2480×3508 px) before being
#: rendered straight at the model's size; the PDF itself has no pixel size.
PDF_NOMINAL_DPI: Final = 300
#: An RGB page whose pixels are all within this channel spread of grey is sent as greyscale...
_GREY_SPREAD: Final = 24
#: ...allowing this share of coloured pixels (scanner fringes around black text).
_GREY_COLOURED_SHARE: Final = 0.0005
#: Greyscale pages go to PNG as this many grey levels (a step of 17 between them).
_GREY_LEVELS: Final = 16
_GREY_STEP: Final = 255 // (_GREY_LEVELS - 1)
# pdfium is not thread-safe (pypdfium2's documentation): one document at a time per process.
_PDF_LOCK = threading.Lock()


@dataclass(frozen=True)
class NormalisedImage:
    """One page as the model will see it.

    `data` is JPEG or PNG (`mime`), `width`×`height` pixels; `source_width`×`source_height` is the
    upright size before resizing (for PDF pages: at `PDF_NOMINAL_DPI`). `kind` is the file's type.
    """

    data: bytes
    mime: str
    width: int
    height: int
    source_width: int
    source_height: int
    kind: str


def profile_of(spec: ModelSpec) -> str:
    """Names the target resolution rule of a model family (models sharing it share the cache)."""
    image = spec.image
    if image.family == "tile":
        return "tile-2048-768"
    return f"patch-{image.max_patches}"


def normalise_file(data: bytes, *, spec: ModelSpec, what: str, max_pixels: int,
                   max_pages: int = MAX_PAGES_PER_FILE) -> list[NormalisedImage]:
    """Every page or frame of `data`, in order, normalised for `spec`.

    The type comes from the content, never a name. Any problem is an `ImageError` naming `what`
    (and the page number in a file of several), the type found and the problem in words.
    """
    kind = sniff(data)
    if kind is None:
        raise ImageError(f"{what}: {describe_unknown(data)} - qbq reads PNG, JPEG, WebP, GIF, "
                         "BMP, TIFF, HEIC/HEIF, AVIF and PDF")
    if kind == "PDF":
        return _pdf_pages(data, spec=spec, what=what, max_pages=max_pages)
    out: list[NormalisedImage] = []
    with open_image(data, kind, max_pixels=max_pixels, what=what) as img:
        n = getattr(img, "n_frames", 1)
        if n > max_pages:
            raise ImageError(f"{what}: {FORMAT_NAMES[kind]} file has {n:,} frames, over the "
                             f"limit of {max_pages:,} pages per file")
        for index in range(n):
            label = what if n == 1 else f"{what} page {index + 1} of {n}"
            out.append(_frame(img, index, kind, spec=spec, what=label, max_pixels=max_pixels))
    return out


def _frame(img: Image.Image, index: int, kind: str, *, spec: ModelSpec, what: str,
           max_pixels: int) -> NormalisedImage:
    name = FORMAT_NAMES[kind]
    # Decoders of untrusted bytes fail in many ways (OSError, ValueError, SyntaxError, struct
    # errors, ...); each is this page's problem, reported in words.
    try:
        if index:
            img.seek(index)
        width, height = img.size
        if width * height > max_pixels:
            raise ImageError(f"{what}: {name} frame of {width:,}×{height:,} pixels is over the "
                             f"cap of {max_pixels:,} pixels (QBQ_MAX_PAGE_PIXELS)")
        upright = _upright_size(img)
        target = view_size(spec, *upright)
        if kind == "JPEG" and index == 0:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that is still at least the target.
            swapped = upright != img.size
            img.draft(None, (target[1], target[0]) if swapped else target)
        img.load()
        frame = ImageOps.exif_transpose(img) if index == 0 else img.copy()
        frame = _to_8bit(frame)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"{what}: a damaged {name} file ({_words(exc)})") from exc
    return _finish(frame, target, upright, kind)


def _finish(frame: Image.Image, target: tuple[int, int], upright: tuple[int, int],
            kind: str) -> NormalisedImage:
    if frame.size != target:
        frame = frame.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if frame.mode == "RGB" and _is_grey(frame):
        frame = frame.convert("L")
    data, mime = _encode(frame)
    return NormalisedImage(data, mime, frame.width, frame.height, upright[0], upright[1], kind)


def _words(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text or "object at 0x" in text or "<" in text:
        return type(exc).__name__
    return text[:160]


def _upright_size(img: Image.Image) -> tuple[int, int]:
    """The size after the EXIF orientation is applied (5-8 turn the image by 90°)."""
    orientation = img.getexif().get(0x0112)
    width, height = img.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _to_8bit(img: Image.Image) -> Image.Image:
    """8-bit greyscale (L) or RGB; alpha flattened on white, 16-bit and float scaled to 8 bits."""
    mode = img.mode
    if mode == "L":
        return img
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I") or mode == "F":
        return _scale_to_8bit(img)
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        mode == "P" and "transparency" in img.info)
    if has_alpha:
        grey = mode in ("LA", "La")
        rgba = img.convert("LA" if grey else "RGBA")
        base = Image.new("L" if grey else "RGB", img.size, "white")
        base.paste(rgba.convert("L" if grey else "RGB"), mask=rgba.getchannel("A"))
        return base
    return img.convert("RGB")


def _scale_to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale to 8 bits: 16-bit by its full range, other
    ranges by their extrema."""
    wide = img.convert("F")
    low, high = wide.getextrema()
    assert isinstance(low, float | int) and isinstance(high, float | int)
    if img.mode.startswith("I;16") or (low >= 0 and high <= 65535 and high > 255):
        low, high = 0.0, 65535.0
    elif low >= 0 and high <= 255:
        low, high = 0.0, 255.0
    span = (high - low) or 1.0
    return wide.point(lambda v: (v - low) * 255.0 / span).convert("L")


def _is_grey(img: Image.Image) -> bool:
    """Whether an RGB image has (almost) no colour: a colour scan of a black-and-white page."""
    r, g, b = img.split()
    spread = ImageChops.lighter(ImageChops.difference(r, g), ImageChops.difference(g, b))
    coloured = sum(spread.histogram()[_GREY_SPREAD + 1 :])
    return coloured <= _GREY_COLOURED_SHARE * img.width * img.height


def _encode(img: Image.Image) -> tuple[bytes, str]:
    """The smaller of JPEG (quality `JPEG_QUALITY`) and, where it can win, PNG: a greyscale page
    as 16 grey levels (4-bit; text keeps its black, white and edge shading), a colour image of at
    most 256 colours losslessly. Metadata (EXIF, GPS, ICC) is never copied."""
    jpeg = _save(img, "JPEG", quality=JPEG_QUALITY, optimize=True)
    if img.mode == "L":
        levels = img.point(lambda v: round(v / _GREY_STEP) * _GREY_STEP)
        png = _save(levels.convert("P", palette=Image.Palette.ADAPTIVE, colors=_GREY_LEVELS),
                    "PNG", bits=4)
    elif img.getcolors(256) is not None:
        png = _save(img.convert("P", palette=Image.Palette.ADAPTIVE, colors=256), "PNG")
    else:  # a photo or a colour scan: PNG is many times larger and slow to write
        return jpeg, "image/jpeg"
    if len(png) <= len(jpeg):
        return png, "image/png"
    return jpeg, "image/jpeg"


def _save(img: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


# --- PDF ----------------------------------------------------------------------------------------


def _pdf_pages(data: bytes, *, spec: ModelSpec, what: str, max_pages: int) -> list[NormalisedImage]:
    import pypdfium2 as pdfium

    with _PDF_LOCK:
        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            raise ImageError(f"{what}: a damaged or password-protected PDF ({_words(exc)})") from exc
        try:
            n = len(pdf)
            if n == 0:
                raise ImageError(f"{what}: the PDF has no pages")
            if n > max_pages:
                raise ImageError(f"{what}: the PDF has {n:,} pages, over the limit of "
                                 f"{max_pages:,} pages per file")
            return [_finish(img, target, nominal, "PDF") for img, target, nominal in
                    _render(pdf, spec, what, n)]
        finally:
            pdf.close()


def _render(pdf: object, spec: ModelSpec, what: str,
            n: int) -> Iterator[tuple[Image.Image, tuple[int, int], tuple[int, int]]]:
    """Each page rendered straight at the model's size (its nominal size at `PDF_NOMINAL_DPI`)."""
    import pypdfium2 as pdfium

    assert isinstance(pdf, pdfium.PdfDocument)
    for index in range(n):
        label = what if n == 1 else f"{what} page {index + 1} of {n}"
        try:
            page = pdf[index]
            try:
                width_pt, height_pt = page.get_size()
                if not (width_pt >= 1 and height_pt >= 1):  # also refuses NaN
                    raise ImageError(f"{label}: the PDF page has no usable size")
                nominal = (max(1, round(width_pt * PDF_NOMINAL_DPI / 72)),
                           max(1, round(height_pt * PDF_NOMINAL_DPI / 72)))
                target = view_size(spec, *nominal)
                scale = max(target[0] / width_pt, target[1] / height_pt)
                bitmap = page.render(scale=scale, may_draw_forms=False)
                img = bitmap.to_pil().convert("RGB")
            finally:
                page.close()
        except ImageError:
            raise
        except pdfium.PdfiumError as exc:
            raise ImageError(f"{label}: a damaged PDF page ({_words(exc)})") from exc
        yield img, target, nominal
