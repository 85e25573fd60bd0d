"""Still images and image sequences: files, folders, glob patterns and `frame_%04d.png` patterns.

Each image is read upright (its EXIF orientation applied, as photo viewers show it) and carries
its own focal length from its EXIF when it has one: a folder may hold photos from several cameras.
Files come in a stable order: sorted names for folders and globs, frame numbers for printf patterns.

Each image gives one output named after it. Inputs that share a name (`img.tiff img.webp`, or a
folder holding both) keep their extension in it (`img_tiff`, `img_webp`), so no result replaces
another; names that still clash (`a/img.jpg b/img.jpg`) are refused before anything runs.

Images carry no frame rate: a sequence plays at `fps` (ffmpeg's image2 default of 25 unless given;
`open_source` says so in a warning). Animations (GIF, APNG, animated WebP) are refused rather than
read as their first frame: `streamer transcode` reads a GIF's every frame with its timing.
"""

from __future__ import annotations

import glob
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from streamer.errors import SourceError
from streamer.focal import Focal, exif_upright, focal_from_exif
from streamer.sources.base import Source, frame_rate
from streamer.types import Frame, StreamInfo

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
SEQUENCE_FPS = 25  # what ffmpeg's image2 demuxer assumes for a sequence without -framerate
PRINTF_NUMBER = re.compile(r"%(0?)(\d*)d")  # %d, %4d, %04d: the frame number in a sequence pattern
RESERVED_NAMES = ("metadata",)  # the sequence folder's own sidecar
ANIMATED_FORMATS = {"GIF", "PNG", "WEBP"}  # formats whose extra frames are an animation (MPO, TIFF: other views)


def is_image_path(uri: str) -> bool:
    """An image, a folder holding images, or a pattern (glob, `frame_%04d.png`). A file that exists is
    taken by its suffix, so a video named `clip [1].mp4` is not read as a glob; a folder without
    images is left to the video source, which says what to do with a folder of videos."""
    path = Path(uri)
    if path.is_dir():
        return any(m.suffix.lower() in IMAGE_SUFFIXES for m in path.iterdir())
    if path.exists():
        return path.suffix.lower() in IMAGE_SUFFIXES
    return path.suffix.lower() in IMAGE_SUFFIXES or glob.has_magic(uri)


def is_printf_pattern(uri: str) -> bool:
    """`frame_%04d.png`: one printf number in the file name, as ffmpeg's image2 reads sequences."""
    return len(PRINTF_NUMBER.findall(os.path.basename(uri).replace("%%", ""))) == 1


def printf_matches(pattern: str) -> list[Path]:
    """The files a `%0Nd` pattern names, in frame-number order (`%04d`: 4 digits or more, `%d`: any)."""
    folder, name = os.path.split(pattern)
    regex, numbered = "", False
    for piece in re.split(r"(%%|%0?\d*d)", name):
        if piece == "%%":
            regex += "%"
        elif PRINTF_NUMBER.fullmatch(piece) and not numbered:
            zeros, digits = PRINTF_NUMBER.fullmatch(piece).groups()
            regex += rf"(\d{{{digits},}})" if zeros and digits else r" *(\d+)"
            numbered = True
        else:
            regex += re.escape(piece)
    compiled = re.compile(regex)
    root = Path(folder or ".")
    if not root.is_dir():
        return []
    numbered_files = [(int(m.group(1)), p) for p in root.iterdir() if (m := compiled.fullmatch(p.name))]
    return [p for _, p in sorted(numbered_files)]


def expand_images(inputs: list[str]) -> list[Path]:
    """Files, folders, globs and printf patterns -> image files, each once, in order."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if glob.has_magic(item) and not p.exists():
            found = sorted(Path(m) for m in glob.glob(item, recursive=True))
            found = [m for m in found if m.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise SourceError(f"no images match {item!r}", hint="check the pattern and quote it")
            paths += found
        elif p.is_dir():
            found = sorted(m for m in p.iterdir() if m.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise SourceError(f"folder {p} holds no images", hint=f"supported: {' '.join(sorted(IMAGE_SUFFIXES))}")
            paths += found
        elif not p.exists() and is_printf_pattern(item):
            found = printf_matches(item)
            if not found:
                raise SourceError(f"no images match {item!r}", hint="%04d stands for a 4-digit frame number: check it")
            paths += found
        elif not p.exists():
            raise SourceError(f"input {p} does not exist", hint="check the path")
        else:
            paths.append(p)
    seen: set[str] = set()
    unique: list[Path] = []
    for path in paths:  # a file named twice (by a glob and by name) is read once
        key = os.path.normcase(str(path.resolve()))
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def output_names(paths: list[Path]) -> list[str]:
    """Each image's output name: its stem, or stem_ext where stems clash; a clash left is an error.

    Names are compared case-insensitively: on Windows and macOS `IMG.png` and `img.png` are one file."""
    stems = Counter(p.stem.casefold() for p in paths)
    stems.update(RESERVED_NAMES)  # `metadata.jpg` would write over the folder's metadata.json
    names = [p.stem if stems[p.stem.casefold()] == 1 else f"{p.stem}_{p.suffix[1:].lower()}" for p in paths]
    owners: dict[str, Path] = {}
    for name, path in zip(names, paths, strict=True):
        other = owners.setdefault(name.casefold(), path)
        if other is not path:
            raise SourceError(
                f"inputs {other} and {path} would both write {name}.*",
                hint="rename one of them, or run them in separate calls with different -o",
            )
    return names


def check_still(path: Path) -> None:
    """Refuse an animation: reading its first frame alone would silently drop the rest."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            animated = image.format in ANIMATED_FORMATS and getattr(image, "is_animated", False)
            frames = getattr(image, "n_frames", 1)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return  # read_image says it is not readable, in its words
    if animated:
        hint = (
            f"for every frame use: streamer transcode {path} -o {path.stem}/"
            if path.suffix.lower() == ".gif"
            else "save its frames as separate images and pass those"
        )
        raise SourceError(f"{path} is an animation of {frames} frames and this reads still images", hint=hint)


def read_image(path: Path) -> tuple[np.ndarray, Focal | None]:
    """The upright RGB uint8 picture and the focal length its EXIF gives for that upright size."""
    image = exif_upright(path)
    return image, focal_from_exif(path, image.shape[1], image.shape[0])


class ImageSource(Source):
    """Each image is one frame; frames may differ in size.

    Without `fps` the images are stills (pts = index in a time base of 1 s, no rate); with it, a
    sequence at that rate (pts = index in a time base of 1 / fps). `start`, `end` (seconds) and
    `frames` trim it as they trim a video: frames are counted from 0, pts keep their place."""

    def __init__(
        self,
        inputs: list[str],
        fps: float | None = None,
        start: float | None = None,
        end: float | None = None,
        frames: int | None = None,
    ) -> None:
        self.paths = expand_images(inputs)
        self.names = output_names(self.paths)
        self.rate = frame_rate(fps)
        self.time_base = 1 / self.rate if self.rate else Fraction(1)
        self.kept = [
            i
            for i in range(len(self.paths))
            if (start is None or i * self.time_base >= start) and (end is None or i * self.time_base < end)
        ][:frames]
        for i in self.kept:
            check_still(self.paths[i])
        first, focal = read_image(self.paths[self.kept[0] if self.kept else 0])
        h, w = first.shape[:2]
        self.info = StreamInfo(w, h, self.time_base, self.rate, False, len(self.kept), "images", focal=focal)

    @property
    def duration(self) -> float:
        """Seconds the whole sequence lasts (each image one frame long), for a trim past its end."""
        return float(len(self.paths) * self.time_base)

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        for index, pts in enumerate(self.kept):
            if stop.is_set():
                return
            image, focal = read_image(self.paths[pts])
            yield Frame(image, index, pts, self.time_base, time.monotonic(), self.names[pts], focal=focal)
