"""What `-o` names, and the honest ends of a run whose input gave less than asked.

`is_folder_output` reads the kind of output a path names (a video file or a folder), refusing
a typo rather than quietly writing a folder. After a run, `check_range` turns a trim that kept no
frame into an error, and `check_damage` reports a damaged input once its frames were written;
`damage_error` is that report, also made by a batch rerun from a sidecar's record. Kept apart
from api.py, which assembles runs; `streamer.api` still offers these names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from streamer.config import Config
from streamer.errors import SinkError, SourceError
from streamer.sinks import VIDEO_SUFFIXES
from streamer.sources.base import Source
from streamer.sources.images import IMAGE_SUFFIXES


class Job(Protocol):
    """What these checks read of a run (api.Job), named here without importing api, which imports this."""

    config: Config
    source: Source
    length: float | None


SINGLE_FILE_SUFFIXES = IMAGE_SUFFIXES | {".exr", ".npz", ".ply"}  # one picture or cloud, never a sequence


def is_folder_output(path: str | Path) -> bool:
    """Whether `-o` names a folder (an image sequence, point clouds) rather than a video file.

    A folder ends in a slash or already is one; a name without a suffix is a new folder. A video
    ends in a container's suffix. Anything else is refused, so a typo (`out.mp5`) is not quietly
    taken for a folder: a picture's suffix (`out.png`), or one no output has (`out.xyz`).
    """
    text = os.fspath(path)
    if text.endswith(("/", os.sep)) or Path(text).is_dir():
        return True
    suffix = Path(text).suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return False
    if suffix in SINGLE_FILE_SUFFIXES:
        raise SinkError(
            f"{text} names a single file",
            hint=f"image sequences and point clouds are written into a directory: -o {Path(text).with_suffix('')}/",
        )
    if suffix:
        raise SinkError(
            f"-o {text}: {suffix} is not a video container",
            hint=f"a video ends in {' '.join(sorted(VIDEO_SUFFIXES))}; a folder of images ends in / ({text}/)",
        )
    return True


def check_range(job: Job, result: dict) -> None:
    """A trim that kept no frame is an error, not an empty success: it says whether the start lies
    past the end (with the clip's length), the input is damaged where the range lies, or the range
    holds no frame.

    An empty range (start >= end) is refused with the config; a range past the end is judged
    once the file was read, since the length a header declares is not always the truth."""
    src = job.config.source
    if result["frames_out"] or result.get("stopped_by_person") or (src.start is None and src.end is None):
        return
    length = job.length
    clip = job.source.info.name if length is None else f"{job.source.info.name} ({length:.2f} s long)"
    if src.start is not None and length is not None and src.start >= length:
        raise SourceError(f"--start {src.start:g} s is past the end of {clip}", hint=f"start before {length:.2f} s")
    span = f"between {src.start or 0:g} s and {src.end:g} s" if src.end is not None else f"after {src.start:g} s"
    damage = getattr(job.source, "damage", None)
    if damage:  # the range lies in the part of the file that is lost: the damage is the cause
        raise SourceError(
            f"input {job.source.info.name} is damaged: {damage}; no frame that could be decoded lies {span}",
            hint="use a complete copy of the file, or a range within what decodes",
        )
    raise SourceError(f"no frames {span} of {clip}", hint="widen the range given by --start and --end")


def check_damage(job: Job, result: dict) -> None:
    """A damaged input is an error once its frames were written (see `damage_error`)."""
    damage = getattr(job.source, "damage", None)
    if damage:
        raise damage_error(job.source.info.name, damage, result["frames_out"])


def damage_error(name: str, damage: str, frames: int) -> SourceError:
    """How a damaged input is reported: by every run, and by a batch rerun from the sidecar's record."""
    return SourceError(
        f"input {name} is damaged: {damage}",
        hint=f"the output is complete for the {frames} frames that could be decoded",
    )
