"""The web sink with real clients: headless Chromium, OpenCV, PyAV, raw sockets that never read.

A feeder thread plays the engine's sink thread: it writes changing frames at 30 fps and times
every write(). The fake renderer is what the page changes; the feeder draws gray pictures in the
gray view and coloured ones otherwise, so a screenshot shows whether a switch took effect.
Browser tests skip when Chromium, chromedriver or selenium are missing, and fail instead when CI is set.
"""

from __future__ import annotations

import cv2

import http.client
import json
import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from fractions import Fraction
from types import SimpleNamespace

import av
import numpy as np
import pytest

from streamer.engine.stats import Stats
from streamer.errors import SinkError
from streamer.sinks.web import WebSink
from streamer.types import Frame, Result, StreamInfo
from streamer.views import PictureSettings

from conftest import missing_tool

W, H, FPS = 320, 240, 30
INFO = StreamInfo(W, H, Fraction(1, FPS), Fraction(FPS), live=True)
NOISE = np.random.default_rng(0).integers(-40, 40, (4, H, W, 1))  # makes JPEGs big enough to fill buffers
JSON = {"Content-Type": "application/json"}
ENDPOINTS = ["/", "/stream.mjpg", "/snapshot.png", "/depth.png", "/stats", "/settings"]


def picture(index: int, view: str) -> np.ndarray:
    """A ramp that moves with `index`, with texture; equal channels in the gray view."""
    ramp = (np.arange(W)[None, :] * 255 // W + 3 * index) % 256 + np.zeros((H, 1), int)
    bars = (np.arange(H)[:, None] * 2 % 256) + np.zeros((1, W), int)
    rgb = np.stack([ramp] * 3 if view == "gray" else [ramp, 255 - ramp, bars], axis=-1)
    return np.clip(rgb + NOISE[index % len(NOISE)], 0, 255).astype(np.uint8)


def result(index: int, view: str = "color") -> Result:
    depth = np.full((H, W), 1000 + index, np.uint16)
    depth[: H // 2] = 65535
    image = picture(index, view)
    frame = Frame(image, index, index, Fraction(1, FPS), time.monotonic())
    return Result(frame, {"picture": image, "depth_mm": depth})


class Feeder:
    """Writes frames at FPS on its own thread, as the engine's sink thread would; records write() times."""

    def __init__(self, sink: WebSink) -> None:
        self.sink, self.written, self.write_s = sink, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="web-test-feeder")

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            item = result(self.written, self.sink.picture.view)
            start = time.perf_counter()
            self.sink.write(item)
            self.write_s.append(time.perf_counter() - start)
            self.sink.stats.frame_out(item.frame.capture_time)
            self.written += 1
            due += 1 / FPS

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def serving(sink: WebSink, stop_with_close: bool = False):
    """Run serve() on a thread as the engine does; on exit, stop it and check that it returned."""
    sink.open(INFO, Stats())
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=sink.serve, args=(ready, stop), name="web-test-server")
    thread.start()
    assert ready.wait(10) and sink.error is None and sink.port != 0
    try:
        yield sink
    finally:
        if not stop_with_close:
            stop.set()
        sink.close(True)
        thread.join(10)
        assert not thread.is_alive(), "serve() did not return"


def request(port: int, path: str, method: str = "GET", body=None, headers=None) -> tuple[int, dict, bytes]:
    """One request to 127.0.0.1; reads the whole body, except of streams (their first bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        stream = response.getheader("Content-Type", "").startswith("multipart/")
        return response.status, dict(response.getheaders()), response.read(64) if stream else response.read()
    finally:
        conn.close()


def read_part(response: http.client.HTTPResponse) -> bytes:
    """The next JPEG of a multipart/x-mixed-replace response."""
    line = response.readline()
    while line.strip() != b"--frame":
        assert line, "the stream ended"
        line = response.readline()
    headers = dict(header.split(b":", 1) for header in iter(lambda: response.readline().strip(), b""))
    return response.read(int(headers[b"Content-Length"]))


def stats(port: int) -> dict:
    return json.loads(request(port, "/stats")[2])


@pytest.fixture(scope="module")
def live():
    """A loopback sink with frames flowing, shared by the tests that only watch it."""
    with serving(WebSink(PictureSettings(), port=0)) as sink, Feeder(sink) as feeder:
        yield sink, feeder


@pytest.fixture(scope="module")
def browser():
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    chromedriver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
    )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    missing = [
        what
        for what, ok in (
            ("pip install selenium", webdriver),
            ("apt-get install chromium", chromium),
            ("apt-get install chromium-driver", chromedriver),
        )
        if not ok
    ]
    if missing:
        reason = f"browser tests need: {', '.join(missing)}"
        missing_tool(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=800,600"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, live):
    """The live page, loaded and showing frames; left for about:blank so its stream ends."""
    from selenium.webdriver.support.ui import WebDriverWait

    sink, _ = live
    browser.get(sink.url)
    wait = WebDriverWait(browser, 15)
    wait.until(lambda d: d.execute_script("return document.getElementById('picture').naturalWidth") > 0)
    wait.until(lambda d: d.execute_script("return document.getElementById('view-select').options.length") > 0)
    yield browser, wait
    browser.get("about:blank")


def screenshot(driver) -> np.ndarray:
    from selenium.webdriver.common.by import By

    png = driver.find_element(By.ID, "picture").screenshot_as_png
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).astype(int)


def channel_spread(image: np.ndarray) -> float:
    return float(np.abs(image - image.mean(axis=2, keepdims=True)).mean())


def test_page_shows_a_moving_picture_and_stats(page):
    driver, wait = page
    first = screenshot(driver)
    time.sleep(0.5)
    second = screenshot(driver)
    assert first.std() > 20 and second.std() > 20, "the picture is uniform"
    assert np.abs(first - second).mean() > 5, "the picture does not change"
    wait.until(lambda d: "fps" in d.find_element("id", "readout").text)


def test_view_switch_from_the_page_changes_renderer_and_picture(page, live):
    from selenium.webdriver.support.ui import Select

    driver, wait = page
    renderer = live[0].picture
    assert channel_spread(screenshot(driver)) > 20
    Select(driver.find_element("id", "view-select")).select_by_value("gray")
    wait.until(lambda d: renderer.view == "gray")
    wait.until(lambda d: channel_spread(screenshot(d)) < 5)
    Select(driver.find_element("id", "colormap-select")).select_by_value("magma")
    Select(driver.find_element("id", "range-select")).select_by_value("fixed")
    wait.until(lambda d: (renderer.colormap, renderer.range) == ("magma", "fixed"))
    Select(driver.find_element("id", "view-select")).select_by_value("color")
    wait.until(lambda d: renderer.view == "color")


def test_opencv_and_pyav_read_the_mjpeg_stream(live):
    sink, _ = live
    capture = cv2.VideoCapture(sink.stream_url, cv2.CAP_FFMPEG)
    try:
        frames = [capture.read() for _ in range(3)]
    finally:
        capture.release()
    assert all(ok and image.shape == (H, W, 3) for ok, image in frames)
    with av.open(sink.stream_url, format="mpjpeg", timeout=10) as container:
        decoded = [
            frame.to_ndarray(format="rgb24") for _, frame in zip(range(3), container.decode(video=0), strict=False)
        ]
    assert len(decoded) == 3 and decoded[0].shape == (H, W, 3)


def test_snapshot_and_depth_pngs(live):
    sink, feeder = live
    status, headers, body = request(sink.port, "/depth.png")
    depth = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
    assert status == 200 and depth.dtype == np.uint16 and depth.shape == (H, W)
    index = int(headers["X-Frame-Number"]) - 1
    assert depth[0, 0] == 65535 and depth[-1, -1] == 1000 + index, "not the millimetres that were written"
    status, _, body = request(sink.port, "/snapshot.png")
    snapshot = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert status == 200 and snapshot.shape == (H, W, 3) and snapshot.std() > 20


def test_non_loopback_host_needs_the_token_everywhere():
    with serving(WebSink(PictureSettings(), host="0.0.0.0", port=0)) as sink:
        assert sink.token and f"token={sink.token}" in sink.url and f":{sink.port}/" in sink.url
        sink.write(result(0))
        for path in ENDPOINTS:
            assert request(sink.port, path)[0] == 401, path
            assert request(sink.port, path + "?token=wrong")[0] == 403, path
            assert request(sink.port, f"{path}?token={sink.token}")[0] == 200, path
            assert request(sink.port, path, headers={"Authorization": f"Bearer {sink.token}"})[0] == 200, path
        body = json.dumps({"view": "gray"})
        assert request(sink.port, "/settings", "POST", body, {"Content-Type": "application/json"})[0] == 401
        assert sink.picture.view == "color"


def test_stalled_viewer_does_not_slow_the_pipeline_or_other_viewers(live):
    sink, feeder = live
    sink.write_timeout = 1.0  # drop the stalled viewer soon once its buffers are full
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", sink.port))
    stalled.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # and never read
    conn = http.client.HTTPConnection("127.0.0.1", sink.port, timeout=10)
    try:
        conn.request("GET", "/stream.mjpg")
        response = conn.getresponse()
        feeder.write_s.clear()
        written, start, received, buffered, dropped_after = feeder.written, time.monotonic(), 0, [], None
        while time.monotonic() - start < 8 and dropped_after is None:
            for _ in range(FPS // 2):
                read_part(response)
                received += 1
            now = stats(sink.port)
            buffered.append(now["send_buffer_bytes"])
            dropped_after = time.monotonic() - start if now["clients"] == 1 else None
        fed = feeder.written - written
    finally:
        conn.close()
        stalled.close()
        sink.write_timeout = 10.0
    assert received >= 0.8 * fed, f"the reading viewer got {received} of {fed} frames"
    assert max(feeder.write_s) < 0.05, f"write() took up to {max(feeder.write_s) * 1000:.0f} ms"
    assert max(buffered) < 1_000_000, f"{max(buffered)} bytes queued for viewers"
    assert dropped_after is not None, "the stalled viewer was never dropped"


def test_viewers_beyond_the_limit_get_503(live):
    sink, _ = live
    deadline = time.monotonic() + 10
    while sink.clients and time.monotonic() < deadline:  # earlier tests' viewers leave at their next frame
        time.sleep(0.05)
    sink.max_clients = stats(sink.port)["clients"] + 1
    conn = http.client.HTTPConnection("127.0.0.1", sink.port, timeout=10)
    try:
        conn.request("GET", "/stream.mjpg")
        read_part(conn.getresponse())
        assert request(sink.port, "/stream.mjpg")[0] == 503
    finally:
        conn.close()
        sink.max_clients = 8


@pytest.mark.parametrize(
    "method,path,body,headers,status",
    [
        ("GET", "/nope", None, {}, 404),
        ("GET", "/../etc/passwd", None, {}, 404),
        ("GET", "/%2e%2e/%2e%2e/etc/passwd", None, {}, 404),
        ("GET", "/stream.mjpg/../../etc/passwd", None, {}, 404),
        ("GET", "/static/", None, {}, 404),
        ("POST", "/stats", None, {}, 405),
        ("POST", "/settings", '{"view": "nope"}', JSON, 400),
        ("POST", "/settings", '{"colormap": "rainbow"}', JSON, 400),
        ("POST", "/settings", '{"range": 3}', JSON, 400),
        ("POST", "/settings", '{"bogus": "x"}', JSON, 400),
        ("POST", "/settings", "{not json", JSON, 400),
        ("POST", "/settings", "[1, 2]", JSON, 400),
        ("POST", "/settings", "view=gray", {"Content-Type": "text/plain"}, 415),
        ("POST", "/settings", None, {}, 400),
        ("GET", "/settings?view=gray", None, {}, 400),
        ("GET", "/stats", None, {"Host": "evil.example"}, 403),
        ("GET", "/stats", None, {"Host": "[::1"}, 403),
        ("POST", "/settings?view=gray", None, {"Origin": "http://evil.example"}, 403),
    ],
)
def test_bad_requests_get_4xx_without_traceback(live, method, path, body, headers, status):
    sink, _ = live
    got, _, data = request(sink.port, path, method, body, headers)
    assert got == status, data
    assert b"Traceback" not in data and sink.picture.view == "color"


def test_settings_change_a_picture_settings_object():
    settings = PictureSettings()
    with serving(WebSink(settings, port=0)) as sink:
        body = json.dumps({"range": "frame", "view": "normal", "colormap": "bone"})
        status, _, data = request(sink.port, "/settings", "POST", body, JSON)
    assert status == 200 and (settings.range, settings.view, settings.colormap) == ("frame", "normal", "bone")
    assert json.loads(data)["settings"] == {"view": "normal", "colormap": "bone", "range": "frame"}


def test_garbage_request_gets_400(live):
    with socket.create_connection(("127.0.0.1", live[0].port), timeout=5) as conn:
        conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert conn.recv(100).split()[1] == b"400"


def test_unexpected_error_is_a_one_line_500(live, caplog):
    class Broken(SimpleNamespace):
        def snapshot(self):
            return self

        def update(self, **changes):
            return 1 / 0

    sink, _ = live
    settings, sink.picture = sink.picture, Broken(view="color", colormap="turbo", range="auto")
    try:
        status, _, data = request(sink.port, "/settings?view=gray", "POST")
    finally:
        sink.picture = settings
    assert status == 500 and json.loads(data) == {"error": "internal server error"}
    assert "ZeroDivisionError" in caplog.text


def test_busy_port_is_a_sink_error_at_open():
    with socket.create_server(("127.0.0.1", 0)) as busy:
        sink = WebSink(PictureSettings(), port=busy.getsockname()[1])
        with pytest.raises(SinkError) as error:
            sink.open(INFO, Stats())
    assert "--port" in error.value.hint
    sink.close(False)
    ready = threading.Event()  # serve() without open() binds itself, and says so when it cannot
    with socket.create_server(("127.0.0.1", 0)) as busy:
        sink = WebSink(PictureSettings(), port=busy.getsockname()[1])
        with pytest.raises(SinkError):
            sink.serve(ready, threading.Event())
    assert ready.is_set() and isinstance(sink.error, SinkError)


def test_nothing_is_encoded_without_viewers_and_close_ends_streams():
    with serving(WebSink(PictureSettings(), port=0), stop_with_close=True) as sink:
        for index in range(5):
            sink.write(result(index))
        assert sink.app.frames.jpeg_encodes == 0
        assert request(sink.port, "/snapshot.png")[0] == 200
        conn = http.client.HTTPConnection("127.0.0.1", sink.port, timeout=10)
        conn.request("GET", "/stream.mjpg")
        response = conn.getresponse()
        assert read_part(response)[:2] == b"\xff\xd8"
    assert response.read() is not None  # the stream ended instead of hanging
    conn.close()
