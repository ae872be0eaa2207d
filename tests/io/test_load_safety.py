"""Loading a pipeline or component folder that was damaged, edited by hand or crafted to attack:
every failure is a named :class:`~diffkit.errors.DiffkitError` naming the file, raised before
any weights are used; paths never lead outside the folder; no file read is ever changed; and
the sampling settings a pipeline recommends travel with it.

The pipelines are tiny (a 16-channel UNet on 8×8 images), saved once per module and copied
before each test damages them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import diffkit
from diffkit.errors import CheckpointError, ConfigError, DiffkitError, NonFiniteError, NonFiniteWeightsError
from diffkit.io import components, pretrained, weights
from diffkit.io.components import save_pretrained
from diffkit.io.pretrained import load_pretrained
from diffkit.io.state_dicts import available_devices, check_tensors
from diffkit.pipeline import Pipeline, load_pipeline
from tests.timeouts import time_bound

pytestmark = pytest.mark.usefixtures("one_thread")

K = 3
UNET = {
    "sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": (16, 16), "layers_per_block": 1,
    "attention_levels": (), "mid_attention": False, "norm_groups": 8, "dropout": 0.0, "num_classes": K,
}


def tiny_pipeline(**changes: Any) -> Pipeline:
    options = {
        "backbone": ("unet", UNET), "conditioner": ("class_label", {"num_classes": K}), "default_steps": 2, **changes,
    }
    return Pipeline(**options)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "pipe"
    tiny_pipeline(default_guidance=2.5).save(folder)
    return folder


@pytest.fixture
def pipe(saved, tmp_path) -> Path:
    """A fresh copy of the saved pipeline folder."""
    return Path(shutil.copytree(saved, tmp_path / "pipe"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def edit_json(path: Path, change: Any) -> None:
    record = json.loads(path.read_text())
    path.write_text(json.dumps(change(record) if callable(change) else change))


def load_error(folder: Path, error: type[DiffkitError] | tuple[type[DiffkitError], ...] = DiffkitError, **kwargs: Any) -> str:
    """The message of the named error loading ``folder`` raises; the folder's files are unchanged."""
    before = snapshot(folder)
    with time_bound(20), pytest.raises(error) as info:
        load_pretrained(folder, **kwargs)
    assert snapshot(folder) == before
    return str(info.value)


def rewrite_weights(folder: Path, change: Any) -> None:
    """Rewrite ``folder/model.safetensors`` with ``change(tensors)``, keeping its save id."""
    file = folder / "model.safetensors"
    with safe_open(str(file), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    save_file(change(tensors), str(file), metadata=metadata)


# -- 1, 2: the shape and the keys of pipeline.json and diffkit.json ----------------------------------


@pytest.mark.parametrize("value", [[], None, "pipeline", 5, 2.5, True], ids=["list", "null", "string", "int", "float", "bool"])
def test_pipeline_json_must_hold_an_object(pipe, value):
    (pipe / "pipeline.json").write_text(json.dumps(value))
    message = load_error(pipe, CheckpointError)
    assert str(pipe / "pipeline.json") in message and "must hold a JSON object" in message


SPEC_EDITS = {
    "schedule.config list": (lambda s: {**s, "schedule": {**s["schedule"], "config": []}}, "config must be an object"),
    "schedule list": (lambda s: {**s, "schedule": []}, "schedule must be an object"),
    "schedule name int": (lambda s: {**s, "schedule": {**s["schedule"], "name": 5}}, "name must be a string"),
    "schedule bad value": (
        lambda s: {**s, "schedule": {**s["schedule"], "config": {"num_train_timesteps": "x"}}}, "num_train_timesteps",
    ),
    "schedule unknown option": (
        lambda s: {**s, "schedule": {**s["schedule"], "config": {"num_train_timestep": 10}}}, "num_train_timestep",
    ),
    "sampler.options string": (lambda s: {**s, "sampler": {**s["sampler"], "options": "abc"}}, "options must be an object"),
    "sampler unknown option": (lambda s: {**s, "sampler": {**s["sampler"], "options": {"etta": 1}}}, "etta"),
    "sampler extra key": (lambda s: {**s, "sampler": {**s["sampler"], "speed": 1}}, "unknown key(s) speed"),
    "components string": (lambda s: {**s, "components": "backbone"}, "components must be an array"),
    "components repeated": (lambda s: {**s, "components": ["backbone", "backbone"]}, "more than once"),
    "components without backbone": (lambda s: {**s, "components": ["conditioner"]}, "lacks 'backbone'"),
    "components unknown kind": (lambda s: {**s, "components": ["backbone", "decoder"]}, "valid entries"),
    "default_steps string": (lambda s: {**s, "default_steps": "x"}, "default_steps must be an integer"),
    "default_steps zero": (lambda s: {**s, "default_steps": 0}, "default_steps must be an integer in 1"),
    "default_steps large": (lambda s: {**s, "default_steps": 10**6}, "default_steps must be an integer in 1"),
    "default_steps huge": (lambda s: {**s, "default_steps": 10**30}, "default_steps is 1000000000000000000000000000000"),
    "huge config number": (
        lambda s: {**s, "schedule": {**s["schedule"], "config": {"num_train_timesteps": 2**64}}},
        "schedule.config.num_train_timesteps is 18446744073709551616, outside the integers",
    ),
    "default_guidance string": (lambda s: {**s, "default_guidance": "2"}, "default_guidance must be a number"),
    "default_guidance too large": (lambda s: {**s, "default_guidance": 1e30}, "default_guidance must be a finite real"),
    "default_guidance negative": (lambda s: {**s, "default_guidance": -1}, "default_guidance must be ≥ 0"),
    "parameterization int": (lambda s: {**s, "parameterization": 5}, "parameterization must be a string"),
    "parameterization unknown": (lambda s: {**s, "parameterization": "epsilon"}, "did you mean 'eps'"),
    "format_version string": (lambda s: {**s, "format_version": "1"}, "format_version must be an integer"),
    "format_version bool": (lambda s: {**s, "format_version": True}, "format_version must be an integer"),
    "format_version zero": (lambda s: {**s, "format_version": 0}, "format_version 0"),
    "format_version newer": (lambda s: {**s, "format_version": 2}, "upgrade diffkit"),
    "objective list": (lambda s: {**s, "objective": []}, "objective must be an object"),
    "objective bad value": (lambda s: {**s, "objective": {**s["objective"], "snr_gamma": "x"}}, "snr_gamma"),
    "extra key": (lambda s: {**s, "speed": "fast"}, "unknown key(s) speed"),
    "missing key": (lambda s: {k: v for k, v in s.items() if k != "objective"}, "lacks objective"),
}


@pytest.mark.parametrize(("edit", "expected"), SPEC_EDITS.values(), ids=SPEC_EDITS.keys())
def test_every_key_of_pipeline_json_is_checked(pipe, edit, expected):
    edit_json(pipe / "pipeline.json", edit)
    message = load_error(pipe)
    assert str(pipe / "pipeline.json") in message and expected in message


RECORD_EDITS = {
    "config list": (lambda r: {**r, "config": []}, "config must be an object"),
    "config string": (lambda r: {**r, "config": "abc"}, "config must be an object"),
    "name int": (lambda r: {**r, "name": 5}, "name must be a string"),
    "kind list": (lambda r: {**r, "kind": ["backbone"]}, "kind must be a string"),
    "kind other": (lambda r: {**r, "kind": "autoencoder"}, "where this pipeline needs its backbone"),
    "format_version string": (lambda r: {**r, "format_version": "1"}, "format_version must be an integer"),
    "origin list": (lambda r: {**r, "origin": [1]}, "origin must be an object or null"),
    "origin plugin int": (lambda r: {**r, "origin": {"plugin": 5}}, "plugin must be a string or null"),
    "save_id int": (lambda r: {**r, "save_id": 5}, "save_id must be a string or null"),
    "extra key": (lambda r: {**r, "weights": "x"}, "unknown key(s) weights"),
    "missing config": (lambda r: {k: v for k, v in r.items() if k != "config"}, "lacks config"),
    "config value": (lambda r: {**r, "config": {**r["config"], "sample_size": "x"}}, "sample_size must be an integer"),
    "config option": (lambda r: {**r, "config": {**r["config"], "depth": 3}}, "depth"),
    "config list value": (lambda r: {**r, "config": {**r["config"], "block_out_channels": "abc"}}, "block_out_channels"),
}


@pytest.mark.parametrize(("edit", "expected"), RECORD_EDITS.values(), ids=RECORD_EDITS.keys())
def test_every_key_of_a_component_record_is_checked(pipe, edit, expected):
    record = pipe / "backbone" / "diffkit.json"
    edit_json(record, edit)
    message = load_error(pipe)
    assert str(record) in message and expected in message


@pytest.mark.parametrize("name", ["pipeline.json", "backbone/diffkit.json", "backbone/model.safetensors"])
def test_a_fifo_in_place_of_a_file_is_refused_without_blocking(pipe, name):
    (pipe / name).unlink()
    os.mkfifo(pipe / name)
    message = load_error(pipe)
    assert "not a regular file" in message and "FIFO" in message


def test_a_number_too_large_for_a_float_is_named(pipe):
    text = (pipe / "pipeline.json").read_text()
    (pipe / "pipeline.json").write_text(text.replace('"default_guidance": 2.5', '"default_guidance": 1e400'))
    assert "1e400 is too large for a floating-point number" in load_error(pipe, CheckpointError)
    (pipe / "pipeline.json").write_text(text)
    record = pipe / "backbone" / "diffkit.json"
    record.write_text(record.read_text().replace('"norm_eps": 1e-06', '"norm_eps": 1e400'))
    assert "1e400 is too large for a floating-point number" in load_error(pipe, CheckpointError)


def test_an_old_pipeline_json_without_default_guidance_loads(pipe):
    edit_json(pipe / "pipeline.json", lambda s: {k: v for k, v in s.items() if k != "default_guidance"})
    assert load_pretrained(pipe).default_guidance == 1.0


# -- 3: paths in pipeline.json never lead outside the folder ----------------------------------------------


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder beside the pipeline, with a valid backbone component and a tell-tale file name."""
    folder = tmp_path / "outside"
    save_pretrained(diffkit.build("backbone", "unet", **UNET), folder / "component")
    (folder / "SECRET_NAME.txt").write_text("private")
    return folder


@pytest.mark.parametrize("entry", ["../../../../etc", "../outside", "../outside/component", "/etc", "ABSOLUTE", "", "."])
def test_component_entries_are_names_not_paths(pipe, outside, entry):
    entry = str(outside / "component") if entry == "ABSOLUTE" else entry
    edit_json(pipe / "pipeline.json", lambda s: {**s, "components": [entry, "conditioner"]})
    message = load_error(pipe, CheckpointError)
    assert "valid entries: backbone, conditioner, autoencoder" in message
    assert "SECRET_NAME" not in message and "passwd" not in message


@pytest.mark.parametrize("target", ["outside folder", "outside file", "pipeline folder", "etc"])
def test_symlinks_may_not_lead_outside_the_pipeline_folder(pipe, outside, target):
    if target == "outside file":  # the folder stays; its weights file points outside
        link = pipe / "backbone" / "model.safetensors"
        link.unlink()
        link.symlink_to(outside / "component" / "model.safetensors")
    else:
        shutil.rmtree(pipe / "backbone")
        destination = {"outside folder": outside / "component", "pipeline folder": pipe, "etc": Path("/etc")}[target]
        link = pipe / "backbone"
        link.symlink_to(destination, target_is_directory=True)
    message = load_error(pipe, CheckpointError)
    assert "leads outside" in message and "SECRET_NAME" not in message and "passwd" not in message


def test_a_symlink_inside_the_folder_is_followed(pipe):
    (pipe / "backbone").rename(pipe / "real-backbone")
    (pipe / "backbone").symlink_to("real-backbone", target_is_directory=True)
    assert isinstance(load_pretrained(pipe), Pipeline)


# -- 4: a sample_shape that does not fit the backbone ------------------------------------------------------


def test_a_backbone_config_edited_to_another_size_is_refused(pipe):
    edit_json(pipe / "backbone" / "diffkit.json", lambda r: {**r, "config": {**r["config"], "sample_size": 16}})
    message = load_error(pipe, ConfigError)
    assert "sample_shape (1, 8, 8) does not fit the UNet backbone" in message and "(1, 16, 16)" in message


# -- 5: weights of the wrong type, NaN and inf ---------------------------------------------------------------

BAD_VALUES = {
    "nan": lambda t: t.clone().fill_(math.nan),
    "inf": lambda t: t.clone().fill_(math.inf),
    "int64": lambda t: t.to(torch.int64),
    "bool": lambda t: t.to(torch.bool),
}


def _damage(key_count: int, how: str):
    def change(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keys = sorted(k for k, v in tensors.items() if v.dtype.is_floating_point)[:key_count]
        return {k: BAD_VALUES[how](v) if k in keys else v for k, v in tensors.items()}

    return change


@pytest.mark.parametrize("how", list(BAD_VALUES))
def test_bad_weights_in_a_pipeline_component_are_named(pipe, how):
    rewrite_weights(pipe / "backbone", _damage(7, how))
    message = load_error(pipe, CheckpointError)
    assert str(pipe / "backbone") in message
    assert "7 tensor(s)" in message and "… and 2 more" in message  # the first few keys, then a count
    if how in ("nan", "inf"):
        assert "NaN or ±inf" in message and "allow_nonfinite=True" in message
        loaded = load_pretrained(pipe, allow_nonfinite=True)
        assert not all(torch.isfinite(p).all() for p in loaded.backbone.parameters())
    else:
        assert f"{how}, where the model has a floating-point tensor" in message
        load_error(pipe, CheckpointError, allow_nonfinite=True)  # never allowed


def test_non_finite_weights_are_both_a_checkpoint_and_a_non_finite_error(pipe):
    rewrite_weights(pipe / "backbone", _damage(1, "nan"))
    with pytest.raises(NonFiniteWeightsError) as info:
        load_pretrained(pipe)
    assert isinstance(info.value, CheckpointError) and isinstance(info.value, NonFiniteError)


@pytest.mark.parametrize("how", list(BAD_VALUES))
def test_bad_weights_in_a_component_folder_are_named(tmp_path, how):
    save_pretrained(diffkit.build("backbone", "unet", **UNET), tmp_path)
    rewrite_weights(tmp_path, _damage(1, how))
    assert str(tmp_path) in load_error(tmp_path, CheckpointError)


def test_integer_buffers_the_model_declares_are_loaded():
    norm = torch.nn.BatchNorm1d(4)  # num_batches_tracked: an int64 buffer
    state = {k: v.clone() for k, v in norm.state_dict().items()}
    state["num_batches_tracked"] = torch.tensor(7)
    weights.load_state_dict_checked(norm, state, what="the weights")
    assert int(norm.num_batches_tracked) == 7
    with pytest.raises(CheckpointError, match="num_batches_tracked: float32, where the model keeps integers"):
        check_tensors({**state, "num_batches_tracked": torch.tensor(7.0)}, norm, what="the weights")
    with pytest.raises(CheckpointError, match="a str, not a tensor"):
        check_tensors({"weight": "abc"}, norm, what="the weights")


# -- 6, 7: dtype and device, refused before any file is read -------------------------------------------------


@pytest.fixture
def no_reading(monkeypatch):
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a file was read before the arguments were checked")

    for module in (pretrained, components, weights):
        monkeypatch.setattr(module, "read_json_object", refuse)
    monkeypatch.setattr("diffkit.pipeline.read_json_object", refuse)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.int8, "dtype=torch.int8 is not a floating-point dtype"),
        (torch.int64, "dtype=torch.int64 is not a floating-point dtype"),
        (torch.bool, "dtype=torch.bool is not a floating-point dtype"),
        (torch.complex64, "dtype=torch.complex64 is not a floating-point dtype"),
        ("float16", "dtype must be a torch.dtype"),
        (16, "dtype must be a torch.dtype"),
    ],
)
def test_a_non_floating_dtype_is_refused_before_reading(pipe, no_reading, dtype, expected):
    with pytest.raises(ConfigError, match=expected):
        load_pretrained(pipe, dtype=dtype)
    with pytest.raises(ConfigError, match=expected):
        load_pipeline(pipe, dtype=dtype)


def test_pipeline_to_a_non_floating_dtype_is_named():
    pipe = tiny_pipeline()
    for dtype in (torch.int64, torch.bool):
        with pytest.raises(ConfigError, match="not a floating-point dtype"):
            pipe.to(dtype)
        with pytest.raises(ConfigError, match="not a floating-point dtype"):
            pipe.to(device="cpu", dtype=dtype)
    with pytest.raises(ConfigError, match="Pipeline.to got"):
        pipe.to("nonsense")
    assert pipe.to(torch.float64).backbone.conv_in.weight.dtype == torch.float64


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "cuda:99", "mps", "nonsense", "meta", 7, True, 1.5])
def test_a_device_this_machine_lacks_is_refused_before_reading(pipe, no_reading, device):
    available = available_devices()
    if isinstance(device, str) and (device in available or f"{device}:0" in available):
        pytest.skip(f"{device} exists here")
    with pytest.raises(ConfigError) as info:
        load_pretrained(pipe, device=device)
    assert repr(device) in str(info.value) or str(device) in str(info.value)
    assert "available: cpu" in str(info.value)


def test_flags_must_be_booleans(pipe):
    for flag in ("allow_pickle", "allow_nonfinite"):
        with pytest.raises(ConfigError, match=f"{flag} must be True or False"):
            load_pretrained(pipe, **{flag: "yes"})
    with pytest.raises(ConfigError, match="path must be a folder path"):
        load_pretrained(None)


# -- 8: damaged safetensors files ---------------------------------------------------------------------------


def _header(file: Path) -> tuple[dict[str, Any], bytes]:
    data = file.read_bytes()
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _with_header(header: Any, body: bytes, length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return (len(raw) if length is None else length).to_bytes(8, "little") + raw + body


def _first_tensor(header: dict[str, Any]) -> str:
    return next(k for k in sorted(header) if k != "__metadata__")


SAFETENSORS_DAMAGE = {
    "empty": lambda h, b: b"",
    "seven bytes": lambda h, b: b"\x01" * 7,
    "truncated": lambda h, b: _with_header(h, b)[: len(_with_header(h, b)) // 2],
    "length 2**64-1": lambda h, b: _with_header(h, b, length=2**64 - 1),
    "length past the end": lambda h, b: _with_header(h, b, length=len(json.dumps(h)) + len(b) + 1),
    "header a list": lambda h, b: _with_header([1, 2], b),
    "header not json": lambda h, b: (4).to_bytes(8, "little") + b"{{{{" + b,
    "unknown dtype": lambda h, b: _with_header({**h, _first_tensor(h): {**h[_first_tensor(h)], "dtype": "F33"}}, b),
    "offsets out of range": lambda h, b: _with_header(
        {**h, _first_tensor(h): {**h[_first_tensor(h)], "data_offsets": [0, 10**15]}}, b
    ),
    "shape huge": lambda h, b: _with_header({**h, _first_tensor(h): {**h[_first_tensor(h)], "shape": [2**40, 2**20]}}, b),
    "metadata a number": lambda h, b: _with_header({**h, "__metadata__": {"format": 5}}, b),
}


@pytest.mark.parametrize("damage", SAFETENSORS_DAMAGE.values(), ids=SAFETENSORS_DAMAGE.keys())
def test_a_damaged_safetensors_file_is_a_checkpoint_error_naming_it(pipe, damage):
    file = pipe / "backbone" / "model.safetensors"
    header, body = _header(file)
    file.write_bytes(damage(header, body))
    message = load_error(pipe, CheckpointError)
    assert str(file) in message


# -- a config describing a huge network is refused without building it ------------------------------------------


@pytest.mark.parametrize(
    "change",
    [{"layers_per_block": 10**6}, {"block_out_channels": [2**24, 2**24]}, {"block_out_channels": [16] * 10**5},
     {"block_out_channels": [10**30, 16]}],
    ids=["deep", "wide", "many levels", "overflow"],
)
def test_a_config_edited_to_a_huge_network_is_refused_quickly(pipe, change):
    edit_json(pipe / "backbone" / "diffkit.json", lambda r: {**r, "config": {**r["config"], **change}})
    start = time.perf_counter()
    message = load_error(pipe, DiffkitError)
    assert str(pipe / "backbone") in message
    assert time.perf_counter() - start < 15


# -- 9: the recommended guidance travels with the pipeline -----------------------------------------------------


def test_default_guidance_is_saved_and_restored(saved):
    spec = json.loads((saved / "pipeline.json").read_text())
    assert spec["default_guidance"] == 2.5 and spec["format_version"] == 1
    assert load_pretrained(saved).default_guidance == 2.5
    assert tiny_pipeline().default_guidance == 1.0


@pytest.mark.parametrize("value", [-0.5, math.nan, math.inf, 1e30, True, "2", None])
def test_default_guidance_is_validated(value):
    with pytest.raises(ConfigError, match="default_guidance must .*0 … 1000"):
        tiny_pipeline(default_guidance=value)
