"""Checkpoint loading is strict, safe and explains itself."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from streamer.api import load_model
from streamer.errors import ModelError
from streamer.models.metric3d import build_metric3d
from streamer.models.metric3d.weights import (
    detect_backbone,
    load_weights,
    read_checkpoint,
    resolve_checkpoint,
    save_official_checkpoint,
    to_model_keys,
)


def test_official_layout_loads_strictly_and_aliases_take_downsample(checkpoint, rule_state):
    model, path = load_model("vit-small", checkpoint, device="cpu", precision="fp32")
    assert path == checkpoint
    block = model.decoder.context_feature_encoder.outputs04[0][0]
    key = "depth_model.decoder.context_feature_encoder.outputs04.0.0.downsample.1.weight"
    assert torch.equal(block.norm3.weight, rule_state[key])  # the downsample.1 value wins
    assert not torch.equal(rule_state[key], rule_state[key.replace("downsample.1", "norm3")])


def test_missing_key_is_named(tmp_path, rule_state):
    state = dict(rule_state)
    del state["depth_model.decoder.update_block.mask.2.bias"]
    path = save_official_checkpoint(state, tmp_path / "m.pth")
    with pytest.raises(ModelError, match=r"1 missing \(e.g. depth_model.decoder.update_block.mask.2.bias\)"):
        load_model("vit-small", path, device="cpu")


def test_unexpected_key_is_named(tmp_path, rule_state):
    path = save_official_checkpoint({**rule_state, "depth_model.extra.weight": torch.zeros(1)}, tmp_path / "u.pth")
    with pytest.raises(ModelError, match="unexpected.*depth_model.extra.weight"):
        load_model("vit-small", path, device="cpu")


def large_shaped_state() -> dict[str, torch.Tensor]:
    """Enough of a vit-large state dict to be recognised by its shapes (tiny tensors elsewhere)."""
    state = {"encoder.pos_embed": torch.zeros(1, 1370, 1024)}
    for i in range(24):
        state[f"encoder.blocks.0.{i}.norm1.weight"] = torch.zeros(1)
    return state


def test_checkpoint_for_another_backbone_is_recognised(tmp_path):
    assert detect_backbone(large_shaped_state()) == "vit-large"
    path = tmp_path / "large.pth"
    torch.save({"model_state_dict": {f"depth_model.{k}": v for k, v in large_shaped_state().items()}}, path)
    with pytest.raises(ModelError, match="is for vit-large, but the model is vit-small"):
        load_model("vit-small", path, device="cpu")


def test_truncated_checkpoint_is_refused(tmp_path, checkpoint):
    path = tmp_path / "cut.pth"
    path.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    with pytest.raises(ModelError, match="not a readable weights-only checkpoint"):
        read_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint\n"], ids=["empty", "text"])
def test_not_a_checkpoint_is_refused(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(ModelError):
        read_checkpoint(path)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model_state_dict": RunsCode()}, f, protocol=2)
    with pytest.raises(ModelError, match="weights-only"):
        read_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_offline_without_cached_file_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelError) as info:
        resolve_checkpoint("vit-large", None, local_files_only=True)
    text = info.value.one_line()
    assert "metric_depth_vit_large_800k.pth" in text and "JUGGHM/Metric3D" in text and "--checkpoint" in text


def test_missing_checkpoint_path():
    with pytest.raises(ModelError, match="does not exist"):
        resolve_checkpoint("vit-small", "/nonexistent/metric.pth")


def test_shape_mismatch_is_named(rule_state):
    state = to_model_keys(rule_state)
    state["decoder.update_block.mask.2.bias"] = torch.zeros(3)
    with pytest.raises(ModelError, match=r"wrong shape .*mask.2.bias: \(3,\) != \(144,\)"):
        load_weights(build_metric3d("vit-small", device="meta"), state)


def test_legacy_serialization_format_loads(tmp_path, rule_state):
    """Files written before torch's zip format cannot be memory-mapped; they still load."""
    path = tmp_path / "legacy.pth"
    torch.save({"model_state_dict": rule_state}, path, _use_new_zipfile_serialization=False)
    state = read_checkpoint(path)
    assert len(state) == 362 and "encoder.pos_embed" in state
