"""Still images: files, folders and glob patterns, in a stable (sorted) order.

Each image is read upright (its EXIF orientation applied, as photo viewers show it) and carries
its own focal length from its EXIF when it has one: a folder may hold photos from several cameras.
"""

from __future__ import annotations

import glob
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from streamer.errors import SourceError
from streamer.focal import Focal, exif_upright, focal_from_exif
from streamer.sources.base import Source
from streamer.types import Frame, StreamInfo

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def is_image_path(uri: str) -> bool:
    return Path(uri).suffix.lower() in IMAGE_SUFFIXES or any(c in uri for c in "*?[")


def expand_images(inputs: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if any(c in item for c in "*?["):
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
        elif not p.exists():
            raise SourceError(f"input {p} does not exist", hint="check the path")
        else:
            paths.append(p)
    return paths


def read_image(path: Path) -> tuple[np.ndarray, Focal | None]:
    """The upright RGB uint8 picture and the focal length its EXIF gives for that upright size."""
    image = exif_upright(path)
    return image, focal_from_exif(path, image.shape[1], image.shape[0])


class ImageSource(Source):
    """Each image is one frame (pts = its index); frames may differ in size."""

    def __init__(self, inputs: list[str]) -> None:
        self.paths = expand_images(inputs)
        first, focal = read_image(self.paths[0])
        h, w = first.shape[:2]
        self.info = StreamInfo(w, h, Fraction(1), None, False, len(self.paths), "images", focal=focal)

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            if stop.is_set():
                return
            image, focal = read_image(path)
            yield Frame(image, index, index, Fraction(1), time.monotonic(), path.stem, focal=focal)
