"""The subcommands. Each is a thin function: flags -> config -> library call."""

from __future__ import annotations

import click

from streamer.cli.options import (
    crf_option,
    live_extra_options,
    live_source_options,
    model_options,
    ply_options,
    render_options,
    rerun_options,
    serve_options,
    stabilize_options,
    with_flags,
)
from streamer.cli.running import run
from streamer.config import OUTPUT_FORMATS, Config
from streamer.errors import ConfigError
from streamer.views import VIEW_FORMATS


@click.command(
    epilog="""\b
Examples:
  streamer transcode clip.mp4 -o depth.mp4
  streamer transcode clip.mp4 -o depth16.mkv --format metric16 --hfov 70
  streamer transcode clip.mp4 -o frames/ --format exr --start 5 --end 10
  streamer transcode clip.mp4 -o clouds/ --format ply --stride 4 --fx 1450
  streamer transcode clip.mp4 -o depth.mp4 --rerun-save depth.rrd
  streamer transcode clip.mp4 -o depth16.mkv --format metric16 --stabilize lookahead
  streamer transcode frames/frame_%04d.png -o depth.mp4 --fps 30   # an image sequence"""
)
@click.argument("input_path", metavar="INPUT")
@click.option(
    "-o",
    "--output",
    required=True,
    help="Video file (.mp4 .mkv .mov .webm .avi), or a folder for image sequences and point clouds: a path ending "
    "in / or an existing folder (a name without a suffix is a new folder; other suffixes are refused).",
)
@click.option(
    "--format",
    type=click.Choice(OUTPUT_FORMATS),
    help="What each frame becomes: pictures (gray color normal side-by-side comfy-*), metric16 (uint16 mm), exr/npz (float32 m), ply (point clouds in metres, into a directory).  [default: color]",
)
@ply_options
@render_options
@click.option(
    "--codec",
    help="Encoder: auto (.mp4/.mov: NVENC when it opens here, else libx264), or any FFmpeg encoder (ffv1 for .mkv, libvpx-vp9 for .webm are the defaults there).",
)
@crf_option
@click.option(
    "--fps",
    type=float,
    help="Frame rate of an image-sequence INPUT ('frames/*.png', frames/, frame_%04d.png).  [default: 25, with a warning]",
)
@click.option("--start", type=float, help="Start at this many seconds.")
@click.option("--end", type=float, help="Stop at this many seconds.")
@click.option("--max-frames", type=int, help="Stop after this many frames.")
@click.option("--overwrite", is_flag=True, default=None, help="Replace an existing output.")
@click.option("--audio/--no-audio", default=None, help="Copy the input's audio.  [default: on]")
@rerun_options
@stabilize_options
@model_options
@with_flags
def transcode(cfg: Config, flags: dict) -> None:
    """Turn a video file or stream into a depth video or image sequence.

    Every input frame gives one output frame, with the input's timestamps; audio is copied.
    The output is written as NAME.partial.EXT and renamed when complete.
    """
    cfg.source.uri = flags["input_path"]
    cfg.output.path = flags["output"]
    if cfg.source.live is None:
        cfg.source.live = False  # a transcode keeps every frame, even from a network stream
    run(cfg)


def turn_on(cfg: Config, flags: dict, *sections: str) -> None:
    """The command's own output plus the ones its flags add (--record, --virtualcam, --preview, --serve)."""
    for section in sections:
        getattr(cfg, section).enabled = True
    for flag, section in (("also_virtualcam", "virtualcam"), ("also_preview", "preview"), ("also_serve", "serve")):
        if flags.get(flag):
            getattr(cfg, section).enabled = True
    if flags.get("record"):
        cfg.output.path = flags["record"]


@click.command(
    epilog="""\b
Examples:
  streamer preview                       # camera 0
  streamer preview --source testsrc      # no camera needed
  streamer preview --source 1 --view color --record out.mp4
Keys: q/Esc quit, v switch view, c cycle colormap."""
)
@live_source_options
@click.option("--view", type=click.Choice(VIEW_FORMATS), help="What the window shows.  [default: side-by-side]")
@render_options
@click.option("--virtualcam", "also_virtualcam", is_flag=True, help="Also send frames to the virtual camera.")
@live_extra_options
@serve_options
@rerun_options
@stabilize_options
@model_options
@with_flags
def preview(cfg: Config, flags: dict) -> None:
    """Show live depth in a window, with fps and latency."""
    turn_on(cfg, flags, "preview")
    run(cfg)


@click.command(
    epilog="""\b
Examples:
  streamer virtualcam                    # camera 0 -> virtual camera, 1280x720@30
  streamer virtualcam --source testsrc --backend v4l2loopback --cam-device /dev/video10
Needs OBS 28+ (Windows/macOS), Unity Capture (Windows) or v4l2loopback (Linux, exclusive_caps=1)."""
)
@live_source_options
@click.option(
    "--backend",
    type=click.Choice(["auto", "obs", "v4l2loopback", "unitycapture"]),
    help="pyvirtualcam backend.  [default: auto]",
)
@click.option("--cam-device", help="Virtual camera device (e.g. /dev/video10).")
@click.option("--cam-width", type=int, help="Virtual camera width.  [default: 1280]")
@click.option("--cam-height", type=int, help="Virtual camera height.  [default: 720]")
@click.option("--cam-fps", type=float, help="Virtual camera rate.  [default: 30]")
@click.option("--cam-view", type=click.Choice(VIEW_FORMATS), help="What the camera shows.  [default: color]")
@render_options
@click.option("--preview", "also_preview", is_flag=True, help="Also show the preview window.")
@live_extra_options
@serve_options
@rerun_options
@stabilize_options
@model_options
@with_flags
def virtualcam(cfg: Config, flags: dict) -> None:
    """Send live depth to a virtual camera for OBS, Zoom, Meet..."""
    turn_on(cfg, flags, "virtualcam")
    run(cfg)


@click.command(
    epilog="""\b
Examples:
  streamer serve --source testsrc                 # http://127.0.0.1:8080/ in a browser
  streamer serve --host 0.0.0.0 --port 8080       # other machines too; prints the URL with its token
  OBS: Browser Source -> http://127.0.0.1:8080/?bare=1, or Media Source -> http://127.0.0.1:8080/stream.mjpg
Endpoints: / (page), /stream.mjpg, /snapshot.png, /depth.png (16-bit mm), /stats, /settings."""
)
@live_source_options
@click.option("--host", help="Address to listen on; anything but loopback needs the token.  [default: 127.0.0.1]")
@click.option("--port", type=int, help="Port (0: any free one).  [default: 8080]")
@click.option("--token", help="Access token for every endpoint.  [default: generated off loopback]")
@click.option(
    "--serve-view", type=click.Choice(VIEW_FORMATS), help="What the page shows first.  [default: side-by-side]"
)
@render_options
@click.option("--preview", "also_preview", is_flag=True, help="Also show the preview window.")
@click.option("--virtualcam", "also_virtualcam", is_flag=True, help="Also send frames to the virtual camera.")
@live_extra_options
@rerun_options
@stabilize_options
@model_options
@with_flags
def serve(cfg: Config, flags: dict) -> None:
    """Serve live depth to browsers and OBS over HTTP (a page, MJPEG, PNG snapshots, stats)."""
    turn_on(cfg, flags, "serve")
    run(cfg)


@click.command(
    epilog="""\b
Examples:
  streamer depth photo.jpg -o out/
  streamer depth 'shots/*.png' -o out/ --fx 1450 --fy 1450 --format gray
  streamer depth photo.jpg -o out/ --format ply   # out/photo.ply: a point cloud in metres
  streamer depth photo.jpg -o out/ --comfy     # the same images as the ComfyUI node
The focal length comes from --fx/--fy or --hfov, else each image's EXIF (a 35 mm equivalent, the
focal plane resolution, or a known camera's sensor width), else a 70 deg field of view is assumed
(with a warning: the metres are then approximate). Each image's own focal is in NAME.json.
Results are named after their image; images that share a name (img.tiff img.webp) keep their
extension in it (img_tiff.png, img_webp.png); names that still clash are refused up front.
Animations (GIF, APNG, animated WebP) are refused: transcode reads a GIF's every frame."""
)
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Directory for the results.")
@click.option(
    "--format",
    type=click.Choice(["gray", "color", "normal", "metric16", "ply", "keyed"]),
    help="The picture written as NAME.png (metric16 = 16-bit millimetres), or ply: a point cloud NAME.ply.  [default: color]",
)
@click.option(
    "--comfy", is_flag=True, help="Write NAME.png/NAME_normal.png exactly as the ComfyUI Metric3D node would."
)
@ply_options
@render_options
@click.option("--overwrite", is_flag=True, default=None, help="Replace existing results.")
@model_options
@with_flags
def depth(cfg: Config, flags: dict) -> None:
    """Depth for still images: NAME.png (or NAME.ply) plus NAME.npz (depth m, normal, kappa, confidence, fx, fy).

    Images are read upright (EXIF orientation); NAME.json records each image's focal length and its
    source, metadata.json the format.
    """
    from streamer.api import still_image_sinks  # torch, PyAV: not for --help
    from streamer.sources import ImageSource

    sinks = still_image_sinks(cfg, flags["output"], comfy=flags["comfy"])
    run(cfg, sinks, ImageSource(list(flags["images"])), unit="image")


@click.command()
def doctor() -> None:
    """Check this machine: torch/CUDA, FFmpeg encoders, OpenCV GUI, cameras, virtual cameras, weights."""
    from streamer.doctor import run_checks

    checks = run_checks()
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = "ok " if c.ok else ("ERR" if c.required else "-- ")
        click.echo(f"[{mark}] {c.name:<{width}}  {c.detail}")
        if not c.ok and c.fix:
            click.echo(f"      {'':<{width}}  fix: {c.fix}")
    if any(c.required and not c.ok for c in checks):
        raise ConfigError("a required component is missing", hint="see the fixes above")
