"""Structural checks of a sampler: shapes and dtypes, reproducibility, batch invariance,
the callback, finite output at extreme σ grids, and honouring ``noise_sampler``.

Each check takes a :class:`~diffkit.testing.subject.SamplerSubject` and returns a list of
:class:`~diffkit.testing.report.CheckResult`; exceptions are turned into failures by the runner.
"""

from __future__ import annotations

import torch

from diffkit import registry
from diffkit.testing.denoisers import RecordingDenoiser, isotropic_gaussian
from diffkit.testing.grids import karras_sigmas
from diffkit.testing.report import CheckResult, crashed, failed, passed, skipped, verdict
from diffkit.testing.subject import SamplerSubject

IMAGE_SHAPE = (2, 3, 4, 4)  # [B, C, H, W]
CALLBACK_KEYS = ("x", "i", "sigma", "sigma_hat", "denoised")
# a callback's denoised against D(x, σ̂) recomputed in float64: a sampler may evaluate in float32
CALLBACK_RTOL = 1e-5
# batch invariance compares two float64 runs of the same arithmetic; allow only rounding
BATCH_RTOL = 1e-12


def _noise(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64, device: str = "cpu") -> torch.Tensor:
    """Standard normal noise from a fixed seed, drawn in float64 on the CPU then cast."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def check_shape_dtype_device(subject: SamplerSubject) -> list[CheckResult]:
    """Output shaped like x, same dtype and device, finite; σ passed to the denoiser as [B]."""
    results = []
    sigmas = karras_sigmas(8, 0.05, 80.0)
    for device in _devices():
        for dtype in (torch.float32, torch.float64):
            name = f"shape_dtype_device[{str(dtype).removeprefix('torch.')}, {device}]"
            x = _noise(IMAGE_SHAPE, 1, dtype, device) * float(sigmas[0])
            denoiser = RecordingDenoiser(isotropic_gaussian())
            try:
                out = subject(denoiser, x, sigmas, generator=torch.Generator(device).manual_seed(0))
            except Exception as exc:  # noqa: BLE001 - a crash is this check's failure
                results.append(crashed(name, exc))
                continue
            results.append(_shape_verdict(name, x, out, denoiser))
    return results


def _shape_verdict(name: str, x: torch.Tensor, out: object, denoiser: RecordingDenoiser) -> CheckResult:
    if not isinstance(out, torch.Tensor):
        return failed(name, f"returned {type(out).__name__}, not a tensor")
    wrong = []
    if out.shape != x.shape:
        wrong.append(f"shape {list(out.shape)} (need {list(x.shape)})")
    if out.dtype != x.dtype:
        wrong.append(f"dtype {out.dtype} (need {x.dtype})")
    if out.device != x.device:
        wrong.append(f"device {out.device} (need {x.device})")
    if out.shape == x.shape and not bool(torch.isfinite(out).all()):
        wrong.append("non-finite values")
    if denoiser.calls == 0:
        wrong.append("never called the denoiser")
    wrong += [f"denoiser called with {p}" for p in denoiser.problems]
    if wrong:
        return failed(name, "; ".join(wrong))
    return passed(name, f"{list(out.shape)} {out.dtype} on {out.device}, {denoiser.calls} denoiser calls")


def check_reproducible(subject: SamplerSubject) -> list[CheckResult]:
    """Two runs with equally seeded generators give bit-identical results."""
    name = "reproducible"
    sigmas = karras_sigmas(10, 0.05, 80.0)
    x = _noise(IMAGE_SHAPE, 2) * float(sigmas[0])
    runs = [
        subject(RecordingDenoiser(isotropic_gaussian()), x.clone(), sigmas, generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    if torch.equal(runs[0], runs[1]):
        return [passed(name, "same generator seed → bit-identical output", 0.0)]
    diff = float((runs[0] - runs[1]).abs().max())
    return [failed(name, f"same generator seed → outputs differ by up to {diff:.3g} (need bit-identical; "
                   "draw noise from the generator argument, not torch's global RNG)", diff)]


def check_batch_invariant(subject: SamplerSubject) -> list[CheckResult]:
    """Sample k of a batch of 4 (generators seeded 100+k) equals that generator's batch-of-1 sample."""
    name = "batch_invariant"
    sigmas = karras_sigmas(10, 0.05, 80.0)
    x = _noise((4, 3, 4, 4), 3) * float(sigmas[0])
    seeds = [100 + k for k in range(4)]
    batch = subject(RecordingDenoiser(isotropic_gaussian()), x.clone(), sigmas,
                    generator=[torch.Generator().manual_seed(s) for s in seeds])
    worst = 0.0
    for k, seed in enumerate(seeds):
        alone = subject(RecordingDenoiser(isotropic_gaussian()), x[k : k + 1].clone(), sigmas,
                        generator=[torch.Generator().manual_seed(seed)])
        gap = float((batch[k : k + 1] - alone).abs().max() / alone.abs().max().clamp(min=1e-30))
        worst = max(worst, gap)
    detail = f"relative gap between batched and single samples {worst:.3g} (need ≤ {BATCH_RTOL:g})"
    return [verdict(name, worst <= BATCH_RTOL, detail, worst)]


def check_callback(subject: SamplerSubject) -> list[CheckResult]:
    """The callback is called once per step, as k-diffusion calls it: i = 0…N−1, σ = sigmas[i], the
    documented keys, and ``denoised`` = D(x, σ̂) of the ``x`` it reports (the state the step's first
    denoiser evaluation saw, before the update; a sampler reporting the updated x fails)."""
    name = "callback"
    steps = 6
    sigmas = karras_sigmas(steps, 0.05, 80.0)
    x = _noise(IMAGE_SHAPE, 4) * float(sigmas[0])
    exact = isotropic_gaussian()
    seen: list[dict] = []
    subject(RecordingDenoiser(exact), x, sigmas, generator=torch.Generator().manual_seed(0),
            callback=lambda info: seen.append(dict(info)))
    problems = []
    if len(seen) != steps:
        problems.append(f"called {len(seen)} times for {steps} steps")
    for i, info in enumerate(seen):
        missing = [k for k in CALLBACK_KEYS if k not in info]
        if missing:
            problems.append(f"call {i} lacks {', '.join(missing)}")
            continue
        if int(info["i"]) != i:
            problems.append(f"call {i} has i = {info['i']}")
        if abs(float(info["sigma"]) - float(sigmas[i])) > 1e-6 * float(sigmas[i]):
            problems.append(f"call {i} has sigma = {float(info['sigma']):.6g} (need sigmas[{i}] = {float(sigmas[i]):.6g})")
        if not all(isinstance(info[key], torch.Tensor) and info[key].shape == x.shape for key in ("x", "denoised")):
            problems.append(f"call {i}: x or denoised is not a tensor shaped like x")
            continue
        # denoised must be the evaluation at the reported x and σ̂ (k-diffusion's pairing)
        sigma_hat = torch.full((x.shape[0],), float(info["sigma_hat"]), dtype=torch.float64)
        expected = exact(info["x"].double(), sigma_hat)
        gap = float((info["denoised"].double() - expected).abs().max() / expected.abs().max().clamp(min=1e-30))
        if gap > CALLBACK_RTOL:
            problems.append(
                f"call {i}: denoised is not D(x, sigma_hat) of the reported x (relative gap {gap:.3g}); report x "
                "before the step's update, as k-diffusion does"
            )
    if problems:
        return [failed(name, "; ".join(problems[:4]), float(len(seen)))]
    return [passed(name, f"{len(seen)} calls for {steps} steps with keys {', '.join(CALLBACK_KEYS)}", float(len(seen)))]


def _extreme_grids() -> dict[str, torch.Tensor]:
    """σ grids at the edges of normal use (float64 CPU, as diffkit passes them)."""
    linear = registry.build("schedule", "linear", num_train_timesteps=1000)
    zero_snr = registry.build("schedule", "linear", num_train_timesteps=1000, rescale_zero_terminal_snr=True)
    flow = registry.build("schedule", "flow", shift=3.0)  # from t = 1: σ_0 = FLOW_SIGMA_MAX = 2³⁰
    return {
        "1 step": linear.sigmas_for(1, "trailing"),
        "1000 steps": linear.sigmas_for(1000, "leading"),
        "sigma_max=1e4": karras_sigmas(30, 0.002, 1e4),
        "zero-terminal-snr, 1 step": zero_snr.sigmas_for(1, "trailing"),
        "zero-terminal-snr, 50 steps": zero_snr.sigmas_for(50, "trailing"),
        "flow from t=1, 1 step": flow.sigmas_for(1),
        "flow from t=1, 50 steps": flow.sigmas_for(50),
    }


def check_finite_extremes(subject: SamplerSubject) -> list[CheckResult]:
    """Finite float32 output for 1 step, T = 1000 steps, σ_max = 1e4, a zero-terminal-SNR schedule and a
    flow schedule's grid from t = 1 (σ_max = 2³⁰)."""
    results = []
    for label, sigmas in _extreme_grids().items():
        name = f"finite[{label}]"
        x = _noise(IMAGE_SHAPE, 5, torch.float32) * float(sigmas[0])
        try:
            out = subject(RecordingDenoiser(isotropic_gaussian()), x, sigmas, generator=torch.Generator().manual_seed(0))
        except Exception as exc:  # noqa: BLE001 - a crash is this check's failure
            results.append(crashed(name, exc))
            continue
        finite = isinstance(out, torch.Tensor) and bool(torch.isfinite(out).all())
        size = float(out.abs().max()) if finite else float("nan")
        detail = (f"σ_max {float(sigmas[0]):.4g}, max |x0| {size:.3g}" if finite
                  else f"σ_max {float(sigmas[0]):.4g}: output has non-finite values")
        results.append(verdict(name, finite, detail, size))
    return results


def check_noise_sampler(subject: SamplerSubject) -> list[CheckResult]:
    """A stochastic sampler takes ``noise_sampler`` and draws its noise only from it."""
    name = "noise_sampler"
    if not subject.stochastic:
        return [skipped(name, "deterministic sampler: no noise to feed")]
    if not subject.accepts_noise_sampler:
        return [failed(name, "stochastic sampler does not accept noise_sampler(sigma, sigma_next)")]
    sigmas = karras_sigmas(10, 0.05, 80.0)
    x = _noise(IMAGE_SHAPE, 6) * float(sigmas[0])
    runs, draws = [], []
    for seed in (21, 22):  # different generators, identical noise_sampler streams
        stream = torch.Generator().manual_seed(99)
        count = [0]

        def noise_sampler(sigma: float, sigma_next: float, stream=stream, count=count) -> torch.Tensor:
            count[0] += 1
            return torch.randn(x.shape, generator=stream, dtype=x.dtype)

        try:
            runs.append(subject(RecordingDenoiser(isotropic_gaussian()), x.clone(), sigmas,
                                generator=torch.Generator().manual_seed(seed), noise_sampler=noise_sampler))
        except Exception as exc:  # noqa: BLE001 - a crash is this check's failure
            return [crashed(name, exc)]
        draws.append(count[0])
    if draws[0] == 0:
        return [failed(name, "noise_sampler was never called", 0.0)]
    diff = float((runs[0] - runs[1]).abs().max())
    detail = (f"{draws[0]} draws for {len(sigmas) - 1} steps; runs with different generators but the same "
              f"noise_sampler differ by {diff:.3g} (need 0)")
    return [verdict(name, diff == 0.0, detail, diff)]
