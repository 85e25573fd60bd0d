"""Runtimes: the exported graph run by OpenVINO and ONNX Runtime gives torch's depth; cache, auto rule, fallback.

Small on purpose (vit-small at 112x196): one export for the module, compiles in seconds.
"""

from __future__ import annotations

import cv2  # noqa: F401  (before av)

import json
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from streamer import runtimes
from streamer.api import read_model
from streamer.cli.main import main
from streamer.errors import ConfigError, ModelError
from streamer.processors.metric3d import Metric3DProcessor
from streamer.runtimes import Request, open_runtime
from streamer.runtimes import export as export_mod
from streamer.sources.testsrc import pattern_image

from conftest import AUTO_ORDERS, DATA, write_video

SIZE = (112, 196)
CPU = torch.device("cpu")


# the floors' CI run has a torch too old to export (runtimes/export.py): the tests of exported graphs say so
needs_export = pytest.mark.skipif(
    export_mod.export_unsupported() is not None, reason=str(export_mod.export_unsupported())
)


@pytest.fixture(autouse=True)
def real_auto_order(monkeypatch):
    """This file tests the auto rule itself: the order the rest of the suite replaces with torch."""
    from streamer import runtimes

    for name, order in AUTO_ORDERS.items():
        monkeypatch.setattr(runtimes, name, order)


def p999_rel(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    rel = ((out - ref).abs() / ref.abs().clamp_min(1e-6)).flatten().numpy()
    return float(np.quantile(rel, 0.999)), float(rel.max())


@pytest.fixture(scope="module")
def loaded(checkpoint):
    model, path = read_model("vit-small", checkpoint)
    return model, path


@pytest.fixture(scope="module")
def inputs() -> list[torch.Tensor]:
    golden = cv2.cvtColor(cv2.imread(str(DATA / "golden_input.png")), cv2.COLOR_BGR2RGB)
    second = pattern_image(200, 150, 0.3)  # another size and aspect: another letterbox
    return [torch.from_numpy(golden)[None], torch.from_numpy(second)[None]]


@pytest.fixture(scope="module")
def torch_depths(loaded, inputs) -> list[torch.Tensor]:
    processor = Metric3DProcessor(loaded[0], SIZE)
    return [processor(x, 500.0, 500.0, wants={"depth"})["depth"] for x in inputs]


def make(loaded, runtime: str, precision: str = "fp32", **kw):
    model, path = loaded
    request = Request(runtime, CPU, precision, SIZE, "vit-small", path, threads=2, **kw)
    return open_runtime(request, model)


@needs_export
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_fp32_runtimes_give_torch_depth(loaded, inputs, torch_depths, runtime):
    rt, line = make(loaded, runtime)
    assert rt.name == runtime and rt.precision == "fp32" and runtime in line
    processor = Metric3DProcessor(rt, SIZE)
    for x, ref in zip(inputs, torch_depths, strict=True):
        out = processor(x, 500.0, 500.0)
        assert set(out) == {"depth", "confidence", "normal", "kappa"}
        p999, worst = p999_rel(out["depth"], ref)
        assert p999 <= 1e-4 and worst <= 5e-4, (p999, worst)


@needs_export
def test_openvino_bf16_is_within_one_percent(loaded, inputs, torch_depths):
    rt, _ = make(loaded, "openvino", "bf16")
    processor = Metric3DProcessor(rt, SIZE)
    for x, ref in zip(inputs, torch_depths, strict=True):
        p999, _ = p999_rel(processor(x, 500.0, 500.0)["depth"], ref)
        assert p999 <= 0.01, p999


@needs_export
def test_batches_run_through_the_one_graph(loaded, inputs):
    rt, _ = make(loaded, "onnxruntime")
    processor = Metric3DProcessor(rt, SIZE)
    pair = torch.cat([inputs[0], inputs[0]])
    both, one = processor(pair, 500.0, 500.0)["depth"], processor(inputs[0], 500.0, 500.0)["depth"]
    torch.testing.assert_close(both[1], one[0], rtol=1e-5, atol=1e-5)


@needs_export
def test_openvino_compiles_two_static_batch_sizes_at_most_and_runs_others_in_pieces(loaded, inputs):
    rt, _ = make(loaded, "openvino")
    processor = Metric3DProcessor(rt, SIZE)
    frame = inputs[0]
    one = processor(frame, 500.0, 500.0)["depth"]
    three = processor(torch.cat([frame] * 3), 500.0, 500.0)["depth"]  # the run's batch: compiled for 3
    two = processor(torch.cat([frame] * 2), 500.0, 500.0)["depth"]  # a file's last: one frame at a time
    four = processor(torch.cat([frame] * 4), 500.0, 500.0)["depth"]  # pieces of 3 and 1: no third compile
    assert sorted(rt._compiled[1]) == [1, 3]
    torch.testing.assert_close(three[2], one[0], rtol=1e-4, atol=1e-4)
    assert torch.equal(two[1], one[0]) and torch.equal(four[3], one[0])  # the same batch-1 graph
    assert torch.equal(four[2], three[2])


@needs_export
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_lanes_run_side_by_side_and_give_each_frame_its_own_depth(loaded, inputs, torch_depths, runtime):
    """Two threads call a runtime in lanes at once (as the engine's lanes do), each with its own
    frames: every result is that frame's depth (no shared buffer mixes them up), within fp32 parity."""
    rt, _ = make(loaded, runtime)
    rt.use_lanes(2, 1)
    processor = Metric3DProcessor(rt, SIZE)
    jobs = [0, 1, 0, 1, 1, 0, 0, 1] * 2  # which input each call gets

    def depth(i: int) -> torch.Tensor:
        with torch.inference_mode():
            return processor(inputs[i], 500.0, 500.0, wants={"depth"})["depth"]

    with ThreadPoolExecutor(2) as lanes:
        results = list(lanes.map(depth, jobs))
    for i, out in zip(jobs, results, strict=True):
        p999, worst = p999_rel(out, torch_depths[i])
        assert p999 <= 1e-4 and worst <= 5e-4, (i, p999, worst)
    if runtime == "openvino":  # one stream per lane, compiled for throughput; the latency graph let go
        assert set(rt._compiled) == {2} and rt._compiled[2][1][0].get_property("NUM_STREAMS") == 2
    else:  # a session per lane, its pool one lane's share
        sessions = [rt._idle.get() for _ in range(2)]
        assert sessions[0] is not sessions[1] and rt._idle.empty()
        assert {s.get_session_options().intra_op_num_threads for s in sessions} == {1}
        for session in sessions:
            rt._idle.put(session)
    rt.use_lanes(1)  # back as it loaded: one pass at a time on every core
    assert rt.lanes == 1 and set(rt._compiled) == {1} if runtime == "openvino" else rt._idle.qsize() == 1
    assert p999_rel(depth(1), torch_depths[1])[0] <= 1e-4


@needs_export
def test_openvino_saves_each_static_graph_once_and_compiles_from_it(loaded):
    rt, _ = make(loaded, "openvino")
    xml = rt.cache / "static-batch1.xml"
    assert xml.exists() and xml.with_suffix(".bin").stat().st_size > 1e6
    written = xml.stat().st_mtime_ns
    again, _ = make(loaded, "openvino")  # another start: the saved graph, not the ONNX read again
    assert xml.stat().st_mtime_ns == written and not list(rt.cache.glob(".static-*"))
    assert again.precision == rt.precision


@needs_export
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_a_file_run_in_lanes_builds_its_runtime_for_them_at_load(loaded, tmp_path, monkeypatch, runtime):
    """A file known to run in lanes gets them at load: OpenVINO compiles the throughput graph only
    (one compile at start, not two), ONNX Runtime opens a session per lane (and no other)."""
    from streamer import api
    from streamer.config import load_config
    from streamer.runtimes.onnxruntime import OnnxRuntime
    from streamer.runtimes.openvino import OpenVINORuntime

    built = []
    cls, method = (OpenVINORuntime, "_compile") if runtime == "openvino" else (OnnxRuntime, "open_session")
    original = getattr(cls, method)
    monkeypatch.setattr(cls, method, lambda self, *a: (built.append(self.lanes), original(self, *a))[1])

    model = {"checkpoint": str(loaded[1]), "input_size": list(SIZE), "device": "cpu", "runtime": runtime}
    overrides = {"model": model, "engine": {"lanes": 2}, "source": {"uri": str(write_video(tmp_path / "in.mp4"))}}
    cfg = load_config(None, {**overrides, "output": {"path": str(tmp_path / "out.mp4")}})
    job = api.prepare(cfg)
    job.source.close()
    rt = job.stage.processor.runtime
    assert job.stage.lanes == 2 and rt.lanes == 2
    if runtime == "openvino":
        assert set(rt._compiled) == {2} and built == [2]  # batch 1 for two lanes, compiled once
    else:
        assert rt._idle.qsize() == 2 and built == [0, 0]  # one session per lane, no other


@needs_export
def test_the_exported_graph_is_reused_and_keyed(loaded, monkeypatch):
    model, path = loaded
    first = export_mod.exported_onnx(model, "vit-small", SIZE, path)
    assert first.exists() and first.parent.parent == path.parent / "streamer-runtimes"

    def no_export(*args):
        raise AssertionError("exported again")

    monkeypatch.setattr(export_mod, "export_onnx", no_export)
    assert export_mod.exported_onnx(model, "vit-small", SIZE, path) == first
    with pytest.raises(AssertionError):  # another input size is another graph (one no other test exports)
        export_mod.exported_onnx(model, "vit-small", (84, 168), path)
    key = export_mod.graph_key("ab" * 32, "vit-small", SIZE)
    assert key != export_mod.graph_key("cd" * 32, "vit-small", SIZE)
    assert "112x196" in key and "fp32" in key and torch.__version__.split("+")[0] in key


def test_auto_follows_the_rule(monkeypatch):
    cpu = Request("auto", CPU, "auto", SIZE, "vit-small")
    monkeypatch.setattr(runtimes, "installed", lambda name: name in ("torch", "onnxruntime"))
    assert runtimes.pick(cpu)[0] == "onnxruntime"
    monkeypatch.setattr(runtimes, "installed", lambda name: True)
    assert runtimes.pick(cpu)[0] == "openvino"
    assert runtimes.pick(Request("auto", torch.device("cuda"), "auto", SIZE, "vit-small"))[0] == "tensorrt"
    assert runtimes.pick(Request("auto", CPU, "auto", SIZE, "vit-small", all_iterations=True))[0] == "torch"
    monkeypatch.setattr(runtimes, "installed", lambda name: name == "torch")
    assert runtimes.pick(cpu)[0] == "torch"


@pytest.mark.parametrize("error", [RuntimeError, ModelError], ids=["plugin", "export"])
def test_a_runtime_that_fails_to_load_falls_back_to_torch_with_one_warning(loaded, monkeypatch, caplog, error):
    real_build = runtimes.build

    def broken(name, request, model):
        if name == "openvino":
            raise error("plugin could not be loaded\nsecond line")
        return real_build(name, request, model)

    monkeypatch.setattr(runtimes, "build", broken)
    monkeypatch.setattr(runtimes, "installed", lambda name: True)
    with caplog.at_level(logging.WARNING):
        rt, line = make(loaded, "auto")
    assert rt.name == "torch" and "openvino failed to load" in line
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "plugin could not be loaded" in warnings[0].getMessage()


def test_a_missing_or_unfit_runtime_is_one_clear_error(loaded, monkeypatch):
    with pytest.raises(ConfigError, match="ComfyUI mode"):
        make(loaded, "openvino", all_iterations=True)
    with pytest.raises(ConfigError, match="does not run in bf16"):
        make(loaded, "onnxruntime", "bf16")
    monkeypatch.setattr(runtimes, "installed", lambda name: name == "torch")
    with pytest.raises(ConfigError, match=r"not installed; pip install 'streamer\[openvino\]'"):
        make(loaded, "openvino")


@needs_export
def test_transcode_records_runtime_and_precision(tmp_path, checkpoint, capsys):
    video = write_video(tmp_path / "in.mp4", frames=3, size=(96, 64))
    out = tmp_path / "out.mkv"
    args = ["transcode", str(video), "-o", str(out), "--checkpoint", str(checkpoint), "--input-size", "112x196"]
    code = main([*args, "--runtime", "onnxruntime", "--format", "metric16"])
    assert code == 0, capsys.readouterr().err
    assert "runtime onnxruntime (fp32) on cpu" in capsys.readouterr().err
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["runtime"] == "onnxruntime" and sidecar["precision"] == "fp32"
    assert sidecar["frames"] == 3


@needs_export
def test_export_command_fills_the_cache_and_torch_has_nothing_to_export(checkpoint, capsys):
    args = ["export", "--checkpoint", str(checkpoint), "--input-size", "112x196", "--device", "cpu"]
    assert main([*args, "--runtime", "onnxruntime"]) == 0
    captured = capsys.readouterr()
    graph = captured.out.strip().splitlines()[-1]
    assert graph.endswith("model.onnx") and "112x196" in graph and "runtime onnxruntime (fp32)" in captured.err
    assert main([*args, "--runtime", "torch"]) == 1
    assert "has nothing to export" in capsys.readouterr().err


def test_doctor_lists_the_runtimes_and_what_auto_picks(capsys):
    assert main(["doctor"]) in (0, 1)
    out = capsys.readouterr().out
    for name in ("openvino", "onnxruntime", "tensorrt", "auto"):
        assert f"runtime {name}" in out
    assert "runtime auto         openvino on cpu" in out or "cuda" in out


def cuda_provider(name: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import onnxruntime as ort

    if name not in ort.get_available_providers():
        pytest.skip(f"ONNX Runtime here has no {name} (pip install 'streamer[tensorrt]')")


@needs_export
@pytest.mark.gpu
@pytest.mark.parametrize(
    "runtime,precision,p999_limit,provider",
    [
        ("onnxruntime", "fp32", 1e-4, "CUDAExecutionProvider"),
        ("tensorrt", "fp16", 0.01, "TensorrtExecutionProvider"),
    ],
)
def test_cuda_runtimes_keep_tensors_on_the_gpu_and_give_torch_depth(
    loaded, inputs, torch_depths, runtime, precision, p999_limit, provider
):
    cuda_provider(provider)
    model, path = loaded
    request = Request(runtime, torch.device("cuda"), precision, SIZE, "vit-small", path)
    rt, _ = open_runtime(request, model)
    assert rt.name == runtime and rt.precision == precision
    processor = Metric3DProcessor(rt, SIZE)
    for x, ref in zip(inputs, torch_depths, strict=True):
        out = processor(x.cuda(), 500.0, 500.0)
        assert out["depth"].is_cuda  # I/O binding: no host round trip
        p999, worst = p999_rel(out["depth"].cpu(), ref)
        assert p999 <= p999_limit, (p999, worst)


def test_input_size_auto_takes_the_largest_interactive_size():
    from streamer.runtimes.sizing import CANDIDATES, choose, estimate_ms

    assert choose(10.0) == (616, 1064)  # a fast machine keeps the official input
    assert choose(72.0) == (224, 392)  # OpenVINO bf16 on 2 cores: 72 ms at 224x392
    assert choose(5000.0) == CANDIDATES[-1]  # nothing is interactive: the smallest
    assert estimate_ms(100.0, (448, 784)) > 4 * 100.0  # 4x the tokens, attention grows faster


def test_input_size_auto_is_measured_and_said(checkpoint):
    from streamer.api import load_processor
    from streamer.config import ModelConfig
    from streamer.runtimes.sizing import CANDIDATES

    cfg = ModelConfig(checkpoint=checkpoint, input_size="auto", runtime="torch", device="cpu")
    processor, meta = load_processor(cfg)
    assert processor.input_size in CANDIDATES and meta["input_size"] == list(processor.input_size)
    assert meta["input_size_choice"].startswith(f"input size auto: {processor.input_size[0]}x")
    assert "torch fp32" in meta["input_size_choice"]


@needs_export
def test_a_graph_over_the_limit_keeps_its_weights_as_external_data(small_model, tmp_path, monkeypatch, inputs):
    """vit-giant2's graph is over protobuf's 2 GB: its weights go beside it (here forced for vit-small)."""
    import onnxruntime as ort

    monkeypatch.setattr(export_mod, "EXTERNAL_DATA_BYTES", 0)
    folder = tmp_path / "graph"
    export_mod.export_onnx(small_model, (56, 84), folder)
    files = {p.name for p in folder.iterdir()}
    assert "model.onnx" in files and len(files) > 1  # the graph and its weights file(s)
    weights = sum(p.numel() * 4 for p in small_model.parameters())
    assert (folder / "model.onnx").stat().st_size < weights / 10  # only the graph (and small constants)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    image = torch.zeros(1, 3, 56, 84)
    depth = session.run(["depth"], {"image": image.numpy()})[0]
    with torch.inference_mode():
        ref = small_model(image)["depth"][-1]
    np.testing.assert_allclose(depth, ref.numpy(), rtol=1e-4, atol=1e-4)


def test_a_torch_too_old_to_export_says_so_in_one_line(loaded, monkeypatch):
    """Where the exporter cannot make a graph the runtimes run, the error names the torch version
    and the way out, before any time is spent exporting."""
    monkeypatch.setattr(export_mod, "EXPORT_MIN_TORCH", "99.0")
    monkeypatch.setattr(export_mod, "export_onnx", lambda *a: pytest.fail("exported anyway"))
    with pytest.raises(ModelError, match="needs torch >= 99.0") as caught:
        export_mod.exported_onnx(loaded[0], "vit-small", (84, 196), loaded[1])
    assert "--runtime torch" in caught.value.hint
