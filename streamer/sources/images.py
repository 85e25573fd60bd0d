"""Still images: files, folders and glob patterns, in a stable (sorted) order."""

from __future__ import annotations

import cv2

import glob
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from streamer.errors import SourceError
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


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise SourceError(f"{path} is not a readable image", hint="use PNG, JPEG, BMP, TIFF or WebP")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class ImageSource(Source):
    """Each image is one frame (pts = its index); frames may differ in size."""

    def __init__(self, inputs: list[str]) -> None:
        self.paths = expand_images(inputs)
        first = read_rgb(self.paths[0])
        self.info = StreamInfo(first.shape[1], first.shape[0], Fraction(1), None, False, len(self.paths), "images")

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            if stop.is_set():
                return
            yield Frame(read_rgb(path), index, index, Fraction(1), time.monotonic(), path.stem)
