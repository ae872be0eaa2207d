"""Same name, same algorithm: every diffkit sampler named after a k-diffusion sampling function
equals it on default options (issue 16).

diffkit names its samplers after k-diffusion's (``sample_<name>``), so a workflow moved from
k-diffusion or ComfyUI must give the same samples under the same name. Each namesake pair runs
here in float64 from the same start on the same exact denoiser (the posterior mean
E[x0 | y] of the kit's 4-d Gaussian mixture) and the same Karras grid of 20 steps; the
stochastic ones get the same standard normal draws in call order through a ``noise_sampler``
both accept, and must ask for them at the same (σ, σ') pairs. The samples must agree to
:data:`RTOL` of the data's scale √tr Cov[x0], the network must be called at the same σ, and
the number of draws must be equal.

k-diffusion itself is the yardstick: the installed package ``k-diffusion==0.1.1.post1``,
never a copy of its code. Its ``__init__`` imports its training and evaluation code
(torchvision, kornia, CLIP, wandb, …), which does not install beside a CPU torch, so only
``k_diffusion/sampling.py`` is loaded, under a package object whose ``__init__`` does not run
(:func:`load_k_diffusion_sampling`). The sampling module itself needs ``torchsde``,
``torchdiffeq`` and ``scipy``, and ``k_diffusion/utils.py``, which imports torchvision's image
conversions at its top and nothing of torchvision that a sampler calls. Install (README,
"Set-up on a fresh machine"; ``.ci/run``)::

    pip install -e '.[dev]'                       # torchsde, torchdiffeq and scipy
    pip install --no-deps k-diffusion==0.1.1.post1

Names diffkit has and k-diffusion has not — ``ddim``, ``ddpm``, ``dpmpp_3m``, ``unipc`` — are
held to diffusers' schedulers instead (tests/samplers, tests/sampling/test_flow.py).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

import diffkit
from diffkit import registry
from diffkit.testing import problems
from diffkit.testing.denoisers import torch_from_numpy
from diffkit.testing.grids import karras_sigmas

K_DIFFUSION = "k-diffusion==0.1.1.post1"
INSTALL = "pip install -e '.[dev]' && pip install --no-deps " + K_DIFFUSION

# diffkit sampler → k-diffusion sampling function with the same name, and whether it draws noise
NAMESAKES: dict[str, tuple[str, bool]] = {
    "euler": ("sample_euler", False),
    "heun": ("sample_heun", False),
    "dpm2": ("sample_dpm_2", False),
    "lms": ("sample_lms", False),
    "dpmpp_2m": ("sample_dpmpp_2m", False),
    "euler_ancestral": ("sample_euler_ancestral", True),
    "dpmpp_2s_ancestral": ("sample_dpmpp_2s_ancestral", True),
    "dpmpp_2m_sde": ("sample_dpmpp_2m_sde", True),
    "dpmpp_3m_sde": ("sample_dpmpp_3m_sde", True),
}
# built-in samplers k-diffusion has no function for: diffusers' schedulers are their peers
WITHOUT_K_DIFFUSION_NAMESAKE = ("ddim", "ddpm", "dpmpp_3m", "unipc")
# k-diffusion's sampling functions diffkit has no sampler for (by the diffkit name they would have)
ONLY_IN_K_DIFFUSION = {
    "sample_dpm_2_ancestral": "dpm2_ancestral",
    "sample_dpmpp_sde": "dpmpp_sde",
    "sample_dpm_fast": "dpm_fast",
    "sample_dpm_adaptive": "dpm_adaptive",
}

STEPS = 20
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0  # EDM's range, k-diffusion's usual Karras grid
BATCH = 256
RTOL = 1e-12  # of the data's scale √tr Cov[x0] (≈ 1.4); measured 1.4e-15 … 5.3e-14 over the namesakes


# -- loading k-diffusion's sampling module without its package __init__ ----------------------------


@contextlib.contextmanager
def restored_modules(prefixes: tuple[str, ...]) -> Iterator[None]:
    """Put back every ``sys.modules`` entry named ``p`` or ``p.…`` for p in ``prefixes`` on exit."""

    def ours(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    try:
        yield
    finally:
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def _placeholder_torchvision() -> None:
    """Empty ``torchvision.transforms.functional`` modules for k_diffusion/utils.py's top-level import.

    utils.py imports it only for its PIL conversions (``to_pil_image``, ``from_pil_image``),
    which no sampling function calls; a name looked up on it raises, so any use would show.
    """
    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    modules = [types.ModuleType(name, "placeholder: k-diffusion's samplers never call torchvision") for name in names]

    def missing(attribute: str) -> Any:
        raise AttributeError(f"torchvision is a placeholder in this test; {attribute!r} is not available")

    modules[2].__getattr__ = missing  # type: ignore[attr-defined]  # PEP 562 module __getattr__
    modules[0].transforms = modules[1]  # type: ignore[attr-defined]
    modules[1].functional = modules[2]  # type: ignore[attr-defined]
    sys.modules.update(zip(names, modules))


def load_k_diffusion_sampling() -> types.ModuleType:
    """The installed ``k_diffusion.sampling`` module, its package's ``__init__`` not run.

    A bare package object ``k_diffusion`` whose ``__path__`` is the installed folder stands in
    for the real package, so ``k_diffusion.sampling`` and what it imports (``from . import
    utils``) load from the installed files. ``sys.modules`` is restored afterwards: nothing
    named ``k_diffusion`` or ``torchvision`` is left behind for other tests.
    """
    spec = importlib.util.find_spec("k_diffusion")  # a top-level spec: nothing is executed
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"k-diffusion is not installed ({INSTALL})")
    with restored_modules(("k_diffusion", "torchvision")):
        package = types.ModuleType("k_diffusion", "k-diffusion, without running its __init__")
        package.__path__ = list(spec.submodule_search_locations)
        package.__package__ = "k_diffusion"
        sys.modules["k_diffusion"] = package
        if "torchvision" not in sys.modules:
            _placeholder_torchvision()
        return importlib.import_module("k_diffusion.sampling")


@pytest.fixture(scope="module")
def k_sampling() -> types.ModuleType:
    if importlib.util.find_spec("k_diffusion") is None:
        message = f"k-diffusion is not installed; the compatibility suite needs it ({INSTALL})"
        if os.environ.get("CI"):  # CI installs it (.ci/run): a missing package there is a failure, not a skip
            pytest.fail(message)
        pytest.skip(message)
    return load_k_diffusion_sampling()


# -- the shared problem: exact denoiser, Karras grid, one noise stream per side ------------------------


class NoiseStream:
    """``noise_sampler(sigma, sigma_next)``: the k-th call returns the k-th of a fixed sequence of
    float64 standard normal draws shaped like x, and records (σ, σ') of every call."""

    def __init__(self, shape: tuple[int, ...], seed: int = 7) -> None:
        self.shape, self.generator = shape, torch.Generator().manual_seed(seed)
        self.calls: list[tuple[float, float]] = []

    def __call__(self, sigma: Any, sigma_next: Any) -> torch.Tensor:
        self.calls.append((float(sigma), float(sigma_next)))
        return torch.randn(self.shape, generator=self.generator, dtype=torch.float64)


class Recording:
    """The exact mixture denoiser in float64, recording the σ of every call (either call convention)."""

    def __init__(self) -> None:
        self.denoise = torch_from_numpy(problems.data("mixture"))
        self.sigmas: list[float] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        assert x.dtype == torch.float64 and sigma.shape == (x.shape[0],)
        self.sigmas.append(float(sigma[0]))
        return self.denoise(x, sigma)


def start() -> tuple[torch.Tensor, torch.Tensor]:
    """(x = σ_max·z [BATCH, 1, 2, 2] in float64, the Karras grid [STEPS + 1] in float64)."""
    sigmas = karras_sigmas(STEPS, SIGMA_MIN, SIGMA_MAX)
    z = torch.randn((BATCH, *problems.POINT_SHAPE), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return z * float(sigmas[0]), sigmas


def run_both(
    name: str, k_sampling: types.ModuleType, options: dict[str, Any] | None = None
) -> tuple[torch.Tensor, torch.Tensor, Recording, Recording, NoiseStream, NoiseStream]:
    """diffkit's ``name`` (with ``options``) and its k-diffusion namesake (defaults) on the same problem."""
    function, stochastic = NAMESAKES[name]
    x, sigmas = start()
    ours_net, theirs_net = Recording(), Recording()
    ours_noise, theirs_noise = NoiseStream(tuple(x.shape)), NoiseStream(tuple(x.shape))
    ours_net.steps, theirs_net.steps = [], []  # what each callback reported, per step
    kwargs: dict[str, Any] = {"noise_sampler": ours_noise} if stochastic else {}
    ours = diffkit.build("sampler", name, **(options or {}))(ours_net, x.clone(), sigmas, callback=ours_net.steps.append,
                                                            **kwargs)
    k_kwargs: dict[str, Any] = {"noise_sampler": theirs_noise} if stochastic else {}
    sampler: Callable[..., torch.Tensor] = getattr(k_sampling, function)
    theirs = sampler(theirs_net, x.clone(), sigmas.clone(), disable=True, callback=theirs_net.steps.append, **k_kwargs)
    return ours, theirs, ours_net, theirs_net, ours_noise, theirs_noise


def relative_gap(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours − theirs| over the batch, relative to the data's scale √tr Cov[x0]."""
    return float((ours - theirs).abs().max()) / problems.scale("mixture")


# -- the suite -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(NAMESAKES))
def test_namesake_equals_k_diffusion_on_default_options(k_sampling, name):
    ours, theirs, ours_net, theirs_net, ours_noise, theirs_noise = run_both(name, k_sampling)
    assert ours.dtype == theirs.dtype == torch.float64 and torch.isfinite(ours).all()
    # the same network evaluations, at the same noise levels
    np.testing.assert_allclose(ours_net.sigmas, theirs_net.sigmas, rtol=1e-14, atol=0)
    # the same noise, asked for at the same (σ, σ') pairs, in the same order
    assert len(ours_noise.calls) == len(theirs_noise.calls)
    if NAMESAKES[name][1]:
        assert len(ours_noise.calls) == STEPS - 1  # one draw per step, none into σ = 0
        np.testing.assert_allclose(ours_noise.calls, theirs_noise.calls, rtol=1e-14, atol=0)
    gap = relative_gap(ours, theirs)
    assert gap <= RTOL, f"{name} differs from k-diffusion's {NAMESAKES[name][0]} by {gap:.2e} of the data's scale"
    # the callback: once per step, k-diffusion's keys and meaning (x: the state entering step i)
    assert len(ours_net.steps) == len(theirs_net.steps) == STEPS
    for step, (a, b) in enumerate(zip(ours_net.steps, theirs_net.steps)):
        assert a["i"] == b["i"] == step and set(a) == set(b) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        np.testing.assert_allclose([a["sigma"], a["sigma_hat"]], [float(b["sigma"]), float(b["sigma_hat"])],
                                   rtol=1e-14, atol=0)
        for key in ("x", "denoised"):
            assert relative_gap(a[key], b[key]) <= RTOL, (name, step, key)


def test_the_taylor_weight_is_not_k_diffusions_dpmpp_3m_sde(k_sampling):
    """What issue 16 changed: the full-weight Δ2 is another algorithm, far from k-diffusion's samples."""
    ours, theirs, *_ = run_both("dpmpp_3m_sde", k_sampling, {"d2_weight": "taylor"})
    assert relative_gap(ours, theirs) > 1e-3


def test_the_deprecated_alias_still_selects_the_dpm_solver_weight(k_sampling):
    with pytest.warns(DeprecationWarning, match="use d2_weight='dpm_solver'"):
        ours, theirs, *_ = run_both("dpmpp_3m_sde", k_sampling, {"match_dpm_solver_code": True})
    assert relative_gap(ours, theirs) <= RTOL


def test_every_builtin_is_a_namesake_or_has_a_diffusers_peer():
    builtins = {name for name in registry.names("sampler") if registry.get_entry("sampler", name).origin.builtin}
    assert builtins == set(NAMESAKES) | set(WITHOUT_K_DIFFUSION_NAMESAKE)


def test_every_k_diffusion_sampling_function_is_accounted_for(k_sampling):
    """A new k-diffusion function, or a diffkit sampler gaining one of its names, shows here."""
    functions = {name for name in dir(k_sampling) if name.startswith("sample_")}
    assert functions == {f for f, _ in NAMESAKES.values()} | set(ONLY_IN_K_DIFFUSION)
    assert not set(ONLY_IN_K_DIFFUSION.values()) & set(registry.names("sampler"))


def test_loading_leaves_no_k_diffusion_or_placeholder_module_behind(k_sampling):
    again = load_k_diffusion_sampling()
    assert again.__name__ == "k_diffusion.sampling" and callable(again.sample_dpmpp_3m_sde)
    assert not [name for name in sys.modules if name == "k_diffusion" or name.startswith("k_diffusion.")]
    assert "torchvision" not in sys.modules or sys.modules["torchvision"].__doc__ != (
        "placeholder: k-diffusion's samplers never call torchvision"
    )
    assert importlib.metadata.version("k-diffusion") == K_DIFFUSION.split("==")[1]
