"""Where frames come from. `open_source` picks the kind from the URI; sources import no torch."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from streamer.sources.base import Source
from streamer.sources.images import SEQUENCE_FPS, ImageSource, is_image_path
from streamer.sources.testsrc import PatternSource
from streamer.sources.video import VideoSource, is_network
from streamer.sources.webcam import WebcamSource

if TYPE_CHECKING:
    from streamer.config import SourceConfig


log = logging.getLogger(__name__)


def is_camera(uri: str) -> bool:
    return uri.isdigit() or uri.startswith("/dev/video")


def open_source(cfg: SourceConfig, threads: int = 0) -> Source:
    """The source a URI names; `threads` sizes a video decoder (0: FFmpeg's choice)."""
    uri = cfg.uri
    if uri.startswith("testsrc"):
        return PatternSource(uri, cfg.width, cfg.height, cfg.fps, cfg.frames, cfg.live)
    if is_camera(uri):
        return WebcamSource(uri, cfg.width, cfg.height, cfg.fps, cfg.frames)
    if not is_network(uri) and is_image_path(uri):
        source = ImageSource([uri], cfg.fps or SEQUENCE_FPS, cfg.start, cfg.end, cfg.frames)
        if cfg.fps is None and source.info.frame_count > 1:
            log.warning("image sequence %s has no frame rate: read at %d fps; pass --fps to set it", uri, SEQUENCE_FPS)
        return source
    if cfg.fps is not None:  # a camera's or an image sequence's rate: a video has its own timestamps
        log.warning("--fps %g is ignored for %s: a video keeps its own frame times", cfg.fps, uri)
    return VideoSource(uri, cfg.start, cfg.end, cfg.frames, cfg.live, threads)


__all__ = ["ImageSource", "Source", "PatternSource", "VideoSource", "WebcamSource", "open_source"]
