"""The page cache: normalised page images on disk, keyed by the source's content hash and the model
family, shared by every process of a host (flow, task threads, Dask workers).

Why files: a `Page` then carries only the path and hash of its normalised image, so a batch
shipped to another process stays small, a re-ask reads the file instead of decoding the scan
again, and a resumed run finds every page it normalised before. Each image is checked against
its sha256 when read, so a damaged or swapped file is never sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from qbq.domain import Page
from qbq.errors import ImageError
from qbq.images import content_hash, encode_data_uri

__all__ = ["CachedImage", "PageCache", "model_image_url"]

_EXTENSIONS: Final = {"image/jpeg": ".jpg", "image/png": ".png"}
_MIME_BY_EXT: Final = {ext: mime for mime, ext in _EXTENSIONS.items()}
# Pruning walks the folder; once a day is enough for a cache whose entries live for days.
_PRUNE_EVERY_S: Final = 24 * 3600.0


@dataclass(frozen=True)
class CachedImage:
    """A normalised image in the cache: where it is, its sha256, type and size in pixels."""

    path: Path
    digest: str
    mime: str
    width: int
    height: int
    source_width: int
    source_height: int
    n_bytes: int


class PageCache:
    """Normalised images under `folder` (created 0700; files 0600: they hold student work).

    `lookup(key)` gives the images stored for a source key, `store(key, images)` writes them.
    Writes go to a temporary name and are renamed, so a reader never sees half a file and two
    processes writing the same key agree.
    """

    def __init__(self, folder: Path | str, *, max_age_days: float = 14.0) -> None:
        self.folder = Path(folder).expanduser().resolve()
        self.max_age_s = max_age_days * 86400.0

    def _ensure(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _index(self, key: str) -> Path:
        return self.folder / "index" / key[:2] / f"{key}.json"

    def _blob(self, digest: str, mime: str) -> Path:
        return self.folder / "img" / digest[:2] / f"{digest}{_EXTENSIONS[mime]}"

    def lookup(self, key: str) -> list[CachedImage] | None:
        """The images stored for `key`, or None when any of them is missing."""
        try:
            entries = json.loads(self._index(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        images: list[CachedImage] = []
        now = time.time()
        try:
            for e in entries:
                blob = self._blob(str(e["digest"]), str(e["mime"]))
                os.utime(blob, (now, now))  # still in use: keep it past the age limit
                images.append(CachedImage(blob, str(e["digest"]), str(e["mime"]), int(e["width"]),
                                          int(e["height"]), int(e["source_width"]),
                                          int(e["source_height"]), int(e["n_bytes"])))
        except (OSError, KeyError, TypeError, ValueError):
            return None
        return images

    def store(self, key: str, images: list[tuple[bytes, str, int, int, int, int]]) -> list[CachedImage]:
        """Write `images` ((data, mime, width, height, source width, source height)) for `key`."""
        out: list[CachedImage] = []
        for data, mime, width, height, source_width, source_height in images:
            digest = content_hash(data)
            blob = self._blob(digest, mime)
            if not blob.exists():
                self._write(blob, data)
            out.append(CachedImage(blob, digest, mime, width, height, source_width,
                                   source_height, len(data)))
        index = [{"digest": c.digest, "mime": c.mime, "width": c.width, "height": c.height,
                  "source_width": c.source_width, "source_height": c.source_height,
                  "n_bytes": c.n_bytes} for c in out]
        self._write(self._index(key), json.dumps(index).encode())
        return out

    def _write(self, path: Path, data: bytes) -> None:
        self._ensure(path.parent)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        tmp.replace(path)

    def prune(self, *, now: float | None = None) -> int:
        """Delete images and index entries unused for `max_age_days`, at most once a day;
        returns how many files went."""
        now = time.time() if now is None else now
        marker = self.folder / ".pruned"
        with contextlib.suppress(OSError):
            if now - marker.stat().st_mtime < _PRUNE_EVERY_S:
                return 0
        removed = 0
        for sub in ("img", "index"):
            for path in (self.folder / sub).glob("*/*"):
                with contextlib.suppress(OSError):
                    if now - path.stat().st_mtime > self.max_age_s:
                        path.unlink()
                        removed += 1
        with contextlib.suppress(OSError):
            self._ensure(self.folder)
            marker.touch()
            os.utime(marker, (now, now))
        return removed


def model_image_url(page: Page) -> str:
    """The image URL of `page` in a request: its normalised image as a data URI, read from the
    page cache and checked against its sha256; or the page's URL when it is passed as is."""
    if page.digest is None:
        return page.location
    path = Path(page.location)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"page {page.image_id}: its normalised image is missing from the page "
                         "cache (QBQ_PAGE_CACHE_DIR); run the request again to rebuild it") from exc
    if content_hash(data) != page.digest:
        raise ImageError(f"page {page.image_id}: its normalised image in the page cache is "
                         "damaged; run the request again to rebuild it")
    return encode_data_uri(data, _MIME_BY_EXT.get(path.suffix, "image/jpeg"))
