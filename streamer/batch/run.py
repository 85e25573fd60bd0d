"""A batch from start to end: find the inputs, skip what is complete, run the rest, write the report.

    from streamer import load_config
    from streamer.batch import run_batch
    cfg = load_config(None, {"output": {"format": "metric16"}, "model": {"hfov": 70}})
    report = run_batch(cfg, ["videos/"], "depth/")              # this machine
    report = run_batch(cfg, ["videos/"], "depth/", backend="ray")  # a Ray cluster (streamer[ray])

Planning happens here, before any model is loaded: a rerun with nothing left to do loads nothing,
and inputs that cannot be opened are reported at once without taking a worker's turn.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from streamer.batch.inputs import (
    VIDEO_INPUT_SUFFIXES,
    check_container,
    default_container,
    find_inputs,
    output_for,
    relative_name,
)
from streamer.batch.local import run_local
from streamer.batch.report import FAILED, REPORT_NAME, BatchReport, Item, Outcome, Progress
from streamer.batch.resume import (
    COMPLETE,
    STALE,
    CompleteOutputs,
    complete_outcome,
    input_record,
    output_state,
    settings_fingerprint,
)
from streamer.config import Config
from streamer.errors import ConfigError, SinkError, StreamerError
from streamer.sinks.base import check_writable
from streamer.sources import VideoSource


def run_batch(
    cfg: Config,
    inputs: list[str],
    outdir: str | Path,
    container: str | None = None,
    workers: int = 2,
    backend: str = "local",
    ray_address: str | None = None,
    progress: Callable[[Progress], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> BatchReport:
    """Transcode every input under `outdir` (the input tree mirrored), `workers` files in flight
    per model, on this machine or (`backend="ray"`) a Ray cluster at `ray_address`.

    Returns the report, also written to OUTDIR/batch-report.json. A Ctrl-C ends the files in
    flight as partial outputs and returns a report with `interrupted` set."""
    started = time.monotonic()
    outdir = Path(outdir)
    container = container or default_container(cfg.output.format)
    check_container(cfg.output.format, container)
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
    if backend not in ("local", "ray"):
        raise ConfigError(f"unknown batch backend {backend!r}", hint="local or ray")
    check_outdir(outdir)
    items, outcomes, settings = plan(cfg, inputs, outdir, container)
    report = BatchReport(str(outdir), backend, settings, workers, outcomes)
    if items:
        if backend == "ray":
            from streamer.batch.cluster import run_on_ray  # Ray is imported only when asked for

            done, report.interrupted = run_on_ray(items, cfg, workers, ray_address, progress, announce)
        else:
            done, report.interrupted = run_local(items, cfg, workers, progress, announce)
        report.outcomes += done
    report.outcomes.sort(key=lambda o: o.relative)
    report.seconds = time.monotonic() - started
    report.write(outdir / REPORT_NAME)
    return report


def check_outdir(outdir: Path) -> None:
    """The output folder, or the folder it will be made in, must be a folder this process may write
    to: checked as every command checks its output, before any input is read."""
    existing = outdir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    check_writable(existing)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SinkError(f"cannot create {outdir}: {exc.strerror}", hint="choose a directory you can write to") from exc
    check_writable(outdir)


def plan(cfg: Config, inputs: list[str], outdir: Path, container: str) -> tuple[list[Item], list[Outcome], str]:
    """-> the items to run, the outcomes known already (skipped, failed), the settings hash."""
    found = find_inputs(inputs, outdir)
    if not found.files and not found.missing:
        raise ConfigError(
            f"no video files found in {' '.join(inputs)}",
            hint=f"give video files ({' '.join(sorted(VIDEO_INPUT_SUFFIXES))}), folders, globs or @list.txt",
        )
    settings = settings_fingerprint(cfg, container)
    outcomes = [Outcome(arg, arg, "", FAILED, f"{arg} names no file; check the path") for arg in found.missing]
    items: list[Item] = []
    owners: dict[Path, str] = {}
    made = CompleteOutputs(outdir)
    for path in found.files:
        relative = relative_name(path, found.root)
        output = output_for(relative, outdir, container)
        if output in owners:
            reason = f"its output {output} is also made from {owners[output]}; rename one of them"
            outcomes.append(Outcome(relative.as_posix(), str(path), str(output), FAILED, reason))
            continue
        owners[output] = relative.as_posix()
        item, outcome = plan_one(path, relative, output, settings, made)
        if item is not None:
            items.append(item)
        if outcome is not None:
            outcomes.append(outcome)
    return items, outcomes, settings


def plan_one(
    path: Path, relative: Path, output: Path, settings: str, made: CompleteOutputs
) -> tuple[Item | None, Outcome | None]:
    """Skip a complete output (where this root puts it, or where another root put it); report an
    input that cannot be opened; else an item to run."""
    try:
        item = Item(str(path), relative.as_posix(), str(output), input_record(path, relative, settings))
    except OSError as exc:
        return None, Outcome(relative.as_posix(), str(path), str(output), FAILED, f"cannot read {path}: {exc}")
    state = output_state(output, item.record)
    if state == COMPLETE:
        return None, complete_outcome(item, output)
    elsewhere = made.find(item.record)
    if elsewhere is not None:
        return None, complete_outcome(item, elsewhere)
    try:
        frames = probe(path)
    except StreamerError as exc:
        return None, Outcome.of(item, FAILED, exc.one_line())
    return replace(item, replace=state == STALE, frames=frames), None


def probe(path: Path) -> int | None:
    """Open the input as transcode would (a broken file fails here), and count its frames if it says."""
    source = VideoSource(str(path), live=False)
    try:
        return source.info.frame_count
    finally:
        source.close()
