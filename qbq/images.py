"""Page images at the byte level: what a file is (by content), data URIs, hashes and the truth chunk.

Pillow is only ever asked to parse the formats qbq means to read (`READABLE`), each with its
own plugin named in `formats=`; the rest of Pillow's parsers never see untrusted bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import warnings
from dataclasses import dataclass
from typing import Any, Final

from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from qbq.errors import ImageError

__all__ = [
    "FORMAT_NAMES",
    "PROVIDER_FORMATS",
    "READABLE",
    "TRUTH_KEY",
    "TRUTH_QR_PREFIX",
    "DataUri",
    "ImageInfo",
    "content_hash",
    "data_uri_length",
    "data_uri_problem",
    "decode_data_uri",
    "describe_unknown",
    "encode_data_uri",
    "inspect_image",
    "open_image",
    "parse_truth",
    "read_truth",
    "sniff",
]

#: The PNG tEXt chunk of a sample page that holds its truth JSON (see DESIGN.md).
TRUTH_KEY = "qbq:truth"
#: A sample page's QR code reads this followed by the same JSON (it survives normalisation).
TRUTH_QR_PREFIX = "qbq:truth:"

#: Kinds qbq reads, as `sniff` names them. PDF is rendered by pypdfium2, the rest by Pillow.
READABLE: Final = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "HEIF", "AVIF", "PDF")
#: What OpenAI takes as an image part (https://platform.openai.com/docs/guides/images-vision):
#: PNG, JPEG, WebP and non-animated GIF.
PROVIDER_FORMATS: Final = ("PNG", "JPEG", "WEBP", "GIF")
#: How a kind is named to a person.
FORMAT_NAMES: Final = {
    "PNG": "PNG", "JPEG": "JPEG", "GIF": "GIF", "WEBP": "WebP", "BMP": "BMP", "TIFF": "TIFF",
    "HEIF": "HEIC/HEIF", "AVIF": "AVIF", "PDF": "PDF",
}
_MIME: Final = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif",
                "WEBP": "image/webp"}
#: Pillow's plugin for each kind (HEIF comes from pillow-heif, AVIF from Pillow's own plugin,
#: both registered on first use so importing this module stays cheap).
_PILLOW_FORMAT: Final = {"PNG": "PNG", "JPEG": "JPEG", "GIF": "GIF", "WEBP": "WEBP",
                         "BMP": "BMP", "TIFF": "TIFF", "HEIF": "HEIF", "AVIF": "AVIF"}
# Referenced so linters keep the imports: importing a plugin registers it with Pillow, and a
# format named in `formats=` that is not registered would make Pillow import all of its plugins.
_PLUGINS: Final = (BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin,
                   TiffImagePlugin, WebPImagePlugin)

# Pillow's own bomb check only warns below 179 MP; qbq's cap (`open_image`) is lower and an
# error, so the warning would only repeat it. (A filter set once: `catch_warnings` per call is
# not thread-safe.)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

_HEIF_BRANDS: Final = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1",
                       b"mif2", b"miaf"}
_AVIF_BRANDS: Final = {b"avif", b"avis"}
# Content that people send by mistake, named so the error says what it is.
_OTHER_KINDS: Final = (
    (b"DDS ", "a DDS texture"), (b"8BPS", "a Photoshop document"), (b"PK\x03\x04", "a ZIP archive "
     "(or a Word/OpenOffice document)"), (b"\xd0\xcf\x11\xe0", "an old Office document"),
    (b"{\\rtf", "an RTF document"), (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xffO\xffQ", "a JPEG 2000 codestream"), (b"<svg", "an SVG drawing"),
    (b"<?xml", "an XML document (an SVG drawing?)"), (b"<!DOCTYPE", "an HTML page"),
    (b"<html", "an HTML page"), (b"{", "JSON text"), (b"P1", "a PBM image"), (b"P4", "a PBM image"),
    (b"P5", "a PGM image"), (b"P6", "a PPM image"), (b"\x0a\x05\x01", "a PCX image"),
    (b"icns", "a macOS icon"), (b"\x00\x00\x01\x00", "a Windows icon"), (b"gimp xcf", "a GIMP image"),
)


@dataclass(frozen=True)
class ImageInfo:
    """Size, type and content hash of an image the provider accepts as it is."""

    width: int
    height: int
    mime: str
    sha256: str
    n_bytes: int


@dataclass(frozen=True)
class DataUri:
    """A decoded data URI: the media type it was labelled with and its bytes."""

    label: str
    data: bytes


def content_hash(data: bytes) -> str:
    """sha256 hex of `data`."""
    return hashlib.sha256(data).hexdigest()


def sniff(data: bytes) -> str | None:
    """The kind of `data` from its first bytes (one of `READABLE`), or None when it is none of them."""
    head = data[:32]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[4:8] == b"ftyp":
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, min(len(head), 32), 4)}
        if brands & _AVIF_BRANDS:
            return "AVIF"
        if brands & _HEIF_BRANDS:
            return "HEIF"
    # PDF readers accept the header anywhere in the first 1,024 bytes.
    if b"%PDF-" in data[:1024]:
        return "PDF"
    return None


def describe_unknown(data: bytes) -> str:
    """Words for content that is none of the readable kinds."""
    if not data:
        return "an empty file"
    stripped = data[:64].lstrip()
    for magic, words in _OTHER_KINDS:
        if data.startswith(magic) or stripped[: len(magic)].lower() == magic.lower():
            return words
    if data[4:8] == b"ftyp":
        return f"an ISO media file of brand '{data[8:12].decode('latin-1')}' (a video?)"
    return "not a recognised image or PDF"


def _register_heif() -> None:
    if "HEIF" in Image.OPEN:
        return
    from pillow_heif import register_heif_opener

    # No thumbnails, depth maps or auxiliary images: only the photo itself is decoded.
    register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)


def _register_avif() -> None:
    if "AVIF" not in Image.OPEN:
        from PIL import AvifImagePlugin

        assert AvifImagePlugin


def open_image(data: bytes, kind: str, *, max_pixels: int, what: str) -> Image.Image:
    """Open `data` (already sniffed as `kind`) with exactly that Pillow plugin; read the header only.

    Raises `ImageError` naming `what` for a header Pillow rejects or a size over `max_pixels`.
    """
    if kind == "HEIF":
        _register_heif()
    elif kind == "AVIF":
        _register_avif()
    name = FORMAT_NAMES.get(kind, kind)
    try:
        img = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMAT[kind]])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{what}: {name} image declares more than {max_pixels:,} pixels "
                         "(an absurd size; refused before decoding)") from exc
    # Pillow's parsers raise many kinds of error on malformed input; each is this page's fault.
    except Exception as exc:
        raise ImageError(f"{what}: a damaged or unsupported {name} file "
                         f"({_plain(exc)})") from exc
    width, height = img.size
    if width < 1 or height < 1 or width * height > max_pixels:
        img.close()
        raise ImageError(f"{what}: {name} image of {width:,}×{height:,} pixels is over the cap of "
                         f"{max_pixels:,} pixels (QBQ_MAX_PAGE_PIXELS)")
    return img


def _plain(exc: BaseException) -> str:
    """An exception in words, never a repr of a Python object."""
    text = str(exc).strip()
    if not text or "<" in text or "object at 0x" in text:
        return type(exc).__name__
    return text[:160]


def inspect_image(data: bytes, *, what: str, max_pixels: int = 50_000_000) -> ImageInfo:
    """Size and type of an image the provider accepts as it is (PNG, JPEG, WebP, GIF); header only.

    Anything else (another kind, or no image at all) is an `ImageError` naming `what`.
    """
    kind = sniff(data)
    if kind is None:
        raise ImageError(f"{what}: not a readable image ({describe_unknown(data)})")
    if kind not in PROVIDER_FORMATS:
        raise ImageError(f"{what}: image format {FORMAT_NAMES[kind]} is not accepted by the model")
    with open_image(data, kind, max_pixels=max_pixels, what=what) as img:
        width, height = img.size
    return ImageInfo(width, height, _MIME[kind], content_hash(data), len(data))


# --- data URIs ----------------------------------------------------------------------------------

_WHITESPACE = re.compile(r"\s+")
# Labels besides image/* that may hold a page file (the content decides what it is).
_FILE_LABELS: Final = ("application/pdf", "application/octet-stream")
_B64_CHARS = re.compile(r"^[A-Za-z0-9+/=_\-%\s]+$")


def _looks_like_base64_of(text: str) -> str | None:
    """The kind of file `text` would be the base64 of (from its first characters), if any."""
    head = _WHITESPACE.sub("", text[:400]).translate(str.maketrans("-_", "+/"))
    head = head[: len(head) // 4 * 4]
    try:
        return sniff(base64.b64decode(head, validate=True))
    except (binascii.Error, ValueError):
        return None


def data_uri_problem(uri: str) -> str | None:
    """What is wrong with the shape of a data URI (None when it can be decoded as base64).

    Accepted: `data:<type>[;params];base64,<base64>` with any whitespace or line breaks in the
    base64, the standard or the URL-safe alphabet, with or without padding.
    """
    if uri[:5].lower() != "data:":
        kind = _looks_like_base64_of(uri) if _B64_CHARS.match(uri[:400]) else None
        if kind is not None:
            mime = _MIME.get(kind, "application/pdf" if kind == "PDF" else f"image/{kind.lower()}")
            return (f"not a data URI: it has no 'data:' prefix; the text looks like raw base64 of "
                    f"a {FORMAT_NAMES[kind]} file - send it as 'data:{mime};base64,' followed "
                    "by the base64")
        return "not a data URI: it must start with 'data:<type>;base64,' (e.g. data:image/png;base64,)"
    head, sep, body = uri.partition(",")
    if not sep:
        return "data URI has no ',' between its header ('data:<type>;base64') and its data"
    params = [p.strip().lower() for p in head[5:].split(";")]
    label = params[0]
    if label and not (label.startswith("image/") or label in _FILE_LABELS):
        return (f"data URI is labelled '{label[:40]}'; qbq reads images and PDFs "
                "(data:image/...;base64, or data:application/pdf;base64,)")
    if "base64" not in params[1:]:
        looks = " (its data looks like base64)" if _looks_like_base64_of(body) else ""
        return (f"data URI header '{head[:60]}' has no ';base64' marker{looks}: qbq reads base64 "
                f"data URIs only - write '{head[:60]};base64,' before the base64")
    return None


def decode_data_uri(uri: str, *, what: str, max_bytes: int | None = None) -> DataUri:
    """The label and bytes of a base64 data URI (see `data_uri_problem` for the forms accepted)."""
    problem = data_uri_problem(uri)
    if problem is not None:
        raise ImageError(f"{what}: {problem}")
    head, _, body = uri.partition(",")
    label = head[5:].split(";")[0].strip().lower() or "text/plain"
    if max_bytes is not None and len(body) // 4 * 3 > max_bytes + 3 and \
            len(_WHITESPACE.sub("", body)) // 4 * 3 > max_bytes + 3:
        raise ImageError(f"{what}: data URI holds more than {max_bytes:,} bytes "
                         "(QBQ_MAX_PAGE_BYTES)")
    text = _WHITESPACE.sub("", body)
    if "%" in text:  # percent-encoded base64 ("%2B", "%2F", "%3D"), as some URL builders write it
        from urllib.parse import unquote

        text = unquote(text)
    text = text.translate(str.maketrans("-_", "+/")).rstrip("=")
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        bad = next((i for i, c in enumerate(text) if not (c.isalnum() or c in "+/=")), None)
        where = f" (a '{text[bad]}' at character {bad:,})" if bad is not None else \
            " (its length is not a whole number of base64 groups)"
        raise ImageError(f"{what}: data URI data is not valid base64{where}") from exc
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageError(f"{what}: data URI holds {len(data):,} bytes, over the cap of "
                         f"{max_bytes:,} (QBQ_MAX_PAGE_BYTES)")
    return DataUri(label, data)


def encode_data_uri(data: bytes, mime: str) -> str:
    """`data:<mime>;base64,<data>`."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def data_uri_length(n_bytes: int, mime: str) -> int:
    """Characters of the data URI of `n_bytes` bytes of type `mime` (what it adds to a request)."""
    return len(f"data:{mime};base64,") + 4 * ((n_bytes + 2) // 3)


def read_truth(data: bytes) -> dict[str, Any] | None:
    """The ground truth a sample PNG carries in its tEXt chunk `qbq:truth`, if any (PNG only)."""
    if sniff(data) != "PNG":
        return None
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            text = getattr(img, "text", {}).get(TRUTH_KEY)
    # the chunk reader may meet any malformed PNG; no truth is the answer for all of them
    except Exception:  # noqa: BLE001
        return None
    return parse_truth(text)


def parse_truth(text: str | None) -> dict[str, Any] | None:
    """The truth object from its JSON text, or None when the text is not a JSON object."""
    if not text:
        return None
    try:
        truth = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    return truth if isinstance(truth, dict) else None
