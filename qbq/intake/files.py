"""Reading page files from disk: only regular files, within the byte cap, inside QBQ_PAGE_ROOTS.

A path outside the roots is refused from its resolved form alone, before anything is opened, and
with the same words whether or not it exists; devices, FIFOs and folders are never read.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from qbq.errors import ImageError

__all__ = ["PageFiles"]


class PageFiles:
    """Reads page files for one request: relative paths resolve against `base_dir`.

    `roots` (None: any folder) are the folders a file must lie in after resolving `..` and
    symlinks; `max_bytes` caps a file's size.
    """

    def __init__(self, base_dir: Path, *, roots: Sequence[str | Path] | None, max_bytes: int) -> None:
        self.base_dir = base_dir
        self.roots = [Path(os.path.realpath(Path(r).expanduser())) for r in roots] if roots else None
        self.max_bytes = max_bytes

    def display(self, given: str) -> str:
        """How a path is named in errors: relative to the request's folder when inside it."""
        path = Path(given)
        full = path if path.is_absolute() else self.base_dir / path
        try:
            return str(Path(os.path.normpath(full)).relative_to(self.base_dir))
        except ValueError:
            return given

    def check_inside_roots(self, given: str, what: str) -> Path:
        """The resolved path, if inside the roots (always, when no roots are set)."""
        if "\x00" in given:
            raise ImageError(f"{what}: the path contains a NUL character")
        path = Path(given).expanduser()
        full = path if path.is_absolute() else self.base_dir / path
        real = Path(os.path.realpath(full))
        if self.roots is not None and not any(real.is_relative_to(r) for r in self.roots):
            raise ImageError(f"{what} ({given[:200]}): outside the folders pages may be read from "
                             "(QBQ_PAGE_ROOTS)")
        return real

    def read(self, given: str, what: str) -> bytes:
        """The bytes of the regular file at `given`, or an `ImageError` naming `what`."""
        real = self.check_inside_roots(given, what)
        shown = f"{what} ({self.display(given)[:200]})"
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it.
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except FileNotFoundError as exc:
            raise ImageError(f"{shown}: file not found") from exc
        except PermissionError as exc:
            raise ImageError(f"{shown}: permission denied") from exc
        except OSError as exc:
            raise ImageError(f"{shown}: cannot open ({os.strerror(exc.errno or errno.EIO)})") from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a device, FIFO or socket"
            raise ImageError(f"{shown}: not a regular file ({kind})")
        with os.fdopen(fd, "rb") as f:
            if info.st_size > self.max_bytes:
                raise ImageError(f"{shown}: {info.st_size:,} bytes, over the cap of "
                                 f"{self.max_bytes:,} (QBQ_MAX_PAGE_BYTES)")
            try:
                data = f.read(self.max_bytes + 1)
            except OSError as exc:
                raise ImageError(f"{shown}: cannot read ({os.strerror(exc.errno or errno.EIO)})"
                                 ) from exc
        if len(data) > self.max_bytes:
            raise ImageError(f"{shown}: over the cap of {self.max_bytes:,} bytes (QBQ_MAX_PAGE_BYTES)")
        return data
