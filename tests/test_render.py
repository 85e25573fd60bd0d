"""Pictures made on the device equal the pictures the host used to make (numpy + OpenCV)."""

from __future__ import annotations

import cv2

import numpy as np
import pytest
import torch

from streamer.processors.outputs import Outputs, to_millimetres
from streamer.processors.render import Renderer, block_mean_u8, rgb_to_yuv, valid_quantiles
from streamer.sinks import VideoSink
from streamer.views import PictureSettings


def reference_pictures(depths: np.ndarray, view: str, mode: str, colormap: str = "turbo") -> list[np.ndarray]:
    """The host renderer this project had before pictures moved to the device."""
    near, far, initialised, out = 0.1, 10.0, False, []
    for depth in depths:
        sample = depth[::4, ::4]
        sample = sample[sample > 0]
        lo, hi = (float(sample.min()), float(sample.max())) if mode == "frame" else np.percentile(sample, (2, 98))
        lo, hi = float(lo), max(float(hi), float(lo) + 1e-3)
        if mode == "auto" and initialised:
            lo, hi = 0.9 * near + 0.1 * lo, 0.9 * far + 0.1 * hi
        near, far, initialised = lo, hi, True
        u8 = np.clip((far - depth) * (255.0 / (far - near)), 0, 255).astype(np.uint8)
        if view == "gray":
            out.append(cv2.cvtColor(u8, cv2.COLOR_GRAY2RGB))
        else:
            code = getattr(cv2, f"COLORMAP_{colormap.upper()}")
            out.append(cv2.cvtColor(cv2.applyColorMap(u8, code), cv2.COLOR_BGR2RGB))
    return out


@pytest.fixture
def depths() -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:64].astype(np.float32)
    base = 1.0 + 4.0 * x / 64 + y / 48
    return np.stack([base * (1 + 0.05 * k) + rng.normal(0, 0.02, base.shape) for k in range(6)]).astype(np.float32)


@pytest.mark.parametrize("view,mode", [("color", "auto"), ("gray", "frame"), ("color", "frame"), ("gray", "auto")])
def test_device_pictures_equal_the_host_pictures(depths, view, mode):
    renderer = Renderer(PictureSettings(view, range=mode))
    got = [renderer({"depth": torch.from_numpy(d[None])})[0].numpy() for d in depths]
    for mine, theirs in zip(got, reference_pictures(depths, view, mode), strict=True):
        assert np.abs(mine.astype(int) - theirs.astype(int)).max() <= 1


def test_fixed_range_and_normals_match_the_old_formulas(depths):
    renderer = Renderer(PictureSettings("gray", range="fixed", near=1.0, far=6.0))
    got = renderer({"depth": torch.from_numpy(depths[:1])})[0, ..., 0].numpy()
    expected = np.clip((6.0 - depths[0]) * (255.0 / 5.0), 0, 255).astype(np.uint8)
    assert np.array_equal(got, expected)
    normal = np.random.default_rng(1).uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32)
    picture = Renderer(PictureSettings("normal"))({"normal": torch.from_numpy(normal)})[0].numpy()
    assert np.array_equal(picture, np.clip((normal[0] + 1.0) * 127.5, 0, 255).astype(np.uint8))


def test_gray_yuv_keeps_every_level_in_full_range(depths):
    """Encoders get full-range planes: a gray level v is luma v, chroma neutral."""
    picture = Renderer(PictureSettings("gray", range="frame"))({"depth": torch.from_numpy(depths[:1])})
    planes = Renderer(PictureSettings("gray", range="frame", pixel_format="yuv420p"))(
        {"depth": torch.from_numpy(depths[:1])}
    )
    assert planes.shape == (1, 72, 64)
    assert torch.equal(planes[0, :48], picture[0, ..., 0])
    assert planes[0, 48:].unique().tolist() == [128]
    assert planes[0, :48].min() == 0 and planes[0, :48].max() == 255


def test_rgb_to_yuv_matches_full_range_bt709():
    rgb = np.random.default_rng(2).integers(0, 256, (1, 4, 6, 3), dtype=np.uint8)
    yuv = rgb_to_yuv(torch.from_numpy(rgb), "yuv444p")[0].numpy().astype(float)
    r, g, b = (rgb[0, ..., i].astype(float) for i in range(3))
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    assert np.abs(yuv[0] - y).max() <= 0.5 + 1e-6
    assert np.abs(yuv[1] - ((b - y) / 1.8556 + 128)).max() <= 0.5 + 1e-6
    assert np.abs(yuv[2] - ((r - y) / 1.5748 + 128)).max() <= 0.5 + 1e-6


def test_only_what_the_sinks_need_is_made(tmp_path):
    """A colour video needs one picture; metric16 needs millimetres; nothing else crosses."""
    video = VideoSink(tmp_path / "a.mp4", "color")
    metric = VideoSink(tmp_path / "b.mkv", "metric16")
    outputs = Outputs([video, metric])
    assert outputs.stage_wants() == {"depth"}
    depth = torch.full((1, 6, 8), 1.2345)
    made = outputs({"depth": depth}, torch.zeros((1, 6, 8, 3), dtype=torch.uint8))
    assert set(made) == {"picture:0", "depth_mm"}
    assert made["picture:0"].dtype == torch.uint8 and made["picture:0"].shape == (1, 9, 8)  # 4:2:0 planes
    assert made["depth_mm"].dtype == torch.uint16 and int(made["depth_mm"][0, 0, 0]) == 1234
    assert to_millimetres(torch.tensor([70.0])).item() == 65535


def test_side_by_side_planes_match_the_rgb_path(depths):
    """The fast path (input half converted, depth half by table) gives the same luma as converting
    the whole RGB picture, and the input half's chroma too."""
    image = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (1, 48, 64, 3), dtype=np.uint8))
    maps = {"depth": torch.from_numpy(depths[:1]), "image": image}
    fast = Renderer(PictureSettings("side-by-side", range="frame", pixel_format="yuv420p"))(maps)
    rgb = Renderer(PictureSettings("side-by-side", range="frame"))(maps)
    slow = rgb_to_yuv(rgb, "yuv420p")
    assert fast.shape == slow.shape == (1, 72, 128)
    assert (fast[0, :48].int() - slow[0, :48].int()).abs().max() <= 1
    u_fast, u_slow = (
        fast[0, 48:].reshape(-1)[: 24 * 64].reshape(24, 64),
        slow[0, 48:].reshape(-1)[: 24 * 64].reshape(24, 64),
    )
    assert (u_fast[:, :32].int() - u_slow[:, :32].int()).abs().max() <= 1


def test_block_means_round_as_float_pooling_did():
    """The 4:2:0 chroma's integer 2x2 means equal avg_pool2d + round (halves to even)."""
    levels = torch.randint(0, 256, (2, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    levels[0, :2, :2] = torch.tensor([[1, 2], [2, 1]], dtype=torch.uint8)  # a mean of 1.5: rounds to 2
    levels[0, :2, 2:4] = torch.tensor([[2, 3], [3, 2]], dtype=torch.uint8)  # 2.5: rounds to 2
    pooled = torch.nn.functional.avg_pool2d(levels[:, None].float(), 2)[:, 0].round_().int()
    assert torch.equal(block_mean_u8(levels), pooled)


@pytest.mark.parametrize("invalid", [0.0, 0.3, 1.0])
def test_cpu_quantiles_by_selection_equal_nanquantile(invalid):
    sample = torch.rand(5000, generator=torch.Generator().manual_seed(1)) * 10
    valid = torch.rand(5000, generator=torch.Generator().manual_seed(2)) >= invalid
    q = torch.tensor([0.02, 0.98], dtype=sample.dtype)
    ours = valid_quantiles(sample, valid, q)
    if invalid == 1.0:  # nothing valid: not a number, which the display range ignores (as with a sort)
        assert not torch.isfinite(ours).any()
    else:
        assert torch.equal(ours, torch.nanquantile(torch.where(valid, sample, torch.nan), q))
