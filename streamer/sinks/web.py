"""Live depth for browsers and OBS: a page, an MJPEG stream, PNG snapshots and stats over HTTP.

The pipeline must never wait for the network, so `write()` only keeps the newest frame (and
encodes one JPEG of it while somebody watches the stream); the viewers are served from an aiohttp
event loop (streamer/sinks/web_app.py) that runs in `serve()`, on a thread the engine owns.
`open()` already binds the socket, so that a busy port is reported before the model loads.

Safe by default: it listens on 127.0.0.1 only, and then refuses requests whose Host header names
another machine (DNS rebinding) and cross-site POSTs. Any other address needs an access token
(made up if none is given), checked on every endpoint: `?token=` or `Authorization: Bearer`.
"""

from __future__ import annotations

import cv2  # noqa: F401  (first, before av: see streamer/__init__.py)

import asyncio
import errno
import ipaddress
import logging
import secrets
import socket
import threading
from urllib.parse import quote

import numpy as np
from aiohttp import web

from streamer.errors import ConfigError, SinkError
from streamer.sinks.base import Sink
from streamer.sinks.web_app import CHOICES, WebApp
from streamer.types import Result, StreamInfo
from streamer.views import PictureSettings

__all__ = ["CHOICES", "WebSink"]

log = logging.getLogger(__name__)

STOP_POLL_S = 0.05  # serve() checks its stop events this often
SHUTDOWN_GRACE_S = 0.2  # viewers get this long to receive the end of their stream on shutdown


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def lan_address(family: int) -> str:
    """The address other machines most likely reach this one at, for the printed URL (sends nothing)."""
    probe, fallback = (("10.255.255.255", 1), "127.0.0.1") if family == socket.AF_INET else (("fd00::1", 1), "::1")
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.connect(probe)
            return udp.getsockname()[0]
    except OSError:
        return fallback


class WebSink(Sink):
    """Serves the newest picture to browsers (`/`), MJPEG players (`/stream.mjpg`) and scripts.

    `picture` holds what the page changes (view, colormap, range); the engine reads it once per
    batch.
    A non-loopback `host` without a `token` gets a random one; `url` carries it.
    """

    name = "web"
    live = True
    needs = frozenset({"picture", "depth_mm"})

    def __init__(
        self,
        picture: PictureSettings | None = None,
        host: str = "127.0.0.1",
        port: int = 8080,
        token: str | None = None,
        max_clients: int = 8,
        jpeg_quality: int = 80,
        write_timeout: float = 10.0,
    ) -> None:
        if max_clients < 1 or not 1 <= jpeg_quality <= 100:
            raise ConfigError(
                f"web: max_clients {max_clients} / jpeg_quality {jpeg_quality} out of range",
                hint="max_clients >= 1, jpeg_quality 1..100",
            )
        self.picture = picture or PictureSettings()
        self.host, self.port = host, port
        self.token = token if token is not None or is_loopback(host) else secrets.token_urlsafe(16)
        self.max_clients = max_clients
        self.write_timeout = write_timeout  # a viewer that takes no data for this long is dropped
        self.stats = None
        self.error: BaseException | None = None  # why serve() failed
        self.app = WebApp(self, jpeg_quality)
        self._sock: socket.socket | None = None
        self._url_host = host
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._served = threading.Event()
        self._serve_thread: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        """The page's address, with the token: what the CLI prints."""
        return self._address("/")

    @property
    def stream_url(self) -> str:
        """The MJPEG stream's address (OBS Media Source, VLC, ffmpeg), with the token."""
        return self._address("/stream.mjpg")

    @property
    def clients(self) -> int:
        """How many viewers receive the stream now."""
        return len(self.app.viewers)

    def _address(self, path: str, with_token: bool = True) -> str:
        host = f"[{self._url_host}]" if ":" in self._url_host else self._url_host
        query = f"?token={quote(self.token, safe='')}" if self.token and with_token else ""
        return f"http://{host}:{self.port}{path}{query}"

    def open(self, info: StreamInfo, stats) -> None:
        self.stats = stats
        with self._lock:
            if self._sock is None:
                self._sock = self._bind()

    def _bind(self) -> socket.socket:
        """Listen now, so a busy port fails before the model loads; port 0 picks a free one."""
        try:
            family, _, _, _, address = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.create_server(address, family=family, backlog=128)
        except OSError as exc:
            raise self._bind_error(exc) from exc
        self.port = sock.getsockname()[1]
        self._url_host = lan_address(family) if address[0] in ("0.0.0.0", "::") else self.host
        return sock

    def _bind_error(self, exc: OSError) -> SinkError:
        where = f"{self.host}:{self.port}"
        if isinstance(exc, socket.gaierror):
            return SinkError(
                f"cannot listen on {self.host!r}: {exc.strerror}",
                hint="give --host an address of this machine, e.g. 127.0.0.1 or 0.0.0.0",
            )
        if exc.errno == errno.EADDRINUSE:
            return SinkError(
                f"cannot listen on {where}: the port is in use",
                hint="choose another --port, or stop the program that uses it",
            )
        if exc.errno == errno.EACCES:
            return SinkError(f"cannot listen on {where}: permission denied", hint="choose another --port (above 1023)")
        if exc.errno == errno.EADDRNOTAVAIL:
            return SinkError(
                f"cannot listen on {where}: not an address of this machine",
                hint="use --host 127.0.0.1 (this machine) or 0.0.0.0 (all networks)",
            )
        return SinkError(f"cannot listen on {where}: {exc.strerror or exc}", hint="choose another --port or --host")

    def write(self, result: Result) -> None:
        """Keep the newest frame; costs one JPEG encode while somebody watches, nothing else."""
        depth = result.maps.get("depth_mm")
        if depth is not None and depth.dtype != np.uint16:
            raise SinkError(f"the web sink needs depth_mm as uint16 millimetres, got {depth.dtype}")
        watched = bool(self.app.viewers)
        self.app.frames.put(result.maps["picture"], depth, with_jpeg=watched)
        loop = self._loop
        if watched and loop is not None:
            try:
                loop.call_soon_threadsafe(self.app.publish)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def close(self, complete: bool = True) -> None:
        """Make serve() return (and wait for it, unless called from its own thread); idempotent."""
        self._closing.set()
        if self._serve_thread is not None and self._serve_thread != threading.get_ident():
            self._served.wait(timeout=5.0)
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def serve(self, ready: threading.Event, stop: threading.Event) -> None:
        """Run the server until `stop` is set or close() is called.

        `ready` is set once it listens (`self.port` holds the bound port); it is also set when
        serving fails, so that a waiter never hangs: serve() then raises and `self.error` holds why.
        """
        self._serve_thread = threading.get_ident()
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._run(ready, stop))
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            ready.set()
            self._loop = None
            loop.close()
            self._served.set()

    async def _run(self, ready: threading.Event, stop: threading.Event) -> None:
        if self._closing.is_set():
            return
        with self._lock:
            sock, self._sock = self._sock, None
        sock = sock or self._bind()
        runner = web.AppRunner(self.app.application(), access_log=None, shutdown_timeout=1.0)
        try:
            await runner.setup()
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._loop = asyncio.get_running_loop()
        log.info("web: serving on %s", self._address("/", with_token=False))
        ready.set()
        try:
            while not (stop.is_set() or self._closing.is_set()):
                await asyncio.sleep(STOP_POLL_S)
        finally:
            await self.app.stop_streams(SHUTDOWN_GRACE_S)
            await runner.cleanup()
            log.info("web: stopped")
