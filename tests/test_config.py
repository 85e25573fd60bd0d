"""Config: defaults < file < flags; unknown keys and bad values are named."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from streamer.config import Config, load_config
from streamer.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "configs"

PRESETS = ["default", "webcam-preview", "transcode", "obs-virtualcam"]


def test_defaults_follow_the_comfyui_node():
    cfg = Config()
    assert cfg.model.backbone == "vit-small"
    # No focal by default: it comes from EXIF / video metadata or is assumed with a warning
    # (streamer/focal.py); only the ComfyUI mode keeps the node's 1000 px (test_metric3d_focal_cli.py).
    assert cfg.model.fx is None and cfg.model.fy is None and cfg.model.hfov is None
    assert cfg.model.given_focal(1280) is None
    assert cfg.model.input_size == (616, 1064)
    assert cfg.model.resolution is None  # source size; 512 in --comfy mode


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_by_name_and_path(preset):
    assert (CONFIG_DIR / f"{preset}.yaml").is_file()
    assert load_config(preset) == load_config(CONFIG_DIR / f"{preset}.yaml")


def test_default_preset_equals_builtin_defaults():
    assert load_config("default") == Config()


def test_precedence_defaults_file_flags(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  fx: 500\n  fy: 600\nengine:\n  batch_size: 3\n")
    cfg = load_config(path, {"model": {"fx": 700.0}})
    assert (cfg.model.fx, cfg.model.fy, cfg.engine.batch_size, cfg.model.backbone) == (700.0, 600.0, 3, "vit-small")


def test_unknown_key_is_rejected_with_allowed_keys(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  bakbone: vit-large\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = info.value.one_line()
    assert "unknown key 'model.bakbone'" in text and "backbone" in text and str(path) in text


def test_unknown_section_is_rejected(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("modle: {}\n")
    with pytest.raises(ConfigError, match="unknown key 'modle'.*allowed: source, model"):
        load_config(path)


@pytest.mark.parametrize(
    "override,needle",
    [
        ({"model": {"fx": 0}}, "model.fx': 0"),
        ({"model": {"fy": "abc"}}, "model.fy': 'abc'"),
        ({"model": {"backbone": "vit-huge"}}, "vit-small, vit-large, vit-giant2"),
        ({"model": {"input_size": "600x1000"}}, "multiples of 28"),
        ({"model": {"device": "tpu"}}, "auto, cpu, cuda"),
        ({"model": {"precision": "int8"}}, "model.precision"),
        ({"engine": {"batch_size": 0}}, "engine.batch_size"),
        ({"engine": {"batch_size": "many"}}, "must be auto or a whole number from 1 to 64"),
        ({"engine": {"batch_size": 65}}, "engine.batch_size"),
        ({"output": {"format": "jpeg"}}, "output.format"),
    ],
)
def test_bad_values_are_named(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        load_config(None, override)


def test_hfov_sets_focal_for_source_width():
    cfg = load_config(None, {"model": {"hfov": 90.0}})
    focal = cfg.model.given_focal(1280)
    assert focal.fx == pytest.approx(640.0) and focal.fy == pytest.approx(640.0) and focal.source == "given"


def test_input_size_accepts_hxw_string():
    assert load_config(None, {"model": {"input_size": "308x532"}}).model.input_size == (308, 532)


@pytest.mark.parametrize("value,size", [(112, (112, 112)), ("112", (112, 112)), ([112, 224], (112, 224))])
def test_input_size_takes_one_number_as_a_square(tmp_path: Path, value, size):
    path = tmp_path / "c.yaml"
    path.write_text(f"model: {{input_size: {value if not isinstance(value, str) else repr(value)}}}\n")
    assert load_config(path).model.input_size == size


@pytest.mark.parametrize("value", [100, [100], [112, "x"], 112.5, True, {"h": 112}, None])
def test_input_size_of_a_wrong_kind_is_a_config_error(value):
    """`model: {input_size: 100}` once escaped as `TypeError: object of type 'int' has no len()`."""
    with pytest.raises(ConfigError, match="model.input_size"):
        load_config(None, {"model": {"input_size": value}})


def test_every_field_turns_a_value_of_the_wrong_kind_into_a_config_error():
    """What YAML can hold, in every key and every section: accepted, or one ConfigError, never a crash."""
    odd = [100, -1, 0, "x", "", [1, 2], [], {"a": 1}, None, 1.5, True, 10**30]
    for section, field in Config.model_fields.items():
        for key in [*field.annotation.model_fields, None]:
            for value in odd:
                override = {section: value if key is None else {key: value}}
                try:
                    load_config(None, override)
                except ConfigError:
                    pass


@pytest.mark.parametrize(
    "text,where",
    [
        ("model:\n  backbone: vit: small\n", ":2:16: mapping values are not allowed here"),
        ("model:\n  input_size: [112, 224\nengine: {}\n", ":3:7: expected ',' or ']', but got ':'"),
        ("model:\n\tbackbone: vit-small\n", ":2:1: found character '\\t' that cannot start any token"),
    ],
)
def test_yaml_errors_name_the_line_and_column(tmp_path: Path, text, where):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    line = caught.value.one_line()
    assert f"{path}{where}" in line, line
    assert "\n" not in line


def test_not_yaml_and_missing_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_presets_ship_inside_the_wheel(tmp_path: Path):
    """`pip install .` or a wheel keeps `--config transcode`: configs/ is packaged as streamer/configs."""
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    wheel = next(tmp_path.glob("streamer-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"streamer/configs/{p}.yaml" for p in PRESETS} <= set(names)
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)  # what an install puts in site-packages
    code = (
        "import streamer.config as c; assert 'site' in c.__file__; print(c.load_config('transcode').engine.batch_size)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "4"


@pytest.mark.parametrize(("given", "expected"), [(None, "auto"), ("auto", "auto"), ("4", 4), (2, 2)])
def test_batch_size_is_auto_or_a_number(given, expected):
    overrides = {} if given is None else {"engine": {"batch_size": given}}
    assert load_config(None, overrides).engine.batch_size == expected


@pytest.mark.parametrize(("given", "expected"), [(None, "auto"), ("auto", "auto"), ("1", 1), (3, 3)])
def test_lanes_are_auto_or_a_number(given, expected):
    overrides = {} if given is None else {"engine": {"lanes": given}}
    assert load_config(None, overrides).engine.lanes == expected


@pytest.mark.parametrize("given", [0, 17, "two", True])
def test_lanes_out_of_range_are_refused(given):
    with pytest.raises(ConfigError, match="engine.lanes"):
        load_config(None, {"engine": {"lanes": given}})
