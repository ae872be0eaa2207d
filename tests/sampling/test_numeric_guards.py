"""Sampling refuses bad input before any work and never returns a wrong result (issue 11).

Each test here failed on the code before the guards: a raw traceback, a silently wrong
result (NaN samples, another shape, an int64 request answered in float32) or an allocator
crash instead of a named :class:`~diffkit.errors.DiffkitError`.
"""

from __future__ import annotations

import math

import pytest
import torch

import diffkit
from diffkit import registry
from diffkit.errors import ConfigError, DiffkitError, InsufficientMemoryError, NonFiniteError, ShapeError
from diffkit.samplers.common import SEED_MAX, as_generator
from diffkit.sampling import draw as sampling
from diffkit.sampling.guidance import MAX_GUIDANCE, CFGDenoiser
from diffkit.schedules.base import MAX_TRAIN_TIMESTEPS
from tests.test_plugins import FakeEntryPoint, host, plugin_module

pytestmark = pytest.mark.usefixtures("one_thread")

SIGMAS = [1.0, 0.5]


class Counting:
    """A denoiser that shrinks x and counts its calls (to show no work was done)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x, sigma, cond=None):
        self.calls += 1
        return x * 0.5


def nan_sampler(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    return x * float("nan")


def inf_sampler(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    out = x.clone()
    out[0, 0, 0] = float("inf")  # one row of 4
    return out


def wrong_shape_sampler(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    return x.new_zeros(x.shape[0], 3, 40, 24)


def none_sampler(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    return None


def with_plugin_samplers(**entries) -> None:
    """The default registry also holds ``entries`` from the plugin 'broken' (distribution diffkit-broken 2.0)."""

    def register(samplers):  # the hook's argument name
        for name, fn in entries.items():
            samplers.add(name, fn)

    module = plugin_module("broken_mod", diffkit_register_samplers=register)
    registry.reset(host(FakeEntryPoint("broken", module, dist="diffkit-broken", version="2.0")))


def tiny_pipeline(**kwargs) -> diffkit.Pipeline:
    torch.manual_seed(0)
    unet = {"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [16, 32],
            "layers_per_block": 1, "norm_groups": 8, "num_classes": 4}
    return diffkit.Pipeline(backbone=("unet", unet), schedule="cosine",
                            conditioner=("class_label", {"num_classes": 4}), parameterization="v", **kwargs)


# -- 1. what a sampler returns is checked ------------------------------------------------------------


def plugin_sampler_error(error: type[Exception], name: str, sampler, shape: tuple[int, ...]) -> str:
    """The message of the ``error`` that sampling ``shape`` with ``sampler``, a plugin's sampler ``name``, raises."""
    with_plugin_samplers(**{name: sampler})
    with pytest.raises(error) as caught:
        diffkit.sample(Counting(), shape, sampler=name, sigmas=SIGMAS)
    return str(caught.value)


def test_a_plugin_sampler_returning_nan_is_an_error_naming_it_and_its_plugin():
    message = plugin_sampler_error(NonFiniteError, "nan_out", nan_sampler, (2, 1, 4, 4))
    assert "'nan_out'" in message and "broken (diffkit-broken 2.0)" in message
    assert "32 non-finite values of 32 (32 NaN, 0 ±inf)" in message


def test_inf_values_are_counted():
    with pytest.raises(NonFiniteError, match=r"4 non-finite values of 32 \(0 NaN, 4 ±inf\)"):
        diffkit.sample(Counting(), (2, 1, 4, 4), sampler=inf_sampler, sigmas=SIGMAS)


def test_a_plugin_sampler_returning_another_shape_is_an_error_naming_both_shapes():
    message = plugin_sampler_error(ShapeError, "misshapen", wrong_shape_sampler, (2, 1, 8, 8))
    assert "'misshapen'" in message and "diffkit-broken" in message
    assert "(2, 3, 40, 24)" in message and "(2, 1, 8, 8)" in message


def test_a_sampler_function_returning_no_tensor_is_an_error_naming_the_function():
    with pytest.raises(ShapeError, match=r"none_sampler returned a NoneType, not a tensor of shape \(2, 2\)"):
        diffkit.sample(Counting(), (2, 2), sampler=none_sampler, sigmas=SIGMAS)


def test_the_finiteness_check_can_be_turned_off_explicitly():
    out = diffkit.sample(Counting(), (2, 2), sampler=nan_sampler, sigmas=SIGMAS, check_finite=False)
    assert bool(out.isnan().all())
    with pytest.raises(ShapeError):  # shapes are checked either way
        diffkit.sample(Counting(), (2, 2), sampler=none_sampler, sigmas=SIGMAS, check_finite=False)
    with pytest.raises(ConfigError, match="check_finite must be True or False"):
        diffkit.sample(Counting(), (2, 2), sampler="euler", sigmas=SIGMAS, check_finite="yes")


def test_a_nan_denoiser_under_a_builtin_sampler_is_an_error():
    with pytest.raises(NonFiniteError, match=r"sampler 'euler' \(built in\).*denoiser"):
        diffkit.sample(lambda x, s, c=None: x * float("nan"), (2, 2), sampler="euler", sigmas=SIGMAS)


def test_pipeline_sample_refuses_a_plugin_samplers_nan_and_wrong_shape():
    with_plugin_samplers(nan_out=nan_sampler, misshapen=wrong_shape_sampler)
    pipeline = tiny_pipeline()
    labels = torch.arange(2)
    with pytest.raises(NonFiniteError, match="nan_out"):
        pipeline.sample(2, cond=labels, steps=2, sampler="nan_out", generator=0)
    with pytest.raises(ShapeError, match=r"misshapen.*\(2, 3, 40, 24\)"):
        pipeline.sample(2, cond=labels, steps=2, sampler="misshapen", generator=0)


def test_pipeline_sample_refuses_a_decoder_that_makes_nan():
    class NaNDecoder(torch.nn.Module):
        def decode_latents(self, latents):
            return torch.full((latents.shape[0], 3, 16, 16), float("nan"))

    pipeline = tiny_pipeline()
    pipeline.autoencoder = NaNDecoder()
    with pytest.raises(NonFiniteError, match=r"autoencoder \(NaNDecoder\) returned 1536 non-finite.*decoder"):
        pipeline.sample(2, cond=torch.arange(2), steps=2, generator=0)
    assert pipeline.sample(2, cond=torch.arange(2), steps=2, generator=0, decode=False).shape == (2, 1, 8, 8)


# -- 2. seeds ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [2**70, 2**64, -1, -(2**63)])
def test_seeds_outside_0_to_2_64_are_refused_naming_the_range(seed):
    denoiser = Counting()
    with pytest.raises(ConfigError, match=r"0 … 2\*\*64−1") as caught:
        diffkit.sample(denoiser, (1, 2), sampler="euler", sigmas=SIGMAS, generator=seed)
    assert str(seed) in str(caught.value)
    assert denoiser.calls == 0
    if seed < 0:
        assert "negative" in str(caught.value)


@pytest.mark.parametrize("generator", [1.5, "abc", True, [], [0, 1], object()])
def test_other_generator_values_are_refused(generator):
    with pytest.raises(ConfigError, match="generator must be None, an integer seed"):
        diffkit.sample(Counting(), (2, 2), sampler="euler", sigmas=SIGMAS, generator=generator)


def test_an_int_seed_is_the_cpu_generator_seeded_with_it_at_both_ends_of_the_range():
    for seed in (0, SEED_MAX):
        a = diffkit.sample(Counting(), (2, 3), sampler="euler", sigmas=SIGMAS, generator=seed)
        b = diffkit.sample(Counting(), (2, 3), sampler="euler", sigmas=SIGMAS,
                           generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert as_generator(None) is None


@pytest.mark.parametrize("seed", [2**70, -1, 1.5, "x"])
def test_pipeline_sample_refuses_bad_seeds_before_conditioning(seed, monkeypatch):
    pipeline = tiny_pipeline()
    monkeypatch.setattr(pipeline, "condition", lambda *a, **k: pytest.fail("conditioning ran"))
    with pytest.raises(ConfigError, match="generator"):
        pipeline.sample(2, cond=torch.arange(2), steps=2, generator=seed)


# -- 3. more samples than memory -----------------------------------------------------------------------


def test_a_huge_n_is_refused_before_any_work_naming_needed_and_available_memory(monkeypatch):
    pipeline = tiny_pipeline()
    monkeypatch.setattr(pipeline, "condition", lambda *a, **k: pytest.fail("conditioning ran"))
    with pytest.raises(InsufficientMemoryError) as caught:  # 10**10 × 64 floats: terabytes, on any machine
        pipeline.sample(10**10, steps=2, generator=0)
    message = str(caught.value)
    assert "n=10000000000" in message and "TB" in message and "available" in message and "smaller n" in message
    assert isinstance(caught.value, ConfigError)


def test_the_estimate_counts_the_samplers_state_against_what_is_free(monkeypatch):
    monkeypatch.setattr(sampling, "available_memory", lambda device: 1000)
    denoiser = Counting()
    with pytest.raises(InsufficientMemoryError, match=r"1\.2 KB on cpu \(3 tensors of 400 B.*1 KB is available"):
        diffkit.sample(denoiser, (100, 1), sampler="euler", sigmas=SIGMAS, dtype=torch.float32)
    assert denoiser.calls == 0
    diffkit.sample(denoiser, (10, 1), sampler="euler", sigmas=SIGMAS)  # 120 B fits


def test_available_memory_is_known_on_the_cpu():
    assert sampling.available_memory(torch.device("cpu")) > 0
    assert sampling.available_memory(torch.device("meta")) is None


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried"),
        MemoryError(),
    ],
)
def test_the_allocator_giving_up_during_sampling_is_a_named_error(error):
    def exhausting(denoiser, x, sigmas, **kwargs):
        raise error

    with pytest.raises(InsufficientMemoryError, match=r"n=2 samples of shape \(3,\) ran out of memory on cpu.*smaller n"):
        diffkit.sample(Counting(), (2, 3), sampler=exhausting, sigmas=SIGMAS)


def test_other_runtime_errors_pass_through_unchanged():
    def failing(denoiser, x, sigmas, **kwargs):
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else") as caught:
        diffkit.sample(Counting(), (2, 3), sampler=failing, sigmas=SIGMAS)
    assert not isinstance(caught.value, DiffkitError)


# -- 4. the meta device --------------------------------------------------------------------------------


def test_sigmas_on_the_meta_device_are_a_named_error():
    with pytest.raises(ConfigError, match="meta device"):
        diffkit.sample(Counting(), (2, 2), sampler="euler", sigmas=torch.tensor([1.0, 0.5], device="meta"))
    with pytest.raises(ConfigError, match="meta device"):
        diffkit.samplers.euler(Counting(), torch.zeros(2, 2), torch.tensor([1.0, 0.0], device="meta"))
    with pytest.raises(ConfigError, match="meta device"):
        diffkit.sample(Counting(), (2, 2), schedule="linear", sampler="euler",
                       timesteps=torch.tensor([999, 500], device="meta"))


def test_sampling_on_the_meta_device_is_a_named_error():
    with pytest.raises(ConfigError, match="'meta' holds shapes but no values.*available: cpu"):
        diffkit.sample(Counting(), (2, 2), sampler="euler", sigmas=SIGMAS, device="meta")


def test_a_denoiser_with_weights_on_the_meta_device_is_a_named_error():
    with torch.device("meta"):
        network = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="weight is on the meta device"):
        diffkit.sample(network, (2, 2), sampler="euler", sigmas=SIGMAS)
    pipeline = tiny_pipeline().to("meta")
    with pytest.raises(ConfigError, match="pipeline's weights are on the meta device"):
        pipeline.sample(2, cond=torch.arange(2), steps=2, generator=0)


# -- 5. devices this machine lacks ---------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps", "gpu0", "cuda:99"])
def test_a_device_this_machine_lacks_is_refused_naming_what_there_is(device):
    if device in sampling.available_devices() or (device == "cuda" and torch.cuda.is_available()):
        pytest.skip(f"this machine has {device}")
    if device == "cuda:1" and torch.cuda.device_count() > 1:
        pytest.skip("this machine has two GPUs")
    denoiser = Counting()
    with pytest.raises(ConfigError, match=r"available: cpu") as caught:
        diffkit.sample(denoiser, (2, 2), sampler="euler", sigmas=SIGMAS, device=device)
    assert repr(device) in str(caught.value)
    assert denoiser.calls == 0


def test_resolve_sample_device_accepts_the_cpu_and_refuses_non_devices():
    assert sampling.resolve_sample_device("cpu") == torch.device("cpu")
    assert sampling.resolve_sample_device(None) == torch.get_default_device()
    with pytest.raises(ConfigError, match="device must be a device name"):
        sampling.resolve_sample_device(3.5)


# -- 6. float64 into the backbones ---------------------------------------------------------------------


def _backbones():
    torch.manual_seed(0)
    unet = diffkit.build("backbone", "unet", sample_size=8, in_channels=1, out_channels=1, block_out_channels=[16, 32],
                         layers_per_block=1, norm_groups=8)
    dit = diffkit.build("backbone", "dit", preset="DiT-S/2", input_size=8, in_channels=4, depth=1, hidden_size=32,
                        num_heads=2)
    latent = diffkit.build("backbone", "latent_unet", preset="tiny")
    for module in (unet, dit, latent):  # zero-initialised output layers would hide a wrong computation
        module.eval()  # no dropout
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    context = torch.randn(2, 3, latent.config.context_dim)
    return [("UNet", unet, unet.config.in_channels, None), ("DiT", dit, 4, None),
            ("LatentUNet", latent, latent.config.in_channels, context)]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["unet", "dit", "latent_unet"])
def test_float64_input_into_a_float32_backbone_is_cast_and_answered_in_float64(index):
    name, net, channels, cond = _backbones()[index]
    x = torch.randn(2, channels, 8, 8, dtype=torch.float64)
    t = torch.tensor([10.0, 500.0])
    with torch.no_grad():
        out64 = net(x, t, cond)
        out32 = net(x.float(), t, cond)
    assert out64.dtype == torch.float64 and out32.dtype == torch.float32
    torch.testing.assert_close(out64, out32.double(), rtol=0, atol=0)  # computed in float32, returned in float64
    with pytest.raises(ShapeError, match=f"{name} takes a floating-point x.*int64"):
        net(x.long(), t, cond)


def test_a_float64_pipeline_samples():
    pipeline = tiny_pipeline().to(torch.float64)
    out = pipeline.sample(2, cond=torch.arange(2), steps=2, generator=0, guidance=2.0)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())


# -- 7. schedules --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [10**10, MAX_TRAIN_TIMESTEPS + 1, 0, -1, 1, 1.5, True, "1000", None])
def test_every_registered_schedule_refuses_bad_num_train_timesteps_naming_the_bound(value):
    for name in diffkit.names("schedule"):
        with pytest.raises(ConfigError, match=f"num_train_timesteps must be an integer in 2 … {MAX_TRAIN_TIMESTEPS}"):
            diffkit.build("schedule", name, num_train_timesteps=value)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"beta_start": math.nan}, r"beta_start must be a number in \(0, 1\)"),
        ({"beta_end": math.nan}, r"beta_end must be a number in \(0, 1\)"),
        ({"beta_start": 0.0}, r"\(0, 1\)"),
        ({"beta_end": 1.0}, r"\(0, 1\)"),
        ({"beta_start": -0.1}, r"\(0, 1\)"),
        ({"beta_start": 0.03, "beta_end": 0.02}, "greater than beta_start"),
    ],
)
def test_schedules_with_betas_refuse_bad_betas(options, message):
    for name in ("linear", "scaled_linear", "sigmoid"):
        with pytest.raises(ConfigError, match=message):
            diffkit.build("schedule", name, **options)


@pytest.mark.parametrize("options", [{"low": math.inf}, {"high": math.inf}, {"low": -math.inf}, {"low": math.nan}])
def test_the_sigmoid_schedule_refuses_infinite_ends(options):
    with pytest.raises(ConfigError, match="must be a finite real number"):
        diffkit.build("schedule", "sigmoid", **options)


@pytest.mark.parametrize("rescale", [False, True])
def test_a_table_whose_alpha_bar_underflows_is_refused(rescale):
    # 100 000 linear steps up to β = 0.02 drive ᾱ below 1e-308: σ would be inf (or NaN after the rescale)
    with pytest.raises(ConfigError, match="underflows in float64"):
        diffkit.build("schedule", "linear", num_train_timesteps=MAX_TRAIN_TIMESTEPS, rescale_zero_terminal_snr=rescale)
    schedule = diffkit.build("schedule", "cosine", num_train_timesteps=MAX_TRAIN_TIMESTEPS)
    assert bool(torch.isfinite(schedule.sigmas).all())


def test_sigma_spacings_cap_their_step_count():
    with pytest.raises(ConfigError, match="≤ 100000 for a σ spacing, got 1000000000"):
        diffkit.sample(Counting(), (1, 2), schedule="linear", sampler="euler", steps=10**9, spacing="karras")


# -- 8. guidance ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e30, MAX_GUIDANCE * 1.001, math.inf, math.nan])
def test_huge_guidance_scales_are_refused_naming_the_bound(scale):
    with pytest.raises(ConfigError, match="0 … 1000"):
        CFGDenoiser(Counting(), scale, uncond=None)
    with pytest.raises(ConfigError, match="-1000 … 1000"):
        CFGDenoiser(Counting(), -scale, uncond=None, allow_negative=True)
    pipeline = tiny_pipeline()
    with pytest.raises(ConfigError, match=r"guidance must be a finite real number in 0 … 1000"):
        pipeline.sample(2, cond=torch.arange(2), steps=2, guidance=scale, generator=0)


def test_the_largest_guidance_scale_gives_finite_samples():
    out = tiny_pipeline().sample(2, cond=torch.arange(2), steps=2, guidance=MAX_GUIDANCE, generator=0)
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("rescale", [math.nan, -0.1, 1.5, True, "0.5", math.inf])
def test_bad_guidance_rescale_is_refused_with_or_without_a_conditioner(rescale):
    with pytest.raises(ConfigError, match=r"guidance_rescale must be a number in \[0, 1\]"):
        tiny_pipeline().sample(2, cond=torch.arange(2), steps=2, guidance=2.0, guidance_rescale=rescale)
    unconditional = diffkit.Pipeline(backbone=("unet", {"sample_size": 8, "in_channels": 1, "out_channels": 1,
                                                        "block_out_channels": [16, 32], "layers_per_block": 1,
                                                        "norm_groups": 8}))
    with pytest.raises(ConfigError, match="guidance_rescale"):  # not "needs a conditioned pipeline"
        unconditional.sample(2, steps=2, guidance_rescale=rescale)


@pytest.mark.parametrize(
    "sigmas, message",
    [
        ([1.0, math.nan, 0.1], r"sigmas\[1\] = nan"),
        ([1.0, math.inf], r"sigmas\[1\] = inf"),
        ([math.inf, 1.0], r"sigmas\[0\] = inf"),
        ([0.5, 1.0], "strictly decreasing"),
        ([[1.0, 0.5]], "1-D"),
        (torch.tensor([10, 5, 1]), "dtype int64.*timesteps="),
        (torch.tensor([True, False]), "real numbers"),
    ],
)
def test_bad_sigma_grids_are_named_errors(sigmas, message):
    with pytest.raises(ConfigError, match=message):
        diffkit.sample(Counting(), (1, 2), sampler="euler", sigmas=sigmas)


# -- 9. dtypes and the other arguments of diffkit.sample ------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool, torch.complex64, "float32", None])
def test_a_non_floating_dtype_is_a_named_error_not_a_float32_result(dtype):
    denoiser = Counting()
    with pytest.raises(ConfigError, match="dtype must be a floating-point torch.dtype"):
        diffkit.sample(denoiser, (2, 2), sampler="euler", sigmas=SIGMAS, dtype=dtype)
    assert denoiser.calls == 0


def test_floating_dtypes_are_returned_as_asked():
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        assert diffkit.sample(Counting(), (2, 2), sampler="euler", sigmas=SIGMAS, dtype=dtype).dtype == dtype


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shape": (1.5, 2)}, "shape must be"),
        ({"shape": "abc"}, "shape must be"),
        ({"shape": (2, True)}, "shape must be"),
        ({"callback": 5}, "callback must be a function"),
        ({"sampler": 5}, "sampler must be a registered sampler name or a sampler function"),
        ({"sampler_options": "abc"}, "sampler_options must be a mapping"),
        ({"denoiser": "x"}, "denoiser must be a function"),
        ({"generator": [torch.Generator()] * 3}, "3 generators for a batch of 2"),
    ],
)
def test_other_bad_arguments_are_named_before_any_work(kwargs, message):
    denoiser = kwargs.pop("denoiser", Counting())
    shape = kwargs.pop("shape", (2, 2))
    with pytest.raises(ConfigError, match=message):
        diffkit.sample(denoiser, shape, **{"sampler": "euler", "sigmas": SIGMAS, **kwargs})
    if isinstance(denoiser, Counting):
        assert denoiser.calls == 0


def test_a_schedule_that_is_not_one_is_a_named_error():
    with pytest.raises(ConfigError, match="schedule must be a registered schedule name"):
        diffkit.sample(Counting(), (1, 2), schedule=5, sampler="euler", steps=2)
