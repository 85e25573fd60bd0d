"""The keyed view and measuring on the served page, in real Chromium, with the real engine behind it:
a still scene of known geometry (the null stage turns green into metres), keyed at 2 m."""

from __future__ import annotations

import cv2

import json
import math
import threading
import time
from fractions import Fraction

import numpy as np
import pytest
import torch

from streamer.api import make_pipeline, picture_settings
from streamer.config import Config
from streamer.processors.null import NullStage
from streamer.sinks.web import WebSink
from streamer.sources.base import Source
from streamer.types import Frame, StreamInfo

from test_web import browser, request  # noqa: F401  (the module's Chromium, reused)

W, H, FPS = 320, 240, 30
NEAR = (slice(60, 180), slice(40, 160))  # rows, columns of the near box (0.98 m); the rest lies at 3.0 m


def still_scene() -> np.ndarray:
    g = np.random.default_rng(3)
    frame = g.integers(0, 256, (H, W, 3), dtype=np.uint8)
    frame[..., 1] = 188  # null stage: 10 - 188 * 9.5 / 255 = 3.0 m
    frame[NEAR[0], NEAR[1], 1] = 242  # 0.98 m
    return frame


class StillSource(Source):
    """A camera looking at a still scene: the same picture, live, 30 times a second."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.info = StreamInfo(W, H, Fraction(1, FPS), Fraction(FPS), live=True, name="still")

    def frames(self, stop: threading.Event):
        index = 0
        while not stop.wait(1 / FPS):
            yield Frame(self.image, index, index, self.info.time_base, time.monotonic())
            index += 1


@pytest.fixture
def keyed_run(tmp_path, monkeypatch):
    """The engine running null stage -> web sink in the keyed view, transparent beyond 2 m."""
    monkeypatch.setenv("STREAMER_CONFIG_DIR", str(tmp_path))  # a click's factor is saved here
    cfg = Config.model_validate({"effects": {"keep": [0.0, 2.0], "background": "transparent"}})
    sink = WebSink(picture_settings(cfg, "keyed"), port=0)
    pipeline = make_pipeline(StillSource(still_scene()), NullStage(torch.device("cpu")), [sink], cfg)
    thread = threading.Thread(target=pipeline.run, name="effects-web-run")
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while sink.app.frames.seq < 3:
            assert time.monotonic() < deadline and thread.is_alive(), "no frames reached the page"
            time.sleep(0.05)
        yield sink
    finally:
        pipeline.person_stop()
        thread.join(20)
        assert not thread.is_alive()


def depth_png(port: int) -> np.ndarray:
    status, _, body = request(port, "/depth.png")
    assert status == 200
    return cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED).astype(np.float64)


def open_page(driver, url: str):
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, 20)
    wait.until(lambda d: d.execute_script("return document.getElementById('picture').naturalWidth") > 0)
    return wait


def point_at(driver, x: int, y: int, click: bool = False) -> None:
    """Move the pointer onto picture pixel x, y (it shows at its natural size)."""
    from selenium.webdriver.common.action_chains import ActionChains

    picture = driver.find_element("id", "picture")
    actions = ActionChains(driver).move_to_element_with_offset(picture, x - W // 2, y - H // 2)
    (actions.click() if click else actions).perform()


def test_bare_page_shows_the_page_background_through_the_keyed_region(keyed_run, browser):  # noqa: F811
    wait = open_page(browser, keyed_run.url + "?bare=1")
    wait.until(lambda d: "snapshot.png" in d.execute_script("return document.getElementById('picture').src"))
    browser.execute_script("document.body.style.background = 'rgb(255, 0, 255)'")
    time.sleep(0.3)
    png = browser.find_element("id", "picture").screenshot_as_png
    shot = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(int)
    assert shot.shape[:2] == (H, W)
    far = shot[10:50, 200:300].reshape(-1, 3)
    assert np.abs(far - (255, 0, 255)).max() <= 2, "the far region is not transparent"
    near = shot[80:160, 60:140]
    expected = still_scene()[80:160, 60:140].astype(int)
    assert np.abs(near - expected).mean() < 3, "the near region is not the camera picture"


def test_pointer_readout_equals_depth_png_and_two_clicks_measure_in_3d(keyed_run, browser):  # noqa: F811
    wait = open_page(browser, keyed_run.url)
    point_at(browser, 250, 200)
    wait.until(lambda d: d.find_element("id", "measure").get_attribute("data-metres"))
    data = browser.find_element("id", "measure")
    x, y = int(data.get_attribute("data-x")), int(data.get_attribute("data-y"))
    assert abs(x - 250) <= 1 and abs(y - 200) <= 1
    shown = float(data.get_attribute("data-metres"))
    truth = depth_png(keyed_run.port)[y, x] / 1000
    assert shown == pytest.approx(truth, rel=0.01) and truth == pytest.approx(3.0, abs=0.02)

    point_at(browser, 100, 120, click=True)  # near box
    point_at(browser, 250, 200, click=True)  # far plane
    wait.until(lambda d: d.find_element("id", "distance").get_attribute("data-metres"))
    measured = float(browser.find_element("id", "distance").get_attribute("data-metres"))
    depth = depth_png(keyed_run.port) / 1000
    fx = 1000.0  # the null stage's, at this size

    def xyz(px: int, py: int) -> tuple[float, float, float]:
        z = depth[py, px]
        return ((px + 0.5 - W / 2) * z / fx, (py + 0.5 - H / 2) * z / fx, z)

    assert measured == pytest.approx(math.dist(xyz(100, 120), xyz(250, 200)), rel=0.01)


def test_calibration_click_scales_depth_png_by_the_factor(keyed_run, browser, tmp_path):  # noqa: F811
    wait = open_page(browser, keyed_run.url)
    before = depth_png(keyed_run.port)
    x, y = 250, 200
    target = round(before[y, x] / 1000 * 0.75, 4)
    browser.find_element("id", "calib-metres").send_keys(str(target))
    browser.find_element("id", "calib-arm").click()
    point_at(browser, x, y, click=True)
    wait.until(lambda d: json.loads(request(keyed_run.port, "/stats")[2])["scale_source"] == "click")
    deadline = time.monotonic() + 10
    while abs(depth_png(keyed_run.port)[y, x] - target * 1000) > 1.0:
        assert time.monotonic() < deadline, "the calibration never reached /depth.png"
        time.sleep(0.05)
    after = depth_png(keyed_run.port)
    factor = json.loads(request(keyed_run.port, "/stats")[2])["scale"]
    assert factor == pytest.approx(0.75, rel=1e-3)
    assert np.abs(after - before * factor).max() <= 1.0  # every metre, to the millimetre's rounding
    saved = json.loads((tmp_path / "streamer" / "calibration.json").read_text())
    assert saved[keyed_run_camera()]["scale"] == pytest.approx(factor)


def keyed_run_camera() -> str:
    """The camera key a click is saved under: the config's source (a live source)."""
    return Config().source.uri


def test_page_shows_a_legend_in_metres_for_views_that_show_metres(keyed_run, browser):  # noqa: F811
    wait = open_page(browser, keyed_run.url)
    assert request(keyed_run.port, "/legend.png")[0] == 404  # the keyed view shows no metres
    body = json.dumps({"view": "color"})
    assert request(keyed_run.port, "/settings", "POST", body, {"Content-Type": "application/json"})[0] == 200
    wait.until(
        lambda d: d.execute_script("const l = document.getElementById('legend'); return !l.hidden && l.naturalWidth")
    )
    status, _, png = request(keyed_run.port, "/legend.png?width=300")
    plate = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert status == 200 and plate.shape[1] == 300 and plate.shape[2] == 4


def snapshot_alpha(port: int) -> np.ndarray:
    status, _, body = request(port, "/snapshot.png")
    assert status == 200
    return cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)[..., 3]


def test_band_changes_live_from_the_page(keyed_run, browser):  # noqa: F811
    """The page's keep field narrows the band to 0.5 m: the near box (0.98 m) goes transparent too."""
    from selenium.webdriver.common.keys import Keys

    assert snapshot_alpha(keyed_run.port)[70:170, 50:150].min() == 255  # inside the near box
    wait = open_page(browser, keyed_run.url)
    wait.until(lambda d: d.find_element("id", "keep").is_displayed())
    keep = browser.find_element("id", "keep")
    keep.clear()
    keep.send_keys("0:0.5", Keys.TAB)
    wait.until(lambda d: (keyed_run.picture.effects.near, keyed_run.picture.effects.far) == (0.0, 0.5))
    deadline = time.monotonic() + 10
    while snapshot_alpha(keyed_run.port).max() > 0:
        assert time.monotonic() < deadline, "the new band never reached the picture"
        time.sleep(0.05)
    bad = json.dumps({"background": "image:/etc/passwd"})
    assert request(keyed_run.port, "/effects", "POST", bad, {"Content-Type": "application/json"})[0] == 400
    assert request(keyed_run.port, "/effects?focus=-1", "POST")[0] == 400
    assert keyed_run.picture.effects.background == "transparent" and keyed_run.picture.effects.focus is None
