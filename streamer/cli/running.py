"""Running a job from the CLI: what is loading, the progress bar, the summary, what was written."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click
from tqdm import tqdm

from streamer.config import Config

if TYPE_CHECKING:
    from streamer import api
    from streamer.engine.stats import Stats
    from streamer.focal import Focal


def echo(message: str) -> None:
    click.echo(message, err=True)


def warn(message: str) -> None:
    echo(f"warning: {message}")


def describe_focal(focal: Focal | None) -> str:
    """'fx=... fy=... px (exif: EXIF FocalLengthIn35mmFilm 26 mm); ': the focal and where it came from.

    An assumed focal says only "assumed" here: its warning line, printed once, says how to fix it."""
    if focal is None:
        return ""
    detail = f": {focal.note}" if focal.note and focal.source != "assumed" else ""
    return f"fx={focal.fx:.1f} fy={focal.fy:.1f} px ({focal.source}{detail}); "


def describe(job: api.Job) -> str:
    info = job.source.info
    focal = describe_focal(job.focal)  # first: an assumed focal's warning comes before this line
    rate = f" @ {float(info.rate):.3g} fps" if info.rate else ""
    mode = "live" if info.live else "file"
    kind = job.stage.meta.get("precision", job.stage.meta["processor"])
    return f"source {info.name}: {info.width}x{info.height}{rate}, {mode}; {focal}device {job.stage.device}, {kind}"


def progress_bar(job: api.Job, unit: str):
    info = job.source.info
    total = info.frame_count if not info.live else None
    bar = tqdm(total=total, unit=unit, dynamic_ncols=True, file=sys.stderr, disable=None, smoothing=0.1)

    def tick(s: Stats) -> None:
        bar.update(s.frames_out - bar.n)
        snap = s.snapshot()
        bar.set_postfix_str(
            f"{snap['fps_out']:.1f} fps, p95 {snap['latency_ms']['p95']:.0f} ms, dropped {snap['frames_dropped']}",
            refresh=False,
        )

    return bar, tick


def results_kept(sinks: list, result: dict) -> int:
    """What the run leaves: the frames its first file output holds; without one, the frames shown.

    The engine counts a frame out when the first sink took it, and that may be a window that
    skips frames or stopped on a key while the file behind it still wrote the frame in flight."""
    written = [s.frames_written for s in sinks if hasattr(s, "frames_written")]
    return written[0] if written else result["frames_out"]


def run(cfg: Config, sinks: list | None = None, source=None, unit: str = "frame") -> dict:
    """Load, run with a progress display on stderr, print a summary and what was written."""
    from streamer import api  # torch, OpenCV, PyAV: loaded for a run, not for --help
    from streamer.engine.stats import Stats

    job = api.prepare(cfg, sinks, source, announce=echo, warn=warn)
    echo(describe(job))
    for sink in job.sinks:
        if hasattr(sink, "url"):  # the web server: the address, with its access token when it has one
            echo(f"serving {sink.url}  (MJPEG for OBS/VLC: {sink.stream_url})")
            for other in sink.urls[1:]:  # listening on all networks: every address of this machine
                echo(f"  also at {other}")
    stats = Stats()
    bar, tick = progress_bar(job, unit)
    try:
        result = api.execute(job, tick, stats, check=False)
    finally:
        tick(stats)
        bar.close()
    stopped = " (stopped)" if result.get("stopped_by_person") else ""
    echo(f"done{stopped}: {stats.run_summary(results_kept(job.sinks, result), unit)}")
    for sink in job.sinks:
        final = getattr(sink, "final_path", None)
        if final is not None:
            echo(f"wrote {final}")
        note = getattr(sink, "audio_note", None)
        if note:
            echo(f"note: {note}")
    api.check_damage(job, result)
    return result
