"""Any registered backbone × sampler × conditioner combination that fits works: a test matrix.

Every cell builds a tiny :class:`~diffkit.pipeline.Pipeline`, takes one training step (loss,
backward, SGD update) and draws a 3-step sample with classifier-free guidance w = 2, and
checks that everything is finite and of the right shape, that the step changed the weights,
and — for conditioned pipelines — that guidance changed the sample (so the condition
reaches the backbone through both CFG branches).

To stay fast, every registered sampler (``conforming_samplers()``: plugins included, peer wrappers not) runs
on the smallest backbone, ``unet``; the other backbones run :data:`REPRESENTATIVE` samplers.
How each conditioner is wired into each backbone is :func:`compose`'s table; a combination
that cannot fit (``concat`` on ``dit``: a transformer on patches has no input channels to
concatenate to) is checked to raise a :class:`~diffkit.errors.ConfigError` and then skipped.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import torch

import diffkit
from diffkit.errors import ConfigError
from diffkit.pipeline import Pipeline
from tests.sweeps import conforming_samplers

BACKBONES = ("unet", "dit", "latent_unet")
CONDITIONERS = (None, "class_label", "text", "concat", "timestep")
FULL_SAMPLER_BACKBONE = "unet"
# one of each kind: multistep predictor-corrector (the default), second-order single-step
# (two evaluations a step), and stochastic (an SDE solver drawing from the generator)
REPRESENTATIVE = ("unipc", "heun", "dpmpp_2m_sde")
ALL_SAMPLERS = tuple(conforming_samplers())

K = 4  # classes
D = 16  # width of every conditioning vector and of the text context
N_TRAIN, N_SAMPLE = 3, 2

BACKBONE_CONFIGS: dict[str, dict[str, Any]] = {
    "unet": {
        "sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": (16, 16),
        "layers_per_block": 1, "attention_levels": (), "mid_attention": False, "norm_groups": 8, "dropout": 0.0,
    },
    "dit": {  # learn_sigma (DiT's default): 2C outputs, so the hybrid loss and learned variance run too
        "input_size": 8, "patch_size": 4, "in_channels": 2, "hidden_size": 16, "depth": 1, "num_heads": 2,
        "frequency_embedding_size": 16, "num_classes": 0, "learn_sigma": True,
    },
    "latent_unet": {
        "sample_size": 8, "in_channels": 2, "out_channels": 2, "block_out_channels": (16, 16),
        "layers_per_block": 1, "cross_attention_levels": (1,), "num_heads": 2, "context_dim": D, "norm_groups": 8,
    },
}
CHANNELS = {"unet": 1, "dit": 2, "latent_unet": 2}  # C of the sample
CONCAT_CHANNELS = 1


@attrs.frozen
class Composition:
    """Pipeline keyword arguments for one backbone × conditioner cell, or why it cannot fit."""

    kwargs: dict[str, Any]
    misfit: str | None = None


def compose(backbone: str, conditioner: str | None) -> Composition:
    """How ``conditioner`` is wired into ``backbone`` (see the conditioners' package docstring).

    * ``class_label``: the class table of ``unet``/``dit`` (``num_classes``); ``latent_unet``
      has none, so the conditioner embeds the label itself (``embed_dim``) into the record's
      ``vector``, read through ``vector_dim``;
    * ``text``: ``latent_unet``'s cross-attention reads the context; ``unet``/``dit`` read the
      pooled ``vector`` through ``vector_dim``;
    * ``timestep``: the sinusoidal ``vector`` through ``vector_dim``;
    * ``concat``: extra input channels of ``unet``/``latent_unet``; ``dit`` cannot take them.
    """
    config = dict(BACKBONE_CONFIGS[backbone])
    channels = CHANNELS[backbone]
    kwargs: dict[str, Any] = {"sample_shape": (channels, 8, 8), "default_steps": 3}
    misfit = None
    if conditioner == "class_label":
        if backbone == "latent_unet":
            config["vector_dim"] = D
            kwargs["conditioner"] = ("class_label", {"num_classes": K, "embed_dim": D, "drop_prob": 0.5})
        else:
            config["num_classes"] = K
            kwargs["conditioner"] = ("class_label", {"num_classes": K, "drop_prob": 0.5})
    elif conditioner == "text":
        if backbone != "latent_unet":
            config["vector_dim"] = D
        text = {"width": 16, "depth": 1, "heads": 2, "max_length": 8, "context_dim": D, "drop_prob": 0.5}
        kwargs["conditioner"] = ("text", text)
    elif conditioner == "timestep":
        config["vector_dim"] = D
        kwargs["conditioner"] = ("timestep", {"dim": D, "drop_prob": 0.5})
    elif conditioner == "concat":
        kwargs["conditioner"] = ("concat", {"channels": CONCAT_CHANNELS, "size": 8, "drop_prob": 0.5})
        if backbone == "dit":
            misfit = "a DiT patchifies x and has no input channels to concatenate a conditioning image to"
        else:
            config["in_channels"] = channels + CONCAT_CHANNELS
    kwargs["backbone"] = (backbone, config)
    return Composition(kwargs, misfit)


def inputs(conditioner: str | None, n: int, seed: int) -> Any:
    """User inputs for ``n`` samples of ``conditioner``."""
    g = torch.Generator().manual_seed(seed)
    if conditioner is None:
        return None
    if conditioner == "class_label":
        return torch.randint(0, K, (n,), generator=g)
    if conditioner == "text":
        words = ["a red square", "two dots", "", "a very long prompt that is cut"]
        return [words[(seed + i) % len(words)] for i in range(n)]
    if conditioner == "timestep":
        return torch.rand(n, generator=g, dtype=torch.float64) * 1000
    if conditioner == "concat":
        return torch.rand(n, CONCAT_CHANNELS, 8, 8, generator=g) * 2 - 1
    raise AssertionError(f"no inputs for the conditioner {conditioner!r}: add it to the matrix")


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Add N(0, scale²) to every parameter: the backbones start with zeroed output layers,
    whose prediction ignores x and the condition."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


pytestmark = pytest.mark.usefixtures("one_thread")


def _cells() -> list[Any]:
    cells = []
    for backbone in BACKBONES:
        samplers = ALL_SAMPLERS if backbone == FULL_SAMPLER_BACKBONE else REPRESENTATIVE
        for conditioner in CONDITIONERS:
            for sampler in samplers:
                cells.append(pytest.param(backbone, conditioner, sampler, id=f"{backbone}-{conditioner}-{sampler}"))
    return cells


@pytest.mark.parametrize(("backbone", "conditioner", "sampler"), _cells())
def test_combination_trains_and_samples(backbone, conditioner, sampler):
    composition = compose(backbone, conditioner)
    if composition.misfit is not None:
        _assert_misfit_is_a_clear_error(composition, conditioner)
        pytest.skip(f"{conditioner} cannot fit {backbone}: {composition.misfit} (checked: a ConfigError)")

    pipe = Pipeline(**composition.kwargs, sampler=sampler)
    perturb(pipe, seed=len(sampler))
    channels = pipe.sample_shape[0]

    # one training step
    pipe.train()
    trainable = [p for p in pipe.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(N_TRAIN, channels, 8, 8, generator=g) * 2 - 1
    loss, parts = pipe.loss(x0, inputs(conditioner, N_TRAIN, seed=1), generator=g)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(parts) == ({"mse", "vlb"} if pipe.learned_variance else {"mse"})
    loss.backward()
    grads = [p.grad for p in trainable if p.grad is not None]
    assert grads and all(torch.isfinite(grad).all() for grad in grads)
    torch.optim.SGD(trainable, lr=1e-2).step()
    assert all(torch.isfinite(p).all() for p in trainable)
    assert any(not torch.equal(p, b) for p, b in zip(trainable, before))

    # a 3-step sample, guided when there is a condition (guidance needs one)
    cond = inputs(conditioner, N_SAMPLE, seed=2)
    out = pipe.sample(N_SAMPLE, cond=cond, steps=3, guidance=1.0 if conditioner is None else 2.0, generator=0)
    assert out.shape == (N_SAMPLE, channels, 8, 8) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert pipe.training  # sampling restores the mode it found
    if conditioner is not None:
        unguided = pipe.sample(N_SAMPLE, cond=cond, steps=3, guidance=1.0, generator=0)
        assert torch.isfinite(unguided).all() and not torch.equal(out, unguided)


def _assert_misfit_is_a_clear_error(composition: Composition, conditioner: str) -> None:
    """Building the pipeline, training it or sampling it raises a ConfigError naming the problem."""
    with pytest.raises(ConfigError, match=conditioner):
        pipe = Pipeline(**composition.kwargs)
        pipe.loss(torch.zeros(N_TRAIN, *pipe.sample_shape), inputs(conditioner, N_TRAIN, seed=1))
    with pytest.raises(ConfigError, match=conditioner):
        pipe = Pipeline(**composition.kwargs)
        pipe.sample(N_SAMPLE, cond=inputs(conditioner, N_SAMPLE, seed=2), steps=2, guidance=2.0, generator=0)


# Wirings that leave the backbone unable to read anything the conditioner gives: each must be
# a ConfigError that says what the backbone lacks, not an exception from deep inside a layer.
MISWIRED = {
    "class_label on latent_unet without an embedding": (
        "latent_unet", {}, ("class_label", {"num_classes": K}), "labels need a class table",
    ),
    "class_label on unet without a class table": (
        "unet", {}, ("class_label", {"num_classes": K}), "labels need a class table",
    ),
    "text on dit without vector_dim": (
        "dit", {}, ("text", {"width": 16, "depth": 1, "heads": 2, "max_length": 8, "context_dim": D}),
        "a vector needs a projection",
    ),
    "timestep on unet without vector_dim": ("unet", {}, ("timestep", {"dim": D}), "a vector needs a projection"),
    "concat on dit": ("dit", {}, ("concat", {"channels": 1, "size": 8}), "cannot use the conditioning's concat"),
}


@pytest.mark.parametrize(("backbone", "changes", "conditioner", "message"), MISWIRED.values(), ids=MISWIRED.keys())
def test_miswired_combinations_raise_a_clear_error(backbone, changes, conditioner, message):
    kwargs = {
        "backbone": (backbone, {**BACKBONE_CONFIGS[backbone], **changes}),
        "conditioner": conditioner,
        "sample_shape": (CHANNELS[backbone], 8, 8),
    }
    with pytest.raises(ConfigError, match=message):
        pipe = Pipeline(**kwargs)
        pipe.loss(torch.zeros(N_TRAIN, *pipe.sample_shape), inputs(conditioner[0], N_TRAIN, seed=1))
    with pytest.raises(ConfigError, match=message):
        pipe = Pipeline(**kwargs)
        pipe.sample(N_SAMPLE, cond=inputs(conditioner[0], N_SAMPLE, seed=2), steps=2, guidance=2.0, generator=0)


def _wraps_a_peer_library(kind: str, name: str) -> bool:
    return getattr(diffkit.get_entry(kind, name).obj, "__module__", "").startswith("diffkit.integrations.")


def test_the_matrix_covers_every_built_in_backbone_and_conditioner():
    """A new built-in backbone or conditioner must be added to the matrix (and to :func:`compose`).

    Wrappers of a peer library's modules (``diffkit.integrations``: diffusers' transformers,
    transformers' text encoders) need that optional library and are tested in tests/integrations.
    """
    for kind, covered in (("backbone", set(BACKBONES)), ("conditioner", set(CONDITIONERS) - {None})):
        built_in = {
            name for name in diffkit.names(kind)
            if diffkit.get_entry(kind, name).origin.builtin and not _wraps_a_peer_library(kind, name)
        }
        assert built_in <= covered, f"built-in {kind}s missing from the matrix: {sorted(built_in - covered)}"
    assert set(REPRESENTATIVE) <= set(ALL_SAMPLERS)
