"""Reading a safetensors file tensor by tensor into memory of our own: one copy, aligned, no mapping.

The format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length N,
N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {…}}``,
then the data, each tensor's bytes at ``8 + N + begin … 8 + N + end`` in row-major order.

``safetensors.safe_open`` maps the file and hands out tensors that view the mapping at the
format's 8-byte offsets. Two things follow that a loader which keeps those tensors as weights
cannot accept: every page read counts as resident memory of the process next to any copy made
of it (a copy to aligned memory doubles the peak), and the tensors start off the 64-byte
boundary the allocator gives, so vectorized kernels round differently in the last bit than on
the same weights loaded by copying (a saved and reloaded model would not reproduce itself).
So each tensor is read with ``readinto`` straight into a fresh ``torch.empty`` of its own: the
page cache holds the file, the process holds each weight once, and every weight is aligned.
The header is validated before anything is allocated for the data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from diffkit.errors import CheckpointError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
"""safetensors dtype names → torch dtypes (the ones torch can hold)."""

HEADER_LIMIT = 100 * 2**20  # safetensors' own limit on the JSON header


def read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(the tensors, the ``__metadata__``) of a safetensors file; any fault is a :class:`CheckpointError`."""
    with open(file, "rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(0)

        def corrupted(reason: str) -> CheckpointError:
            return CheckpointError(f"cannot read {file} ({size} bytes): truncated or corrupted safetensors file ({reason})")

        head = handle.read(8)
        if len(head) < 8:
            raise corrupted("shorter than the 8-byte header length")
        length = int.from_bytes(head, "little")
        if length > min(size - 8, HEADER_LIMIT):
            raise corrupted(f"its header claims {length} bytes; valid: at most {min(size - 8, HEADER_LIMIT)}")
        try:
            header = json.loads(handle.read(length).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise corrupted(f"the header is not JSON: {exc}") from exc
        if not isinstance(header, dict):
            raise corrupted("the header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise corrupted("__metadata__ must be an object of strings")
        entries = {name: _entry(name, spec, size - 8 - length, corrupted) for name, spec in header.items()}
        tensors = {}
        for name, (dtype, shape, begin, end) in sorted(entries.items(), key=lambda item: item[1][2]):
            tensor = torch.empty(shape, dtype=dtype)
            handle.seek(8 + length + begin)
            if end > begin and handle.readinto(memoryview(tensor.view(-1).view(torch.uint8).numpy())) != end - begin:
                raise corrupted(f"{name} ends past the end of the file")
            tensors[name] = tensor
    return tensors, metadata


def _entry(name: str, spec: Any, data_size: int, corrupted: Any) -> tuple[torch.dtype, list[int], int, int]:
    """(dtype, shape, begin, end) of one header entry, each checked against the format and the file."""
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise corrupted(f"{name}: an entry has dtype, shape and data_offsets, got {str(spec)[:80]}")
    dtype = DTYPES.get(spec["dtype"]) if isinstance(spec["dtype"], str) else None
    if dtype is None:
        raise corrupted(f"{name}: dtype {spec['dtype']!r} is not one of {', '.join(DTYPES)}")
    shape, offsets = spec["shape"], spec["data_offsets"]
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise corrupted(f"{name}: shape must be a list of sizes ≥ 0, got {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(n, int) for n in offsets)):
        raise corrupted(f"{name}: data_offsets must be [begin, end], got {offsets!r}")
    begin, end = offsets
    nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    if not 0 <= begin <= end <= data_size or end - begin != nbytes:
        raise corrupted(f"{name}: bytes {begin}…{end} do not hold {dtype} {shape} inside the {data_size} data bytes")
    return dtype, shape, begin, end
