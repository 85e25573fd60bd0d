"""The Python API, and the one place where a run is put together from a config.

    import streamer
    cfg = streamer.load_config("transcode", {"source": {"uri": "clip.mp4"}, "output": {"path": "depth.mp4"}})
    stats = streamer.run(cfg)

`prepare` checks the outputs, opens the source and loads the model; `execute` runs it; the CLI
uses the two to report in between. `streamer.estimator.DepthEstimator` is for single images.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from streamer.calibration import Calibration, store_path
from streamer.config import Config, ModelConfig
from streamer.engine import worker
from streamer.engine.compiled import CompiledOrEager
from streamer.engine.device import resolve_device, resolve_dtype
from streamer.engine.pipeline import Pipeline
from streamer.engine.plan import batch_size, fit_threads, measures_budget, planned_lanes, run_lanes, use_lanes
from streamer.engine.shared import SharedStage
from streamer.engine.stats import Stats
from streamer.engine.threads import ThreadBudget
from streamer.errors import ConfigError
from streamer.focal import Focal, FocalResolver
from streamer.models.metric3d import Metric3D, build_metric3d
from streamer.models.metric3d.weights import load_weights, read_checkpoint, resolve_checkpoint
from streamer.outcomes import check_damage, check_range, damage_error, is_folder_output
from streamer.processors.comfy import COMFY_FOCAL, COMFY_FOCAL_NOTE, COMFY_RESOLUTION
from streamer.processors.controlnet import AuxStage, load_detector
from streamer.processors.metric3d import Metric3DProcessor, Metric3DStage
from streamer.processors.null import NullStage
from streamer.processors.stabilize_params import parse_params
from streamer.processors.stabilize_stage import StabilizeStage
from streamer.runtimes import Request as RuntimeRequest
from streamer.runtimes import open_runtime
from streamer.runtimes.sizing import interactive_size
from streamer.sink_setup import (
    build_sinks,
    check_processor_format,
    file_sink,
    makes_depth,
    picture_settings,
    ply_sink,
    rerun_sink,
    still_image_sinks,
)
from streamer.sinks import Sink
from streamer.sources import Source, open_source
from streamer.sources.images import ImageSource
from streamer.types import Result

log = logging.getLogger(__name__)


def load_model(
    backbone: str = "vit-small",
    checkpoint: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    local_files_only: bool = False,
    compile: bool = False,
) -> tuple[Metric3D, Path]:
    """Build Metric3D, load its weights strictly, move it to the device in the chosen precision (torch)."""
    model, path = read_model(backbone, checkpoint, local_files_only)
    return place_model(model, device, precision, compile), path


def place_model(model: Metric3D, device: str = "auto", precision: str = "auto", compile: bool = False) -> Metric3D:
    """Loaded weights -> the device and precision to run in (auto: fp16 on CUDA, fp32 on CPU)."""
    dev = resolve_device(device)
    model = model.to(device=dev, dtype=resolve_dtype(precision, dev)).eval()
    return CompiledOrEager(model, dev) if compile else model


def read_model(backbone: str, checkpoint: str | Path | None, local_files_only: bool = False) -> tuple[Metric3D, Path]:
    """Metric3D with its weights loaded strictly, fp32 on the CPU (what every runtime starts from)."""
    path = resolve_checkpoint(backbone, checkpoint, local_files_only)
    model = build_metric3d(backbone, device="meta")
    load_weights(model, read_checkpoint(path), source=str(path))
    return model.eval(), path


def load_processor(
    cfg: ModelConfig, threads: int = 0, comfy: bool = False, lanes: int = 1
) -> tuple[Metric3DProcessor, dict]:
    """The model behind the runtime `cfg.runtime` resolves to; `meta["runtime_choice"]` says which and
    why, and with `input_size: auto` `meta["input_size_choice"]` says which size (runtimes/sizing.py).
    `lanes`: the forward passes side by side a file run will make, so the runtime builds for them once."""
    model, path = read_model(cfg.backbone, cfg.checkpoint, cfg.local_files_only)
    device = resolve_device(cfg.device)
    choices = {}

    def make(size: tuple[int, int]) -> Metric3DProcessor:
        request = RuntimeRequest(
            cfg.runtime, device, cfg.precision, size, cfg.backbone, path, threads, cfg.compile, comfy, lanes
        )
        runtime, choices["runtime_choice"] = open_runtime(request, model)
        return Metric3DProcessor(runtime, size, cfg.focal_mode)

    if cfg.input_size == "auto":
        processor, choices["input_size_choice"] = interactive_size(device, make)
    else:
        processor = make(cfg.input_size)
    meta = {
        "processor": "metric3d",
        "backbone": cfg.backbone,
        "checkpoint": Path(path).name,
        "input_size": list(processor.input_size),
        "runtime": processor.runtime.name,
        **choices,
        "precision": processor.runtime.precision,
        "focal_mode": cfg.focal_mode,
        "device": str(processor.device),
    }
    return processor, meta


def focal_resolver(cfg: ModelConfig, comfy: bool = False, warn: Callable[[str], None] | None = None) -> FocalResolver:
    """How each frame gets its focal length: the user's values, else the source's hint, else assumed.

    The ComfyUI mode stands in the node's fx = fy = 1000 for values the user did not give (recorded
    as "given" with a note saying so), so `depth --comfy` matches the node. `warn` hears the
    assumed-focal warning once (the CLI prints it); without it the warning is logged.
    """
    if comfy and cfg.fx is None and cfg.fy is None and cfg.hfov is None:
        return FocalResolver(COMFY_FOCAL, COMFY_FOCAL, note=COMFY_FOCAL_NOTE, warn=warn)
    return FocalResolver(cfg.fx, cfg.fy, cfg.hfov, warn=warn)


def load_stage(
    cfg: ModelConfig,
    comfy: bool = False,
    threads: int | None = None,
    warn: Callable[[str], None] | None = None,
    lanes: int = 1,
) -> Metric3DStage | AuxStage | NullStage:
    """The inference stage the pipeline runs, with the model loaded once.

    Call it on the model thread (engine/worker.py), where the pipeline will run it. `comfy` adds
    the ComfyUI node's pictures; `resolution` then defaults to the node's 512. Any other
    `processor` than metric3d loads that controlnet_aux preprocessor. `threads` sizes torch's pool;
    `warn` hears a focal-length warning (see `focal_resolver`).
    """
    if threads:
        torch.set_num_threads(threads)
    if cfg.processor == "null":
        return NullStage(resolve_device(cfg.device), cfg.resolution)
    if cfg.processor != "metric3d":
        weights = str(cfg.processor_weights) if cfg.processor_weights else None
        detector = load_detector(cfg.processor, weights, cfg.local_files_only)
        return AuxStage(detector, cfg.processor, cfg.processor_args, resolve_device(cfg.device), cfg.resolution)
    processor, meta = load_processor(cfg, threads or 0, comfy, lanes)
    comfy_resolution = (cfg.resolution or COMFY_RESOLUTION) if comfy else None
    resolution = None if comfy else cfg.resolution
    return Metric3DStage(processor, focal_resolver(cfg, comfy, warn), resolution, meta, comfy_resolution)


def stabilize_mode(cfg: Config, source: Source, sinks: list[Sink]) -> str:
    """The stabiliser's mode for this run, or a ConfigError before anything is loaded.

    `auto` is causal, except where it would change nothing or something it must not: outputs
    that reproduce the ComfyUI node frame by frame (its pictures come from the raw network
    output), still images (no frame rate: not an image sequence), and processors that make no depth.
    """
    mode = cfg.model.stabilize
    comfy = [s.name for s in sinks if any(need.startswith("comfy") for need in s.needs)]
    has_depth = makes_depth(cfg)
    stills = isinstance(source, ImageSource) and source.rate is None
    if mode == "auto":
        return "off" if comfy or not has_depth or stills else "causal"
    if mode != "off" and comfy:
        raise ConfigError(
            f"--stabilize {mode}: {comfy[0]} reproduces the ComfyUI node frame by frame and is not stabilised",
            hint="leave --stabilize out (off for comfy-* formats) or pick another --format",
        )
    if mode != "off" and not has_depth:
        raise ConfigError(
            f"--stabilize {mode} smooths depth, and processor {cfg.model.processor} makes none",
            hint="leave --stabilize out with ControlNet preprocessors",
        )
    if mode == "lookahead" and source.info.live:
        raise ConfigError(
            f"--stabilize lookahead is for files: it holds frames back, which live source {source.info.name} cannot wait for",
            hint="use --stabilize causal (no added latency)",
        )
    return mode


def build_stabilizer(cfg: Config, source: Source, sinks: list[Sink]) -> StabilizeStage:
    return StabilizeStage(stabilize_mode(cfg, source, sinks), parse_params(cfg.model.stabilize_params))


@dataclass
class Job:
    """A run put together from a config: source and sinks open, model loaded, not yet started."""

    config: Config
    source: Source
    sinks: list[Sink]
    stage: Metric3DStage | AuxStage | NullStage | SharedStage
    threads: ThreadBudget
    length: float | None = None  # seconds, where the input file says (read while it is open)

    @property
    def focal(self) -> Focal | None:
        """The first frame's focal length and its source, as the stage will use it (None: not Metric3D).

        Asking resolves it, so an assumed focal is reported (once) before the run starts."""
        if not isinstance(self.stage, Metric3DStage):
            return None
        info = self.source.info
        return self.stage.focal(info.width, info.height, info.focal)


def prepare(
    cfg: Config,
    sinks: list[Sink] | None = None,
    source: Source | None = None,
    announce: Callable[[str], None] | None = None,
    stage: Metric3DStage | AuxStage | NullStage | SharedStage | None = None,
    warn: Callable[[str], None] | None = None,
) -> Job:
    """Outputs checked first (nothing is overwritten), then the source opened, then the model loaded.

    `sinks` and `source` replace what the config names (e.g. a list of still images); `announce`
    hears what is being loaded (the CLI prints it; loading takes a while); `warn` hears warnings a
    person should act on, once each (an assumed focal length), instead of the log. A loaded
    `stage` is used as it is (a batch loads its model once for many files)."""
    threads = ThreadBudget.plan(resolve_device(cfg.model.device).type, cfg.engine.threads)
    sinks = build_sinks(cfg, threads) if sinks is None else sinks
    source = open_source(cfg.source, threads.decode) if source is None else source
    length = getattr(source, "duration", None)
    if stage is not None:
        return Job(cfg, source, sinks, stage, threads, length)
    measure = measures_budget(cfg)
    if measure:  # loaded with every core, then timed (engine/threads.py); the codecs' threads stay
        threads = ThreadBudget(os.cpu_count() or 1, threads.decode, threads.encode)
    try:
        stabilize_mode(cfg, source, sinks)  # a wrong mode fails before the model loads
        if announce is not None and model_name(cfg.model):
            announce(f"loading {model_name(cfg.model)} ...")
        comfy = any(need.startswith("comfy") for sink in sinks for need in sink.needs)
        planned = planned_lanes(cfg, source.info.live)[0]  # the runtime builds for them at load
        stage = worker.on_device_thread(load_stage, cfg.model, comfy, threads.torch, warn, planned)
        lanes, lanes_why = run_lanes(cfg, stage, source.info.live)
        if lanes > 1:
            threads = worker.on_device_thread(use_lanes, stage, lanes, cfg.engine.threads)
            (announce or log.info)(f"lanes: {lanes_why}")
            (announce or log.info)(threads.line())
        elif measure and isinstance(stage, Metric3DStage):
            info = source.info
            threads = worker.on_device_thread(fit_threads, stage, cfg, (info.width, info.height))
            (announce or log.info)(threads.line())
        size, why = batch_size(cfg, stage, source.info.live)
        if why is not None:
            (announce or log.info)(f"batch: {size} frame{'s' * (size > 1)} per forward pass ({why})")
        if announce is not None and isinstance(stage, Metric3DStage):
            for line in ("runtime_choice", "input_size_choice"):
                if line in stage.meta:
                    announce(stage.meta[line])
    except BaseException:
        source.close()
        raise
    return Job(cfg, source, sinks, stage, threads, length)


def model_name(cfg: ModelConfig) -> str | None:
    """The model a run loads (what a person waits for): a backbone, a preprocessor, or None for null."""
    if cfg.processor == "null":
        return None
    return cfg.backbone if cfg.processor == "metric3d" else cfg.processor


def make_pipeline(source, stage, sinks: list, config: Config | None = None, stats: Stats | None = None) -> Pipeline:
    cfg = config or Config()
    e = cfg.engine
    pace = cfg.source.pace
    if pace is None:  # a file feeding live outputs plays in real time
        pace = any(s.live for s in sinks)
    stabilizer = build_stabilizer(cfg, source, sinks)
    return Pipeline(
        source,
        stage,
        sinks,
        batch_size(cfg, stage, source.info.live)[0],
        e.queue_size,
        e.pinned_memory,
        e.cuda_stream,
        stats,
        pace,
        stabilizer,
        run_calibration(cfg, source, sinks),
        getattr(stage, "lanes", 1),
        getattr(stage, "lane_threads", 1),
    )


def run_calibration(cfg: Config, source, sinks: list) -> Calibration:
    """The run's scale factor; a sink that calibrates (the page) holds it, so its clicks reach the metres.

    Only a live camera has an identity to save a click's factor under (its index or device path)."""
    held = next((s.calibration for s in sinks if getattr(s, "calibration", None) is not None), None)
    if held is not None:
        return held
    c = cfg.calibration
    camera = cfg.source.uri if source.info.live and c.save else None
    calibration = Calibration.from_options(c.scale, c.known_distance, camera, store_path())
    for sink in sinks:
        if hasattr(sink, "calibration"):
            sink.calibration = calibration
    return calibration


def execute(
    job: Job, tick: Callable[[Stats], None] | None = None, stats: Stats | None = None, check: bool = True
) -> dict:
    """Run a prepared job to its end; a damaged input is reported (`check`) after its frames were written."""
    result = make_pipeline(job.source, job.stage, job.sinks, job.config, stats).run(tick)
    check_range(job, result)
    if check:
        check_damage(job, result)
    return result


def run(cfg: Config, tick: Callable[[Stats], None] | None = None) -> dict:
    """Everything from a config: `streamer.run(load_config("transcode", {...}))` -> statistics."""
    return execute(prepare(cfg), tick)


def run_pipeline(source, stage, sinks: list, config: Config | None = None, stats: Stats | None = None) -> dict:
    """Run source -> stage -> sinks to the end; returns the statistics (fps, latency, drops...)."""
    return make_pipeline(source, stage, sinks, config, stats).run()


__all__ = [
    "Job",
    "Result",
    "build_sinks",
    "build_stabilizer",
    "check_damage",
    "check_processor_format",
    "check_range",
    "damage_error",
    "execute",
    "is_folder_output",
    "file_sink",
    "focal_resolver",
    "load_model",
    "load_processor",
    "load_stage",
    "make_pipeline",
    "makes_depth",
    "model_name",
    "picture_settings",
    "place_model",
    "ply_sink",
    "prepare",
    "rerun_sink",
    "run",
    "run_pipeline",
    "stabilize_mode",
    "still_image_sinks",
]
