"""`streamer bench`: the command over streamer/bench.py's measurements."""

from __future__ import annotations

import json
from pathlib import Path

import click

from streamer.cli.options import model_options, with_flags
from streamer.config import OUTPUT_FORMATS, Config


def parse_size(ctx: click.Context, param: click.Parameter, text: str) -> tuple[int, int]:
    """'WxH' with even sides of at least 16: the synthetic source and the serial loop's output are
    H.264 in 4:2:0, which needs even sides."""
    try:
        w, h = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter("use WxH, e.g. 1920x1080") from None
    if min(w, h) < 16 or w % 2 or h % 2:
        raise click.BadParameter(f"{text} has odd or tiny sides; use even sides of at least 16, e.g. 1280x720")
    return w, h


# comfy-* pictures come from the ComfyUI node's own stage (`depth --comfy`), which the bench does not build
BENCH_FORMATS = tuple(f for f in OUTPUT_FORMATS if not f.startswith("comfy"))


def parse_formats(ctx: click.Context, param: click.Parameter, text: str) -> tuple[str, ...]:
    formats = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in formats if f not in BENCH_FORMATS]
    if unknown:
        raise click.BadParameter(f"unknown format {unknown[0]!r}; use some of {','.join(BENCH_FORMATS)}")
    return formats


@click.command(
    epilog="""\b
Examples:
  streamer bench --device cpu --input-size 224x392 --frames 24 --source-size 640x360
  streamer bench --device cuda --precision fp16 --source-size 1920x1080 --frames 300 --json gpu.json
  streamer bench --device cuda --no-pinned --no-stream --batch-size 1   # each switch's effect
  streamer bench --processor null --source-size 1920x1080 --formats color,gray,metric16   # the engine's ceiling"""
)
@click.option("--frames", type=click.IntRange(min=1), default=32, show_default=True, help="Frames per measurement.")
@click.option(
    "--source-size", default="1280x720", show_default=True, callback=parse_size, help="Synthetic source size WxH."
)
@click.option(
    "--live-fps",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Rate of the paced live source.",
)
@click.option(
    "--memory-factor",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Re-run the pipeline on this many times more frames to check RSS stays flat (1 = skip).",
)
@click.option(
    "--formats",
    default="",
    callback=parse_formats,
    help="Also run the pipeline for each of these output formats (comma separated, e.g. color,gray,metric16,exr,ply); "
    "videos and image sequences are written to a temporary folder.",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Measure model only, serial loop and pipeline this many times, interleaved; report each one's fastest.",
)
@click.option("--no-pinned", is_flag=True, help="Turn pinned host buffers off (CUDA).")
@click.option("--no-stream", is_flag=True, help="Turn the side copy stream off (CUDA).")
@click.option("--no-batching", is_flag=True, help="Force batch size 1.")
@click.option("--compile", is_flag=True, default=None, help="torch.compile the model (compare with a run without).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results as JSON.")
@model_options
@with_flags
def bench(cfg: Config, flags: dict) -> None:
    """Measure model-only, serial-loop and pipeline fps, live latency and memory, in one run.

    `--processor null` replaces the model by a stage that costs nothing, to measure the engine's
    own ceiling (decode, upload, picture, download, encode) per output format.
    """
    from streamer.bench import bench_run, table  # torch, PyAV: loaded to measure, not for --help
    from streamer.engine.device import resolve_device

    cfg.engine.pinned_memory = not flags["no_pinned"]
    cfg.engine.cuda_stream = not flags["no_stream"]
    if flags["no_batching"]:
        cfg.engine.batch_size = 1
    size, formats = flags["source_size"], flags["formats"]
    what = cfg.model.backbone if cfg.model.processor == "metric3d" else cfg.model.processor
    click.echo(f"benchmarking {what} on {resolve_device(cfg.model.device)} ...", err=True)
    result = bench_run(cfg, flags["frames"], size, flags["live_fps"], flags["memory_factor"], formats, flags["repeat"])
    click.echo(table(result))
    if flags["json_path"]:
        Path(flags["json_path"]).write_text(json.dumps(result, indent=2) + "\n")
