"""The Conditioning record: validation, batch size, moving, selecting and mixing samples."""

from __future__ import annotations

import attrs
import pytest
import torch

from diffkit.errors import ConfigError, ShapeError
from diffkit.models.conditioners import FIELDS, Conditioning


def full(batch: int = 3) -> Conditioning:
    gen = torch.Generator().manual_seed(0)
    return Conditioning(
        labels=torch.arange(batch),
        vector=torch.randn(batch, 4, generator=gen),
        context=torch.randn(batch, 5, 6, generator=gen),
        mask=torch.rand(batch, 5, generator=gen) > 0.3,
        concat=torch.randn(batch, 2, 8, 8, generator=gen),
    )


def test_fields_batch_size_and_defaults():
    record = full()
    assert record.batch_size == 3 and record.present() == FIELDS
    assert record.device == torch.device("cpu")
    empty = Conditioning()
    assert empty.batch_size is None and empty.present() == () and empty.as_dict() == {}
    assert Conditioning(vector=torch.zeros(2, 3)).present() == ("vector",)
    assert Conditioning(labels=torch.tensor([1, 2], dtype=torch.int32)).labels.dtype == torch.int64
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        record.labels = torch.zeros(3, dtype=torch.long)  # type: ignore[misc]
    with pytest.raises(TypeError):
        Conditioning(torch.zeros(3, dtype=torch.long))  # type: ignore[misc]  # keyword-only


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"labels": torch.zeros(3)}, "integer"),
        ({"labels": torch.zeros(3, dtype=torch.bool)}, "integer"),
        ({"labels": torch.zeros(3, 1, dtype=torch.long)}, r"\[B\]"),
        ({"vector": torch.zeros(3, dtype=torch.float32)}, r"\[B, D\]"),
        ({"vector": torch.zeros(3, 2, dtype=torch.long)}, "floating-point"),
        ({"context": torch.zeros(3, 4)}, r"\[B, M, d_ctx\]"),
        ({"context": torch.zeros(3, 4, 2), "mask": torch.ones(3, 4)}, "bool"),
        ({"context": torch.zeros(3, 4, 2), "mask": torch.ones(3, 5, dtype=torch.bool)}, r"\(3, 4\)"),
        ({"mask": torch.ones(3, 4, dtype=torch.bool)}, "without a context"),
        ({"concat": torch.zeros(3, 2, 4)}, r"\[B, C, H, W\]"),
        ({"labels": [1, 2]}, "tensor"),
        ({"labels": torch.zeros(3, dtype=torch.long), "vector": torch.zeros(2, 4)}, "labels has 3, vector has 2"),
    ],
)
def test_invalid_records_are_rejected(fields, message):
    with pytest.raises(ShapeError, match=message):
        Conditioning(**fields)


def test_select_index_and_to():
    record = full(4)
    two = record.select(torch.tensor([3, 1]))
    assert two.batch_size == 2
    for name in FIELDS:
        assert torch.equal(getattr(two, name), getattr(record, name)[[3, 1]])
    last = record.index(-1)
    assert last.batch_size == 1 and torch.equal(last.context, record.context[3:])
    assert torch.equal(record.select(torch.tensor([True, False, False, True])).labels, torch.tensor([0, 3]))
    with pytest.raises(ShapeError, match="out of range"):
        record.index(4)
    doubled = record.to(dtype=torch.float64)
    assert doubled.vector.dtype == torch.float64 and doubled.concat.dtype == torch.float64
    assert doubled.labels.dtype == torch.int64 and doubled.mask.dtype == torch.bool
    with pytest.raises(ConfigError, match="floating-point"):
        record.to(dtype=torch.int32)


def test_where_mixes_samples_and_broadcasts_a_batch_of_one():
    record = full(3)
    other = Conditioning(
        labels=torch.tensor([9]),
        vector=torch.zeros(1, 4),
        context=torch.ones(1, 5, 6),
        mask=torch.ones(1, 5, dtype=torch.bool),
        concat=torch.zeros(1, 2, 8, 8),
    )
    drop = torch.tensor([False, True, False])
    mixed = record.where(drop, other)
    for name in FIELDS:
        assert torch.equal(getattr(mixed, name)[[0, 2]], getattr(record, name)[[0, 2]])
        assert torch.equal(getattr(mixed, name)[1], getattr(other, name)[0])
    with pytest.raises(ConfigError, match="same fields"):
        record.where(drop, Conditioning(labels=torch.tensor([9])))
    with pytest.raises(ShapeError, match=r"shape \[B\]"):
        record.where(torch.tensor([True]), other)


def test_replace_validates_and_names_unknown_fields():
    record = full(2)
    assert record.replace(context=None, mask=None).present() == ("labels", "vector", "concat")
    with pytest.raises(ShapeError, match="without a context"):
        record.replace(context=None)
    with pytest.raises(ConfigError, match="no field 'label'"):
        record.replace(label=None)


def test_expand_repeats_one_sample_without_copying():
    one = Conditioning(labels=torch.tensor([3]), vector=torch.randn(1, 4))
    many = one.expand(5)
    assert many.batch_size == 5
    assert torch.equal(many.vector, one.vector.repeat(5, 1)) and torch.equal(many.labels, torch.full((5,), 3))
    assert many.vector.data_ptr() == one.vector.data_ptr()  # a view
    with pytest.raises(ShapeError, match="only a record of batch size 1"):
        many.expand(10)
