"""The keyed view (processors/effects.py): distance keying and depth of field on scenes of known geometry."""

from __future__ import annotations

import cv2

import json

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from streamer.bench_costs import effects_ms
from streamer.calibration import Calibration
from streamer.cli.main import main
from streamer.effect_settings import EffectSettings, parse_background, parse_band
from streamer.errors import ConfigError
from streamer.legend import legend_picture, ticks
from streamer.processors.effects import Keyer, band_mask, box_filter, depth_of_field, grid_indices, pyramid, subsample

H, W = 720, 1280
CX, CY, R = 610.3, 377.7, 221.4  # the near disk, off the pixel grid on purpose
GREEN = (0, 255, 0)


def two_planes(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A textured disk at 1 m in front of a textured plane at 3 m, 720p: picture, true metres, radius map."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    radius = ((xx - CX) ** 2 + (yy - CY) ** 2).sqrt()
    near = radius < R
    far_texture = torch.randint(30, 110, (H, W, 3), generator=g)
    near_texture = torch.randint(140, 230, (H, W, 3), generator=g)
    image = torch.where(near[..., None], near_texture, far_texture).to(torch.uint8)[None]
    return image, torch.where(near, 1.0, 3.0)[None], radius


def network_depth(depth: torch.Tensor, grid: int = 16, bleed: int = 3) -> torch.Tensor:
    """Metres as a network gives them: on a coarse grid, bilinearly upsampled, the near surface
    bleeding `bleed` pixels over the far one."""
    coarse = F.interpolate(F.avg_pool2d(depth[:, None], grid), (H, W), mode="bilinear", align_corners=False)
    return -F.max_pool2d(-coarse, 2 * bleed + 1, 1, bleed)[:, 0]


def edge_error(kept: torch.Tensor, radius: torch.Tensor) -> float:
    """The farthest a wrongly keyed pixel lies from the true edge, in pixels (0: none wrong)."""
    wrong = kept != (radius < R)
    return float((radius[wrong] - R).abs().max()) if wrong.any() else 0.0


def test_key_edge_follows_the_picture_within_2px_at_720p(one_torch_thread):
    image, truth, radius = two_planes()
    depth = network_depth(truth)
    settings = EffectSettings(0.0, 2.0, "transparent")
    keyed = Keyer()(image, depth, settings, 900.0, alpha_out=True)
    assert keyed.shape == (1, H, W, 4)
    alpha = keyed[0, ..., 3]
    assert edge_error(alpha > 127, radius) <= 2.0
    # the network's own edge is off by more: the refinement by the picture is what brings it in
    assert edge_error(band_mask(depth[0], 0.0, 2.0, 0.05, None), radius) > 4.0
    inside, outside = radius < R - 30, radius > R + 30  # beyond the filter's window the matte is flat
    assert alpha[inside].min() == 255 and alpha[outside].max() == 0
    assert torch.equal(keyed[0, ..., :3][inside], image[0][inside])


def test_key_holds_still_over_100_frames_of_a_still_scene(one_torch_thread):
    """Per-frame noise on the metres (what the stabiliser leaves: 1 cm) must not make the edge flicker."""
    image, truth, _ = two_planes()
    depth = network_depth(truth)
    noise = torch.Generator().manual_seed(1)

    def flips(hysteresis: float, frames: int) -> int:
        keyer, settings, previous, count = Keyer(), EffectSettings(0.0, 2.0, "color:#00FF00", hysteresis), None, 0
        for _ in range(frames):
            keyed = keyer(image, depth + 0.01 * torch.randn(depth.shape, generator=noise), settings, 900.0, False)
            if previous is not None:
                count += int((keyed != previous).any(dim=-1).sum())
            previous = keyed
        return count

    assert flips(0.05, 100) == 0
    assert flips(0.0, 5) > 100  # without hysteresis the same noise flickers at once: the test can fail


def test_backgrounds_colour_image_and_none(tmp_path, one_torch_thread):
    image, truth, radius = two_planes()
    outside, inside = radius > R + 30, radius < R - 30
    keyer = Keyer()
    green = keyer(image, truth, EffectSettings(0.0, 2.0, "color:#00FF00"), 900.0, False)[0]
    assert (green[outside] == torch.tensor(GREEN, dtype=torch.uint8)).all()
    assert torch.equal(green[inside], image[0][inside])
    picture = np.zeros((90, 160, 3), np.uint8)
    picture[:, :80] = (200, 10, 10)
    picture[:, 80:] = (10, 10, 200)
    Image.fromarray(picture).save(tmp_path / "beach.png")
    beach = keyer(image, truth, EffectSettings(0.0, 2.0, f"image:{tmp_path / 'beach.png'}"), 900.0, False)[0]
    assert tuple(beach[20, 20].tolist()) == (200, 10, 10) and tuple(beach[20, W - 20].tolist()) == (10, 10, 200)
    kept_all = keyer(image, truth, EffectSettings(0.0, 2.0, "none"), 900.0, False)
    assert torch.equal(kept_all, image)
    blurred = keyer(image, truth, EffectSettings(0.0, 2.0, "blur"), 900.0, False)[0]
    assert blurred[outside].float().std() < image[0][outside].float().std() / 4  # texture gone far away


def test_transparent_key_through_letterbox_and_yuv(one_torch_thread):
    """A transparent background kept as alpha (RGBA) goes through the letterbox with clear bars; a
    picture made as YUV planes has no alpha, so there the dropped part is black, as everywhere else."""
    from streamer.processors.render import Renderer
    from streamer.views import PictureSettings

    depth = torch.full((1, 32, 48), 3.0)
    depth[:, 8:24, 12:36] = 1.0
    image = torch.full((1, 32, 48, 3), 200, dtype=torch.uint8)
    clear = EffectSettings(0.0, 2.0, "transparent")
    maps = {"depth": depth, "image": image}
    boxed = Renderer(PictureSettings("keyed", effects=clear, alpha=True, fit=(48, 48)))(maps)
    assert boxed.shape == (1, 48, 48, 4)
    assert (boxed[0, :4, :, 3] == 0).all() and (boxed[0, 24, 20:28, 3] == 255).all()  # bar clear, key kept
    planes = Renderer(PictureSettings("keyed", effects=clear, alpha=True, pixel_format="yuv420p"))(maps)
    luma = planes[0, :32]
    assert luma[16, 24] > 150 and luma[2, 2] < 5  # kept: the picture; dropped: black, not the picture


def laplacian_variance(picture: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(picture, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def test_depth_of_field_sharpness_falls_away_from_the_focus_plane(one_torch_thread):
    """Strips of one texture at distances in front of and behind the focus: sharpness must fall
    with the blur circle |1/focus - 1/d|, on both sides of the plane."""
    focus = 1.2
    distances = [0.5, 0.7, 0.9, 1.2, 1.6, 2.5, 6.0]
    strip = W // len(distances)
    g = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (1, H, W, 3), generator=g, dtype=torch.uint8)
    depth = torch.empty(1, H, W)
    for i, d in enumerate(distances):
        depth[..., i * strip : (i + 1) * strip] = d
    out = depth_of_field(image, depth, EffectSettings(focus=focus), 1100.0)[0].numpy()
    margin = 40
    sharpness = {
        d: laplacian_variance(out[:, i * strip + margin : (i + 1) * strip - margin]) for i, d in enumerate(distances)
    }
    by_blur = sorted(distances, key=lambda d: abs(1 / focus - 1 / d))
    values = [sharpness[d] for d in by_blur]
    assert all(a > b for a, b in zip(values, values[1:], strict=False)), dict(zip(by_blur, values, strict=True))
    in_focus = distances.index(focus)
    assert np.array_equal(
        out[:, in_focus * strip + margin : (in_focus + 1) * strip - margin],
        image[0, :, in_focus * strip + margin : (in_focus + 1) * strip - margin].numpy(),
    )


def test_pyramid_keeps_size_of_odd_pictures():
    levels = pyramid(torch.randint(0, 256, (1, 37, 51, 3), dtype=torch.uint8))
    assert [tuple(lv.shape[-2:]) for lv in levels] == [(37, 51), (19, 26), (10, 13), (5, 7), (3, 4), (2, 2)]


def test_box_filter_is_the_window_mean_with_repeated_edges():
    x = torch.rand(2, 3, 23, 31, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for k in (1, 3, 7):
        padded = F.pad(x, (k // 2,) * 4, mode="replicate")
        assert torch.allclose(box_filter(x, k), F.avg_pool2d(padded, k, 1), atol=1e-12)


@pytest.mark.parametrize("cells", [(12, 16), (5, 7), (24, 32)])
def test_subsample_takes_the_cell_centres_whatever_the_grid(cells):
    x = torch.arange(24 * 32, dtype=torch.float32).view(1, 24, 32)
    rows, cols = grid_indices(24, cells[0], x.device), grid_indices(32, cells[1], x.device)
    assert torch.equal(subsample(x, cells), x[:, rows][:, :, cols])
    assert rows.tolist() == [(2 * i + 1) * 24 // (2 * cells[0]) for i in range(cells[0])]


def test_keyed_pictures_survive_the_next_frame(one_torch_thread):
    """The Keyer keeps scratch tensors from frame to frame: what it returned must not be one of them."""
    image, truth, _ = two_planes()
    keyer, settings = Keyer(), EffectSettings(0.0, 2.0, "blur", focus=1.5)
    first = keyer(image, truth, settings, 900.0, False)
    kept = first.clone()
    keyer(255 - image, truth, settings, 900.0, False)
    assert torch.equal(first, kept)


@pytest.mark.parametrize("text, band", [("0.4:1.8", (0.4, 1.8)), ("1.5", (0.0, 1.5))])
def test_band_parses(text, band):
    assert parse_band(text) == band


@pytest.mark.parametrize("bad", ["1.8:0.4", "near:far", "0:inf"])
def test_bad_band_is_one_clear_error(bad):
    with pytest.raises(ConfigError, match="key band"):
        parse_band(bad)


@pytest.mark.parametrize("bad", ["colour:#00ff00", "color:#00ff0", "image:"])
def test_bad_background_is_one_clear_error(bad):
    with pytest.raises(ConfigError, match="background"):
        parse_background(bad)


def test_cli_keyed_png_through_the_null_stage(tmp_path, one_torch_thread):
    """The flags reach the picture: green encodes the null stage's metres (near disk, far plane),
    red and blue the texture; --keep-within 2 with a transparent background writes RGBA PNGs."""
    image, truth, radius = two_planes()
    frame = image[0].numpy().copy()
    # the null stage: depth = 10 - green * 9.5 / 255, so green 242 is 0.98 m and 188 is 3.0 m
    frame[..., 1] = np.where((radius < R).numpy(), 242, 188)
    Image.fromarray(frame).save(tmp_path / "scene.png")
    out = tmp_path / "out"
    code = main(
        [
            "depth",
            str(tmp_path / "scene.png"),
            "-o",
            str(out),
            "--processor",
            "null",
            "--format",
            "keyed",
            "--keep-within",
            "2",
            "--background",
            "transparent",
            "--fx",
            "1000",
        ]
    )
    assert code == 0
    written = cv2.imread(str(out / "scene.png"), cv2.IMREAD_UNCHANGED)
    assert written.shape == (H, W, 4)
    alpha = torch.from_numpy(written[..., 3])
    assert edge_error(alpha > 127, radius) <= 2.0
    assert (
        main(
            [
                "depth",
                str(tmp_path / "scene.png"),
                "-o",
                str(tmp_path / "x"),
                "--processor",
                "null",
                "--format",
                "keyed",
                "--background",
                "colour:red",
            ]
        )
        == 1
    )
    assert not (tmp_path / "x").exists()
    (tmp_path / "notes.png").write_text("not a picture")  # refused before the run, not at its first frame
    args = ["depth", str(tmp_path / "scene.png"), "-o", str(tmp_path / "y"), "--processor", "null"]
    assert main([*args, "--format", "keyed", "--background", f"image:{tmp_path / 'notes.png'}"]) == 1
    assert not (tmp_path / "y").exists()


def null_scene(tmp_path) -> tuple[str, np.ndarray]:
    """A still whose green makes the null stage's metres: a ramp from 0.5 m (left) to 10 m (right)."""
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[..., 1] = np.linspace(255, 0, 64, dtype=np.float32).round().astype(np.uint8)[None]
    Image.fromarray(frame).save(tmp_path / "ramp.png")
    return str(tmp_path / "ramp.png"), 10.0 - frame[..., 1].astype(np.float64) * (9.5 / 255.0)


def millimetres(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.float64)


def test_scale_multiplies_every_metre_and_is_recorded(tmp_path):
    src, metres = null_scene(tmp_path)
    base = ["depth", src, "--processor", "null", "--format", "metric16"]
    assert main([*base, "-o", str(tmp_path / "plain")]) == 0
    assert main([*base, "-o", str(tmp_path / "scaled"), "--scale", "0.5"]) == 0
    plain, scaled = millimetres(tmp_path / "plain/ramp.png"), millimetres(tmp_path / "scaled/ramp.png")
    assert np.abs(plain - metres * 1000).max() <= 1.0
    assert np.abs(scaled - metres * 500).max() <= 1.0
    meta = json.loads((tmp_path / "scaled/metadata.json").read_text())
    assert (meta["scale"], meta["scale_source"]) == (0.5, "given")


def test_known_distance_sets_the_scale_on_the_first_frame(tmp_path):
    src, metres = null_scene(tmp_path)
    x, y, true = 40, 20, 2.5
    code = main(
        [
            "depth",
            src,
            "--processor",
            "null",
            "--format",
            "metric16",
            "-o",
            str(tmp_path / "k"),
            "--known-distance",
            f"{x},{y}={true}",
        ]
    )
    assert code == 0
    out = millimetres(tmp_path / "k/ramp.png")
    assert abs(out[y, x] - true * 1000) <= 1.0
    factor = true / metres[y, x]
    assert np.abs(out - metres * factor * 1000).max() <= 1.0
    meta = json.loads((tmp_path / "k/metadata.json").read_text())
    assert meta["scale_source"] == "known-distance" and meta["scale"] == pytest.approx(factor, rel=1e-5)
    assert main(["depth", src, "--processor", "null", "-o", str(tmp_path / "bad"), "--known-distance", "40,20"]) == 1
    assert not (tmp_path / "bad").exists()


def test_a_click_scales_by_the_factor_and_is_saved_per_camera(tmp_path):
    store = tmp_path / "calibration.json"
    first = Calibration.from_options(None, None, "/dev/video0", store)
    assert first.describe() == {"scale": 1.0, "scale_source": "none"}
    depth = torch.full((1, 4, 4), 4.0)
    assert first.calibrate(shown=float(first.apply(depth)[0, 0, 0]), metres=3.0) == pytest.approx(0.75)
    assert float(first.apply(depth)[0, 0, 0]) == pytest.approx(3.0)
    again = Calibration.from_options(None, None, "/dev/video0", store)
    assert again.describe() == {"scale": 0.75, "scale_source": "saved"}
    assert Calibration.from_options(None, None, "1", store).scale == 1.0  # another camera
    assert Calibration.from_options(0.9, None, "/dev/video0", store).describe()["scale_source"] == "given"


def test_a_recording_says_from_which_frame_a_mid_run_click_scaled_the_metres(tmp_path, one_torch_thread):
    """A click calibrates while a recording runs: the video's and the point clouds' sidecars list the
    scale of every stretch of frames, not one scale for all (the video's header had the first's)."""
    from streamer.engine.pipeline import Pipeline
    from streamer.processors.null import NullStage
    from streamer.sinks import PlySink, VideoSink
    from streamer.sinks.base import Sink
    from streamer.sources import PatternSource

    calibration = Calibration()

    class Clicker(Sink):
        name, needs = "clicker", frozenset({"depth_mm"})

        def write(self, result):
            if result.frame.index == 2:  # as the page's /calibrate does, from the sink's thread
                calibration.calibrate(shown=2.0, metres=1.0)

    video = VideoSink(tmp_path / "rec.mkv", "metric16")
    clouds = PlySink(tmp_path / "clouds", stride=16)
    source = PatternSource("testsrc:64x48@10", frames=12, live=False)
    Pipeline(source, NullStage(torch.device("cpu")), [Clicker(), video, clouds], calibration=calibration).run()
    for sidecar in (tmp_path / "rec.json", tmp_path / "clouds" / "metadata.json"):
        changes = json.loads(sidecar.read_text())["scale_changes"]
        assert [(c["scale"], c["scale_source"]) for c in changes] == [(1.0, "none"), (0.5, "click")], sidecar
        assert changes[0]["from_frame"] == 0 and 2 < changes[1]["from_frame"] < 12


def test_bench_measures_the_keyed_view(one_torch_thread):
    figures = effects_ms(torch.device("cpu"), 1, size=(160, 96))
    assert set(figures) == {"key", "depth_of_field"} and min(figures.values()) > 0


def write_lossless(path, frames: list[np.ndarray]) -> None:
    """An FFV1 .mkv of RGB frames: the null stage's metres come through exactly."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=30)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "bgr0"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def test_webm_recording_keeps_the_transparency(tmp_path):
    """VP9 in WebM with alpha: read back with libvpx (FFmpeg's own VP9 decoder drops alpha)."""
    h, w = 120, 160
    frame = np.random.default_rng(4).integers(0, 256, (h, w, 3), dtype=np.uint8)
    frame[..., 1] = 188  # 3.0 m
    frame[30:90, 40:100, 1] = 242  # 0.98 m
    write_lossless(tmp_path / "in.mkv", [frame] * 4)
    out = tmp_path / "keyed.webm"
    args = ["transcode", str(tmp_path / "in.mkv"), "-o", str(out), "--processor", "null", "--format", "keyed"]
    assert main([*args, "--keep-within", "2", "--background", "transparent"]) == 0
    decoder = av.CodecContext.create("libvpx-vp9", "r")
    with av.open(str(out)) as container:
        frames = [f for packet in container.demux(video=0) for f in decoder.decode(packet)]
    assert len(frames) == 4 and frames[0].format.name == "yuva420p"
    alpha = frames[-1].to_ndarray(format="rgba")[..., 3].astype(int)
    assert alpha[40:80, 50:90].min() > 240 and alpha[:20].max() < 15 and alpha[100:].max() < 15


def test_legend_ticks_are_nice_metres():
    assert ticks(0.3, 4.2) == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
    assert ticks(1.0, 30.0) == [5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
    assert ticks(0.12, 0.19, 4) == [0.12, 0.14, 0.16, 0.18]


def test_legend_bar_runs_from_the_near_colour_to_the_far_one():
    colors = np.stack([np.arange(256), 255 - np.arange(256), np.full(256, 7)], axis=1).astype(np.uint8)
    plate = legend_picture(colors, 0.5, 4.0, 400)
    opaque_rows = np.where((plate[..., 3] == 255).mean(axis=1) > 0.8)[0]  # the bar
    bar = plate[opaque_rows[len(opaque_rows) // 2]]
    solid = np.where(bar[:, 3] == 255)[0]
    near_end, far_end = bar[solid[0] + 2, :3].astype(int), bar[solid[-1] - 2, :3].astype(int)  # beside the end ticks
    assert np.abs(near_end - colors[255]).max() <= 4 and np.abs(far_end - colors[0]).max() <= 4
    below = plate[opaque_rows[-1] + 2 :, :, :3]
    assert (below.min(axis=2) > 200).sum() > 50  # the tick labels


def test_legend_is_burned_into_recorded_pictures_only_when_asked(tmp_path):
    src, _ = null_scene(tmp_path)
    base = ["depth", src, "--processor", "null", "--range", "fixed", "--near", "0.5", "--far", "10"]
    assert main([*base, "-o", str(tmp_path / "plain")]) == 0
    assert main([*base, "-o", str(tmp_path / "legend"), "--legend"]) == 0
    plain = cv2.imread(str(tmp_path / "plain/ramp.png")).astype(int)
    legend = cv2.imread(str(tmp_path / "legend/ramp.png")).astype(int)
    changed = np.abs(plain - legend).max(axis=2) > 0
    rows = np.where(changed.any(axis=1))[0]
    assert rows.size and rows.min() >= plain.shape[0] * 2 // 3  # the bar sits at the bottom
    assert changed.any()
