"""Page images: size from the header, content hashes, data URIs and the `qbq:truth` chunk."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from qbq.errors import ImageError

__all__ = [
    "TRUTH_KEY",
    "ImageInfo",
    "content_hash",
    "decode_data_uri",
    "encode_data_uri",
    "inspect_image",
    "read_truth",
]

TRUTH_KEY = "qbq:truth"

_MIME_BY_FORMAT = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}


@dataclass(frozen=True)
class ImageInfo:
    """What qbq needs to know about one image: its size, type and content hash."""

    width: int
    height: int
    mime: str
    sha256: str
    n_bytes: int


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inspect_image(data: bytes, *, what: str) -> ImageInfo:
    """Read the image header (not the pixels); `what` names the page in errors."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            fmt = img.format or ""
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError(f"{what}: not a readable image ({exc})") from exc
    mime = _MIME_BY_FORMAT.get(fmt)
    if mime is None:
        raise ImageError(f"{what}: image format {fmt or 'unknown'} is not accepted by the model")
    return ImageInfo(width, height, mime, content_hash(data), len(data))


def decode_data_uri(uri: str, *, what: str) -> bytes:
    """Bytes of a `data:<mime>;base64,<data>` URI."""
    head, sep, body = uri.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise ImageError(f"{what}: not a base64 data URI (data:<mime>;base64,...)")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"{what}: data URI is not valid base64 ({exc})") from exc


def encode_data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def read_truth(data: bytes) -> dict[str, Any] | None:
    """The ground truth a sample page carries in its PNG tEXt chunk `qbq:truth`, if any."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            text = getattr(img, "text", {}).get(TRUTH_KEY)
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    if not text:
        return None
    try:
        truth = json.loads(text)
    except json.JSONDecodeError:
        return None
    return truth if isinstance(truth, dict) else None
