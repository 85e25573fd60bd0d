"""Running a pipeline from the CLI: progress bar, summary, sink construction shared by commands."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from tqdm import tqdm

from streamer.api import load_stage, make_pipeline
from streamer.config import Config
from streamer.engine.stats import Stats
from streamer.errors import ConfigError, SinkError, SourceError
from streamer.processors.render import VIEW_FORMATS, DisplayRange, Renderer
from streamer.sinks import VIDEO_SUFFIXES, ImageSequenceSink, PreviewSink, VideoSink, VirtualCameraSink
from streamer.sources.images import IMAGE_SUFFIXES


def renderer(cfg: Config, view: str | None = None) -> Renderer:
    out = cfg.output
    fmt = view or out.format
    display = DisplayRange(out.range, out.near, out.far)
    view = fmt if fmt in VIEW_FORMATS else "color"
    return Renderer(view, out.colormap, display)


def file_sink(cfg: Config, path: str | Path, inputs: list[str] = (), audio_from: str | None = None):
    path = Path(path)
    fmt = cfg.output.format
    if path.suffix.lower() in IMAGE_SUFFIXES | {".exr", ".npz"}:
        raise SinkError(
            f"{path} names a single image",
            hint=f"image sequences are written into a directory: -o {path.with_suffix('')}/",
        )
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoSink(
            path,
            fmt,
            renderer(cfg),
            cfg.output.codec,
            cfg.output.crf,
            cfg.output.overwrite,
            audio_from if cfg.output.copy_audio else None,
            inputs,
        )
    return ImageSequenceSink(path, fmt, renderer(cfg), cfg.output.overwrite)


def preview_sink(cfg: Config) -> PreviewSink:
    return PreviewSink(renderer(cfg, cfg.preview.view), cfg.preview.window)


def virtualcam_sink(cfg: Config) -> VirtualCameraSink:
    v = cfg.virtualcam
    return VirtualCameraSink(renderer(cfg, v.view), v.view, v.width, v.height, v.fps, v.backend, v.device)


def echo(message: str) -> None:
    click.echo(message, err=True)


METRIC_FORMATS = ("metric16", "exr", "npz", "comfy-depth", "comfy-normal")


def check_processor_format(cfg: Config, formats: list[str]) -> None:
    if cfg.model.processor != "metric3d":
        wrong = [f for f in formats if f in METRIC_FORMATS]
        if wrong:
            raise ConfigError(
                f"format {wrong[0]} needs Metric3D, but the processor is {cfg.model.processor}",
                hint="use a picture format (color, gray, side-by-side) with ControlNet preprocessors",
            )


def run(cfg: Config, source, sinks: list, comfy: bool = False, unit: str = "frame") -> dict:
    """Load the model, run with a progress display on stderr, print a summary line."""
    info = source.info
    check_processor_format(cfg, [getattr(s, "fmt", "") for s in sinks])
    echo(f"loading {cfg.model.processor if cfg.model.processor != 'metric3d' else cfg.model.backbone} ...")
    stage = load_stage(cfg.model, comfy=comfy)
    fx, fy = cfg.model.focal_for(info.width)
    echo(
        f"source {info.name}: {info.width}x{info.height}"
        f"{f' @ {float(info.rate):.3g} fps' if info.rate else ''}, {'live' if info.live else 'file'}; "
        f"fx={fx:.1f} fy={fy:.1f} px; device {stage.device}, {stage.meta.get('precision', stage.meta['processor'])}"
    )
    stats = Stats()
    pipeline = make_pipeline(source, stage, sinks, cfg, stats)
    total = info.frame_count if not info.live else None
    bar = tqdm(total=total, unit=unit, dynamic_ncols=True, file=sys.stderr, disable=None, smoothing=0.1)

    def tick(s: Stats) -> None:
        bar.update(s.frames_out - bar.n)
        snap = s.snapshot()
        bar.set_postfix_str(
            f"{snap['fps_out']:.1f} fps, p95 {snap['latency_ms']['p95']:.0f} ms, dropped {snap['frames_dropped']}",
            refresh=False,
        )

    try:
        result = pipeline.run(tick)
    finally:
        tick(stats)
        bar.close()
    echo(f"done: {result['frames_out']} {unit}s, {stats.summary_line()}")
    for sink in sinks:
        final = getattr(sink, "final_path", None)
        if final is not None:
            echo(f"wrote {final}")
        note = getattr(sink, "audio_note", None)
        if note:
            echo(f"note: {note}")
    damage = getattr(source, "damage", None)
    if damage:
        raise SourceError(
            f"input {info.name} is damaged: {damage}",
            hint=f"the output is complete for the {result['frames_out']} frames that could be decoded",
        )
    return result
