"""Typed configuration: built-in defaults < `--config FILE` (YAML) < command-line flags.

Unknown keys and bad values are rejected with the key, the value and what is allowed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from streamer.calibration import parse_known_distance
from streamer.effect_settings import EffectSettings, parse_background
from streamer.errors import ConfigError
from streamer.models.metric3d.variants import BACKBONES, get_variant
from streamer.processors.stabilize_params import parse_params

if TYPE_CHECKING:
    from importlib.abc import Traversable

    from streamer.focal import Focal

PRESETS = "streamer.configs"  # the top-level configs/, shipped inside the package (pyproject.toml)
OutputFormat = Literal[
    "gray",
    "color",
    "normal",
    "side-by-side",
    "keyed",
    "metric16",
    "exr",
    "npz",
    "ply",
    "comfy-depth",
    "comfy-normal",
]
ViewFormat = Literal["gray", "color", "normal", "side-by-side", "keyed"]
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(Section):
    """Where frames come from: a camera index or device path, a file or URL, an image, or `testsrc`."""

    uri: str = "0"
    width: int | None = Field(None, ge=16, description="requested camera width")
    height: int | None = Field(None, ge=16, description="requested camera height")
    fps: float | None = Field(None, gt=0, description="requested camera / test pattern rate; an image sequence's rate")
    start: float | None = Field(None, ge=0, description="seek to this many seconds (files)")
    end: float | None = Field(None, gt=0, description="stop at this many seconds (files)")
    frames: int | None = Field(None, ge=1, description="stop after this many frames")
    live: bool | None = Field(None, description="drop stale frames (default: true for cameras/URLs)")
    pace: bool | None = Field(None, description="play files in real time (default: when they feed live outputs)")

    @field_validator("end")
    @classmethod
    def _end_after_start(cls, v: float | None, info: ValidationInfo) -> float | None:
        start = info.data.get("start")
        if v is not None and start is not None and v <= start:
            raise ValueError(f"the range from start {start:g} s to end {v:g} s is empty; end must be after start")
        return v


class ModelConfig(Section):
    """The ComfyUI node's parameters (backbone, fx, fy, resolution) plus how to run the model.

    `processor` picks what runs: metric3d, or a controlnet_aux preprocessor id (canny, ...).
    fx/fy/hfov are None unless the user knows them: the focal length then comes from the source
    (EXIF, video metadata) or is assumed with a warning (streamer/focal.py); the ComfyUI mode
    uses the node's 1000 px.
    """

    processor: str = "metric3d"
    processor_args: dict[str, Any] = {}
    processor_weights: Path | None = None
    backbone: str = "vit-small"
    checkpoint: Path | None = None
    fx: float | None = Field(None, ge=1, description="focal length x in pixels of the source image")
    fy: float | None = Field(None, ge=1, description="focal length y in pixels of the source image")
    hfov: float | None = Field(None, gt=0, lt=180, description="horizontal field of view (deg); sets fx=fy")
    focal_mode: Literal["fx", "mean"] = "fx"
    resolution: int | None = Field(None, ge=16, le=8192, description="short side of the output")
    input_size: tuple[int, int] | Literal["auto"] = (616, 1064)  # auto: runtimes/sizing.py
    device: str = "auto"
    precision: Literal["auto", "fp16", "bf16", "fp32"] = "auto"
    local_files_only: bool = False
    compile: bool = False
    # how the network runs (streamer/runtimes): auto picks the fastest present for the device
    runtime: Literal["auto", "torch", "openvino", "onnxruntime", "tensorrt"] = "auto"
    # the depth stabiliser between the model and the outputs; auto = causal, but off for comfy-*
    # outputs (they reproduce the node frame by frame), still images and processors without depth
    stabilize: Literal["auto", "off", "causal", "lookahead"] = "auto"
    stabilize_params: dict[str, int | float] = {}  # overrides of StabilizeParams (processors/stabilize_params.py)

    @field_validator("stabilize_params")
    @classmethod
    def _stabilize_params(cls, v: dict[str, int | float]) -> dict[str, int | float]:
        try:
            parse_params(v)
        except ConfigError as exc:
            raise ValueError(exc.one_line()) from None
        return v

    @field_validator("backbone")
    @classmethod
    def _backbone(cls, v: str) -> str:
        try:
            return get_variant(v).name
        except ConfigError:
            raise ValueError(f"must be one of {', '.join(BACKBONES)}") from None

    @field_validator("input_size", mode="before")
    @classmethod
    def _input_size(cls, v: Any) -> tuple[int, int] | str:
        """'HxW' (the flag), [H, W], one number for a square, or auto (sized for a live preview)."""
        if v == "auto":
            return v
        if isinstance(v, str):
            parts: list = v.lower().split("x")
            parts = parts * 2 if len(parts) == 1 else parts
        elif isinstance(v, list | tuple):
            parts = list(v)
        else:
            parts = [v, v]
        sides = [whole_number(p) for p in parts]
        if len(sides) != 2 or None in sides:
            raise ValueError("must be HxW, [H, W] or one number for a square, e.g. 616x1064")
        if any(side <= 0 or side % 28 for side in sides):
            raise ValueError("both sides must be positive multiples of 28, e.g. 616x1064")
        return sides[0], sides[1]

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        base, _, index = v.partition(":")
        if base not in ("auto", "cpu", "cuda", "mps") or (index and not (base == "cuda" and index.isdigit())):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return v

    def given_focal(self, width: int) -> Focal | None:
        """The user's focal length for a source `width` pixels wide (hfov wins over fx/fy), or None."""
        from streamer.focal import given_focal  # numpy: not needed to read a config (or --help)

        return given_focal(self.fx, self.fy, self.hfov, width)


def whole_number(value: Any) -> int | None:
    """An int from an int or a string of digits; None for anything else (bool, 616.5, [1], 'abc')."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def auto_or_count(value: Any, most: int) -> int | str:
    """ "auto", or a whole number from 1 to `most` (an int or a string of digits)."""
    if value == "auto":
        return value
    count = whole_number(value)
    if count is None or not 1 <= count <= most:
        raise ValueError(f"must be auto or a whole number from 1 to {most}")
    return count


MAX_BATCH = 64  # frames per forward pass at most (the exported graphs' batch axis goes as far)
MAX_LANES = 16  # forward passes side by side at most


class EngineConfig(Section):
    # auto: 4 for files on the CPU at inputs of at most 128 tokens (engine/threads.py), else 1
    batch_size: int | Literal["auto"] = Field("auto", description="frames per forward pass (file sources)")
    # auto: 2 for files on the CPU with at least 2 cores at inputs over 128 tokens (engine/threads.py), else 1
    lanes: int | Literal["auto"] = Field("auto", description="forward passes side by side (files on the CPU)")
    queue_size: int = Field(4, ge=1, le=256, description="frames buffered between stages")
    pinned_memory: bool = True
    cuda_stream: bool = True
    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads in all (default: every core)")

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, v: Any) -> int | str:
        return auto_or_count(v, MAX_BATCH)

    @field_validator("lanes", mode="before")
    @classmethod
    def _lanes(cls, v: Any) -> int | str:
        return auto_or_count(v, MAX_LANES)


class OutputConfig(Section):
    path: str | None = Field(None, description="a video file, or a folder (ends in / or exists) for sequences")
    format: OutputFormat = "color"
    colormap: str = "turbo"
    range: Literal["auto", "fixed", "frame"] = "auto"
    near: float = Field(0.1, ge=0, description="metres shown brightest/first colour (fixed range)")
    far: float = Field(10.0, gt=0, description="metres shown darkest/last colour (fixed range)")
    codec: str | None = None  # auto (.mp4/.mov: NVENC if it opens, else libx264) or an FFmpeg encoder
    crf: int = Field(18, ge=0, le=51)
    overwrite: bool = False
    copy_audio: bool = True
    ply_stride: int = Field(1, ge=1, description="point clouds keep every Nth pixel in both axes")
    min_confidence: float = Field(0.0, ge=0, description="point clouds (PLY, Rerun) drop pixels below this")
    ply_normals: bool = False  # add nx ny nz to each PLY vertex
    legend: bool = False  # burn a colour bar with metre ticks into recorded pictures (streamer/legend.py)

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Any:
        """A string, so a trailing slash (a folder: `out/base.exr/`) survives; Path objects are welcome."""
        return str(v) if isinstance(v, Path) else v


class PreviewConfig(Section):
    enabled: bool = False  # show the window (the preview command turns it on)
    view: ViewFormat = "side-by-side"
    window: str = "streamer"


class VirtualCamConfig(Section):
    enabled: bool = False  # send to the virtual camera (the virtualcam command turns it on)
    backend: Literal["auto", "obs", "v4l2loopback", "unitycapture"] = "auto"
    device: str | None = None
    width: int = Field(1280, ge=16)
    height: int = Field(720, ge=16)
    fps: float = Field(30.0, gt=0)
    view: ViewFormat = "color"


class ServeConfig(Section):
    """The HTTP server for browsers and OBS (streamer/sinks/web.py)."""

    enabled: bool = False  # the serve command, or --serve, turns it on
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token: str | None = None  # required (generated when not given) on any non-loopback host
    max_clients: int = Field(8, ge=1, le=1024)
    view: ViewFormat = "side-by-side"


class RerunConfig(Section):
    """The Rerun 3D view (streamer/sinks/rerun.py; `pip install "streamer[rerun]"`)."""

    enabled: bool = False  # show in a viewer: spawn one, or connect to `connect` when it is set
    connect: str | None = None  # a running viewer's gRPC URL, e.g. rerun+http://127.0.0.1:9876/proxy
    save: Path | None = None  # record to this .rrd file (every frame)
    points: bool = True  # log a coloured point cloud besides the camera, picture and depth
    stride: int = Field(4, ge=1, description="the point cloud keeps every Nth pixel in both axes")


class EffectsConfig(Section):
    """The `keyed` view: the distance band kept, what replaces the rest, depth of field (effect_settings.py)."""

    keep: tuple[float, float] = (0.0, 1.5)  # metres kept (near, far)
    background: str = "blur"  # blur | color:#RRGGBB | image:PATH | transparent | none
    hysteresis: float = Field(0.05, ge=0, description="metres a pixel must cross the band's edge by to switch")
    focus: float | None = Field(None, gt=0, description="depth of field: metres in focus (None: no blur)")
    aperture: float = Field(2.8, gt=0, description="depth of field: f-number")
    sensor_width: float = Field(36.0, gt=0, description="depth of field: the look of this sensor width (mm)")

    @field_validator("keep")
    @classmethod
    def _keep(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] < v[1]:
            raise ValueError("need 0 <= near < far metres")
        return v

    @field_validator("background")
    @classmethod
    def _background(cls, v: str) -> str:
        try:
            kind, arg = parse_background(v)
        except ConfigError as exc:
            raise ValueError(exc.one_line()) from None
        if kind == "image" and not Path(arg).is_file():
            raise ValueError(f"background picture {arg} does not exist")
        if kind == "image":  # read now: a file Pillow cannot read would end the run at its first keyed frame
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(arg) as im:
                    im.verify()
            except (OSError, UnidentifiedImageError, SyntaxError) as exc:
                raise ValueError(f"background picture {arg} is not a picture Pillow reads ({exc})") from None
        return v

    def settings(self) -> EffectSettings:
        near, far = self.keep
        return EffectSettings(near, far, self.background, self.hysteresis, self.focus, self.aperture, self.sensor_width)


class CalibrationConfig(Section):
    """A scale factor on every metre (streamer/calibration.py): given, from one known distance, or saved."""

    scale: float | None = Field(None, gt=0, description="multiply every metre by this")
    known_distance: str | None = None  # "X,Y=D": the output pixel X,Y lies D metres away (first frame)
    save: bool = True  # keep a page click's factor per camera and use it next time

    @field_validator("known_distance")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parse_known_distance(v)
            except ConfigError as exc:
                raise ValueError(exc.one_line()) from None
        return v


class Config(Section):
    source: SourceConfig = SourceConfig()
    model: ModelConfig = ModelConfig()
    engine: EngineConfig = EngineConfig()
    output: OutputConfig = OutputConfig()
    preview: PreviewConfig = PreviewConfig()
    virtualcam: VirtualCamConfig = VirtualCamConfig()
    serve: ServeConfig = ServeConfig()
    rerun: RerunConfig = RerunConfig()
    effects: EffectsConfig = EffectsConfig()
    calibration: CalibrationConfig = CalibrationConfig()


def describe_validation_error(error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    value = first.get("input")
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        return f"unknown key {key!r}"
    return f"bad value for {key!r}: {value!r} ({msg})"


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def presets() -> Traversable:
    """Where the presets are: inside the installed package, or beside it in a source checkout
    that is first on sys.path (python -m from the repository root)."""
    try:
        return resources.files(PRESETS)
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in presets().iterdir() if p.name.endswith(".yaml"))


def read_yaml(path: str | Path) -> dict:
    """A YAML file, or a preset by name (`--config transcode`)."""
    path = Path(path)
    try:
        if not path.is_file() and not path.suffix and str(path) in preset_names():
            text = presets().joinpath(f"{path}.yaml").read_text()
        else:
            text = path.read_text()
        data = yaml.safe_load(text) or {}
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found", hint=f"give a YAML file or a preset: {', '.join(preset_names())}"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file is not valid YAML: {yaml_error_line(path, exc)}", hint="fix it there") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections", hint="e.g. model: {backbone: vit-small}"
        )
    return data


def yaml_error_line(path: Path, exc: yaml.YAMLError) -> str:
    """'FILE:LINE:COLUMN: problem (context at LINE:COLUMN)', 1-based as editors count, from PyYAML's
    marks; PyYAML's own message spans several lines and quotes the text."""
    problem, context = getattr(exc, "problem", None), getattr(exc, "context", None)
    mark, context_mark = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
    if mark is None:
        return f"{path}: {problem or str(exc).splitlines()[0]}"
    detail = ""
    if context:
        started = f" at {context_mark.line + 1}:{context_mark.column + 1}" if context_mark is not None else ""
        detail = f" ({context}{started})"
    return f"{path}:{mark.line + 1}:{mark.column + 1}: {problem}{detail}"


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Defaults, then the YAML file, then `overrides` (nested dict of set CLI flags)."""
    data = read_yaml(path) if path else {}
    data = merge(data, overrides or {})
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        allowed = ""
        first = exc.errors()[0]
        if first["type"] == "extra_forbidden":
            section = first["loc"][:-1]
            model: type[BaseModel] = Config
            for part in section:
                model = model.model_fields[str(part)].annotation  # type: ignore[assignment]
            allowed = f"allowed: {', '.join(model.model_fields)}"
        raise ConfigError(describe_validation_error(exc) + where, hint=allowed or None) from None
