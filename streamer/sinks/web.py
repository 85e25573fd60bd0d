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
from streamer.sinks.web_app import CHOICES, QuietBadRequests, WebApp
from streamer.types import Result, StreamInfo
from streamer.views import PictureSettings

__all__ = ["CHOICES", "WebSink"]

log = logging.getLogger(__name__)
server_log = logging.getLogger("aiohttp.server")  # where aiohttp reports requests it could not parse

STOP_POLL_S = 0.05  # serve() checks its stop events this often
SHUTDOWN_GRACE_S = 0.2  # viewers get this long to receive the end of their stream on shutdown


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def interface_addresses() -> list[str]:
    """Addresses of this machine's network interfaces (psutil, where installed), else what its
    hostname resolves to locally. Asks only this machine: no packet leaves it."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        families = (socket.AF_INET, socket.AF_INET6)
        return [a.address for addrs in psutil.net_if_addrs().values() for a in addrs if a.family in families]
    try:
        return [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)]
    except OSError:
        return []


def machine_addresses(wildcard: str) -> list[str]:
    """Where a server listening on `wildcard` ("0.0.0.0": IPv4, "::": both) can be reached: the
    addresses other machines can use first, loopback last (always there)."""
    found: list[str] = []
    for text in interface_addresses():
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            continue
        if address.version == 6 and (wildcard == "0.0.0.0" or address.is_link_local):
            continue  # an IPv4 listener; link-local IPv6 URLs need a zone browsers refuse
        if not address.is_loopback and str(address) not in found:
            found.append(str(address))
    found.sort(key=lambda a: ":" in a)  # IPv4 first: what people type
    return [*found, "127.0.0.1"] + (["::1"] if wildcard == "::" else [])


class WebSink(Sink):
    """Serves the newest picture to browsers (`/`), MJPEG players (`/stream.mjpg`) and scripts.

    `picture` holds what the page changes (view, colormap, range); the engine reads it once per
    batch.
    A non-loopback `host` without a `token` gets a random one; `url` carries it.
    """

    name = "web"
    live = True
    needs = frozenset({"picture", "depth_mm", "picture_range"})

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
        self.picture.alpha = True  # the bare page shows the keyed view's transparency (PNG frames)
        self.calibration = None  # the run's Calibration (api.run_calibration): the page's clicks set it
        self.meta: dict = {}  # the newest frame's: intrinsics for measuring in 3D
        self.source_width = 0
        self.range = None
        self.host, self.port = host, port
        self.token = token if token is not None or is_loopback(host) else secrets.token_urlsafe(16)
        self.max_clients = max_clients
        self.write_timeout = write_timeout  # a viewer that takes no data for this long is dropped
        self.stats = None
        self.error: BaseException | None = None  # why serve() failed
        self.app = WebApp(self, jpeg_quality)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._served = threading.Event()
        self._serve_thread: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        """The page's address, with the token: what the CLI prints (listening on all networks: the
        first address another machine can use)."""
        return self._address("/")

    @property
    def urls(self) -> list[str]:
        """The page at each address of this machine it listens on (one unless on all networks)."""
        hosts = machine_addresses(self.host) if is_wildcard(self.host) else [self.host]
        return [self._address("/", host=host) for host in hosts]

    @property
    def stream_url(self) -> str:
        """The MJPEG stream's address (OBS Media Source, VLC, ffmpeg), with the token."""
        return self._address("/stream.mjpg")

    @property
    def clients(self) -> int:
        """How many viewers receive the stream now."""
        return len(self.app.viewers)

    def _address(self, path: str, with_token: bool = True, host: str | None = None) -> str:
        host = host or (machine_addresses(self.host)[0] if is_wildcard(self.host) else self.host)
        host = f"[{host}]" if ":" in host else host
        query = f"?token={quote(self.token, safe='')}" if self.token and with_token else ""
        return f"http://{host}:{self.port}{path}{query}"

    def open(self, info: StreamInfo, stats) -> None:
        self.stats = stats
        self.source_width = info.width
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
        self.meta = result.meta
        self.range = result.maps.get("picture_range")  # near, far metres of the picture: the legend
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
        quiet = QuietBadRequests()
        server_log.addFilter(quiet)
        self._loop = asyncio.get_running_loop()
        log.info("web: serving on %s", self._address("/", with_token=False))
        ready.set()
        try:
            while not (stop.is_set() or self._closing.is_set()):
                await asyncio.sleep(STOP_POLL_S)
        finally:
            await self.app.stop_streams(SHUTDOWN_GRACE_S)
            await runner.cleanup()
            server_log.removeFilter(quiet)
            log.info("web: stopped")
