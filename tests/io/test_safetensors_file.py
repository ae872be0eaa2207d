"""diffkit's safetensors reader against the safetensors library, and its refusals of damaged files."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffkit.errors import CheckpointError
from diffkit.io.safetensors_file import DTYPES, read_safetensors
from diffkit.io.weights import ALIGNMENT


def test_every_dtype_reads_as_the_library_reads_it_into_aligned_memory(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        f"t.{name}": (torch.randn(3, 5, generator=g) * 4).to(dtype) for name, dtype in DTYPES.items()
    }
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 4)
    file = tmp_path / "w.safetensors"
    save_file(tensors, str(file), metadata={"who": "test"})
    ours, metadata = read_safetensors(file)
    theirs = load_file(str(file))
    assert metadata == {"who": "test"} and ours.keys() == theirs.keys()
    for key, tensor in theirs.items():
        assert ours[key].dtype == tensor.dtype and ours[key].shape == tensor.shape
        assert torch.equal(ours[key].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), key
        assert ours[key].numel() == 0 or ours[key].data_ptr() % ALIGNMENT == 0, key


def _file(tmp_path, header, data=b""):
    raw = json.dumps(header).encode()
    file = tmp_path / "bad.safetensors"
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return file


@pytest.mark.parametrize(
    "header, data, words",
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "do not hold"),
        ({"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "dtype 'F33'"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "shape must be"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 0]}}, b"\0" * 8, "do not hold"),
        ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "an entry has dtype, shape and data_offsets"),
        ({"a": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 8]}}, b"\0" * 8, "do not hold"),
        ([1, 2], b"", "not a JSON object"),
    ],
)
def test_damaged_headers_are_refused_before_anything_is_allocated(tmp_path, header, data, words):
    with pytest.raises(CheckpointError, match=f"truncated or corrupted safetensors file .*{words}"):
        read_safetensors(_file(tmp_path, header, data))


def test_a_header_longer_than_the_file_is_refused(tmp_path):
    file = tmp_path / "short.safetensors"
    file.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(CheckpointError, match="its header claims 1000000000 bytes"):
        read_safetensors(file)
    file.write_bytes(b"\1\2")
    with pytest.raises(CheckpointError, match="shorter than the 8-byte header length"):
        read_safetensors(file)
