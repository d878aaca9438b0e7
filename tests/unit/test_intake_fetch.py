"""Fetching page URLs safely: the SSRF table (each refused with no connection made), redirects,
credentials, and bodies that never end, inflate or dribble — against servers on loopback.

Private addresses are NOT allowed in these tests; only the exact loopback servers a test needs
are allow-listed, and every connection qbq makes is counted.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpcore
import pytest

from qbq.errors import PageFetchError, PageUrlRefusedError
from qbq.intake.fetch import PageFetcher
from qbq.intake.ssrf import AddressPolicy, is_public_address
from tests.pages import png

Handler = Callable[[socket.socket, str], None]


class Listener:
    """A raw HTTP server on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self, routes: dict[str, Handler] | None = None) -> None:
        self.routes = routes or {}
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            path = data.split(b" ")[1].decode()
            handler = self.routes.get(path.split("?")[0])
            try:
                if handler is None:
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                else:
                    handler(conn, path)
            except OSError:
                pass  # the client hung up, as it should at a cap or a deadline

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def respond(status: str, body: bytes = b"", headers: Iterable[str] = ()) -> Handler:
    def handle(conn: socket.socket, _path: str) -> None:
        # the listener serves one request per connection, so it says so (else a client may
        # send the next hop on a connection the listener is closing)
        head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close",
                *headers, "", ""]
        conn.sendall("\r\n".join(head).encode() + body)
    return handle


def endless(conn: socket.socket, _path: str) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n\r\n")
    block = b"\0" * 65536
    while True:
        conn.sendall(block)


def _bomb() -> bytes:
    """~62 KB of gzip that inflate to 64 MB (made in 1 MB steps, so making it costs no memory)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * 1_000_000
    return b"".join(z.compress(block) for _ in range(64)) + z.flush()


_BOMB = _bomb()


def gzip_bomb(conn: socket.socket, _path: str) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
                 + f"Content-Length: {len(_BOMB)}\r\n\r\n".encode() + _BOMB)


def huge_declared(conn: socket.socket, _path: str) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n")


def dribble(conn: socket.socket, _path: str) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(1000):
        conn.sendall(b"\0")
        time.sleep(5)


class CountingBackend(httpcore.NetworkBackend):
    """The real network, but only to loopback; every connection qbq asks for is recorded."""

    def __init__(self) -> None:
        self.inner = httpcore.SyncBackend()
        self.connects: list[tuple[str, int]] = []

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        self.connects.append((host, port))
        if host not in ("127.0.0.1", "::1"):  # never send a packet anywhere else from a test
            raise httpcore.ConnectError("test network: loopback only")
        return self.inner.connect_tcp(host, port, timeout, local_address, socket_options)


@pytest.fixture
def target() -> Iterator[Listener]:
    """The listener every refused URL points at: it must never see a connection."""
    server = Listener({"/": respond("200 OK", b"secret")})
    yield server
    server.close()


def fetcher(*allowed: int, max_bytes: int = 1_000_000, deadline_s: float = 5.0,
            timeout_s: float = 5.0) -> tuple[PageFetcher, CountingBackend]:
    backend = CountingBackend()
    policy = AddressPolicy(allow_private=False,
                           allowed=frozenset(("127.0.0.1", port) for port in allowed))
    return PageFetcher(policy=policy, max_bytes=max_bytes, timeout_s=timeout_s,
                       deadline_s=deadline_s, inner_backend=backend), backend


# --- the SSRF table -----------------------------------------------------------------------------


SSRF_URLS = {
    "loopback": "http://127.0.0.1:{port}/",
    "localhost": "http://localhost:{port}/",
    "ipv6-loopback": "http://[::1]:{port}/",
    "decimal-ip": "http://2130706433:{port}/",
    "hex-ip": "http://0x7f000001:{port}/",
    "octal-ip": "http://0177.0.0.1:{port}/",
    "short-ip": "http://127.1:{port}/",
    "ipv4-mapped-ipv6": "http://[::ffff:127.0.0.1]:{port}/",
    "unspecified": "http://0.0.0.0:{port}/",
    "private-10": "http://10.1.2.3:{port}/",
    "private-192": "http://192.168.1.1/",
    "cloud-metadata": "http://169.254.169.254/latest/meta-data/",
    "link-local-v6": "http://[fe80::1]/",
    "unique-local-v6": "http://[fd00::1]/",
    "multicast": "http://224.0.0.1/",
    "nat64-loopback": "http://[64:ff9b::7f00:1]:{port}/",
    "file": "file:///etc/passwd",
    "gopher": "gopher://127.0.0.1:{port}/_SET",
    "credentials": "http://user:hunter2@127.0.0.1:{port}/",
}


@pytest.mark.parametrize("name", list(SSRF_URLS))
def test_ssrf_table_refused_with_no_connection_made(target: Listener, name: str) -> None:
    fetch, backend = fetcher()
    with fetch, pytest.raises(PageUrlRefusedError) as info:
        fetch(SSRF_URLS[name].format(port=target.port) + "?X-Amz-Signature=SECRETSIG")
    assert backend.connects == [] and target.accepted == 0
    assert "SECRETSIG" not in str(info.value) and "hunter2" not in str(info.value)


def test_redirect_to_a_private_address_is_refused_at_the_hop(target: Listener) -> None:
    redirector = Listener()
    redirector.routes["/start"] = respond("302 Found", headers=[f"Location: {target.url('/x')}"])
    try:
        fetch, backend = fetcher(redirector.port)  # only the redirector is allowed
        with fetch, pytest.raises(PageUrlRefusedError, match="not a public internet address"):
            fetch(redirector.url("/start"))
        assert backend.connects == [("127.0.0.1", redirector.port)] and target.accepted == 0
    finally:
        redirector.close()


def test_name_that_resolves_to_loopback_is_checked_after_dns(target: Listener) -> None:
    fetch, backend = fetcher()
    with fetch, pytest.raises(PageUrlRefusedError):
        fetch(f"http://localhost.:{target.port}/")
    assert backend.connects == [] and target.accepted == 0


@pytest.mark.parametrize(
    ("address", "public"),
    [("8.8.8.8", True), ("2606:4700::1111", True), ("100.64.0.1", False), ("240.0.0.1", False),
     ("255.255.255.255", False), ("::", False), ("2002:7f00:1::", False), ("::ffff:8.8.8.8", False),
     ("ff02::1", False), ("198.18.0.1", False)],
)
def test_public_address_rule(address: str, public: bool) -> None:
    import ipaddress

    assert is_public_address(ipaddress.ip_address(address)) is public


# --- fetching from an allowed server ------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[Listener]:
    body = png(40, 50)
    s = Listener({
        "/page.png": respond("200 OK", body),
        "/expired.png": respond("403 Forbidden", b"<Error>AccessDenied</Error>"),
        "/hop1": respond("302 Found", headers=["Location: /hop2"]),
        "/hop2": respond("301 Moved", headers=["Location: /hop3"]),
        "/hop3": respond("307 Temporary Redirect", headers=["Location: /page.png"]),
        "/loop": respond("302 Found", headers=["Location: /loop"]),
        "/huge-declared": huge_declared,
        "/endless": endless,
        "/gzip-bomb": gzip_bomb,
        "/dribble": dribble,
        "/gzip-page": respond("200 OK", gzip.compress(body), ["Content-Encoding: gzip"]),
        "/brotli": respond("200 OK", b"xx", ["Content-Encoding: br"]),
    })
    yield s
    s.close()


def test_fetches_an_allowed_page_and_follows_up_to_three_redirects(server: Listener) -> None:
    fetch, _ = fetcher(server.port)
    with fetch:
        assert fetch(server.url("/page.png?sig=1")) == png(40, 50)
        assert fetch(server.url("/hop1")) == png(40, 50)
        assert fetch(server.url("/gzip-page")) == png(40, 50)
        with pytest.raises(PageFetchError, match="more than 3 redirects"):
            fetch(server.url("/loop"))


def test_http_error_names_the_status(server: Listener) -> None:
    fetch, _ = fetcher(server.port)
    with fetch, pytest.raises(PageFetchError) as info:
        fetch(server.url("/expired.png?X-Amz-Signature=SECRETSIG"))
    assert info.value.status_code == 403 and info.value.message == "HTTP 403"


@pytest.mark.parametrize("path", ["/endless", "/gzip-bomb", "/huge-declared"])
def test_bodies_stop_at_the_byte_cap_without_growing_past_it(server: Listener, path: str) -> None:
    cap = 1_000_000
    fetch, _ = fetcher(server.port, max_bytes=cap)
    tracemalloc.start()
    try:
        with fetch, pytest.raises(PageFetchError, match="over the cap of 1,000,000"):
            fetch(server.url(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * cap  # the body held is the cap, not the 64 MB the bomb inflates to


def test_a_dribbling_server_stops_at_the_deadline(server: Listener) -> None:
    fetch, _ = fetcher(server.port, deadline_s=1.0, timeout_s=30.0)
    started = time.monotonic()
    with fetch, pytest.raises(PageFetchError, match="did not finish within 1 s"):
        fetch(server.url("/dribble"))
    assert time.monotonic() - started < 30  # the per-read timeout alone would allow 30 s


def test_unsupported_encoding_is_refused(server: Listener) -> None:
    fetch, _ = fetcher(server.port)
    with fetch, pytest.raises(PageFetchError, match="unsupported content encoding 'br'"):
        fetch(server.url("/brotli"))


def test_failures_without_an_http_answer_all_read_the_same(server: Listener) -> None:
    """A closed port, a server that answers garbage and one that hangs up all give one message:
    the errors cannot be used to map which ports serve what."""
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    garbage = Listener({})
    garbage.routes = {"/": lambda conn, _p: conn.sendall(b"-ERR unknown command 'GET'\r\n")}
    hangup = Listener({"/": lambda conn, _p: None})
    try:
        fetch, _ = fetcher(garbage.port, hangup.port, closed_port)
        messages = set()
        with fetch:
            for url in (f"http://127.0.0.1:{closed_port}/", garbage.url("/"), hangup.url("/")):
                with pytest.raises(PageFetchError) as info:
                    fetch(url)
                messages.add(info.value.message)
        assert len(messages) == 1, messages
    finally:
        garbage.close()
        hangup.close()
