"""One page source (a path, a URL or a data URI) in, its normalised pages out.

`PageReader` reads the bytes (files through `PageFiles`, URLs through the fetcher, data URIs
decoded), looks the content up in the page cache, normalises it on a miss and returns one
`Page` per page or frame of the file.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from qbq.catalog import ModelSpec
from qbq.domain import Page, PageSource
from qbq.errors import ConfigurationError, ImageError, PageFetchError
from qbq.images import (
    FORMAT_NAMES,
    PROVIDER_FORMATS,
    content_hash,
    data_uri_length,
    decode_data_uri,
    describe_unknown,
    open_image,
    sniff,
)
from qbq.intake.cache import CachedImage, PageCache
from qbq.intake.files import PageFiles
from qbq.intake.normalise import NORMALISER_VERSION, normalise_file, profile_of
from qbq.intake.ssrf import AddressPolicy, check_url, host_of
from qbq.settings import QbqSettings

__all__ = ["MAX_IMAGE_BYTES", "Fetcher", "PageReader", "SourceBytes", "StudentPageError", "page_id"]

#: Fetches the bytes behind an http(s) URL; raises `ImageError` (`PageFetchError`) when it cannot.
Fetcher = Callable[[str], bytes]
#: The provider's limit on one image (https://platform.openai.com/docs/guides/images-vision).
MAX_IMAGE_BYTES: Final = 20 * 1024 * 1024


class StudentPageError(Exception):
    """A student's page URL could not be fetched or read: that student fails, not the request.

    Carries the `PageFetchError` or `ImageError` (whose message names the page) as `error`.
    """

    def __init__(self, error: ImageError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True)
class SourceBytes:
    """A file's bytes and how its pages are named in errors."""

    data: bytes
    what: str
    source: PageSource


class PageReader:
    """Reads and normalises the pages of one request for one model (thread-safe)."""

    def __init__(self, *, base_dir: Path, settings: QbqSettings, spec: ModelSpec,
                 fetch: Fetcher | None, cache: PageCache | None = None) -> None:
        self.settings = settings
        self.spec = spec
        self.fetch = fetch
        self.files = PageFiles(base_dir, roots=settings.page_roots,
                               max_bytes=settings.max_page_bytes)
        self.policy = AddressPolicy(allow_private=settings.allow_private_urls)
        self.cache = cache or PageCache(settings.page_cache_dir,
                                        max_age_days=settings.page_cache_max_age_days)
        self.profile = profile_of(spec)
        # Decoding a large scan takes ~100 MB; at most one per core at a time.
        self._decoding = threading.BoundedSemaphore(max(1, min(4, os.cpu_count() or 1)))

    # -- bytes -------------------------------------------------------------------------------

    def read_path(self, path: str, where: str) -> SourceBytes:
        """The file at `path` (relative to the request's folder), through `PageFiles`."""
        data = self.files.read(path, f"{where}.path")
        return SourceBytes(data, f"{where}.path ({self.files.display(path)[:200]})", "path")

    def read_data_uri(self, uri: str, where: str) -> SourceBytes:
        """The bytes of a base64 data URI (its label is not trusted: the content decides)."""
        decoded = decode_data_uri(uri, what=f"{where}.data_uri",
                                  max_bytes=self.settings.max_page_bytes)
        return SourceBytes(decoded.data, f"{where}.data_uri", "data_uri")

    def check_url(self, url: str, where: str) -> None:
        """Static URL problems (scheme, credentials, a literal private address) are the
        request's fault: `ImageError`, never a fetch."""
        try:
            check_url(url, self.policy)
        except PageFetchError as exc:
            raise ImageError(f"{where}.url: {exc.message}") from exc

    def read_url(self, url: str, where: str, page_id: str | None) -> SourceBytes:
        """The bytes behind `url`; a failure is a `PageFetchError` naming the page and host."""
        self.check_url(url, where)
        if self.fetch is None:
            raise ImageError(f"{where}.url: page URLs cannot be fetched here (no fetcher)")
        name = f"page {page_id}" if page_id else where
        try:
            data = self.fetch(url)
        except PageFetchError as exc:
            raise type(exc)(f"{name}: could not be fetched: {exc.message} (host {host_of(url)})",
                            exc.status_code) from exc
        except ImageError as exc:
            raise PageFetchError(f"{name}: could not be fetched: {exc.message}") from exc
        return SourceBytes(data, f"{name} (downloaded from host {host_of(url)})", "url")

    # -- pages -------------------------------------------------------------------------------

    def normalised(self, src: SourceBytes) -> tuple[str, list[CachedImage]]:
        """The file's sha256 and its normalised pages (from the cache when there)."""
        sha = content_hash(src.data)
        key = content_hash(f"{NORMALISER_VERSION}|{self.profile}|{sha}".encode())
        cached = self.cache.lookup(key)
        if cached is not None:
            return sha, cached
        with self._decoding:
            images = normalise_file(src.data, spec=self.spec, what=src.what,
                                    max_pixels=self.settings.max_page_pixels)
        for img in images:
            if len(img.data) > MAX_IMAGE_BYTES:  # cannot happen at ≤ 2048 px; checked anyway
                raise ImageError(f"{src.what}: normalised page is {len(img.data):,} bytes, over "
                                 f"the provider's {MAX_IMAGE_BYTES:,}")
        try:
            stored = self.cache.store(key, [(i.data, i.mime, i.width, i.height, i.source_width,
                                             i.source_height) for i in images])
        except OSError as exc:
            raise ConfigurationError(f"cannot write normalised pages to the page cache "
                                     f"{self.cache.folder} ({exc.strerror}); set "
                                     "QBQ_PAGE_CACHE_DIR to a writable folder") from exc
        return sha, stored

    def pages(self, src: SourceBytes, ids: Callable[[str, int, int], str]) -> list[Page]:
        """One `Page` per page of the file; `ids(sha256, n, count)` names page n (1-based)."""
        sha, images = self.normalised(src)
        return [
            Page(ids(sha, n, len(images)), src.source, str(img.path), img.width, img.height,
                 data_uri_length(img.n_bytes, img.mime), digest=img.digest,
                 original_bytes=len(src.data), original_width=img.source_width,
                 original_height=img.source_height,
                 content_sha=sha if len(images) == 1 else f"{sha}#p{n}")
            for n, img in enumerate(images, start=1)
        ]

    def passed_url(self, url: str, where: str, page_id: str, width: int | None,
                   height: int | None) -> Page:
        """A URL page sent to the provider as is (QBQ_PAGE_URLS=pass), measured by a download
        when its size is not declared."""
        self.check_url(url, where)
        if width is not None and height is not None:
            return Page(page_id, "url", url, width, height, len(url))
        src = self.read_url(url, where, page_id)
        kind = sniff(src.data)
        if kind not in PROVIDER_FORMATS:
            found = FORMAT_NAMES[kind] if kind else describe_unknown(src.data)
            raise PageFetchError(f"page {page_id}: is {found}; with QBQ_PAGE_URLS=pass the "
                                 "provider gets the URL and reads PNG, JPEG, WebP and GIF only "
                                 "(QBQ_PAGE_URLS=fetch converts it)")
        if len(src.data) > MAX_IMAGE_BYTES:
            raise PageFetchError(f"page {page_id}: {len(src.data):,} bytes, over the provider's "
                                 f"{MAX_IMAGE_BYTES:,} per image (QBQ_PAGE_URLS=fetch shrinks it)")
        with open_image(src.data, kind, max_pixels=self.settings.max_page_pixels,
                        what=src.what) as img:
            w, h = img.size
        return Page(page_id, "url", url, w, h, len(url), original_bytes=len(src.data),
                    original_width=w, original_height=h, content_sha=content_hash(src.data))


def page_id(declared: str | None) -> Callable[[str, int, int], str]:
    """Ids for the pages of one file: the declared id (with `#p<n>` when the file has several
    pages), or `sha256:<hex>` of the original content (likewise)."""

    def name(sha: str, n: int, count: int) -> str:
        base = declared or f"sha256:{sha}"
        return base if count == 1 else f"{base}#p{n}"

    return name
