"""`--compile`: compiled before the first frame, static shapes (a last partial batch is padded,
not recompiled), and running out of memory is reported rather than hidden by a switch to eager.
A counting backend (torch.compile's own plug-in point) tells how often the model was compiled."""

from __future__ import annotations

import pytest
import torch

from streamer.engine.compiled import CompiledOrEager
from streamer.engine.pipeline import Pipeline
from streamer.errors import ModelError
from streamer.sinks import Sink
from streamer.sources import PatternSource

CPU = torch.device("cpu")
HW = (8, 12)


class CountingBackend:
    """Runs each compiled graph as traced; counts compilations and the batch sizes they were for."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, graph: torch.fx.GraphModule, example_inputs):
        shapes = [tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)]
        self.batches.append(next(shape[0] for shape in shapes if shape[1:] == (3, *HW)))  # the frames, not weights
        return graph.forward


class TinyNet(torch.nn.Module):
    """Shaped like the model's interface: (N, 3, H, W) -> a dict of batch-first maps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor, all_iterations: bool = False):
        y = self.conv(x)
        return {"depth": [y[:, :1]], "normal": [y]}


def test_a_last_partial_batch_is_padded_not_recompiled():
    torch._dynamo.reset()
    backend = CountingBackend()
    net = TinyNet().eval()
    model = CompiledOrEager(net, CPU, backend=backend)
    model.warm_up(4, HW)
    assert backend.batches == [4]  # compiled before any frame, for the run's batch size
    with torch.inference_mode():  # as the processor calls the model
        x = torch.rand(3, 3, *HW)
        out = model(x)
        want = net(x)
    assert backend.batches == [4] and not model.failed  # the batch of 3 ran in the graph for 4
    assert out["depth"][0].shape[0] == 3 and torch.allclose(out["depth"][0], want["depth"][0])
    assert torch.allclose(out["normal"][0], want["normal"][0])


def test_out_of_memory_is_reported_not_turned_into_eager_mode():
    class Hungry(TinyNet):
        def forward(self, x, all_iterations=False):
            return {"depth": [x.new_empty(1 << 60)]}  # more than any machine has

    torch._dynamo.reset()
    model = CompiledOrEager(Hungry().eval(), CPU, backend=CountingBackend())
    with pytest.raises(ModelError, match="out of memory") as error:
        with torch.inference_mode():
            model(torch.rand(1, 3, *HW))
    assert "--batch-size" in error.value.hint and not model.failed


def test_the_engine_warms_the_stage_up_on_the_model_thread_before_the_first_frame():
    from streamer.processors.null import NullStage

    class Noted(NullStage):
        def __init__(self) -> None:
            super().__init__(CPU)
            self.calls: list[tuple[str, object]] = []

        def warm_up(self, batch: int) -> None:
            import threading

            self.calls.append(("warm_up", (batch, threading.current_thread().name)))

        def __call__(self, images, wants=frozenset({"depth"}), focal_hint=None):
            self.calls.append(("frame", images.shape[0]))
            return super().__call__(images, wants, focal_hint)

    class Nothing(Sink):
        needs = frozenset({"depth"})

        def write(self, result) -> None:
            pass

    stage = Noted()
    Pipeline(PatternSource("testsrc:32x24@10", frames=5, live=False), stage, [Nothing()], batch_size=2).run()
    assert stage.calls[0][0] == "warm_up" and stage.calls[0][1][0] == 2
    assert stage.calls[0][1][1].startswith("device-worker")
    assert [kind for kind, _ in stage.calls].count("warm_up") == 1
