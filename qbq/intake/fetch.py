"""The page-download adapter (httpx/httpcore): fetch page URLs safely, or fail in words.

Every connection goes through `GuardedBackend`, which resolves the host itself, checks each
address with the `AddressPolicy` and connects to the checked address (TLS still verifies the
host name), so neither DNS answers nor redirects can lead qbq to a private address. Redirects
are followed by hand (at most `MAX_REDIRECTS`, each URL checked); bodies are decoded by qbq
(identity, gzip, deflate) and counted after decoding while streaming, so neither a long body
nor a gzip bomb grows past `max_bytes`; every read is bounded by the per-page deadline.

Errors never carry the URL's path or query (signed URLs hold credentials there), and every
failure without an HTTP status reads the same, so a caller cannot tell a closed port from a
database from a silent host.
"""

from __future__ import annotations

import ssl
import threading
import time
import zlib
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Final

import httpcore
import httpx

from qbq.errors import PageFetchError, PageUrlRefusedError
from qbq.intake.ssrf import AddressPolicy, check_url
from qbq.settings import QbqSettings

__all__ = ["MAX_REDIRECTS", "GuardedBackend", "PageFetcher"]

MAX_REDIRECTS: Final = 3
_REDIRECTS: Final = (301, 302, 303, 307, 308)
_CHUNK: Final = 64 * 1024
_NO_RESPONSE: Final = "no complete HTTP response (the connection failed, timed out or broke)"
_USER_AGENT: Final = "qbq-page-fetch"


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the current page's deadline."""

    def __init__(self, inner: httpcore.NetworkStream, backend: GuardedBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._backend.bounded(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._backend.bounded(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname, self._backend.bounded(timeout))
        return _DeadlineStream(tls, self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's network backend with the address check: resolve, check, connect to the
    checked address. `inner` makes the real connections (tests count them)."""

    def __init__(self, policy: AddressPolicy, inner: httpcore.NetworkBackend | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpcore.SyncBackend()
        self._local = threading.local()

    def set_deadline(self, deadline: float | None) -> None:
        """The monotonic time by which this thread's current download must end (None: none)."""
        self._local.deadline = deadline

    def bounded(self, timeout: float | None) -> float | None:
        """`timeout` shortened to what is left before this thread's deadline."""
        deadline: float | None = getattr(self._local, "deadline", None)
        if deadline is None:
            return timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("page deadline passed")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        addresses = self.policy.resolve(host, port)  # refuses before any connection
        error: Exception | None = None
        for address in addresses:
            try:
                stream = self.inner.connect_tcp(address, port, self.bounded(timeout),
                                                local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            return _DeadlineStream(stream, self)
        assert error is not None
        raise error

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        raise PageUrlRefusedError("refused: page downloads never use Unix sockets")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's transport on a connection pool that connects through `GuardedBackend`."""

    def __init__(self, backend: GuardedBackend) -> None:
        context = httpx.create_ssl_context()  # loading the CA bundle takes ~50 ms: once
        super().__init__(verify=context)
        self._pool = httpcore.ConnectionPool(
            ssl_context=context, max_connections=16, http1=True, http2=False,
            network_backend=backend)


class _Decoder:
    """Content-Encoding decoding with a bound on the decoded size (gzip bombs stop at it)."""

    def __init__(self, encoding: str) -> None:
        codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
            raise PageFetchError(f"the server sent an unsupported content encoding "
                                 f"'{encoding[:40]}'")
        self.kind = codings[0] if codings else "identity"
        # wbits 47: a gzip or zlib header, detected; raw deflate is retried below.
        self._z = zlib.decompressobj(47) if self.kind != "identity" else None
        self._raw_tried = False

    def feed(self, chunk: bytes, room: int) -> bytes:
        """Decode `chunk`, producing at most `room` bytes (more means the body is too large)."""
        if self._z is None:
            return chunk[:room]
        try:
            return self._z.decompress(chunk, room)
        except zlib.error:
            if self.kind == "deflate" and not self._raw_tried:
                self._raw_tried = True
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                return self._z.decompress(chunk, room)
            raise

    @property
    def pending(self) -> bool:
        return self._z is not None and bool(self._z.unconsumed_tail)

    def more(self, room: int) -> bytes:
        assert self._z is not None
        return self._z.decompress(self._z.unconsumed_tail, room)


class PageFetcher:
    """Downloads page URLs: `fetcher(url) -> bytes`, or `PageFetchError` (a subclass for refusals).

    Limits: `max_bytes` of decoded body, `timeout_s` to connect and per read, `deadline_s` for
    the whole download, `MAX_REDIRECTS` redirects. Safe to call from several threads.
    """

    def __init__(self, *, policy: AddressPolicy, max_bytes: int, timeout_s: float,
                 deadline_s: float, inner_backend: httpcore.NetworkBackend | None = None) -> None:
        self.policy = policy
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.backend = GuardedBackend(policy, inner_backend)
        self._client: httpx.Client | None = None  # made on the first download
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    transport=_GuardedTransport(self.backend), follow_redirects=False,
                    trust_env=False, timeout=httpx.Timeout(self.timeout_s),
                    headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"})
            return self._client

    @classmethod
    def from_settings(cls, settings: QbqSettings) -> PageFetcher:
        return cls(policy=AddressPolicy(allow_private=settings.allow_private_urls),
                   max_bytes=settings.max_page_bytes, timeout_s=settings.page_fetch_timeout_s,
                   deadline_s=settings.page_fetch_deadline_s)

    def __enter__(self) -> PageFetcher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __call__(self, url: str) -> bytes:
        self.backend.set_deadline(time.monotonic() + self.deadline_s)
        try:
            return self._fetch(url)
        finally:
            self.backend.set_deadline(None)

    def _fetch(self, url: str) -> bytes:
        for _hop in range(MAX_REDIRECTS + 1):
            check_url(url, self.policy)
            try:
                with self._http().stream("GET", url) as response:
                    if response.status_code in _REDIRECTS and "location" in response.headers:
                        url = str(response.url.join(response.headers["location"]))
                        continue
                    if response.status_code != 200:
                        raise PageFetchError(f"HTTP {response.status_code}", response.status_code)
                    return self._body(response)
            except PageFetchError:
                raise
            # `from None`: httpx's own errors may quote the URL, which must not travel further.
            except httpx.InvalidURL:
                raise PageUrlRefusedError("not a valid URL") from None
            except (httpx.HTTPError, httpcore.ReadTimeout):
                raise PageFetchError(_NO_RESPONSE) from None
        raise PageFetchError(f"more than {MAX_REDIRECTS} redirects")

    def _body(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes and \
                not response.headers.get("content-encoding"):
            raise PageFetchError(f"the page is {int(declared):,} bytes, over the cap of "
                                 f"{self.max_bytes:,} (QBQ_MAX_PAGE_BYTES)", 200)
        decoder = _Decoder(response.headers.get("content-encoding", ""))
        body = bytearray()
        try:
            for chunk in response.iter_raw(_CHUNK):
                body += decoder.feed(chunk, self.max_bytes + 1 - len(body))
                while decoder.pending and len(body) <= self.max_bytes:
                    body += decoder.more(self.max_bytes + 1 - len(body))
                if len(body) > self.max_bytes:
                    raise PageFetchError(f"the page is over the cap of {self.max_bytes:,} bytes "
                                         "(QBQ_MAX_PAGE_BYTES; counted after decoding)", 200)
        except zlib.error:
            raise PageFetchError("the page's gzip/deflate encoding is damaged", 200) from None
        except (httpx.TimeoutException, httpcore.ReadTimeout):
            raise PageFetchError(f"the download did not finish within {self.deadline_s:g} s "
                                 "(per-page deadline) or a read timed out", 200) from None
        except httpx.HTTPError:
            raise PageFetchError(_NO_RESPONSE, 200) from None
        return bytes(body)
