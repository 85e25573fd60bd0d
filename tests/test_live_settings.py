"""Live settings are read once per batch: switching the view while the model works never breaks a
batch (the maps asked for and the picture agree), and the new view arrives with the next one."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import torch

from streamer.engine.pipeline import Pipeline
from streamer.errors import ConfigError
from streamer.sinks import Sink
from streamer.sources import PatternSource
from streamer.views import PictureSettings

from conftest import SlowStage

CPU = torch.device("cpu")
W, H = 64, 48
SWITCH_S = 0.1
RUN_S = 20.0

# the views `view_of` tells apart in the null stage's pictures (keyed shows the camera picture, as color would)
VIEWS = ("gray", "color", "normal", "side-by-side")


def view_of(picture: np.ndarray) -> str:
    """Which view made this picture of the null stage (flat normals facing the camera)."""
    if picture.shape[1] == 2 * W:
        return "side-by-side"
    if (picture == (127, 127, 0)).all():
        return "normal"
    if (picture[..., 0] == picture[..., 1]).all() and (picture[..., 1] == picture[..., 2]).all():
        return "gray"
    return "color"


def run_while_switching(pipeline: Pipeline, period: float, seconds: float, switch) -> dict:
    """Run `pipeline` while another thread calls `switch()` every `period` s for `seconds` (a person
    pressing keys or clicking the page), then stops it; the run's statistics."""

    def switching() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(period)
            switch()
        pipeline.person_stop()

    switcher = threading.Thread(target=switching)
    switcher.start()
    try:
        return pipeline.run()
    finally:
        pipeline.person_stop()
        switcher.join()


class ViewRecorder(Sink):
    needs = frozenset({"picture"})
    live = True
    name = "recorder"

    def __init__(self, picture: PictureSettings) -> None:
        self.picture = picture
        self.seen: list[str] = []

    def write(self, result) -> None:
        self.seen.append(view_of(result.maps["picture"]))


def test_views_switched_every_100ms_for_20s_keep_frames_coming():
    settings = PictureSettings("color")
    recorder = ViewRecorder(settings)
    pipeline = Pipeline(PatternSource(f"testsrc:{W}x{H}@30"), SlowStage(0.06), [recorder])
    switches = 0

    def switch() -> None:
        nonlocal switches
        settings.cycle("view", VIEWS)  # what the preview's `v` key does
        switches += 1

    stats = run_while_switching(pipeline, SWITCH_S, RUN_S, switch)
    assert switches >= 100 and stats["frames_out"] == len(recorder.seen)
    last_quarter = recorder.seen[-len(recorder.seen) // 4 :]
    assert all(last_quarter.count(view) >= 3 for view in VIEWS), last_quarter  # every view keeps coming
    # frames follow the switches: each next view is the same one or a later one in the cycle, never an older one
    steps = [
        (VIEWS.index(b) - VIEWS.index(a)) % len(VIEWS) for a, b in zip(recorder.seen, recorder.seen[1:], strict=False)
    ]
    assert max(steps) <= 2, steps  # a 60 ms batch spans at most one switch, plus one while it waits


def test_a_change_of_several_settings_applies_whole_or_not_at_all():
    settings = PictureSettings("color", range="auto")
    settings.update(view="normal", colormap="bone", range="fixed", near=1.0, far=3.0)
    snap = settings.snapshot()
    assert (snap.view, snap.colormap, snap.range, snap.near, snap.far) == ("normal", "bone", "fixed", 1.0, 3.0)
    with pytest.raises(ConfigError):
        settings.update(view="gray", colormap="nonsense")
    assert settings.snapshot() == snap  # nothing of the refused change applied
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.view = "gray"  # a batch's snapshot cannot change under it


def test_frames_held_by_the_lookahead_stabiliser_keep_the_settings_their_maps_were_made_for():
    """Lookahead returns earlier frames with later batches: each is drawn in the view its maps were
    asked for, even when the view changed in between."""
    from streamer.processors.stabilize_stage import StabilizeStage

    settings = PictureSettings("color")

    class Switching(ViewRecorder):
        live = False

        def write(self, result) -> None:
            super().write(result)
            settings.cycle("view", VIEWS)  # a switch after every frame, while the model works

    recorder = Switching(settings)
    source = PatternSource(f"testsrc:{W}x{H}@30", frames=24, live=False)
    stats = Pipeline(source, SlowStage(0.01), [recorder], batch_size=2, stabilizer=StabilizeStage("lookahead")).run()
    assert stats["frames_out"] == 24 and len(recorder.seen) == 24
    assert len(set(recorder.seen)) >= 3  # the switches took effect


def test_keyed_view_and_effect_changes_mid_run_keep_frames_coming():
    """The keyed view asks for the camera picture too, and its band changes live (page, keys):
    switching into and out of it while the model works never breaks a batch."""
    from streamer.effect_settings import EffectSettings
    from streamer.views import VIEW_FORMATS

    settings = PictureSettings("color")
    recorder = ViewRecorder(settings)
    pipeline = Pipeline(PatternSource(f"testsrc:{W}x{H}@30"), SlowStage(0.03), [recorder])
    bands = [EffectSettings(far=1.0), EffectSettings(far=2.5, background="color:#00ff00")]

    def switch() -> None:
        settings.cycle("view", VIEW_FORMATS)
        settings.update(effects=bands[settings.effects == bands[0]])

    stats = run_while_switching(pipeline, 0.05, 3.0, switch)
    assert stats["frames_out"] == len(recorder.seen) >= 20
