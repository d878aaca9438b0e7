"""Loading the images of a chat request as OpenAI does: data URIs decoded, http(s) URLs fetched;
and reading the ground truth a sample page carries (its `qbq:truth` PNG chunk, else its QR code).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import ssl
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import httpx
import zxingcpp
from PIL import Image

from qbq.errors import ImageError
from qbq.images import (
    PROVIDER_FORMATS,
    TRUTH_QR_PREFIX,
    decode_data_uri,
    inspect_image,
    parse_truth,
    sniff,
)
from qbq.images import read_truth as read_truth_chunk
from qbq.simulator.validation import SimAPIError

__all__ = ["UNSUPPORTED_IMAGE_MESSAGE", "LoadedImage", "load_images", "read_truth"]

# OpenAI's reply to an image it cannot take, as API users report it (param null).
UNSUPPORTED_IMAGE_MESSAGE: Final = (
    "You uploaded an unsupported image. Please make sure your image has of one the following "
    "formats: ['png', 'jpeg', 'gif', 'webp']."
)

#: OpenAI's limit on one image.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
_FETCH_CONCURRENCY = 16


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


@dataclass(frozen=True)
class LoadedImage:
    """The bytes, pixel size and ground truth (if it carries one) of one image URL of a request."""

    data: bytes
    width: int
    height: int
    truth: dict[str, Any] | None = None


class _TruthCache:
    """Truth per image content (sha256): a re-asked or re-sent page is decoded once."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, dict[str, Any] | None] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[bool, dict[str, Any] | None]:
        with self._lock:
            if key not in self._items:
                return False, None
            self._items.move_to_end(key)
            return True, self._items[key]

    def put(self, key: str, value: dict[str, Any] | None) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)


_TRUTHS: Final = _TruthCache(4096)


def read_truth(data: bytes) -> dict[str, Any] | None:
    """The ground truth of a page image: its `qbq:truth` PNG chunk when present, else the JSON of
    a QR code reading `qbq:truth:{...}` anywhere on the page (which survives qbq's normalisation:
    JPEG, downscaling, rotation, PDF rendering)."""
    key = hashlib.sha256(data).hexdigest()
    found, truth = _TRUTHS.get(key)
    if found:
        return truth
    truth = read_truth_chunk(data)
    if truth is None:
        truth = _qr_truth(data)
    _TRUTHS.put(key, truth)
    return truth


def _qr_truth(data: bytes) -> dict[str, Any] | None:
    if sniff(data) not in PROVIDER_FORMATS:
        return None
    try:
        with Image.open(io.BytesIO(data), formats=list(PROVIDER_FORMATS)) as img:
            grey = img.convert("L")
    # a malformed image simply carries no truth (the loader has refused it already)
    except Exception:  # noqa: BLE001
        return None
    for code in zxingcpp.read_barcodes(grey, formats=zxingcpp.BarcodeFormats(zxingcpp.QRCode)):
        if code.text.startswith(TRUTH_QR_PREFIX):
            return parse_truth(code.text[len(TRUTH_QR_PREFIX):])
    return None


async def _fetch(client: httpx.AsyncClient, url: str) -> bytes:
    failed = SimAPIError(400, f"Error while downloading {url}.", code="invalid_image_url")
    try:
        response = await client.get(url)
    except httpx.HTTPError as exc:
        raise failed from exc
    if response.status_code != 200:
        raise failed
    return response.content


async def _load(
    client: httpx.AsyncClient, semaphore: asyncio.Semaphore, param: str, url: str
) -> LoadedImage:
    if url[:5].lower() == "data:":
        try:
            data = decode_data_uri(url, what=param).data
        except ImageError as exc:
            raise SimAPIError(
                400, f"Invalid image: {exc.message}", param=param, code="invalid_image_format"
            ) from exc
    else:
        async with semaphore:
            data = await _fetch(client, url)
    if len(data) > MAX_IMAGE_BYTES:
        raise SimAPIError(
            400,
            f"Invalid image: {param} is {len(data)} bytes; images may be at most "
            f"{MAX_IMAGE_BYTES} bytes.",
            param=param,
            code="image_too_large",
        )
    try:
        info = inspect_image(data, what=param)
    except ImageError as exc:
        # OpenAI's reply names no image (param null): a client must bisect to find it.
        raise SimAPIError(400, UNSUPPORTED_IMAGE_MESSAGE, code="invalid_image_format") from exc
    truth = await asyncio.to_thread(read_truth, data)
    return LoadedImage(data, info.width, info.height, truth)


async def load_images(parts: Iterable[tuple[str, str]], timeout_s: float) -> dict[str, LoadedImage]:
    """Every distinct image URL of `parts` ((param, url) pairs) loaded and measured.

    Raises `SimAPIError` (400) for the first image that cannot be downloaded or decoded.
    """
    first_param: dict[str, str] = {}
    for param, url in parts:
        first_param.setdefault(url, param)
    if not first_param:
        return {}
    semaphore = asyncio.Semaphore(_FETCH_CONCURRENCY)
    urls = list(first_param)
    # A client only when something must be downloaded, with the TLS context made once:
    # loading the CA bundle costs ~40 ms, which every request would otherwise pay.
    # trust_env=False: the simulator talks to loopback test servers, never through a proxy.
    needs_client = any(url[:5].lower() != "data:" for url in urls)
    async with httpx.AsyncClient(
        timeout=timeout_s,
        follow_redirects=True,
        trust_env=False,
        verify=_tls_context() if needs_client else False,
    ) as client:
        # Wait for all, then report the first failure in prompt order (deterministic).
        results = await asyncio.gather(
            *(_load(client, semaphore, first_param[url], url) for url in urls),
            return_exceptions=True,
        )
    loaded: dict[str, LoadedImage] = {}
    for url, result in zip(urls, results, strict=True):
        if isinstance(result, BaseException):
            raise result
        loaded[url] = result
    return loaded
