"""streamer: live video to metric depth with Metric3D v2, in real time.

Python API (see README): `run(config)` for streams (or `prepare` then `execute`),
`DepthEstimator` for single images; `open_source`, `load_stage`, `run_pipeline` and the sinks
in `streamer.sinks` to wire a pipeline by hand.
"""

# OpenCV must be loaded before PyAV: both wheels bundle libxcb, and when PyAV's copy is loaded
# first, OpenCV's Qt window hangs in cv2.namedWindow (measured here with opencv-python 5.0 + av 18).
import cv2  # noqa: F401

__version__ = "0.1.0"

from streamer.api import execute, load_model, load_stage, prepare, run, run_pipeline
from streamer.config import Config, load_config
from streamer.detector import Metric3DDetector
from streamer.errors import StreamerError
from streamer.estimator import DepthEstimator
from streamer.sources import open_source

__all__ = [
    "Config",
    "DepthEstimator",
    "Metric3DDetector",
    "StreamerError",
    "__version__",
    "load_config",
    "load_model",
    "load_stage",
    "open_source",
    "prepare",
    "execute",
    "run",
    "run_pipeline",
]
