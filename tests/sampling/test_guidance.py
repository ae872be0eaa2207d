"""Classifier-free guidance: batching, w = 1, rescale (vs the reference and diffusers), interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffkit
from diffkit.errors import ConfigError, ShapeError, UnknownNameError
from diffkit.sampling.guidance import CFGDenoiser, batch_conditions
from diffkit_reference.parameterizations import guided_x0
from tests.analytic_models import ExactVPModel, denoiser_torch


class Counting:
    """A conditional denoiser D(x, σ, label) = exact D + label·sin(x)·σ/(1+σ), counting its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, cond=None):
        self.calls.append((x.shape[0], cond))
        out = denoiser_torch(x, sigma)
        if cond is None:
            return out
        label = cond["label"] if isinstance(cond, dict) else cond
        s = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return out + label.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) * torch.sin(x) * s / (1 + s)


def inputs(batch=3, shape=(2, 4), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    sigma = torch.rand(batch, generator=g, dtype=torch.float64).mul(5).add(0.05).to(dtype)
    x = torch.randn(batch, *shape, generator=g, dtype=torch.float64).to(dtype)
    x = x * (1 + sigma.reshape(-1, *([1] * len(shape))))
    return x, sigma


@given(scale=st.floats(0, 12), batch=st.integers(1, 4), seed=st.integers(0, 1000))
def test_one_batched_forward_equals_two_separate_forwards(scale, batch, seed):
    x, sigma = inputs(batch, seed=seed)
    labels = torch.arange(1, batch + 1, dtype=torch.float64)
    inner = Counting()
    guided = CFGDenoiser(inner, scale, uncond=torch.zeros(batch, dtype=torch.float64))(x, sigma, labels)
    if scale != 1:
        assert len(inner.calls) == 1 and inner.calls[0][0] == 2 * batch  # one forward of batch 2B
        assert inner.calls[0][1].tolist() == labels.tolist() + [0.0] * batch  # [cond; uncond]
    cond, uncond = inner(x, sigma, labels), inner(x, sigma, torch.zeros(batch, dtype=torch.float64))
    torch.testing.assert_close(guided, uncond + scale * (cond - uncond), rtol=1e-12, atol=1e-12)


def test_scale_one_is_exactly_the_conditional_prediction_with_one_forward():
    x, sigma = inputs(seed=1, dtype=torch.float32)
    labels = torch.tensor([1.0, 2.0, 3.0])
    inner = Counting()
    cfg = CFGDenoiser(inner, 1.0, uncond=torch.zeros(1), rescale=0.7, interval=(0.5, 2.0))
    out = cfg(x, sigma, labels)
    assert len(inner.calls) == 1 and inner.calls[0][0] == 3  # no unconditional forward
    assert torch.equal(out, inner(x, sigma, labels))  # bit-identical


def test_guidance_acts_on_every_channel():
    """Unlike DiT's reference code (first 3 channels only), all channels are guided."""
    x, sigma = inputs(2, shape=(6, 2), seed=2)
    inner = Counting()
    one, zero = torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    out = CFGDenoiser(inner, 4.0, uncond=zero)(x, sigma, one)
    cond, uncond = inner(x, sigma, one), inner(x, sigma, zero)
    torch.testing.assert_close(out[:, 3:], (uncond + 4 * (cond - uncond))[:, 3:])
    assert not torch.allclose(out[:, 3:], cond[:, 3:])


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_guiding_x0_equals_guiding_the_network_output(prediction):
    """x0 is affine in ε and in v with the same per-sample coefficients in both branches."""
    schedule = diffkit.build("schedule", "linear")
    exact = ExactVPModel(schedule, prediction)
    model = lambda x_t, t, label: exact(x_t, t) + label.reshape(-1, 1) * torch.cos(x_t)  # noqa: E731
    denoiser = diffkit.VPDenoiser(model, schedule, prediction)
    y, t = torch.randn(3, 5, dtype=torch.float64), torch.tensor([10, 400, 900])
    sigma, labels, null = schedule.sigmas[t], torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    x_t = y * (1 + sigma**2).rsqrt()[:, None]
    out_c, out_u = model(x_t, t.double(), labels), model(x_t, t.double(), null)
    guided_out = out_u + 5 * (out_c - out_u)
    ours = CFGDenoiser(denoiser, 5.0, uncond=null)(y, sigma, labels)
    expected = diffkit.VPDenoiser(lambda x_t, tt: guided_out, schedule, prediction)(y, sigma)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


# -- conditioning batching rule ---------------------------------------------------------------


def test_conditioning_batching_rule():
    b = 3
    emb, null = torch.randn(b, 4, 8), torch.zeros(1, 4, 8)  # a batch-1 null embedding is expanded
    both = batch_conditions({"text": emb, "extra": {"pooled": torch.ones(b, 2)}, "mode": "x"},
                            {"text": null, "extra": {"pooled": torch.zeros(b, 2)}, "mode": "x"}, b)
    assert both["text"].shape == (2 * b, 4, 8) and torch.equal(both["text"][:b], emb) and not both["text"][b:].any()
    assert both["extra"]["pooled"].shape == (2 * b, 2) and both["mode"] == "x"
    assert batch_conditions(None, None, b) is None
    with pytest.raises(ConfigError, match="same keys"):
        batch_conditions({"a": emb}, {"b": emb}, b)
    with pytest.raises(ConfigError, match="a tensor in one branch"):
        batch_conditions({"a": emb}, {"a": None}, b)
    with pytest.raises(ShapeError, match="per-sample shape"):
        batch_conditions(emb, torch.zeros(b, 4, 7), b)
    with pytest.raises(ShapeError, match="leading batch dimension"):
        batch_conditions(torch.zeros(2, 4, 8), null, b)
    with pytest.raises(ShapeError, match="leading batch dimension"):
        batch_conditions(torch.tensor(1.0), torch.tensor(0.0), b)
    with pytest.raises(ConfigError, match="must be equal"):
        batch_conditions({"a": emb, "mode": 1}, {"a": null, "mode": 2}, b)


def test_mapping_conditioning_is_batched_recursively_in_one_forward():
    x, sigma = inputs(2, seed=3)
    inner = Counting()
    cfg = CFGDenoiser(inner, 3.0, uncond={"label": torch.zeros(1, dtype=torch.float64)})
    out = cfg(x, sigma, {"label": torch.tensor([1.0, 2.0], dtype=torch.float64)})
    assert len(inner.calls) == 1 and inner.calls[0][1]["label"].tolist() == [1, 2, 0, 0]
    c, u = inner(x, sigma, torch.tensor([1.0, 2.0], dtype=torch.float64)), inner(x, sigma)
    torch.testing.assert_close(out, u + 3 * (c - u))


def test_a_none_branch_runs_as_two_forwards_without_conditioning():
    schedule = diffkit.build("schedule", "linear")
    seen = []

    def model(x_t, t, *cond):
        seen.append(cond)
        return torch.zeros_like(x_t) + (cond[0].reshape(-1, 1) if cond else 0)

    cfg = CFGDenoiser(diffkit.VPDenoiser(model, schedule, "x0"), 2.0, uncond=None)
    out = cfg(torch.zeros(2, 3), schedule.sigmas[[5, 5]].float(), torch.tensor([1.0, 4.0]))
    assert len(seen) == 2 and seen[1] == ()  # the unconditional call passes no cond to the network
    torch.testing.assert_close(out, torch.tensor([[2.0] * 3, [8.0] * 3]))


# -- scale validation ---------------------------------------------------------------------------


def test_bad_scales_and_options_are_clear_errors():
    d = Counting()
    with pytest.raises(ConfigError, match="allow_negative=True"):
        CFGDenoiser(d, -1.0, uncond=None)
    assert CFGDenoiser(d, -1.0, uncond=None, allow_negative=True).scale == -1.0
    for bad in (math.nan, math.inf):
        with pytest.raises(ConfigError, match="finite"):
            CFGDenoiser(d, bad, uncond=None, allow_negative=True)
    with pytest.raises(ConfigError, match="real number"):
        CFGDenoiser(d, True, uncond=None)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        CFGDenoiser(d, 5.0, uncond=None, rescale=1.5)
    with pytest.raises(UnknownNameError, match="did you mean 'eps'"):
        CFGDenoiser(d, 5.0, uncond=None, rescale=0.5, rescale_space="epsilon")
    for bad in [(2.0, 1.0), (-1.0, 1.0), (math.nan, 1.0), (1.0,), "ab"]:
        with pytest.raises(ConfigError, match="interval"):
            CFGDenoiser(d, 5.0, uncond=None, interval=bad)


# -- guidance rescale ---------------------------------------------------------------------------


@given(
    space=st.sampled_from(["v", "eps", "x0"]),
    scale=st.floats(0, 10),
    rescale=st.floats(0, 1),
    seed=st.integers(0, 1000),
)
def test_rescale_matches_the_reference_in_each_space(space, scale, rescale, seed):
    x, sigma = inputs(3, seed=seed)
    labels = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    inner = Counting()
    ours = CFGDenoiser(inner, scale, uncond=torch.zeros(1, dtype=torch.float64), rescale=rescale, rescale_space=space)(
        x, sigma, labels
    )
    cond, uncond = inner(x, sigma, labels), inner(x, sigma, torch.zeros(3, dtype=torch.float64))
    expected = guided_x0(cond.numpy(), uncond.numpy(), x.numpy(), sigma.numpy(), scale, rescale=rescale, space=space)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_rescale_matches_diffusers_on_the_network_output(prediction):
    """diffusers' rescale_noise_cfg on the raw ε / v outputs = CFGDenoiser(rescale_space=prediction)."""
    pytest.importorskip("diffusers")
    from diffusers.guiders.guider_utils import rescale_noise_cfg  # the function every SD pipeline copies
    schedule = diffkit.build("schedule", "scaled_linear")
    exact = ExactVPModel(schedule, prediction)

    def model(x_t, t, label):
        return exact(x_t, t) + label.reshape(-1, 1, 1, 1) * torch.sin(3 * x_t)

    t = torch.tensor([50, 500, 950])
    sigma = schedule.sigmas[t]
    y = torch.randn(3, 4, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = y * (1 + sigma.reshape(-1, 1, 1, 1))
    labels, null = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    x_t = y * (1 + sigma**2).rsqrt().reshape(-1, 1, 1, 1)
    out_c, out_u = model(x_t, t.double(), labels), model(x_t, t.double(), null)
    theirs = rescale_noise_cfg(out_u + 7.5 * (out_c - out_u), out_c, guidance_rescale=0.7)
    expected = diffkit.VPDenoiser(lambda xt, tt: theirs, schedule, prediction)(y, sigma)
    ours = CFGDenoiser(diffkit.VPDenoiser(model, schedule, prediction), 7.5, uncond=null, rescale=0.7,
                       rescale_space=prediction)(y, sigma, labels)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
    # the spaces really differ: x0-space rescale gives another answer
    other = CFGDenoiser(diffkit.VPDenoiser(model, schedule, prediction), 7.5, uncond=null, rescale=0.7,
                        rescale_space="x0")(y, sigma, labels)
    assert (other - ours).abs().max() > 1e-3


def test_rescale_uses_the_std_of_each_sample():
    """φ = 1 in x0 space: each sample's guided std equals its own conditional std."""
    x, sigma = inputs(3, shape=(16,), seed=4)

    def inner(x, s, cond):  # amplitude = the label: samples of very different scales
        return cond.reshape(-1, 1) * torch.sin(torch.arange(16.0, dtype=torch.float64) + cond.reshape(-1, 1))

    labels = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    null = labels / 3
    out = CFGDenoiser(inner, 6.0, uncond=null, rescale=1.0, rescale_space="x0")(x, sigma, labels)
    cond = inner(x, sigma, labels)
    torch.testing.assert_close(out.std(dim=1), cond.std(dim=1), rtol=1e-12, atol=0)
    assert out.std(dim=1).max() / out.std(dim=1).min() > 50  # one batch-wide std would not do this


@pytest.mark.parametrize("space", ["v", "eps", "x0"])
def test_a_constant_prediction_gives_no_nan(space):
    """std = 0 (constant guided prediction in the chosen space) leaves it unscaled."""
    x = torch.zeros(2, 3, 4)
    sigma = torch.tensor([1.0, 2.0])
    const = lambda x, s, cond: torch.zeros_like(x) + cond.reshape(-1, 1, 1)  # noqa: E731
    out = CFGDenoiser(const, 5.0, uncond=torch.zeros(1), rescale=0.7, rescale_space=space)(x, sigma, torch.ones(2))
    assert torch.isfinite(out).all()
    if space != "eps":  # with y = 0 the v and x0 residuals are the constants themselves
        torch.testing.assert_close(out, torch.full_like(x, 5.0))


# -- guidance interval --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_interval_includes_both_ends_and_is_conditional_outside(dtype):
    low, high = 0.28, 5.42
    sigma = torch.tensor([low, high, low * (1 - 1e-6), high * (1 + 1e-6), 1.0, 0.01, 80.0], dtype=dtype)
    x = torch.randn(7, 3, dtype=dtype, generator=torch.Generator().manual_seed(0))
    inner = Counting()
    labels = torch.ones(7, dtype=dtype)
    out = CFGDenoiser(inner, 4.0, uncond=torch.zeros(1, dtype=dtype), interval=(low, high))(x, sigma, labels)
    assert len(inner.calls) == 1  # still one batched forward: the choice is a torch.where on σ [B]
    cond, uncond = inner(x, sigma, labels), inner(x, sigma, torch.zeros(7, dtype=dtype))
    guided = uncond + 4 * (cond - uncond)
    inside = torch.tensor([True, True, False, False, True, False, False])
    torch.testing.assert_close(out[inside], guided[inside])
    torch.testing.assert_close(out[~inside], cond[~inside])
    if dtype == torch.float64:  # the reference agrees
        ref_out = guided_x0(cond.numpy(), uncond.numpy(), x.numpy(), sigma.numpy(), 4.0, interval=(low, high))
        np.testing.assert_allclose(out.numpy(), ref_out, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_keeps_its_dtype_without_nan(dtype):
    x, sigma = inputs(3, seed=5)
    out = CFGDenoiser(Counting(), 7.5, uncond=torch.zeros(1), rescale=0.7)(
        (x * 10).to(dtype), sigma.to(dtype) * 100, torch.ones(3, dtype=dtype)
    )
    assert out.dtype == dtype and torch.isfinite(out).all()


def test_sampling_with_guidance_end_to_end():
    schedule = diffkit.build("schedule", "linear")
    inner = Counting()
    cfg = CFGDenoiser(inner, 3.0, uncond=torch.zeros(1, dtype=torch.float64), rescale=0.5, interval=(0.1, 10.0))
    out = diffkit.sample(cfg, (4, 2), schedule=schedule, sampler="ddim", steps=10,
                         cond=torch.ones(4, dtype=torch.float64), generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64)
    assert torch.isfinite(out).all() and len(inner.calls) == 10


def test_no_device_to_host_sync():
    """On the meta device any .item()/bool()/float() of a tensor raises: guiding with rescale
    and an interval must not need one (the interval is a torch.where on σ [B])."""
    x, sigma = torch.empty(3, 4, device="meta"), torch.empty(3, device="meta")
    inner = lambda x, s, c: x * c.reshape(-1, 1) + s.reshape(-1, 1)  # noqa: E731
    cfg = CFGDenoiser(inner, 5.0, uncond=torch.zeros(1, device="meta"), rescale=0.7, interval=(0.1, 1.0))
    for space in ("v", "eps", "x0"):
        cfg.rescale_space = space
        assert cfg(x, sigma, torch.ones(3, device="meta")).shape == (3, 4)
    with pytest.raises(RuntimeError, match="meta"):
        float(sigma[0])  # the probe works: a sync would have raised
