"""`streamer batch`: a library of videos, resumable, on this machine or a Ray cluster."""

from __future__ import annotations

import sys

import click
from tqdm import tqdm

from streamer.batch.inputs import CONTAINERS
from streamer.batch.report import DONE, REPORT_NAME, STATUSES, BatchReport, Progress
from streamer.cli.options import crf_option, model_options, render_options, with_flags
from streamer.cli.running import echo
from streamer.config import OUTPUT_FORMATS, Config
from streamer.errors import Interrupted, StreamerError


@click.command(
    epilog="""\b
Examples:
  streamer batch videos/ -o depth/                          # the tree of videos/ mirrored in depth/
  streamer batch 'shots/**/*.mov' @more.txt -o depth/ --format metric16 --hfov 70
  streamer batch videos/ -o depth/ --ray                    # on the Ray cluster of this machine
  streamer batch videos/ -o depth/ --ray=head-node:6379     # on another Ray cluster
Run it again to continue: finished outputs are skipped; a table and depth/batch-report.json tell what happened."""
)
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for the outputs; the inputs' folder tree is mirrored in it.",
)
@click.option(
    "--format",
    type=click.Choice(OUTPUT_FORMATS),
    help="What each frame becomes (see `streamer transcode --help`).  [default: color]",
)
@click.option(
    "--container",
    type=click.Choice(CONTAINERS),
    help="Output files: a video container, or images (a folder of frames per input).  [default: mkv for metric16, images for exr/npz, else mp4]",
)
@render_options
@click.option("--codec", help="Encoder, as for transcode.  [default: by container]")
@crf_option
@click.option("--start", type=float, help="Start each video at this many seconds.")
@click.option("--end", type=float, help="Stop each video at this many seconds.")
@click.option("--audio/--no-audio", default=None, help="Copy the input's audio.  [default: on]")
@click.option("--overwrite", is_flag=True, default=None, help="Also replace existing files this batch did not make.")
@click.option(
    "--workers",
    type=int,
    default=2,
    show_default=True,
    help="Files in flight per model (one model per GPU, or one on the CPU): decoding and encoding overlap the model.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[ADDRESS]",
    help="Run on a Ray cluster: one model per GPU (or node), a task per file (pip install 'streamer[ray]'). "
    "Alone: the cluster `ray start` made here, else a new one; or --ray=HOST:6379 (put a bare --ray after the inputs).",
)
@model_options
@with_flags
def batch(cfg: Config, flags: dict) -> None:
    """Transcode many videos, resumably: files, folders, globs or @list.txt of paths.

    Each output is written as NAME.partial.EXT and renamed when complete, with its JSON sidecar,
    which also records the input (size, time, a hash of its ends) and a hash of the settings,
    device and precision: a rerun skips outputs that are complete and match, wherever the same
    file is reached from, so an interrupted batch continues where it stopped. A failing input
    is reported and the others go on; a damaged one is reported alike on every run.
    """
    from streamer.batch import run_batch  # torch: loaded for a run, not for --help

    backend = "local" if flags["ray_address"] is None else "ray"
    bar = ProgressBar()
    try:
        report = run_batch(
            cfg,
            list(flags["inputs"]),
            flags["output"],
            flags["container"],
            flags["workers"],
            backend,
            flags["ray_address"] or None,
            bar.update,
            echo,
        )
    finally:
        bar.close()
    for line in table(report):
        echo(line)
    echo(f"wrote {report.outdir.rstrip('/')}/{REPORT_NAME}")
    counts = report.counts()
    if report.interrupted:
        raise Interrupted(f"{counts['done']} files done; run the same command again to continue")
    if counts["failed"]:
        raise StreamerError(f"{counts['failed']} of {len(report.outcomes)} inputs failed", hint="see the table above")


class ProgressBar:
    """One bar for the whole batch: frames of all files, with files done and failed beside."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def update(self, p: Progress) -> None:
        if self.bar is None:
            self.bar = tqdm(total=p.frames_total or None, unit="frame", file=sys.stderr, disable=None, smoothing=0.1)
        if p.frames_total and self.bar.total != p.frames_total:
            self.bar.total = p.frames_total
        self.bar.update(p.frames_done - self.bar.n)
        failed = f", {p.failed} failed" if p.failed else ""
        self.bar.set_postfix_str(f"files {p.files_finished}/{p.files_total}{failed}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def table(report: BatchReport) -> list[str]:
    """status, frames, fps, input, and what became of it (the reason, for a failure)."""
    rows = [("status", "frames", "fps", "input", "")]
    for o in report.outcomes:
        note = o.reason if o.status != DONE else f"-> {o.output}"
        fps = f"{o.fps:.1f}" if o.fps else "-"
        rows.append((o.status, str(o.frames), fps, o.relative, note))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        f"{s:<{widths[0]}}  {f:>{widths[1]}}  {r:>{widths[2]}}  {i:<{widths[3]}}  {n}".rstrip()
        for s, f, r, i, n in rows
    ]
    counts = report.counts()
    summary = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])
    lines.append(f"{summary}; {report.frames} frames in {report.seconds:.1f} s")
    return lines
