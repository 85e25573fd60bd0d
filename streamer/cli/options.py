"""Options every model-running command shares, and turning set flags into config overrides."""

from __future__ import annotations

import functools
from collections.abc import Callable

import click
import yaml

from streamer.config import Config, load_config
from streamer.effect_settings import parse_band
from streamer.errors import ConfigError
from streamer.models.metric3d.variants import BACKBONES

# flag name -> (section, key) in the config
FLAG_TO_CONFIG = {
    "processor": ("model", "processor"),
    "processor_args": ("model", "processor_args"),
    "processor_weights": ("model", "processor_weights"),
    "backbone": ("model", "backbone"),
    "checkpoint": ("model", "checkpoint"),
    "fx": ("model", "fx"),
    "fy": ("model", "fy"),
    "hfov": ("model", "hfov"),
    "focal_mode": ("model", "focal_mode"),
    "resolution": ("model", "resolution"),
    "input_size": ("model", "input_size"),
    "device": ("model", "device"),
    "precision": ("model", "precision"),
    "offline": ("model", "local_files_only"),
    "compile": ("model", "compile"),
    "runtime": ("model", "runtime"),
    "stabilize": ("model", "stabilize"),
    "batch_size": ("engine", "batch_size"),
    "lanes": ("engine", "lanes"),
    "threads": ("engine", "threads"),
    "pace": ("source", "pace"),
    "host": ("serve", "host"),
    "port": ("serve", "port"),
    "token": ("serve", "token"),
    "serve_view": ("serve", "view"),
    "queue_size": ("engine", "queue_size"),
    "source": ("source", "uri"),
    "width": ("source", "width"),
    "height": ("source", "height"),
    "fps": ("source", "fps"),
    "start": ("source", "start"),
    "end": ("source", "end"),
    "max_frames": ("source", "frames"),
    "format": ("output", "format"),
    "colormap": ("output", "colormap"),
    "range_mode": ("output", "range"),
    "near": ("output", "near"),
    "far": ("output", "far"),
    "codec": ("output", "codec"),
    "crf": ("output", "crf"),
    "overwrite": ("output", "overwrite"),
    "audio": ("output", "copy_audio"),
    "view": ("preview", "view"),
    "backend": ("virtualcam", "backend"),
    "cam_device": ("virtualcam", "device"),
    "cam_width": ("virtualcam", "width"),
    "cam_height": ("virtualcam", "height"),
    "cam_fps": ("virtualcam", "fps"),
    "cam_view": ("virtualcam", "view"),
    "stride": ("output", "ply_stride"),
    "min_confidence": ("output", "min_confidence"),
    "ply_normals": ("output", "ply_normals"),
    "rerun": ("rerun", "enabled"),
    "rerun_connect": ("rerun", "connect"),
    "rerun_save": ("rerun", "save"),
    "keep": ("effects", "keep"),
    "keep_within": ("effects", "keep"),
    "background": ("effects", "background"),
    "focus": ("effects", "focus"),
    "aperture": ("effects", "aperture"),
    "sensor_width": ("effects", "sensor_width"),
    "legend": ("output", "legend"),
    "scale": ("calibration", "scale"),
    "known_distance": ("calibration", "known_distance"),
}


def build_config(config_path: str | None, flags: dict) -> Config:
    """Defaults < --config FILE < flags that were given on the command line (None = not given)."""
    overrides: dict = {}
    for name, value in flags.items():
        if name == "processor_args":
            value = parse_processor_args(value) or None
        if name in ("keep", "keep_within") and value is not None:
            value = parse_band(f"0:{value}" if name == "keep_within" else value)
        if value is None or name not in FLAG_TO_CONFIG:
            continue
        section, key = FLAG_TO_CONFIG[name]
        overrides.setdefault(section, {})[key] = value
    return load_config(config_path, overrides)


def parse_processor_args(items: tuple[str, ...] | None) -> dict:
    """('low_threshold=50', 'safe=true') -> {'low_threshold': 50, 'safe': True} (values read as YAML)."""
    args = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--processor-arg {item!r} is not KEY=VALUE", hint="e.g. --processor-arg low_threshold=50"
            )
        args[key.strip()] = yaml.safe_load(value)
    return args


def stack(*options: Callable) -> Callable[[Callable], Callable]:
    """Apply click options in the order they are listed (as they show in --help)."""

    def decorate(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


# --config and the model flags (the ComfyUI node's backbone/fx/fy/resolution and friends)
model_options = stack(
    click.option(
        "--config",
        "config_path",
        metavar="FILE|PRESET",
        help="YAML config file or preset name (default, webcam-preview, transcode, obs-virtualcam); flags override it.",
    ),
    click.option(
        "--processor",
        metavar="ID",
        help="What runs on each frame: metric3d, a controlnet_aux preprocessor (canny, depth_midas, "
        "lineart_realistic, normal_bae, openpose, shuffle, ...; `streamer doctor` lists all), or null "
        "(depth from brightness, no model: tests the rest of the chain).  [default: metric3d]",
    ),
    click.option(
        "--processor-arg",
        "processor_args",
        multiple=True,
        metavar="KEY=VALUE",
        help="A preprocessor parameter, repeatable (e.g. low_threshold=50).",
    ),
    click.option(
        "--processor-weights",
        type=click.Path(file_okay=False),
        help="Folder with a preprocessor's weight files instead of the hub (lllyasviel/Annotators).",
    ),
    click.option("--backbone", type=click.Choice(BACKBONES), help="Metric3D v2 backbone.  [default: vit-small]"),
    click.option(
        "--checkpoint", type=click.Path(dir_okay=True), help="Local .pth file instead of the Hugging Face download."
    ),
    click.option(
        "--fx",
        type=float,
        help="Focal length x of the source in pixels; metres scale with it.  "
        "[default: the image's EXIF or the video's metadata, else a 70 deg field of view is assumed, with a warning]",
    ),
    click.option(
        "--fy", type=float, help="Focal length y in pixels (used with --focal-mode mean).  [default: as --fx]"
    ),
    click.option(
        "--hfov",
        type=float,
        help="Horizontal field of view in degrees; sets fx=fy for the source width (wins over --fx).",
    ),
    click.option(
        "--focal-mode",
        type=click.Choice(["fx", "mean"]),
        help="fx: official inference script (fy ignored); mean: official test script's (fx+fy)/2.  [default: fx]",
    ),
    click.option(
        "--resolution",
        type=int,
        help="Short side of the output in pixels.  [default: source size; 512 with --comfy]",
    ),
    click.option(
        "--input-size",
        metavar="HxW",
        help="Model input, multiples of 28; smaller is faster. auto: the largest that keeps a live preview "
        "interactive here (measured at start).  [default: 616x1064]",
    ),
    click.option(
        "--device", help="auto (CUDA, then Apple's MPS, then the CPU), cpu, cuda, cuda:N or mps.  [default: auto]"
    ),
    click.option(
        "--precision",
        type=click.Choice(["auto", "fp16", "bf16", "fp32"]),
        help="auto = fp16 on CUDA, fp32 on CPU (OpenVINO: bf16 where the CPU has it).  [default: auto]",
    ),
    click.option(
        "--runtime",
        type=click.Choice(["auto", "torch", "openvino", "onnxruntime", "tensorrt"]),
        help="What runs the network; auto = the fastest installed for the device (see `streamer doctor`).  "
        "[default: auto]",
    ),
    click.option("--offline", is_flag=True, default=None, help="Use only cached weights; never download."),
    click.option(
        "--batch-size",
        metavar="N|auto",
        help="Frames per forward pass for files. auto: 4 on the CPU for small inputs (up to 128 tokens, "
        "e.g. 56x112), where a batch makes each frame cheaper; else 1.  [default: auto]",
    ),
    click.option(
        "--lanes",
        metavar="N|auto",
        help="Forward passes side by side for files on the CPU, each on its share of the cores. auto: 2 "
        "with 2 or more cores for inputs over 128 tokens (more frames a second than one pass on every "
        "core; smaller inputs are batched); live sources and `batch` (one model shared by its files) run 1.  "
        "[default: auto]",
    ),
    click.option(
        "--threads",
        type=int,
        help="CPU threads for decoding, the model and encoding together (see `streamer doctor`).  [default: all cores]",
    ),
)


# the depth stabiliser (video commands; still images are not a sequence)
stabilize_options = stack(
    click.option(
        "--stabilize",
        type=click.Choice(["off", "causal", "lookahead"]),
        help="Temporal depth stabiliser: causal adds no latency; lookahead (files only) waits a few frames "
        "to smooth better. Scene cuts reset it and are listed in the sidecar.  [default: causal; off for comfy-*]",
    ),
)


live_source_options = stack(
    click.option("--source", help="Camera index, /dev/videoN, video file, URL or testsrc[:WxH][@FPS].  [default: 0]"),
    click.option("--width", type=int, help="Requested camera width."),
    click.option("--height", type=int, help="Requested camera height."),
    click.option("--fps", type=float, help="Requested camera rate."),
    click.option(
        "--pace/--no-pace",
        default=None,
        help="Play a video file in real time, by its timestamps.  [default: on for these live outputs]",
    ),
)

serve_options = stack(
    click.option(
        "--serve",
        "also_serve",
        is_flag=True,
        help="Also serve the picture over HTTP (http://127.0.0.1:8080/, see `streamer serve --help`).",
    ),
)

live_extra_options = stack(
    click.option("--record", type=click.Path(), help="Also write the depth video to this file."),
    click.option("--max-frames", type=int, help="Stop after this many frames."),
)


# point clouds: --format ply (one .ply per frame in the output directory)
ply_options = stack(
    click.option("--stride", type=int, help="--format ply: keep every Nth pixel in both axes.  [default: 1]"),
    click.option(
        "--min-confidence",
        type=float,
        help="Point clouds (ply, Rerun) drop pixels whose confidence is below this.  [default: 0]",
    ),
    click.option(
        "--ply-normals", is_flag=True, default=None, help="--format ply: add normals (nx ny nz) to each point."
    ),
)

# the Rerun 3D view (pip install "streamer[rerun]")
rerun_options = stack(
    click.option(
        "--rerun", is_flag=True, default=None, help="Show camera, picture, depth and points live in a Rerun viewer."
    ),
    click.option(
        "--rerun-connect", metavar="URL", help="Send to a running Rerun viewer (rerun+http://HOST:9876/proxy)."
    ),
    click.option("--rerun-save", metavar="FILE.rrd", type=click.Path(dir_okay=False), help="Record to a Rerun file."),
)


# one quality flag for every encoder (sinks/encoders.py maps it), shared by transcode and batch
crf_option = click.option(
    "--crf",
    type=int,
    help="Quality on x264's 0-51 scale, lower is better; every encoder gets its own constant-quality control (FFV1 is lossless).  [default: 18]",
)


render_options = stack(
    click.option("--colormap", help="turbo, inferno, magma, plasma, viridis, jet, bone.  [default: turbo]"),
    click.option(
        "--range",
        "range_mode",
        type=click.Choice(["auto", "fixed", "frame"]),
        help="Display range: auto = smoothed 2-98th percentiles, fixed = --near/--far, frame = per-frame min-max.  [default: auto]",
    ),
    click.option("--near", type=float, help="Metres at the near end of a fixed range.  [default: 0.1]"),
    click.option("--far", type=float, help="Metres at the far end of a fixed range.  [default: 10]"),
    # the keyed view (--view/--format keyed) and the scale of every metre
    click.option("--keep-within", type=float, metavar="M", help="keyed view: keep what lies within M metres."),
    click.option(
        "--keep", metavar="NEAR:FAR", help="keyed view: keep what lies NEAR..FAR metres away.  [default: 0:1.5]"
    ),
    click.option(
        "--background",
        metavar="SPEC",
        help="keyed view: what replaces the rest: blur, color:#RRGGBB, image:PATH, transparent (alpha where the "
        "output carries it) or none (depth of field only).  [default: blur]",
    ),
    click.option("--focus", type=float, metavar="M", help="keyed view: depth of field focused at M metres."),
    click.option("--aperture", type=float, help="Depth of field: f-number.  [default: 2.8]"),
    click.option(
        "--sensor-width", type=float, metavar="MM", help="Depth of field: the look of this sensor.  [default: 36]"
    ),
    click.option(
        "--legend", is_flag=True, default=None, help="Burn a colour bar with metre ticks into recorded pictures."
    ),
    click.option("--scale", type=float, help="Multiply every metre by this (a known scale error)."),
    click.option(
        "--known-distance",
        metavar="X,Y=D",
        help="The output pixel X,Y lies D metres away: sets --scale on the first frame.",
    ),
)


def with_flags(command: Callable) -> Callable:
    """Pass every option to the command as one `flags` dict (plus config_path)."""

    @functools.wraps(command)
    def wrapper(config_path: str | None = None, **flags):
        return command(build_config(config_path, flags), flags)

    return wrapper
