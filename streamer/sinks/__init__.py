"""Where results go. Sinks import no torch; each owns and always finalises its output."""

from streamer.sinks.base import Sink
from streamer.sinks.images import ImageSequenceSink
from streamer.sinks.ply import PlySink
from streamer.sinks.preview import PreviewSink
from streamer.sinks.video import VIDEO_SUFFIXES, VideoSink
from streamer.sinks.virtualcam import VirtualCameraSink

__all__ = ["VIDEO_SUFFIXES", "ImageSequenceSink", "PlySink", "PreviewSink", "Sink", "VideoSink", "VirtualCameraSink"]
