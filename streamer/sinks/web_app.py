"""The HTTP side of the web sink (streamer/sinks/web.py): routes, access rules and MJPEG senders.

Everything here runs on the server's event loop, except `NewestFrame.put`, which the sink's
thread calls. Each viewer of `/stream.mjpg` has its own coroutine that sends the newest frame
whenever its socket takes one, so a slow viewer skips frames and never holds more than about one
frame in memory; a viewer that takes nothing for `write_timeout` seconds is dropped.
"""

from __future__ import annotations

import cv2

import asyncio
import json
import logging
import secrets
import threading
from importlib import resources
from urllib.parse import urlsplit

import numpy as np
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from streamer.sinks.web_measure import Measure
from streamer.views import COLORMAPS, RANGE_MODES, VIEW_FORMATS

log = logging.getLogger("streamer.sinks.web")

CHOICES: dict[str, tuple[str, ...]] = {"view": VIEW_FORMATS, "colormap": tuple(COLORMAPS), "range": RANGE_MODES}
BOUNDARY = "frame"
IDLE_WAKE_S = 1.0  # an idle stream handler re-checks for shutdown this often
PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # PNGs are encoded on the event loop: favour speed
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


class QuietBadRequests(logging.Filter):
    """aiohttp answers a malformed request (a 100 kB query, an 8 kB header) with a 400 and logs it
    with a traceback at ERROR: any client could fill the console. The client's fault is one INFO
    line, once per server (the next ones go unlogged); `--debug` keeps aiohttp's full report."""

    def __init__(self) -> None:
        super().__init__()
        self.told = False

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError) or log.isEnabledFor(logging.DEBUG):
            return True
        if not self.told:
            self.told = True
            reason = str(exc.message).split(":", 1)[0][:80]
            log.info("web: refused a malformed request with %d (%s); later ones are not logged", exc.code, reason)
        return False


def encode(kind: str, array: np.ndarray, quality: int) -> bytes:
    """'jpeg' or 'png' of an RGB picture, or 'depth': a 16-bit grayscale PNG of uint16 millimetres."""
    if kind == "depth":
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(array), PNG_FAST)
    elif array.shape[-1] == 4 and kind == "png":  # the keyed view's transparency: kept in PNG
        bgr = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGBA2BGRA)
        ok, buf = cv2.imencode(".png", bgr, PNG_FAST)
    else:
        if array.shape[-1] == 4:  # JPEG has no alpha: transparent shows as black
            array = (array[..., :3] * (array[..., 3:] / 255.0)).round().astype(np.uint8)
        bgr = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2BGR)
        params = [cv2.IMWRITE_JPEG_QUALITY, quality] if kind == "jpeg" else PNG_FAST
        ok, buf = cv2.imencode(".jpg" if kind == "jpeg" else ".png", bgr, params)
    if not ok:
        raise ValueError(f"could not encode a {array.shape} {array.dtype} array as {kind}")
    return buf.tobytes()


def hostname(host_header: str) -> str:
    """'Example.org:8080' -> 'example.org', '[::1]:80' -> '::1'; '' if malformed."""
    try:
        return urlsplit(f"//{host_header}").hostname or ""
    except ValueError:
        return ""


def netloc(url: str) -> str:
    try:
        return urlsplit(url).netloc.lower()
    except ValueError:
        return ""


def http_error(cls: type[web.HTTPException], message: str, **headers: str) -> web.HTTPException:
    """A 4xx/5xx with a one-line JSON body, the same shape for every error."""
    return cls(text=json.dumps({"error": message}), content_type="application/json", headers=headers or None)


class NewestFrame:
    """The newest picture and depth, and their encodings, each made at most once per frame.

    The arrays are kept by reference: the engine hands every sink arrays of its own (it copies
    results out of its reusable pinned buffers), so nothing is copied here.
    """

    def __init__(self, jpeg_quality: int) -> None:
        self._lock = threading.Lock()
        self.quality = jpeg_quality
        self.seq = 0
        self.jpeg_encodes = 0
        self._arrays: dict[str, np.ndarray | None] = {}
        self._encoded: dict[str, tuple[int, bytes]] = {}

    def put(self, picture: np.ndarray, depth_mm: np.ndarray | None, with_jpeg: bool) -> None:
        """Keep copies: the engine reuses the buffers it handed to the sink once write() returns."""
        picture = picture.copy()
        depth_mm = None if depth_mm is None else depth_mm.copy()
        jpeg = self._encode("jpeg", picture) if with_jpeg else None  # outside the lock: readers never wait
        with self._lock:
            self.seq += 1
            self._arrays = {"jpeg": picture, "png": picture, "depth": depth_mm}  # copies: see put()
            self._encoded = {"jpeg": (self.seq, jpeg)} if jpeg is not None else {}

    def get(self, kind: str) -> tuple[int, bytes] | None:
        """(sequence number, encoded bytes) of the newest frame, or None if there is none (yet)."""
        with self._lock:
            seq, cached, array = self.seq, self._encoded.get(kind), self._arrays.get(kind)
        if cached is not None:
            return cached
        if array is None:
            return None
        data = self._encode(kind, array)
        with self._lock:
            if self.seq == seq:
                self._encoded[kind] = (seq, data)
        return seq, data

    def array(self, kind: str) -> np.ndarray | None:
        """The newest frame's array itself (e.g. the millimetres the page measures on)."""
        with self._lock:
            return self._arrays.get(kind)

    def _encode(self, kind: str, array: np.ndarray) -> bytes:
        self.jpeg_encodes += kind == "jpeg"
        return encode(kind, array, self.quality)


class WebApp:
    """Routes and viewers of one WebSink; reads its settings (token, host, picture settings...) from the sink."""

    def __init__(self, sink, jpeg_quality: int) -> None:
        self.sink = sink
        self.frames = NewestFrame(jpeg_quality)
        self.viewers: dict[int, web.Request] = {}  # by id(): requests are unhashable
        self.stopping = False
        self._frame_event: asyncio.Event | None = None
        self.measure = Measure(self)
        self._page = resources.files(__package__).joinpath("web_page.html").read_text("utf-8")

    def application(self) -> web.Application:
        """The aiohttp application; call on the event loop that will serve it."""
        self._frame_event = asyncio.Event()
        app = web.Application(middlewares=[errors_middleware, self.access_middleware])
        app.on_response_prepare.append(add_headers)
        app.router.add_get("/", self.page)
        app.router.add_get("/stream.mjpg", self.stream, allow_head=False)
        app.router.add_head("/stream.mjpg", self.stream_head)
        app.router.add_get("/snapshot.png", self.snapshot)
        app.router.add_get("/depth.png", self.depth)
        app.router.add_get("/stats", self.stats)
        app.router.add_get("/settings", self.get_settings)
        app.router.add_post("/settings", self.post_settings)
        app.router.add_get("/measure", self.measure.measure)
        app.router.add_post("/calibrate", self.measure.calibrate)
        app.router.add_get("/legend.png", self.measure.legend)
        app.router.add_post("/effects", self.measure.effects)
        app.router.add_get("/favicon.ico", no_content)
        return app

    def publish(self) -> None:
        """On the loop: wake every stream handler waiting for a frame."""
        event, self._frame_event = self._frame_event, asyncio.Event()
        if event is not None:
            event.set()

    async def stop_streams(self, grace: float) -> None:
        """End every stream: idle ones at once, ones stuck on a stalled viewer by closing its connection."""
        self.stopping = True
        self.publish()
        await asyncio.sleep(grace)
        for request in list(self.viewers.values()):
            if request.transport is not None:
                request.transport.abort()

    @web.middleware
    async def access_middleware(self, request: web.Request, handler) -> web.StreamResponse:
        self.check_access(request)
        return await handler(request)

    def check_access(self, request: web.Request) -> None:
        """The token when one is set; otherwise (loopback) only requests that name this machine.

        The Host check stops DNS-rebinding pages from reading the stream, the Origin check stops
        other sites from changing settings through the user's browser.
        """
        origin, host = request.headers.get("Origin"), request.headers.get("Host")
        if request.method == "POST" and origin and netloc(origin) != (host or "").lower():
            raise http_error(web.HTTPForbidden, "cross-site requests are refused")
        if self.sink.token is not None:
            self._check_token(request, self.sink.token)
        elif host is not None and hostname(host) not in LOOPBACK_NAMES | {self.sink.host.lower()}:
            raise http_error(web.HTTPForbidden, "this server answers only to localhost; use --host to serve others")

    @staticmethod
    def _check_token(request: web.Request, token: str) -> None:
        auth = request.headers.get("Authorization", "")
        given = request.query.get("token") or (auth[7:].strip() if auth[:7].lower() == "bearer " else "")
        if not given:
            unauthorized = web.HTTPUnauthorized
            raise http_error(unauthorized, "access token required: add ?token=...", **{"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise http_error(web.HTTPForbidden, "wrong access token")

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=self._page, content_type="text/html")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if len(self.viewers) >= self.sink.max_clients:
            raise http_error(
                web.HTTPServiceUnavailable,
                f"too many viewers (at most {self.sink.max_clients})",
                **{"Retry-After": "5"},
            )
        self.viewers[id(request)] = request  # before any await: the bound holds under concurrent requests
        response = web.StreamResponse(headers={"Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}"})
        log.debug("web: viewer %s joined (%d watching)", request.remote, len(self.viewers))
        try:
            await response.prepare(request)
            await self._send_frames(response)
        except (ConnectionError, asyncio.TimeoutError) as exc:
            log.debug("web: viewer %s dropped (%s)", request.remote, type(exc).__name__)
            if request.transport is not None:
                request.transport.abort()  # do not wait for a stalled viewer to take the end of the stream
        finally:
            self.viewers.pop(id(request), None)
        return response

    async def stream_head(self, request: web.Request) -> web.Response:
        """What a GET would start with (players probe with HEAD); no viewer joins."""
        if len(self.viewers) >= self.sink.max_clients:
            raise http_error(web.HTTPServiceUnavailable, "too many viewers", **{"Retry-After": "5"})
        return web.Response(headers={"Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}"})

    async def _send_frames(self, response: web.StreamResponse) -> None:
        """Send the newest frame whenever the viewer can take one; frames that came meanwhile are skipped."""
        sent = 0
        while not self.stopping:
            frame = self.frames.get("jpeg")
            if frame is None or frame[0] == sent:
                try:
                    await asyncio.wait_for(self._frame_event.wait(), IDLE_WAKE_S)
                except asyncio.TimeoutError:
                    pass
                continue
            sent, data = frame
            head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            await asyncio.wait_for(response.write(head + data + b"\r\n"), self.sink.write_timeout)

    async def snapshot(self, request: web.Request) -> web.Response:
        return self._image_response("png", {})

    async def depth(self, request: web.Request) -> web.Response:
        return self._image_response("depth", {"X-Depth-Unit": "mm", "X-Depth-Scale": "0.001"})

    def _image_response(self, kind: str, headers: dict[str, str]) -> web.Response:
        frame = self.frames.get(kind)
        if frame is None and self.frames.seq:
            raise http_error(web.HTTPNotFound, "this stream has no depth")
        if frame is None:
            raise http_error(web.HTTPServiceUnavailable, "no frame yet", **{"Retry-After": "1"})
        seq, data = frame
        return web.Response(body=data, content_type="image/png", headers={"X-Frame-Number": str(seq), **headers})

    async def stats(self, request: web.Request) -> web.Response:
        snap = self.sink.stats.snapshot() if self.sink.stats is not None else {}
        latency = snap.get("latency_ms", {})
        buffered = sum(r.transport.get_write_buffer_size() for r in self.viewers.values() if r.transport)
        return web.json_response(
            {
                "fps": snap.get("fps_out", 0.0),
                "latency_ms": {"p50": latency.get("p50", 0.0), "p95": latency.get("p95", 0.0)},
                "frames": snap.get("frames_out", 0),
                "frames_dropped": snap.get("frames_dropped", 0),
                "frames_received": self.frames.seq,
                "clients": len(self.viewers),
                "max_clients": self.sink.max_clients,
                "send_buffer_bytes": buffered,
                "settings": self.settings(),
                **self.measure.calibration(),
                "effects": self.measure.described(),
            }
        )

    def settings(self) -> dict[str, str]:
        target = self.sink.picture.snapshot()
        return {"view": target.view, "colormap": target.colormap, "range": target.range}

    async def get_settings(self, request: web.Request) -> web.Response:
        if set(request.query) - {"token"}:
            raise http_error(web.HTTPBadRequest, "use POST to change settings")
        return web.json_response({"settings": self.settings(), "choices": CHOICES})

    async def post_settings(self, request: web.Request) -> web.Response:
        """Change settings from query parameters, a JSON object or a form: all valid, or none applied."""
        changes = {k: v for k, v in request.query.items() if k != "token"}
        if request.body_exists:
            changes.update(await read_body(request))
        unknown = sorted(set(changes) - set(CHOICES))
        if unknown or not changes:
            raise http_error(web.HTTPBadRequest, f"unknown or no settings {unknown}: use {', '.join(CHOICES)}")
        for key, value in changes.items():
            if value not in CHOICES[key]:
                raise http_error(
                    web.HTTPBadRequest, f"{key} {repr(value)[:40]} is unknown: use one of {', '.join(CHOICES[key])}"
                )
        self.sink.picture.update(**changes)  # all at once; the engine reads them for its next batch
        log.info("web: settings now %s", self.settings())
        return web.json_response({"settings": self.settings(), "choices": CHOICES})


async def read_body(request: web.Request) -> dict:
    """A JSON object or a form; anything else is a 4xx."""
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise http_error(web.HTTPBadRequest, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise http_error(web.HTTPBadRequest, "the body must be a JSON object")
        return body
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return dict(await request.post())
    raise http_error(web.HTTPUnsupportedMediaType, "send JSON or a form")


async def no_content(request: web.Request) -> web.Response:
    """Browsers ask for an icon; a 204 keeps their consoles and our logs free of 404s."""
    return web.Response(status=204)


@web.middleware
async def errors_middleware(request: web.Request, handler) -> web.StreamResponse:
    """An unexpected error becomes a one-line JSON 500 (logged with its traceback here, never sent)."""
    try:
        return await handler(request)
    except (web.HTTPException, ConnectionError):
        raise
    except Exception:
        log.exception("web: %s %s failed", request.method, request.path)
        return web.json_response({"error": "internal server error"}, status=500)


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """No caching, no sniffing, and no token leaking through Referer."""
    for key, value in HEADERS.items():
        response.headers.setdefault(key, value)
