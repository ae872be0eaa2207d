"""Fuzzing the files of a saved pipeline: random JSON, truncations, wrong types, wrong top-level
shapes and huge numbers in ``pipeline.json`` and a component's ``diffkit.json``, and damaged
safetensors headers. ``diffkit.load_pretrained`` must return a working pipeline or raise a
``DiffkitError`` (nothing else), within a time bound, and must leave every file as it was.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffkit.errors import DiffkitError, NonFiniteError
from diffkit.io.pretrained import load_pretrained
from diffkit.pipeline import Pipeline
from tests.io.test_load_safety import snapshot, time_bound, tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

SECONDS_PER_CASE = 10
HUGE = [2**31, 2**63, -(2**63), 10**30, 10**400, 1e308, -1e308]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8) | st.sampled_from(HUGE),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=10,
)

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz") / "pipe"
    tiny_pipeline().save(folder)
    return folder


# -- damaging a JSON file ---------------------------------------------------------------------------------


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into nested objects and arrays (the root excluded)."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    out = []
    for key, child in children:
        out.append((*prefix, key))
        out += _paths(child, (*prefix, key))
    return out


def _replaced(record: Any, path: tuple[Any, ...], value: Any, *, delete: bool = False) -> Any:
    """A copy of ``record`` with the value at ``path`` replaced (or deleted)."""
    copy = json.loads(json.dumps(record))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return copy


@st.composite
def damaged_json(draw: st.DrawFn, valid: bytes) -> bytes:
    """Random JSON, a truncation, one value replaced/deleted/added, or raw bytes."""
    record = json.loads(valid)
    how = draw(st.sampled_from(["random", "truncate", "replace", "huge", "delete", "add", "bytes"]))
    if how == "random":
        return json.dumps(draw(json_values)).encode()
    if how == "truncate":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if how == "bytes":
        return draw(st.binary(max_size=64))
    if how == "add":
        return json.dumps({**record, draw(st.text(max_size=6)): draw(json_values)}).encode()
    path = draw(st.sampled_from(_paths(record)))
    if how == "delete":
        return json.dumps(_replaced(record, path, None, delete=True)).encode()
    value = draw(st.sampled_from(HUGE)) if how == "huge" else draw(json_values)
    return json.dumps(_replaced(record, path, value)).encode()


# -- damaging a safetensors header -----------------------------------------------------------------------------

DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I8", "BOOL", "U8", "F8_E4M3", "F33", "", "f32"]


@st.composite
def damaged_safetensors(draw: st.DrawFn, valid: bytes) -> bytes:
    """A truncation, a random length field, a random header, or one header entry changed."""
    length = int.from_bytes(valid[:8], "little")
    header, body = json.loads(valid[8 : 8 + length]), valid[8 + length :]
    how = draw(st.sampled_from(["truncate", "length", "random header", "entry", "flip"]))
    if how == "truncate":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if how == "length":
        return draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little") + valid[8:]
    if how == "flip":  # one byte anywhere: header text, or the weights themselves
        at = draw(st.integers(0, len(valid) - 1))
        return valid[:at] + bytes([valid[at] ^ draw(st.integers(1, 255))]) + valid[at + 1 :]
    if how == "random header":
        header = draw(json_values)
    else:
        key = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        value = {
            "dtype": st.sampled_from(DTYPES),
            "shape": st.lists(st.integers(-2, 2**40) | st.sampled_from(HUGE), max_size=4),
            "data_offsets": st.lists(st.integers(-1, 2**40) | st.sampled_from(HUGE), min_size=0, max_size=3),
        }[field]
        header = _replaced(header, (key, field), draw(value | json_values))
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + body


# -- the check ---------------------------------------------------------------------------------------------


def check_loading(saved: Path, name: str, damage: Any) -> None:
    """Copy ``saved``, damage ``name`` with ``damage(valid bytes)``, load: works or a DiffkitError."""
    root = Path(tempfile.mkdtemp())
    try:
        folder = Path(shutil.copytree(saved, root / "pipe"))
        file = folder / name
        file.write_bytes(damage(file.read_bytes()))
        before = snapshot(folder)
        with time_bound(SECONDS_PER_CASE):
            try:
                pipe = load_pretrained(folder)
            except DiffkitError as error:
                assert str(error)
            else:
                assert isinstance(pipe, Pipeline)
                cond = None if pipe.conditioner is None else [0]
                try:  # finite weights can still be extreme (a flipped exponent bit): named, never garbage
                    out = pipe.sample(1, cond=cond, steps=1, generator=0)
                except NonFiniteError:
                    pass
                else:
                    assert out.shape == (1, *pipe.sample_shape) and out.dtype == torch.float32
        assert snapshot(folder) == before
    finally:
        shutil.rmtree(root, ignore_errors=True)


@FUZZ
@given(data=st.data())
def test_a_fuzzed_pipeline_json_loads_or_is_named(saved, data):
    check_loading(saved, "pipeline.json", lambda valid: data.draw(damaged_json(valid)))


@FUZZ
@given(data=st.data(), component=st.sampled_from(["backbone", "conditioner"]))
def test_a_fuzzed_component_record_loads_or_is_named(saved, data, component):
    check_loading(saved, f"{component}/diffkit.json", lambda valid: data.draw(damaged_json(valid)))


@FUZZ
@given(data=st.data())
def test_a_fuzzed_safetensors_file_loads_or_is_named(saved, data):
    check_loading(saved, "backbone/model.safetensors", lambda valid: data.draw(damaged_safetensors(valid)))
