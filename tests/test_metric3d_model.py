"""Our Metric3D is the official network: same keys and shapes, same numbers (golden vectors)."""

from __future__ import annotations

import cv2

import numpy as np
import pytest
import torch

from streamer.models.metric3d import BACKBONES, build_metric3d
from streamer.models.metric3d.weights import official_state_dict
from streamer.processors.comfy import comfy_pictures
from streamer.processors.metric3d import MEAN, STD, Metric3DProcessor

from conftest import DATA, manifest


@pytest.mark.parametrize("backbone", BACKBONES)
def test_state_dict_matches_official_manifest(backbone):
    model = build_metric3d(backbone, device="meta")
    ours = {k: list(v.shape) for k, v in official_state_dict(model).items()}
    ref = manifest(backbone)
    assert ours == {k: v["shape"] for k, v in ref["keys"].items()}
    assert len(ours) == ref["num_keys"]
    unique = sum(p.numel() for p in model.parameters())  # aliased norm3/downsample.1 counted once
    assert unique == ref["num_unique_parameters"]
    for group in ref["aliased_key_groups"]:
        a, b = (k.removeprefix("depth_model.") for k in group)
        assert model.get_submodule(a.rsplit(".", 1)[0]) is model.get_submodule(b.rsplit(".", 1)[0])


def normalised(u8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(u8).float().permute(2, 0, 1)[None]
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_raw_forward_matches_golden(small_model):
    golden = np.load(DATA / "golden_vit_small_raw.npz")
    with torch.inference_mode():
        features, grid = small_model.encode(normalised(golden["input_u8"]))
        out = small_model.decode(features, grid, all_iterations=True)
    assert grid == (14, 24)
    np.testing.assert_allclose(features[0].numpy(), golden["encoder_tokens"], atol=1e-4)
    np.testing.assert_allclose(out["depth"][-1].numpy(), golden["pred_depth"], rtol=1e-4)
    np.testing.assert_allclose(out["confidence"][-1].numpy(), golden["confidence"], atol=1e-4)
    np.testing.assert_allclose(out["normal"][-1].numpy(), golden["prediction_normal"], atol=1e-4)
    np.testing.assert_allclose([d.mean().item() for d in out["depth"]], golden["iter_depth_mean"], rtol=1e-4)
    np.testing.assert_allclose(
        [n.mean(dim=(0, 2, 3)).numpy() for n in out["normal"]], golden["iter_normal_mean"], atol=1e-4
    )


@pytest.fixture(scope="module")
def golden_image() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(DATA / "golden_input.png")), cv2.COLOR_BGR2RGB)


def test_end_to_end_matches_golden(small_model, golden_image):
    golden = np.load(DATA / "golden_vit_small_e2e.npz")
    processor = Metric3DProcessor(small_model)
    images = torch.from_numpy(golden_image)[None]
    canvas, box = processor.canvas(images)
    np.testing.assert_array_equal(canvas[0].permute(1, 2, 0).numpy(), golden["model_input_rgb_u8"])
    assert list(box.pad) == list(golden["pad_top_bottom_left_right"])
    out = processor(images, float(golden["fx"]), float(golden["fy"]))
    np.testing.assert_allclose(out["depth"][0].numpy(), golden["depth_metric"], rtol=1e-4)
    np.testing.assert_allclose(out["normal"][0].permute(2, 0, 1).numpy(), golden["normal"], atol=1e-4)
    np.testing.assert_allclose(out["kappa"][0].numpy(), golden["normal_kappa"], atol=1e-4)
    np.testing.assert_allclose(out["confidence"][0].numpy(), golden["confidence"], atol=1e-4)


def test_mean_focal_mode_uses_fx_and_fy(small_model, golden_image):
    images = torch.from_numpy(golden_image)[None]
    fx_only = Metric3DProcessor(small_model, (224, 308))(images, 800.0, 1200.0)["depth"]
    mean = Metric3DProcessor(small_model, (224, 308), focal_mode="mean")(images, 800.0, 1200.0)["depth"]
    torch.testing.assert_close(mean, fx_only * (1000 / 800), rtol=1e-5, atol=1e-5)


def test_comfy_mode_reproduces_the_comfyui_node(small_model, golden_image):
    golden = np.load(DATA / "golden_vit_small_comfy.npz")
    processor = Metric3DProcessor(small_model)
    out, box = processor.forward(torch.from_numpy(golden_image)[None], all_iterations=True)
    ((depth, normal),) = comfy_pictures(out, box, detect_resolution=240)
    assert depth.shape == golden["comfy_depth_u8"].shape and normal.shape == golden["comfy_normal_u8"].shape
    assert np.abs(depth.astype(int) - golden["comfy_depth_u8"]).max() <= 1
    assert np.abs(normal.astype(int) - golden["comfy_normal_u8"]).max() <= 1


def test_batch_of_two_equals_two_single_frames(small_model):
    rng = np.random.default_rng(3)
    images = torch.from_numpy(rng.integers(0, 256, (2, 60, 80, 3), dtype=np.uint8))
    processor = Metric3DProcessor(small_model, (112, 140))
    batch = processor(images, 500.0, 500.0)
    for i in range(2):
        single = processor(images[i : i + 1], 500.0, 500.0)
        for key in batch:
            torch.testing.assert_close(batch[key][i], single[key][0], rtol=1e-4, atol=1e-4)


# Half precision against fp32 on the same input (CPU, small input). Depth: the RAFT state is kept
# in fp32 (see decoder.py), so the error comes from the fp16/bf16 network body only.
HALF_TOLERANCE = {torch.float16: 0.01, torch.bfloat16: 0.03}  # max relative depth error


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_is_finite_and_close_to_fp32(small_model, dtype):
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (2, 120, 160, 3), dtype=np.uint8))
    ref = Metric3DProcessor(small_model, (224, 308))(images, 500.0, 500.0)
    half = build_metric3d("vit-small", dtype=dtype)
    half.load_state_dict(small_model.state_dict())
    out = Metric3DProcessor(half, (224, 308))(images, 500.0, 500.0)
    for key, value in out.items():
        assert value.dtype == torch.float32 and torch.isfinite(value).all(), key
    rel = ((out["depth"] - ref["depth"]).abs() / ref["depth"]).max().item()
    assert rel < HALF_TOLERANCE[dtype]
    assert (out["normal"] - ref["normal"]).abs().max().item() < 0.05


def test_forward_has_no_host_sync(small_model, monkeypatch):
    """.item(), .tolist() and bool(tensor) block on CUDA; the forward must not call them."""

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync in forward")

    monkeypatch.setattr(torch.Tensor, "item", forbidden)
    monkeypatch.setattr(torch.Tensor, "tolist", forbidden)
    monkeypatch.setattr(torch.Tensor, "__bool__", forbidden)
    x = torch.zeros(1, 3, 56, 84)
    with torch.inference_mode():
        small_model(x)
