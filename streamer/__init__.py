"""streamer: live video to metric depth with Metric3D v2, in real time.

Python API (see README): `run(config)` for streams (or `prepare` then `execute`),
`DepthEstimator` for single images; `open_source`, `load_stage`, `run_pipeline` and the sinks
in `streamer.sinks` to wire a pipeline by hand.

The names below load on first use (lazy_loader, SPEC 1): `import streamer` and `streamer --help`
stay light (no torch, OpenCV, PyAV or matplotlib), and the API is imported by the first call.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys

import lazy_loader

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "api": ["execute", "load_model", "load_stage", "prepare", "run", "run_pipeline"],
        "config": ["Config", "load_config"],
        "detector": ["Metric3DDetector"],
        "errors": ["StreamerError"],
        "estimator": ["DepthEstimator"],
        "sources": ["open_source"],
    },
)
__all__ += ["__version__"]


class OpenCVBeforePyAV(importlib.abc.MetaPathFinder):
    """Loads OpenCV just before PyAV is first imported, wherever that import is.

    Both wheels bundle libxcb, and when PyAV's copy is loaded first, OpenCV's Qt window hangs in
    cv2.namedWindow (measured with opencv-python 5.0 + av 18). Importing cv2 eagerly here kept the
    order but cost every `streamer --help` ~90 ms and the memory of OpenCV; this hook keeps the
    order for every module (sources, sinks, bench, a user's script) at the cost of nothing until
    PyAV is imported. It only imports cv2, then lets the normal finders find av.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "av" and "cv2" not in sys.modules:
            importlib.import_module("cv2")
        return None


if not any(isinstance(finder, OpenCVBeforePyAV) for finder in sys.meta_path):
    sys.meta_path.insert(0, OpenCVBeforePyAV())
