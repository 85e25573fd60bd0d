"""OpenVINO: the exported graph compiled for an Intel CPU, in bf16 where the CPU computes it natively.

OpenVINO is the fastest CPU runtime measured here (vit-small 224x392 on a 2-core Xeon: 300 ms in
fp32 against torch's 463, 72 ms in bf16). On CPUs with AMX or AVX-512 BF16 OpenVINO runs bf16
unless told otherwise, so the precision hint is always set explicitly: fp32 asked for is fp32.
`auto` takes bf16 where the CPU reports it (within 1% of fp32 at p99.9, tests/test_runtimes.py),
else fp32. Compiled blobs are cached beside the graph (OpenVINO's CACHE_DIR) per version.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path

import numpy as np
import torch

from streamer.errors import ConfigError
from streamer.runtimes.export import OUTPUTS, runtime_cache_dir

log = logging.getLogger(__name__)

HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def cpu_has_bf16(core) -> bool:
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_devices() -> list[str]:
    """The devices OpenVINO finds (CPU, GPU, NPU), with their names, for `doctor`."""
    import openvino as ov

    core = ov.Core()
    return [f"{d}: {core.get_property(d, 'FULL_DEVICE_NAME')}" for d in core.available_devices]


class OpenVINORuntime:
    """The graph compiled with static shapes (vit-small 224x392 bf16 on the 2-core CPU: 93-97 ms a
    frame static, 102 ms with the dynamic batch axis), for two batch sizes at most, each compiled
    model holding its own weights: 1 at load, and the first larger batch that comes (a file's
    engine batch size). Any other batch runs in pieces of those sizes: nothing compiles mid-run
    after the first batch.

    In lanes (`use_lanes`, the engine's forward passes side by side) the graph is compiled for
    throughput instead: one OpenVINO stream per lane on its share of the cores, and an infer
    request per lane (88 ms a frame against 96-107 for one pass on both cores)."""

    name = "openvino"
    input_dtype = torch.float32

    def __init__(
        self, onnx_path: Path, device: torch.device, precision: str = "auto", threads: int = 0, lanes: int = 1
    ) -> None:
        import openvino as ov

        if device.type != "cpu":
            raise ConfigError(f"the openvino runtime runs on the CPU here, not on {device}", hint="add --device cpu")
        self.core = ov.Core()
        if precision == "auto":
            precision = "bf16" if cpu_has_bf16(self.core) else "fp32"
        cache = runtime_cache_dir(onnx_path, "openvino", ov.__version__.split("-")[0], precision)
        self.config = {
            "INFERENCE_PRECISION_HINT": HINTS[precision],
            "PERFORMANCE_HINT": "LATENCY",
            "CACHE_DIR": str(cache),
        }
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        self.device = device
        self.graph, self.cache = onnx_path, cache
        self.lanes = lanes  # set at load for a run known to use lanes: one compile, not two
        self._compiling = threading.Lock()
        # lanes -> batch size -> (compiled model, its idle infer requests: one per lane)
        self._compiled: dict[int, dict[int, tuple[object, queue.SimpleQueue]]] = {}
        compiled, _ = self._for_batch(1)
        effective = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.precision = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(effective, precision)
        if self.precision != precision:
            log.warning("OpenVINO runs in %s on this CPU (%s asked for)", self.precision, precision)

    def use_lanes(self, lanes: int, threads: int = 0) -> None:
        """Run the next calls `lanes` at a time (from that many threads); compiles batch 1 for them
        now, so a short last batch has its size ready. OpenVINO splits its cores by streams. The
        models compiled for another setting are let go (each holds its weights; the cache makes
        compiling them again quick)."""
        self.lanes = lanes
        self._compiled = {lanes: self._compiled.get(lanes, {})}
        self._for_batch(1)

    def _for_batch(self, batch: int) -> tuple[object, queue.SimpleQueue]:
        with self._compiling:  # lanes may meet a new size together: it compiles once
            return self._compiled_for(batch)

    def _compiled_for(self, batch: int) -> tuple[object, queue.SimpleQueue]:
        """The model compiled for `batch` in this setting of lanes, compiled now if not yet (under the lock)."""
        sizes = self._compiled.setdefault(self.lanes, {})
        if batch not in sizes:
            sizes[batch] = self._compile(batch)
        return sizes[batch]

    def _pieces(self, batch: int) -> list[tuple[int, tuple[object, queue.SimpleQueue]]]:
        """The compiled sizes a batch runs in, each with its model: its own (compiled now while only
        batch 1 is there), else pieces of the compiled sizes, largest first. Decided under the lock,
        so two lanes that meet new sizes at once never compile a third."""
        with self._compiling:
            sizes = self._compiled.setdefault(self.lanes, {})
            if batch in sizes or len(sizes) <= 1:
                return [(batch, self._compiled_for(batch))]
            pieces, left = [], batch
            for size in sorted(sizes, reverse=True):
                pieces += [(size, sizes[size])] * (left // size)
                left %= size
            return pieces

    def _compile(self, batch: int) -> tuple[object, queue.SimpleQueue]:
        """The graph compiled for `batch` frames and this setting of lanes, with a request per lane."""
        config = dict(self.config)
        if self.lanes > 1:
            config.update(PERFORMANCE_HINT="THROUGHPUT", NUM_STREAMS=self.lanes)
        compiled = self.core.compile_model(str(self._static_graph(batch)), "CPU", config)
        idle: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.lanes):
            idle.put(compiled.create_infer_request())
        # A tensor's first `.data` in a process builds the binding's dtype table, which lets the GIL
        # go while it holds a C++ static's guard: two lanes making their first call together
        # deadlocked there (seen once, in a transcode's first batches). Built here, on one thread.
        request = compiled.create_infer_request()
        _ = request.get_input_tensor(0).data, request.get_output_tensor(0).data
        return compiled, idle

    def _static_graph(self, batch: int) -> Path:
        """The graph reshaped to `batch` frames, saved once as OpenVINO IR beside the compiled blobs:
        compiled from a file, a cached blob loads without reading and reshaping the ONNX graph first
        (vit-small on the 2-core CPU: 0.5 s a start instead of 0.8). The .bin is moved into place
        before the .xml, so an .xml there always has its whole .bin."""
        import openvino as ov

        xml = self.cache / f"static-batch{batch}.xml"
        if not xml.exists():
            model = self.core.read_model(str(self.graph))
            shape = model.input(0).get_partial_shape()
            model.reshape([batch, *(shape[i].get_length() for i in range(1, 4))])
            tmp = xml.with_name(f".{xml.stem}.{os.getpid()}.{threading.get_ident()}.xml")
            ov.save_model(model, str(tmp), compress_to_fp16=False)  # the weights as exported (fp32)
            tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))
            tmp.replace(xml)
        return xml

    @staticmethod
    def _infer(model: tuple[object, queue.SimpleQueue], image: np.ndarray) -> list[np.ndarray]:
        compiled, idle = model
        request = idle.get()  # a lane's own request (never more callers than lanes)
        try:
            result = request.infer({0: image})  # copies the outputs: the request's buffers are reused
        finally:
            idle.put(request)
        return [result[compiled.output(i)] for i in range(len(OUTPUTS))]

    def __call__(self, x: torch.Tensor, all_iterations: bool = False) -> dict[str, list[torch.Tensor]]:
        image = np.ascontiguousarray(x.detach().float().cpu().numpy())
        pieces, start = [], 0
        for size, model in self._pieces(len(image)):
            pieces.append(self._infer(model, image[start : start + size]))
            start += size
        outputs = pieces[0] if len(pieces) == 1 else [np.concatenate(parts) for parts in zip(*pieces, strict=True)]
        return {name: [torch.from_numpy(out)] for name, out in zip(OUTPUTS, outputs, strict=True)}
