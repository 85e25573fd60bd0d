"""`streamer doctor`: what this machine can do, and how to fix what it cannot."""

from __future__ import annotations

import glob
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

ENCODERS = ("libx264", "libx265", "ffv1", "libvpx-vp9", "exr", "h264_nvenc", "hevc_nvenc", "av1_nvenc")
MAX_CAMERA_INDEX = 4


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = False


def python_check() -> Check:
    ok = sys.version_info >= (3, 10)
    return Check("python", ok, platform.python_version(), "" if ok else "use Python 3.10 or newer", True)


def torch_checks() -> list[Check]:
    import torch

    checks = [Check("torch", True, torch.__version__)]
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        checks.append(Check("cuda", True, f"{torch.version.cuda}, {name}"))
        checks.append(sdpa_check(torch))
    else:
        checks.append(
            Check(
                "cuda",
                False,
                "not available: the model runs on the CPU (slow, far from real time)",
                "install an NVIDIA driver and a CUDA build of torch (https://pytorch.org/get-started)",
            )
        )
        checks.append(Check("sdpa kernels", False, "flash / memory-efficient attention need CUDA", "see cuda"))
    return checks


def sdpa_check(torch) -> Check:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    usable = []
    q = torch.randn(1, 6, 64, 64, device="cuda", dtype=torch.float16)
    for label, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("memory-efficient", SDPBackend.EFFICIENT_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                torch.nn.functional.scaled_dot_product_attention(q, q, q)
            usable.append(label)
        except RuntimeError:
            pass
    ok = bool(usable)
    return Check(
        "sdpa kernels", ok, ", ".join(usable) or "none usable", "" if ok else "update torch and the GPU driver"
    )


def av_checks() -> list[Check]:
    import av

    ffmpeg = ".".join(str(v) for v in av.library_versions.get("libavcodec", ())) or "?"
    checks = [Check("pyav", True, f"{av.__version__} (FFmpeg {getattr(av, 'ffmpeg_version_info', ffmpeg)})")]
    have = [e for e in ENCODERS if e in av.codecs_available]
    missing = [e for e in ENCODERS if e not in av.codecs_available]
    checks.append(
        Check(
            "encoders",
            "ffv1" in have and "libx264" in have,
            ", ".join(have) + (f" (missing: {', '.join(missing)})" if missing else ""),
            "install PyAV wheels from PyPI (they include libx264 and ffv1)" if "libx264" not in have else "",
        )
    )
    return checks


def opencv_checks() -> list[Check]:
    import cv2

    from streamer.sinks.preview import has_display, opencv_gui_backend

    gui = opencv_gui_backend()
    checks = [
        Check("opencv", True, cv2.__version__),
        Check(
            "opencv gui",
            gui is not None,
            gui or "none (headless build: no preview window)",
            "" if gui else "pip install --force-reinstall --no-deps opencv-python",
        ),
        Check(
            "display",
            has_display(),
            "present" if has_display() else "none ($DISPLAY unset)",
            "" if has_display() else "preview needs a desktop session; transcode and virtualcam work without",
        ),
    ]
    checks.append(camera_check(cv2))
    return checks


def camera_check(cv2) -> Check:
    if sys.platform.startswith("linux"):
        candidates = sorted(int(p.removeprefix("/dev/video")) for p in glob.glob("/dev/video*") if p[10:].isdigit())
        candidates = [i for i in candidates if i <= MAX_CAMERA_INDEX]
    else:
        candidates = list(range(MAX_CAMERA_INDEX + 1))
    from streamer.sources.webcam import open_capture

    found = []
    for index in candidates:
        cap = open_capture(index)
        if cap.isOpened():
            found.append(
                f"{index} ({int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))}x{int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))})"
            )
        cap.release()
    ok = bool(found)
    return Check(
        "cameras",
        ok,
        ", ".join(found) or f"none at indices 0..{MAX_CAMERA_INDEX}",
        "" if ok else "connect a camera, or use --source testsrc / a video file",
    )


def loopback_devices() -> list[str]:
    devices = []
    for name_file in glob.glob("/sys/devices/virtual/video4linux/video*/name"):
        devices.append(f"/dev/{Path(name_file).parent.name} ({Path(name_file).read_text().strip()})")
    return devices


def virtualcam_check() -> Check:
    import pyvirtualcam

    backends = getattr(pyvirtualcam.camera, "BACKENDS", {})
    names = ", ".join(backends) or "none"
    if sys.platform.startswith("linux"):
        devices = loopback_devices()
        ok = bool(devices)
        return Check(
            "virtual camera",
            ok,
            f"backends: {names}; v4l2loopback devices: {', '.join(devices) or 'none'}",
            "" if ok else "sudo apt install v4l2loopback-dkms && sudo modprobe v4l2loopback devices=1 exclusive_caps=1",
        )
    return Check(
        "virtual camera",
        bool(backends),
        f"backends: {names}",
        "" if backends else "install OBS Studio 28+ (or Unity Capture on Windows)",
    )


def checkpoint_check() -> Check:
    from streamer.models.metric3d.variants import VARIANTS
    from streamer.models.metric3d.weights import cached_checkpoint, hf_cache_dir

    present = [name for name in VARIANTS if cached_checkpoint(name) is not None]
    ok = bool(present)
    return Check(
        "checkpoints",
        ok,
        f"cache {hf_cache_dir()}: {', '.join(present) or 'none downloaded yet'}",
        "" if ok else "they download on first use (needs internet), or pass --checkpoint PATH",
    )


def aux_check() -> Check:
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("controlnet_aux")
    except PackageNotFoundError:
        return Check("controlnet_aux", False, "not installed", "pip install controlnet_aux")
    from streamer.processors.controlnet import aux_processor_ids

    return Check("controlnet_aux", True, f"{installed}; --processor metric3d or: {', '.join(aux_processor_ids())}")


def threads_check() -> Check:
    """How the CPU is shared between decoding, the model and encoding (engine/threads.py)."""
    from streamer.engine.device import resolve_device
    from streamer.engine.threads import ThreadBudget, rule

    device = resolve_device("auto")
    if device.type == "cpu":
        codecs = ThreadBudget.plan("cpu").decode
        detail = f"{os.cpu_count()} cores, decode {codecs}, encode {codecs}; {rule()}"
    else:
        budget = ThreadBudget.plan(device.type)
        detail = f"{os.cpu_count()} cores, device {device.type}: torch {budget.torch}, decode {budget.decode}, encode {budget.encode}"
    return Check("threads", True, detail + " (--threads N caps the total, fixed split)")


def runtime_checks() -> list[Check]:
    """The runtimes installed, the devices each finds, and what `--runtime auto` picks here."""
    from streamer import runtimes
    from streamer.engine.device import resolve_device

    checks = []
    for name in ("openvino", "onnxruntime", "tensorrt"):
        if not runtimes.installed(name):
            checks.append(Check(f"runtime {name}", False, "not installed", runtimes.INSTALL[name]))
            continue
        checks.append(Check(f"runtime {name}", True, runtime_detail(name)))
    device = resolve_device("auto")
    request = runtimes.Request("auto", device, "auto", (616, 1064), "vit-small")
    name, why = runtimes.pick(request)
    checks.append(Check("runtime auto", True, f"{name} on {device.type} ({why})"))
    return checks


def runtime_detail(name: str) -> str:
    if name == "openvino":
        import openvino as ov

        from streamer.runtimes.openvino import openvino_devices

        return f"{ov.__version__.split('-')[0]}; devices: {'; '.join(openvino_devices())}"
    import onnxruntime as ort

    from streamer.runtimes.onnxruntime import providers_available

    if name == "tensorrt":
        return f"ONNX Runtime {ort.__version__} with its TensorRT provider"
    return f"{ort.__version__}; providers: {', '.join(providers_available())}"


def encoder_check() -> Check:
    """What `--codec auto` picks for .mp4/.mov: NVENC when it opens here, else libx264."""
    from streamer.sinks.encoders import AUTO_CHAIN, encoder_opens, pick_encoder

    chosen = pick_encoder(".mp4", "auto")
    hardware = [c for c in AUTO_CHAIN[:-1] if encoder_opens(c)]
    fix = None if hardware else "an NVIDIA GPU with NVENC and its driver moves H.264 encoding off the CPU"
    return Check("video encoder", True, f"--codec auto -> {chosen}", fix)


def run_checks() -> list[Check]:
    checks = [python_check()]
    for group in (torch_checks, av_checks, opencv_checks, runtime_checks):
        try:
            checks += group()
        except ImportError as exc:
            checks.append(Check(group.__name__.removesuffix("_checks"), False, str(exc), "pip install -e .", True))
    for single in (threads_check, encoder_check, virtualcam_check, checkpoint_check, aux_check):
        try:
            checks.append(single())
        except ImportError as exc:
            checks.append(Check(single.__name__.removesuffix("_check"), False, str(exc), "pip install -e ."))
    if os.environ.get("HF_HUB_OFFLINE"):
        checks.append(Check("hub", False, "HF_HUB_OFFLINE is set: no downloads", "unset it to download weights"))
    return checks
