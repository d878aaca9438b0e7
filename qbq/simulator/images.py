"""Loading the images of a chat request as OpenAI does: data URIs decoded, http(s) URLs fetched."""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from qbq.errors import ImageError
from qbq.images import decode_data_uri, inspect_image
from qbq.simulator.validation import SimAPIError

__all__ = ["LoadedImage", "load_images"]

#: OpenAI's limit on one image.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
_FETCH_CONCURRENCY = 16


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


@dataclass(frozen=True)
class LoadedImage:
    """The bytes and pixel size of one image URL of a request."""

    data: bytes
    width: int
    height: int


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
            data = decode_data_uri(url, what=param)
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
        raise SimAPIError(
            400,
            f"Invalid image: the image at '{param}' could not be decoded. Supported formats "
            "are png, jpeg, gif and webp.",
            param=param,
            code="invalid_image_format",
        ) from exc
    return LoadedImage(data, info.width, info.height)


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
