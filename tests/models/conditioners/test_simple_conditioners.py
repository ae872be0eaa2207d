"""class_label, timestep and concat: CFG's condition drop, the null record, input checks, the registry."""

from __future__ import annotations

import math

import pytest
import torch

import diffkit
from diffkit.errors import ConfigError, ShapeError, UnknownNameError
from diffkit.models.conditioners import ClassLabelConditioner, ClassLabelConfig, ConcatConditioner, TimestepConditioner


def test_registry_lists_and_builds_the_four_conditioners():
    assert {"class_label", "timestep", "concat", "text"} <= set(diffkit.names("conditioner"))
    conditioner = diffkit.build("conditioner", "class_label", num_classes=10)
    assert isinstance(conditioner, ClassLabelConditioner)
    assert conditioner.config == ClassLabelConfig(num_classes=10)
    assert ClassLabelConfig.from_dict(conditioner.config.to_dict()) == conditioner.config
    assert diffkit.get_entry("conditioner", "class_label").options is ClassLabelConfig
    assert isinstance(diffkit.build("conditioner", "timestep", dim=8), TimestepConditioner)
    assert isinstance(diffkit.build("conditioner", "concat", channels=3), ConcatConditioner)
    with pytest.raises(UnknownNameError, match="num_classes"):
        diffkit.build("conditioner", "class_label", num_clases=10)
    with pytest.raises(ConfigError, match="num_classes must be an integer ≥ 1"):
        diffkit.build("conditioner", "class_label", num_classes=0)
    with pytest.raises(ConfigError, match=r"drop_prob must be a finite number in \[0, 1\)"):
        diffkit.build("conditioner", "class_label", num_classes=3, drop_prob=1.0)


# -- class labels -------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_label_drop_rate_matches_drop_prob(p):
    """Each label is dropped independently with probability p: the observed rate of N draws
    lies within 4 standard errors √(p(1−p)/N) of p, and only dropped labels change."""
    n, k = 20000, 7
    conditioner = ClassLabelConditioner(ClassLabelConfig(num_classes=k, drop_prob=p)).train()
    labels = torch.arange(n) % k
    out = conditioner(labels, generator=torch.Generator().manual_seed(1)).labels
    dropped = out == k
    assert torch.equal(out[~dropped], labels[~dropped])
    rate = dropped.double().mean().item()
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n)
    # Reproducible from the generator; another seed drops other samples.
    again = conditioner(labels, generator=torch.Generator().manual_seed(1)).labels
    other = conditioner(labels, generator=torch.Generator().manual_seed(2)).labels
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_eval_mode_never_drops_and_force_drop_forces():
    conditioner = ClassLabelConditioner(ClassLabelConfig(num_classes=4, drop_prob=0.9)).eval()
    labels = torch.tensor([0, 1, 2, 3] * 50)
    assert torch.equal(conditioner(labels).labels, labels)
    assert torch.equal(conditioner(labels, force_drop=True).labels, torch.full_like(labels, 4))
    assert torch.equal(conditioner(labels, force_drop=False).labels, labels)
    which = torch.arange(200) % 3 == 0
    forced = conditioner(labels, force_drop=which).labels
    assert bool((forced[which] == 4).all()) and torch.equal(forced[~which], labels[~which])
    # In training mode, forced samples are dropped on top of the random ones.
    conditioner.train()
    forced = conditioner(labels, force_drop=True, generator=torch.Generator()).labels
    assert torch.equal(forced, torch.full_like(labels, 4))
    with pytest.raises(ShapeError, match=r"\[B\] = \[200\]"):
        conditioner(labels, force_drop=which[:3])
    with pytest.raises(ShapeError, match="bool"):
        conditioner(labels, force_drop=which.long())
    with pytest.raises(ConfigError, match="force_drop"):
        conditioner(labels, force_drop=1)


def test_label_inputs_and_range():
    conditioner = ClassLabelConditioner(ClassLabelConfig(num_classes=10)).eval()
    assert torch.equal(conditioner([3, 0, 9]).labels, torch.tensor([3, 0, 9]))
    assert conditioner.batch_size_of([3, 0, 9]) == 3
    assert conditioner.batch_size_of(torch.zeros(5, dtype=torch.long)) == 5
    for bad in ([10], torch.tensor([2, -1]), [0, 11, 3]):
        with pytest.raises(ConfigError, match="outside the valid range 0 … 9"):
            conditioner(bad)
    with pytest.raises(ConfigError, match="integers"):
        conditioner([1.0, 2.0])
    with pytest.raises(ConfigError, match="integers"):
        conditioner([True])
    with pytest.raises(ShapeError, match="integer tensor"):
        conditioner(torch.tensor([1.0]))
    with pytest.raises(ShapeError, match=r"shape \[B\]"):
        conditioner(torch.zeros(2, 2, dtype=torch.long))
    null = conditioner.null(3)
    assert torch.equal(null.labels, torch.full((3,), 10)) and null.vector is None


def test_label_embedding_vector_uses_the_null_row():
    conditioner = ClassLabelConditioner(ClassLabelConfig(num_classes=5, embed_dim=8, drop_prob=0.5)).train()
    table = conditioner.embedding.weight
    assert table.shape == (6, 8)
    labels = torch.arange(100) % 5
    record = conditioner(labels, generator=torch.Generator().manual_seed(0))
    assert record.vector.shape == (100, 8)
    torch.testing.assert_close(record.vector, table[record.labels], rtol=0, atol=0)
    dropped = record.labels == 5
    assert 0 < int(dropped.sum()) < 100
    torch.testing.assert_close(conditioner.null(2).vector, table[[5, 5]], rtol=0, atol=0)
    # A dropped sample's record is the null record's.
    torch.testing.assert_close(record.vector[dropped], conditioner.null(int(dropped.sum())).vector, rtol=0, atol=0)


# -- timestep -----------------------------------------------------------------------------------


def test_timestep_features_are_the_sinusoidal_embedding():
    conditioner = diffkit.build("conditioner", "timestep", dim=6, max_period=100.0)
    t = [0.0, 1.5, 40.0]
    out = conditioner(t).vector
    assert out.shape == (3, 6) and out.dtype == torch.float32
    for row, ti in zip(out.tolist(), t):
        freqs = [100.0 ** (-i / 3) for i in range(3)]  # f_i = P^(−i/half), half = 3
        expected = [math.cos(ti * f) for f in freqs] + [math.sin(ti * f) for f in freqs]
        assert row == pytest.approx(expected, abs=1e-5)
    forced = conditioner(torch.tensor(t), force_drop=torch.tensor([False, True, False])).vector
    assert torch.equal(forced[1], torch.zeros(6)) and torch.equal(forced[[0, 2]], out[[0, 2]])
    assert torch.equal(conditioner.null(2).vector, torch.zeros(2, 6))
    assert conditioner.batch_size_of(torch.zeros(4)) == 4
    with pytest.raises(ShapeError, match=r"shape \[B\]"):
        conditioner(torch.zeros(2, 1))
    with pytest.raises(ConfigError, match="real numbers"):
        conditioner(["1"])


def test_timestep_drop_in_training():
    conditioner = diffkit.build("conditioner", "timestep", dim=4, drop_prob=0.5).train()
    out = conditioner(torch.arange(1, 201).float(), generator=torch.Generator().manual_seed(3)).vector
    zero = (out == 0).all(dim=1)
    assert 50 < int(zero.sum()) < 150  # Binomial(200, ½): ±7 standard deviations
    # cos(t·f_0) = cos(t) ≠ 0 for these t, so only dropped rows are zero.
    assert not (out[~zero] == 0).all(dim=1).any()


# -- concat -------------------------------------------------------------------------------------


def test_concat_passes_images_and_drops_to_zeros():
    conditioner = diffkit.build("conditioner", "concat", channels=2, drop_prob=0.5).train()
    images = torch.rand(64, 2, 4, 4) + 0.1  # never exactly 0
    record = conditioner(images, generator=torch.Generator().manual_seed(0))
    zero = (record.concat == 0).flatten(1).all(dim=1)
    assert 0 < int(zero.sum()) < 64
    assert torch.equal(record.concat[~zero], images[~zero])
    conditioner.eval()
    assert torch.equal(conditioner(images).concat, images)
    assert torch.equal(conditioner(images, force_drop=True).concat, torch.zeros_like(images))
    assert torch.equal(conditioner.null(3, size=4).concat, torch.zeros(3, 2, 4, 4))
    with pytest.raises(ConfigError, match="needs the image size"):
        conditioner.null(3)
    sized = diffkit.build("conditioner", "concat", channels=2, size=[4, 6])
    assert sized.config.size == (4, 6) and sized.null(1).concat.shape == (1, 2, 4, 6)
    with pytest.raises(ShapeError, match=r"4×6"):
        sized(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ShapeError, match=r"\[B, 2, H, W\]"):
        conditioner(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ShapeError, match="floating-point"):
        conditioner(torch.zeros(1, 2, 4, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match="size"):
        diffkit.build("conditioner", "concat", channels=2, size=(0, 4))
