"""`streamer export`: build a runtime's exported graph (and compiled form) ahead of the first run."""

from __future__ import annotations

import click

from streamer.cli.options import model_options, with_flags
from streamer.config import Config
from streamer.errors import ConfigError


@click.command(
    epilog="""\\b
Examples:
  streamer export --runtime openvino --input-size 224x392        # CPU: the graph + OpenVINO's compiled blob
  streamer export --runtime tensorrt --device cuda --backbone vit-large   # GPU: the fp16 engine"""
)
@model_options
@with_flags
def export(cfg: Config, flags: dict) -> None:
    """Export the network to ONNX and compile it for a runtime, into the cache beside the weights.

    A run does this itself on first use (it takes seconds to minutes); exporting ahead of time makes
    the first run start at once. The cache is keyed by the checkpoint's hash, backbone, input size,
    precision and runtime version, so changing any of them exports again.
    """
    from streamer import api  # torch: loaded for a run, not for --help

    click.echo(f"exporting {cfg.model.backbone} ...", err=True)
    processor, meta = api.load_processor(cfg.model)  # exports, compiles and caches what is missing
    graph = getattr(processor.runtime, "graph", None)
    if graph is None:
        raise ConfigError(
            f"runtime {meta['runtime']} runs the torch module and has nothing to export",
            hint="pass --runtime openvino, onnxruntime or tensorrt",
        )
    for line in ("runtime_choice", "input_size_choice"):
        if line in meta:
            click.echo(meta[line], err=True)
    click.echo(str(graph))
