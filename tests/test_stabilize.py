"""The depth stabiliser against ground truth: a synthetic model with known depth, jitter and noise.

A "model" sees a static slanted plane, a textured disc moving in depth and sideways, and a hard
cut to another scene; its output is the true depth times a per-frame scale jitter times pixel
noise. The stabiliser must remove most of the flicker on static parts, be no less accurate than
the model anywhere, follow the cut at once and stay metric. A second sequence (other seed, size,
jitter, noise, cut frame and motion) is held out: the defaults are not tuned to one sequence; a
third, larger one takes the paths of full-HD frames (1/8 work size, sampled image differences).
Long runs check that the output's scale follows the model's own and never drifts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from streamer.errors import ConfigError
from streamer.processors.stabilize import CutDetector, StabilizeParams, Stabilizer, pool, weighted_median


@dataclass(frozen=True)
class Spec:
    seed: int = 0
    size: tuple[int, int] = (96, 128)
    frames: int = 80
    cut: int | None = 40
    jitter: float = 0.05  # uniform per-frame scale error, +-
    noise: float = 0.015  # multiplicative Gaussian pixel noise
    depths: tuple[float, float] = (3.0, 1.5)  # the disc's depth at the first and last frame
    xs: tuple[float, float] = (0.2, 0.8)  # its centre, as a fraction of the width
    drift: float = 0.0  # slow sinusoidal change of the model's own scale, +- (period: 200 frames)
    fade: tuple[int, int] | None = None  # (first frame, frames): images darken to 15 % (cut detector)


MAIN = Spec()
HELD_OUT = Spec(seed=7, size=(112, 144), frames=90, cut=57, jitter=0.03, noise=0.02, depths=(1.5, 3.0), xs=(0.8, 0.2))
LARGE = Spec(
    seed=11, size=(256, 336), frames=40, cut=24, jitter=0.04, depths=(2.5, 1.6), xs=(0.3, 0.7)
)  # 1/8 work size


@dataclass
class Sequence:
    truth: list[torch.Tensor]
    raw: list[torch.Tensor]
    confidence: list[torch.Tensor]
    images: list[torch.Tensor]
    disc: list[torch.Tensor]  # bool: where the moving disc is seen
    cut: int | None


def smooth_noise(gen: torch.Generator, shape: tuple[int, ...], cell: int) -> torch.Tensor:
    """(C, H, W) noise of unit scale, correlated over about `cell` pixels."""
    c, h, w = shape
    coarse = torch.randn(1, c, h // cell + 2, w // cell + 2, generator=gen)
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0].clamp(-2.5, 2.5)


def scene(gen: torch.Generator, h: int, w: int, second: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Background depth (H, W) and texture (3, H, W) in 0..1: a plane, and for the second scene a box."""
    y = torch.linspace(0, 1, h)[:, None].expand(h, w)
    x = torch.linspace(0, 1, w)[None, :].expand(h, w)
    tint = torch.tensor([0.35, 0.6, 0.45] if second else [0.6, 0.5, 0.35])[:, None, None]
    texture = tint + 0.12 * smooth_noise(gen, (3, h, w), 4) + 0.06 * smooth_noise(gen, (3, h, w), 2)
    if not second:
        return 6.0 - 4.0 * y, texture.clamp(0, 1)
    depth = (1.8 + 3.0 * x).clone()
    box = (y > 0.55) & (y < 0.85) & (x > 0.6) & (x < 0.85)
    depth[box] = 1.4
    texture[:, box] = texture[:, box] * 0.6 + 0.2
    return depth, texture.clamp(0, 1)


def disc(spec: Spec, t: int, h: int, w: int) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The disc at frame t: depth, radial distance map, inside mask and texture (3, H, W)."""
    a = t / (spec.frames - 1)
    z = spec.depths[0] + a * (spec.depths[1] - spec.depths[0])
    cx, cy = (spec.xs[0] + a * (spec.xs[1] - spec.xs[0])) * w, 0.45 * h
    r = 0.12 * h * 3.0 / z  # perspective: the disc grows as it comes closer
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    u, v = (xx - cx) / r, (yy - cy) / r
    dist = torch.sqrt(u * u + v * v) * r
    pattern = 0.5 + 0.3 * torch.sin(14 * u + 3 * v) * torch.cos(4 * u - 12 * v)
    texture = torch.stack((pattern, pattern * 0.5, 1 - pattern)) * 0.9
    return z, dist - r, dist < r, texture


def make_sequence(spec: Spec) -> Sequence:
    gen = torch.Generator().manual_seed(spec.seed)
    h, w = spec.size
    scenes = [scene(gen, h, w, False), scene(gen, h, w, True)]
    seq = Sequence([], [], [], [], [], spec.cut)
    for t in range(spec.frames):
        background, texture = scenes[1 if spec.cut is not None and t >= spec.cut else 0]
        z, edge, inside, disc_texture = disc(spec, t, h, w)
        seen = inside & (z < background)
        truth = torch.where(seen, torch.full_like(background, z), background)
        image = torch.where(seen, disc_texture, texture)
        if spec.fade:
            image = image * (1 - 0.85 * min(1.0, max(0, t - spec.fade[0]) / spec.fade[1]))
        scale = 1 + spec.jitter * (2 * torch.rand((), generator=gen) - 1) + spec.drift * math.sin(math.pi * t / 100)
        raw = truth * scale * (1 + spec.noise * torch.randn(truth.shape, generator=gen))
        confidence = 0.9 + 0.1 * torch.rand(truth.shape, generator=gen)
        confidence[edge.abs() < 1.5] = 0.3
        pixels = image.permute(1, 2, 0) * 255 + 1.5 * torch.randn((h, w, 3), generator=gen)
        seq.truth.append(truth)
        seq.raw.append(raw.clamp_min(0.01))
        seq.confidence.append(confidence)
        seq.images.append(pixels.round().clamp(0, 255).to(torch.uint8))
        seq.disc.append(seen)
    return seq


def stabilise(seq: Sequence, mode: str, **params) -> tuple[list[torch.Tensor], Stabilizer]:
    """Push the whole sequence and flush; the frames come back once each and in order."""
    stab = Stabilizer(mode, **params)
    out = []
    for t, (d, c, im) in enumerate(zip(seq.raw, seq.confidence, seq.images, strict=True)):
        out += stab.push(d, c, im, key=t, time=t / 25)
    out += stab.flush()
    assert [k for k, _ in out] == list(range(len(seq.raw)))
    return [d for _, d in out], stab


def static_masks(seq: Sequence) -> list[torch.Tensor]:
    """Background pixels well away from the disc in this and the previous frame."""
    masks = [torch.zeros_like(seq.disc[0])]
    for prev, cur in zip(seq.disc, seq.disc[1:], strict=False):
        near = F.max_pool2d((prev | cur).float()[None, None], 7, 1, 3)[0, 0] > 0
        masks.append(~near)
    return masks


def figures(seq: Sequence, out: list[torch.Tensor]) -> dict[str, float]:
    """Flicker, errors, recovery after the cut and metric bias of `out`, each against the raw model."""
    static = static_masks(seq)
    skip = set(range(seq.cut, seq.cut + 3)) if seq.cut is not None else set()
    pairs = [t for t in range(1, len(out)) if t not in skip]

    def flicker(ds):
        return sum(float(((ds[t] - ds[t - 1]).abs() / seq.truth[t])[static[t]].mean()) for t in pairs) / len(pairs)

    def error(ds, masks):
        errs = [((d / tr - 1).abs())[m].mean() for d, tr, m in zip(ds, seq.truth, masks, strict=True) if m.any()]
        return float(torch.stack(errs).mean())

    def bias(ds):
        return float(torch.stack([(d / tr).log().median() for d, tr in zip(ds, seq.truth, strict=True)]).mean())

    result = {
        "flicker_reduction": flicker(seq.raw) / flicker(out),
        "static_error_ratio": error(out, static) / error(seq.raw, static),
        "moving_error_ratio": error(out, seq.disc) / error(seq.raw, seq.disc),
        "bias": bias(out) - bias(seq.raw),
    }
    if seq.cut is not None:
        after = [float((out[t] / seq.raw[t] - 1).abs().median()) for t in range(seq.cut, len(out))]
        result["recovery_frames"] = next(k for k, e in enumerate(after) if e <= 0.02)
    return result


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sequences(one_torch_thread) -> dict[str, Sequence]:
    return {"main": make_sequence(MAIN), "held-out": make_sequence(HELD_OUT), "large": make_sequence(LARGE)}


@pytest.mark.parametrize("mode", ["causal", "lookahead"])
@pytest.mark.parametrize("name", ["main", "held-out", "large"])
def test_stabiliser_meets_the_targets_against_ground_truth(sequences, name, mode):
    seq = sequences[name]
    out, stab = stabilise(seq, mode)
    f = figures(seq, out)
    print(f"\n{name} {mode}: " + ", ".join(f"{k} {v:.3f}" for k, v in f.items()))
    assert [c.index for c in stab.cuts] == [seq.cut]
    assert f["flicker_reduction"] >= 5, f
    assert f["static_error_ratio"] <= 1.0, f
    assert f["moving_error_ratio"] <= 1.1, f
    assert f["recovery_frames"] <= 2, f
    assert abs(f["bias"]) <= 0.01, f


@pytest.mark.parametrize("drift,ratio", [(0.0, 0.35), (0.1, 0.9)])
def test_the_scale_follows_the_model_over_a_long_run_without_drift(drift, ratio):
    """400 frames at 48x64. The output's scale tracks the model's own slow scale (with `drift` it
    swings +-10 % over 200 frames) better than the jittery frames do, and averages to it."""
    seq = make_sequence(Spec(seed=21, size=(48, 64), frames=400, cut=None, drift=drift))
    out, _ = stabilise(seq, "causal")
    slow = torch.tensor([math.log(1 + drift * math.sin(math.pi * t / 100)) for t in range(len(out))])

    def scale_error(ds):
        return torch.stack([(d / tr).log().median() for d, tr in zip(ds, seq.truth, strict=True)]) - slow

    stab, raw = scale_error(out), scale_error(seq.raw)
    print(f"\ndrift {drift}: scale error std {float(stab.std()):.4f} (raw {float(raw.std()):.4f})")
    assert abs(float(stab.mean() - raw.mean())) <= 0.002  # the mean correction is ~0: no drift
    assert float(stab.std()) <= ratio * float(raw.std())


def test_lookahead_returns_frames_late_once_and_in_order(sequences):
    seq = sequences["main"]
    stab = Stabilizer("lookahead", lookahead=3)
    returned = []
    for t in range(12):
        ready = stab.push(seq.raw[t], seq.confidence[t], seq.images[t], key=t)
        returned += [k for k, _ in ready]
        assert returned == list(range(max(0, t - 2)))
    assert [k for k, _ in stab.flush()] == list(range(9, 12))
    assert stab.flush() == []


def test_lookahead_does_not_look_across_a_cut(sequences):
    seq = sequences["main"]
    frames = list(zip(seq.raw, seq.confidence, seq.images, strict=True))
    ended, _ = stabilise(Sequence(seq.truth, *zip(*frames[: seq.cut], strict=True), seq.disc, None), "lookahead")
    went_on, _ = stabilise(Sequence(seq.truth, *zip(*frames[: seq.cut + 4], strict=True), seq.disc, None), "lookahead")
    for a, b in zip(ended, went_on, strict=False):
        torch.testing.assert_close(a, b)  # the new scene's frames did not change the old scene's output


def test_a_new_frame_size_starts_a_new_stream(sequences):
    seq = sequences["main"]
    stab = Stabilizer("lookahead", lookahead=2)
    keys = [k for t in range(5) for k, _ in stab.push(seq.raw[t], None, seq.images[t], key=t)]
    small = [(seq.raw[t][::2, ::2].contiguous(), seq.images[t][::2, ::2].contiguous()) for t in range(5, 8)]
    out = [stab.push(d, None, im, key=t) for t, (d, im) in enumerate(small, start=5)] + [stab.flush()]
    assert [k for k, _ in out[0]] == [3, 4]  # the first frame of the new size sends the old size out
    keys += [k for ready in out for k, _ in ready]
    assert keys == list(range(8)) and stab.cuts == []
    assert torch.equal(dict(out[2])[5], small[0][0])  # and the new stream starts at the model's depth


def test_off_returns_the_input_unchanged(sequences):
    seq = sequences["main"]
    stab = Stabilizer("off")
    for t in range(5):
        [(key, out)] = stab.push(seq.raw[t], seq.confidence[t], seq.images[t], key=t)
        assert key == t and out is seq.raw[t]
    assert stab.flush() == [] and stab.cuts == []


def detect_cuts(seq: Sequence, factor: int = 4) -> tuple[list[int], list[float]]:
    """The cut detector alone on downscaled frames: frames it calls cuts, and every frame's score."""
    detector = CutDetector(StabilizeParams())
    flags, scores = zip(*[detector(pool(im.permute(2, 0, 1).float(), factor) / 255) for im in seq.images], strict=True)
    return [t for t, flag in enumerate(flags) if flag], [float(s) for s in scores]


def test_cut_detector_finds_nothing_while_the_disc_moves():
    cuts, scores = detect_cuts(make_sequence(Spec(seed=3, cut=None, frames=60)))
    assert cuts == [], scores


def test_cut_detector_finds_the_hard_cut_at_its_frame():
    seq = make_sequence(Spec(seed=4, cut=23, frames=40))
    cuts, scores = detect_cuts(seq)
    assert cuts == [23], scores
    assert scores[23] > 3 * max(scores[:23] + scores[24:])


@pytest.mark.parametrize("first,frames", [(10, 30), (10, 6)])
def test_cut_detector_ignores_a_fade(first, frames):
    cuts, scores = detect_cuts(make_sequence(Spec(seed=5, cut=None, frames=first + frames + 5, fade=(first, frames))))
    assert cuts == [], scores


def test_cuts_are_reported_with_key_time_and_score(sequences):
    _, stab = stabilise(sequences["main"], "causal")
    [cut] = stab.cuts
    assert (cut.index, cut.key, cut.time) == (40, 40, 40 / 25)
    assert cut.as_dict() == {"frame": 40, "time": 1.6, "score": round(cut.score, 4)} and cut.score > 0.08


def test_cut_detector_respects_the_minimum_scene_length():
    gen = torch.Generator().manual_seed(0)
    detector = CutDetector(StabilizeParams(min_scene_len=4))
    a, b, c = (torch.rand(3, 16, 16, generator=gen) for _ in range(3))
    cuts = [bool(detector(frame)[0]) for frame in (a, a, b, b, b, b, b, b, c, c)]
    assert cuts == [False] * 8 + [True, False]  # b comes too soon after the start to be a cut


def test_reset_forgets_the_stream(sequences):
    seq = sequences["main"]
    stab = Stabilizer("causal")
    for t in range(3):
        stab.push(seq.raw[t], seq.confidence[t], seq.images[t])
    stab.reset()
    [(_, first)] = stab.push(seq.raw[5], seq.confidence[5], seq.images[5])
    assert torch.equal(first, seq.raw[5])  # a stream's first frame keeps the model's depth


def test_weighted_median_follows_the_weights():
    values = torch.tensor([1.0, 2.0, 3.0, 10.0])
    assert float(weighted_median(values, torch.tensor([1.0, 1.0, 1.0, 0.0]))) == 2.0
    assert float(weighted_median(values, torch.tensor([0.0, 0.0, 1.0, 5.0]))) == 10.0
    assert float(weighted_median(values, torch.zeros(4))) in (2.0, 3.0)


def test_params_are_checked_and_recorded():
    params = StabilizeParams(lookahead=2)
    assert params.as_dict()["lookahead"] == 2 and params.as_dict()["pixel_memory"] == 10
    assert Stabilizer("lookahead", params, scale_memory=5).params.scale_memory == 5
    with pytest.raises(ConfigError):
        Stabilizer("smooth")
    with pytest.raises(ConfigError):
        Stabilizer("causal", memory=3)
    with pytest.raises(ConfigError):
        StabilizeParams(confidence_floor=0)
    with pytest.raises(ValueError):
        Stabilizer().push(torch.ones(4, 4), None, torch.zeros(4, 5, 3, dtype=torch.uint8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
@pytest.mark.parametrize("mode", ["causal", "lookahead"])
def test_cuda_matches_the_cpu_and_never_waits_for_the_device(sequences, mode, device):
    """Also on a GPU that is not the thread's current one (cuda:1): the state and the cut flags
    follow the frames' own device and stream."""
    if device == "cuda:1" and torch.cuda.device_count() < 2:
        pytest.skip("needs a second GPU")
    seq = sequences["main"]
    on_cpu, _ = stabilise(seq, mode)
    frames = [
        (d.to(device), c.to(device), im.to(device))
        for d, c, im in zip(seq.raw, seq.confidence, seq.images, strict=True)
    ]
    stab = Stabilizer(mode)
    out = []
    try:
        for t, frame in enumerate(frames):
            torch.cuda.set_sync_debug_mode("error" if t >= 2 else "default")  # a stream's start may sync once
            out += stab.push(*frame, key=t)
        out += stab.flush()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [c.index for c in stab.cuts] == [seq.cut]
    assert [k for k, _ in out] == list(range(len(frames)))
    for (_, a), b in zip(out, on_cpu, strict=True):
        assert a.device == torch.device(device if device != "cuda" else "cuda:0")
        torch.testing.assert_close(a.cpu(), b, rtol=2e-3, atol=2e-3)
