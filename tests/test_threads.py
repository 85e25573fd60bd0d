"""The thread budget's rule: measured costs in, a split of the cores out (engine/threads.py)."""

from __future__ import annotations

import pytest
import torch

from streamer import api
from streamer.config import load_config
from streamer.engine import worker
from streamer.engine.threads import STALL, ThreadBudget, codec_ms, file_batch, forward_ms, own_pool_budget

from conftest import TINY_INPUT


def test_a_model_that_dominates_the_codecs_gets_every_core():
    # the 640x360 / 224x392 operating point: 463 ms on 2 threads, 829 on 1, ~6 ms of codecs
    budget = ThreadBudget.plan("cpu", 2, all_ms=463, kept_ms=829, codec_ms=codec_ms((640, 360)))
    assert (budget.torch, budget.decode, budget.encode) == (2, 1, 1)
    assert "every core" in budget.reason


def test_codecs_that_are_a_large_share_keep_a_core():
    # the 1080p / 56x112 operating point: 114 ms on 2 threads, 172 on 1, ~55 ms of codecs
    budget = ThreadBudget.plan("cpu", 2, all_ms=114, kept_ms=172, codec_ms=codec_ms((1920, 1080)))
    assert (budget.torch, budget.decode, budget.encode) == (1, 1, 1)
    assert "kept for the codecs" in budget.reason


@pytest.mark.parametrize("cores, kept", [(1, 0), (4, 1), (16, 4)])
def test_the_threshold_splits_at_the_stated_ratio(cores, kept):
    at = ThreadBudget.plan("cpu", cores, all_ms=100, kept_ms=100 + STALL * 10, codec_ms=10)
    above = ThreadBudget.plan("cpu", cores, all_ms=101, kept_ms=100 + STALL * 10, codec_ms=10)
    assert at.torch == cores
    assert above.torch == max(1, cores - kept)
    assert at.decode == above.decode == max(1, cores // 4)  # the codecs' own threads never change


def test_without_measurements_the_fixed_split_holds():
    assert ThreadBudget.plan("cpu", 8).as_dict() == {"torch": 6, "decode": 2, "encode": 2}
    assert ThreadBudget.plan("cuda", 8, all_ms=1, kept_ms=1000, codec_ms=1).torch == 2  # a GPU needs host threads only


def test_a_loaded_machine_where_every_core_is_slower_keeps_the_codecs_core():
    # measured with a load average of 7 on 2 cores: the 2-thread team waited on every op
    budget = ThreadBudget.plan("cpu", 2, all_ms=1866, kept_ms=565, codec_ms=codec_ms((640, 360)))
    assert budget.torch == 1


def test_codec_work_grows_with_the_pixels_decoded_and_encoded():
    assert codec_ms((1920, 1080)) == pytest.approx(2.25 * codec_ms((1280, 720)))
    assert codec_ms((1920, 1080), (960, 540)) < codec_ms((1920, 1080))


@pytest.mark.parametrize(("size", "batch"), [((56, 112), 4), ((112, 224), 4), ((224, 392), 1), ((616, 1064), 1)])
def test_files_on_the_cpu_batch_small_inputs(size, batch):
    chosen, why = file_batch(size)
    assert chosen == batch and f"{size[0]}x{size[1]} is" in why


def test_runtimes_with_their_own_pool_leave_torch_one_thread():
    budget = own_pool_budget("openvino", cores=8)
    assert (budget.torch, budget.decode, budget.encode) == (1, 2, 2) and "openvino" in budget.reason


def test_forward_ms_keeps_the_fastest_call():
    calls = []
    assert forward_ms(lambda: calls.append(1), repeats=3) >= 0
    assert len(calls) == 3


@pytest.mark.parametrize("threads", [None, 1])
def test_a_cpu_run_times_its_budget_unless_threads_are_given(checkpoint, video, tmp_path, threads):
    model = {"checkpoint": str(checkpoint), "input_size": list(TINY_INPUT), "device": "cpu", "runtime": "torch"}
    overrides = {"model": model, "engine": {"threads": threads}, "source": {"uri": str(video)}}
    cfg = load_config(None, {**overrides, "output": {"path": str(tmp_path / "out.mp4")}})
    heard: list[str] = []
    before = worker.on_device_thread(torch.get_num_threads)
    try:
        job = api.prepare(cfg, announce=heard.append)
        job.source.close()
        assert worker.on_device_thread(torch.get_num_threads) == job.threads.torch
    finally:
        worker.on_device_thread(torch.set_num_threads, before)
    if threads is None:  # timed (on one core there is nothing to time, and it says so)
        assert job.threads.reason != "fixed split" and any(
            line.startswith(f"threads: torch {job.threads.torch},") for line in heard
        )
    else:
        assert job.threads.reason == "fixed split" and not any(line.startswith("threads:") for line in heard)
    # a file on the CPU at a small input: four frames per forward pass, said in one line
    assert any(line.startswith("batch: 4 frames per forward pass") for line in heard), heard
