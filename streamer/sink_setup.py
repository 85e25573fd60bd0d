"""Which sinks a config turns on, each with its picture settings: the file, window, virtual camera,
page and Rerun outputs of a run (streamer/api.py puts the run together; `batch` builds its file
sinks here too).
"""

from __future__ import annotations

from pathlib import Path

from streamer.config import Config
from streamer.engine.threads import ThreadBudget
from streamer.errors import ConfigError, SinkError
from streamer.outcomes import is_folder_output
from streamer.sinks import ImageSequenceSink, PlySink, PreviewSink, Sink, VideoSink, VirtualCameraSink
from streamer.views import VIEW_FORMATS, PictureSettings


def picture_settings(cfg: Config, view: str | None = None) -> PictureSettings:
    """A sink's picture from the output section; `view` for live sinks with their own view.

    Files (no `view`) carry the colour bar when `output.legend` asks; live sinks draw their own."""
    out = cfg.output
    fmt = view or out.format
    return PictureSettings(
        fmt if fmt in VIEW_FORMATS else "color",
        out.colormap,
        out.range,
        out.near,
        out.far,
        effects=cfg.effects.settings(),
        legend=out.legend and view is None,
    )


def ply_sink(cfg: Config, directory: str | Path) -> PlySink:
    """One point cloud per frame in `directory`, thinned and filtered as the output section says."""
    out = cfg.output
    return PlySink(directory, out.overwrite, out.ply_stride, out.min_confidence, out.ply_normals)


def still_image_sinks(cfg: Config, directory: str | Path, comfy: bool = False) -> list[Sink]:
    """The sinks of `depth`: one picture (or point cloud) per image, and with Metric3D NAME.npz too.

    Exactly one sink writes metadata.json and the per-image NAME.json: the NPZ one when there is one
    (its metres are the metric result), else the picture sink. Two writers of one file race in their
    sink threads (each renames its own temporary file over it)."""
    out = Path(directory)
    overwrite = cfg.output.overwrite
    picture = picture_settings(cfg)
    if comfy:
        sinks: list[Sink] = [
            ImageSequenceSink(out, "comfy-depth", picture, overwrite, write_metadata=False),
            ImageSequenceSink(out, "comfy-normal", picture, overwrite, name_suffix="_normal", write_metadata=False),
        ]
    elif cfg.output.format == "ply":
        sinks = [ply_sink(cfg, out)]  # its metadata.json says the convention, the intrinsics and the focal
    else:
        sinks = [ImageSequenceSink(out, cfg.output.format, picture, overwrite, write_metadata=False)]
    if cfg.model.processor == "metric3d":
        metadata = cfg.output.format != "ply" or comfy  # the point clouds' sink writes its own
        sinks.append(ImageSequenceSink(out, "npz", picture, overwrite, write_metadata=metadata, image_sidecars=True))
    elif not isinstance(sinks[0], ImageSequenceSink):
        raise ConfigError("point clouds need Metric3D's metric depth", hint="drop --processor, or use a picture format")
    else:
        sinks[0].write_metadata = sinks[0].image_sidecars = True
    return sinks


def file_sink(
    cfg: Config,
    path: str | Path,
    inputs: list[str] = (),
    threads: int = 0,
    sidecar_extra: dict | None = None,
    folder: bool | None = None,
) -> Sink:
    """A video file, or an image sequence or point clouds (ply) in a folder, for `cfg.output.format`.

    `folder` overrides reading the kind from the path (`is_folder_output`): a caller that made the
    name knows. `sidecar_extra` adds fields to the JSON sidecar (a batch records what the output was made from)."""
    folder = is_folder_output(path) if folder is None else folder
    path = Path(path)
    fmt = cfg.output.format
    out = cfg.output
    if fmt == "ply":
        if not folder:
            raise SinkError(
                f"--format ply writes one .ply per frame, not a video {path}", hint="give a directory as -o"
            )
        return ply_sink(cfg, path)
    picture = picture_settings(cfg)
    if not folder:
        return VideoSink(
            path,
            fmt,
            picture,
            out.codec,
            out.crf,
            out.overwrite,
            out.copy_audio,
            inputs,
            threads,
            sidecar_extra,
        )
    return ImageSequenceSink(path, fmt, picture, out.overwrite, sidecar_extra=sidecar_extra)


def rerun_sink(cfg: Config) -> Sink | None:
    """The Rerun output when the config asks for a viewer or a recording, else None."""
    r = cfg.rerun
    if not (r.enabled or r.connect or r.save):
        return None
    from streamer.sinks.rerun import RerunSink  # rerun-sdk itself loads only when the sink opens

    spawn = r.enabled and not r.connect
    return RerunSink(
        spawn=spawn,
        connect=r.connect,
        save=r.save,
        points=r.points,
        stride=r.stride,
        min_confidence=cfg.output.min_confidence,
        overwrite=cfg.output.overwrite,
    )


def build_sinks(cfg: Config, threads: ThreadBudget | None = None) -> list[Sink]:
    """Every output the config turns on: the file (`output.path`), window, virtual camera, server, Rerun."""
    sinks: list[Sink] = []
    if cfg.preview.enabled:
        preview = PreviewSink(picture_settings(cfg, cfg.preview.view), cfg.preview.window)
        if not makes_depth(cfg):
            preview.needs = frozenset({"picture"})  # nothing to measure on a ControlNet picture
        sinks.append(preview)
    if cfg.virtualcam.enabled:
        v = cfg.virtualcam
        sinks.append(VirtualCameraSink(picture_settings(cfg, v.view), v.width, v.height, v.fps, v.backend, v.device))
    if cfg.serve.enabled:
        from streamer.sinks.web import WebSink  # aiohttp loads only when serving

        w = cfg.serve
        web = WebSink(picture_settings(cfg, w.view), w.host, w.port, w.token, w.max_clients)
        if not makes_depth(cfg):
            web.needs = frozenset({"picture"})  # /depth.png has nothing to show for a ControlNet picture
        sinks.append(web)
    if cfg.output.path is not None:
        sinks.append(file_sink(cfg, cfg.output.path, [cfg.source.uri], threads.encode if threads else 0))
    rerun = rerun_sink(cfg)
    if rerun is not None:
        sinks.append(rerun)
    if not sinks:
        raise ConfigError(
            "nothing to write or show", hint="give an output (-o), --preview, --virtualcam, --serve or --rerun"
        )
    check_processor_format(cfg, sinks)
    return sinks


def makes_depth(cfg: Config) -> bool:
    """Metric3D (and the null stand-in) make depth; ControlNet preprocessors make only a picture."""
    return cfg.model.processor in ("metric3d", "null")


def check_processor_format(cfg: Config, sinks: list[Sink]) -> None:
    if not makes_depth(cfg):
        metric = [s for s in sinks if set(s.needs) - {"picture"}]
        if metric:
            raise ConfigError(
                f"output {metric[0].name} needs Metric3D's metric depth, but the processor is {cfg.model.processor}",
                hint="use a picture format (color, gray, side-by-side) with ControlNet preprocessors",
            )
