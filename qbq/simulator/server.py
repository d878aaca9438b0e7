"""Serving ASGI apps with uvicorn on loopback: `serve` blocks, `BackgroundServer` uses a thread."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from types import TracebackType
from typing import Self

import uvicorn
from starlette.types import ASGIApp

from qbq.simulator.app import create_app
from qbq.simulator.config import SimConfig

__all__ = ["LOOPBACK", "BackgroundServer", "serve"]

LOOPBACK = "127.0.0.1"


def _check_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the simulator binds only loopback addresses, not {host!r}")


def serve(host: str, port: int, config: SimConfig) -> None:
    """Run the simulator on `host:port` until interrupted; `host` must be a loopback address."""
    _check_loopback(host)
    uvicorn.run(create_app(config), host=host, port=port, log_level="info")


class BackgroundServer:
    """Any ASGI app served by uvicorn in a daemon thread on 127.0.0.1, as a context manager.

    `port=0` takes a free port (the socket is bound before uvicorn starts, so there is no
    race). Entering waits until the server accepts connections; `url` is then
    "http://127.0.0.1:PORT". Leaving asks uvicorn to exit and joins the thread.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        port: int = 0,
        startup_timeout_s: float = 10.0,
        shutdown_timeout_s: float = 10.0,
        log_level: str = "warning",
    ) -> None:
        self.app = app
        self._requested_port = port
        self._startup_timeout_s = startup_timeout_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the server is already running")
        # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY on accepted connections only
        # when the listening socket says TCP; without it every keep-alive response stalls
        # ~40 ms (Nagle against delayed ACKs).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, self._requested_port))
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            host=LOOPBACK,
            port=self._port,
            log_level=self._log_level,
            # Leave the process's logging configuration alone.
            log_config=None,
            access_log=False,
            lifespan="auto",
            timeout_graceful_shutdown=max(1, int(self._shutdown_timeout_s) // 2),
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"uvicorn-{self._port}",
            daemon=True,
        )
        self._thread.start()
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self) -> None:
        assert self._server is not None and self._thread is not None
        deadline = time.monotonic() + self._startup_timeout_s
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise RuntimeError(f"the server on {self.url} stopped while starting")
            if self._server.started:
                try:
                    with socket.create_connection((LOOPBACK, self.port), timeout=1.0):
                        return
                except OSError:
                    pass
            time.sleep(0.01)
        raise TimeoutError(
            f"the server on {self.url} did not start within {self._startup_timeout_s} s"
        )

    def stop(self) -> None:
        server, thread, sock = self._server, self._thread, self._socket
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(self._shutdown_timeout_s)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(self._shutdown_timeout_s)
        if sock is not None:
            sock.close()
        self._server = self._thread = self._socket = None
        self._port = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
