"""Per-request and per-image caps of OpenAI's vision input, with OpenAI's 400s.

From https://platform.openai.com/docs/guides/images-vision ("Image input requirements"):
PNG, JPEG, WEBP and non-animated GIF; up to 50 MB of total payload per request; up to 500
individual image inputs per request; (20 MB per image is checked where images are loaded,
in `qbq.simulator.images`).

Wording: an unsupported image gets OpenAI's reply as seen by API users ("You uploaded an
unsupported image. Please make sure your image has of one the following formats: ['png',
'jpeg', 'gif', 'webp'].", code `invalid_image_format`, `param` null: OpenAI does not say which
image). The messages for too many images and an oversized body are not documented; those
here are the simulator's and name the limit.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

from PIL import Image, UnidentifiedImageError

from qbq.simulator.images import UNSUPPORTED_IMAGE_MESSAGE, LoadedImage
from qbq.simulator.validation import SimAPIError

__all__ = [
    "MAX_IMAGES_PER_REQUEST",
    "MAX_REQUEST_BYTES",
    "UNSUPPORTED_IMAGE_MESSAGE",
    "check_body_size",
    "check_image_count",
    "check_image_formats",
]

MAX_REQUEST_BYTES = 50 * 1024 * 1024
MAX_IMAGES_PER_REQUEST = 500
_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF"})


def check_body_size(size: int) -> None:
    """400 for a request body over 50 MB (`size` in bytes)."""
    if size > MAX_REQUEST_BYTES:
        raise SimAPIError(
            400,
            f"Request too large: the request body is {size} bytes; a request may carry at most "
            f"{MAX_REQUEST_BYTES} bytes (50 MB) of payload, images included.",
            code="request_too_large",
        )


def check_image_count(count: int) -> None:
    """400 for more than 500 image inputs in one request."""
    if count > MAX_IMAGES_PER_REQUEST:
        raise SimAPIError(
            400,
            f"Invalid 'messages': too many images ({count}). A request may contain at most "
            f"{MAX_IMAGES_PER_REQUEST} image inputs.",
            param="messages",
            code="too_many_images",
        )


def _supported(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in _FORMATS:
                return False
            return not (img.format == "GIF" and getattr(img, "n_frames", 1) > 1)
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def check_image_formats(images: Iterable[LoadedImage]) -> None:
    """400 `invalid_image_format` for an image that is not PNG, JPEG, WEBP or a still GIF."""
    for image in images:
        if not _supported(image.data):
            raise SimAPIError(400, UNSUPPORTED_IMAGE_MESSAGE, code="invalid_image_format")
