"""Parameterization adapters: a network → the σ-form denoiser ``D(x, σ, cond)``.

Samplers only ever see D(y, σ) ≈ E[x0 | y = x0 + σε], so they never branch on what the
network predicts (k-diffusion's ``DiscreteEpsDDPMDenoiser`` / NVlabs' ``EDMPrecond`` idea).
Every adapter here has the preconditioned form of Karras et al. 2022 (Table 1),

    D(y; σ) = c_skip(σ) · y + c_out(σ) · F(c_in(σ) · y; c_noise(σ)),

with these coefficients (VP: ᾱ = 1/(1+σ²), x_t = √ᾱ · y is what the network sees):

    parameterization   c_skip            c_out             c_in             noise input
    ε   (VP)           1                 −σ                1/√(1+σ²)        t = schedule.sigma_to_t(σ)
    x0  (VP)           0                 1                 1/√(1+σ²)        t
    v   (VP)           1/(1+σ²)          −σ/√(1+σ²)        1/√(1+σ²)        t
    EDM                σd²/(σ²+σd²)      σσd/√(σ²+σd²)     1/√(σ²+σd²)      c_noise = ¼ ln σ

(v = √ᾱ ε − √(1−ᾱ) x0, Salimans & Ho 2022). A flow-matching network (x_t = (1−t)x0 + tε,
σ = t/(1−t), so x_t = y/(1+σ); :mod:`diffkit.schedules.flow`) has

    velocity (flow)    1/(1+σ)           −σ/(1+σ)          1/(1+σ)          t·T = σ/(1+σ)·T
    x0       (flow)    0                 1                 1/(1+σ)          t·T
    ε        (flow)    1                 −σ                1/(1+σ)          t·T

(v = ε − x0, so x0 = x_t − t·v).

Learned variance (Nichol & Dhariwal 2021): a VP network may output 2C channels, the C
prediction channels followed by C channels v_raw ∈ [−1, 1] that set the DDPM step variance;
``forward_with_variance`` returns (x0, frac = (v_raw + 1)/2) for ``ddpm(variance="learned")``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from diffkit.errors import ConfigError, ShapeError, check_choice
from diffkit.schedules.base import DiscreteSchedule
from diffkit.schedules.flow import FlowSchedule
from diffkit.validators import is_real

PREDICTIONS = ("eps", "x0", "v")
FLOW_PREDICTIONS = ("velocity", "x0", "epsilon")


def _check_sigma(x: torch.Tensor, sigma: torch.Tensor) -> None:
    if sigma.shape != (x.shape[0],):
        raise ShapeError(f"sigma must have shape [batch] = [{x.shape[0]}], got {tuple(sigma.shape)}")


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """Coefficients are computed in at least float32: in fp16 σ² overflows for σ > 255."""
    return torch.promote_types(x.dtype, torch.float32)


def _per_sample(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """σ [B] → [B, 1, …, 1] in the working dtype, broadcastable against x."""
    return sigma.to(_work_dtype(x)).reshape(-1, *([1] * (x.ndim - 1)))


def _shaped_like(out: torch.Tensor, x: torch.Tensor, what: str) -> None:
    """ShapeError unless the network output ``out`` is shaped like its input ``x``."""
    if out.shape != x.shape:
        raise ShapeError(
            f"the model returned shape {tuple(out.shape)} for input {tuple(x.shape)}; {what} must return a "
            "tensor shaped like its input"
        )


def _call(model: Any, x_in: torch.Tensor, noise_input: torch.Tensor, cond: Any) -> torch.Tensor:
    # the conditioning record is passed only when there is one, so unconditional networks
    # may take two arguments
    return model(x_in, noise_input) if cond is None else model(x_in, noise_input, cond)


class VPDenoiser(nn.Module):
    """Wraps ``model(x_t, t[, cond])`` trained on ``schedule`` into ``D(x, σ, cond)``.

    Args:
        model: the network; called as ``model(x_t, t)`` or ``model(x_t, t, cond)`` when a
            conditioning record is given. ``t`` has shape [B].
        schedule: the training schedule (gives the σ ↔ t map).
        prediction: ``"eps"``, ``"x0"`` or ``"v"``. On a zero-terminal-SNR schedule
            (ᾱ_{T−1} = 0) only ``"v"`` and ``"x0"`` are allowed: at ᾱ = 0 the network input is
            pure noise, x_t = ε, so an ε-prediction carries no information about x0
            (x0 = (x_t − √(1−ᾱ) ε̂)/√ᾱ divides by 0; Lin et al. 2024, §3.2 and §6).
        quantize: round t to the nearest integer timestep (for networks that only saw
            integers); otherwise t is fractional between table entries.
        learned_variance: the network outputs 2C channels for a C-channel input: the
            prediction, then v_raw ∈ [−1, 1] of improved DDPM (Nichol & Dhariwal 2021, eq. 15).
            Calling the denoiser returns the x0 estimate from the first C channels;
            :meth:`forward_with_variance` also returns the interpolation weight.
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: DiscreteSchedule,
        prediction: str = "eps",
        *,
        quantize: bool = False,
        learned_variance: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(schedule, FlowSchedule):
            raise ConfigError(
                "VPDenoiser scales the network input by √ᾱ for a VP schedule; a flow schedule's network sees "
                "x_t = (1 − t)·x0 + t·ε: use diffkit.FlowDenoiser(network, schedule, prediction='velocity')"
            )
        self.model = model
        self.schedule = schedule
        self.prediction = check_choice("prediction type", prediction, PREDICTIONS)
        if prediction == "eps" and float(schedule.alphas_cumprod[-1]) == 0:
            raise ConfigError(
                f"prediction='eps' cannot be used with a zero-terminal-SNR schedule ({type(schedule).__name__} "
                "with ᾱ_{T−1} = 0): at ᾱ = 0 the network sees pure noise and an ε-prediction cannot recover x0 "
                "(x0 = (x_t − √(1−ᾱ)·ε)/√ᾱ divides by 0); use prediction='v' or 'x0'"
            )
        self.quantize = quantize
        self.learned_variance = bool(learned_variance)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """x: [B, ...] in σ form; sigma: [B]. Returns the x0 estimate, shaped like x."""
        return self._predict(x, sigma, cond)[0]

    def forward_with_variance(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0 estimate, frac), both shaped like x, for a ``learned_variance`` network.

        frac = (v_raw + 1)/2 maps the network's v_raw ∈ [−1, 1] to the weight in [0, 1] of
        log β in Σ = exp(frac·log β + (1 − frac)·log β̃) (improved DDPM's
        ``frac = (model_var_values + 1) / 2``); it is not clamped, as there.
        """
        if not self.learned_variance:
            raise ConfigError(
                "forward_with_variance needs a network with a learned variance: build the "
                "VPDenoiser with learned_variance=True (the network then outputs 2C channels)"
            )
        x0, v_raw = self._predict(x, sigma, cond)
        return x0, (v_raw + 1) / 2

    def _predict(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> tuple[torch.Tensor, Any]:
        _check_sigma(x, sigma)
        s = _per_sample(sigma, x)  # [B, 1, ..., 1]
        c_in = torch.rsqrt(1 + s * s)  # √ᾱ = 1/√(1+σ²)
        t = self.schedule.sigma_to_t(sigma)
        if self.quantize:
            t = t.round().long()
        out = _call(self.model, (x * c_in).to(x.dtype), t, cond)  # network input x_t = √ᾱ·y
        v_raw = None
        if self.learned_variance:
            if x.ndim < 2 or out.shape != (x.shape[0], 2 * x.shape[1], *x.shape[2:]):
                raise ShapeError(
                    f"the model returned shape {tuple(out.shape)} for input {tuple(x.shape)}; a learned-variance "
                    f"model must return 2C channels along dim 1 (the {self.prediction!r} prediction, then v_raw)"
                )
            out, v_raw = out.chunk(2, dim=1)  # [B, C, ...] each
        else:
            _shaped_like(out, x, f"a {self.prediction!r}-prediction model")
        out = out.to(s.dtype)
        if self.prediction == "eps":
            x0 = x - s * out  # D = y − σ·ε̂
        elif self.prediction == "x0":
            x0 = out
        else:
            # D = √ᾱ x_t − √(1−ᾱ) v̂ = y/(1+σ²) − σ/√(1+σ²)·v̂
            x0 = c_in * c_in * x - s * c_in * out
        return x0.to(x.dtype), v_raw


class FlowDenoiser(nn.Module):
    """Wraps a flow-matching network ``model(x_t, t·T[, cond])`` into ``D(x, σ, cond)``.

    The network sees x_t = y/(1 + σ) = (1 − t)·x0 + t·ε at time t·T with t = σ/(1 + σ), as
    diffusers' flow pipelines call it (SD3, Flux); what it returns is turned into the x0
    estimate (the table in the module docstring).

    Args:
        model: the network; called as ``model(x_t, t)`` or ``model(x_t, t, cond)``, t of shape [B].
        schedule: a :class:`~diffkit.schedules.flow.FlowSchedule` (gives T).
        prediction: ``"velocity"`` (v = ε − x0, what SD3 and Flux predict), ``"x0"`` or
            ``"epsilon"``. An ε-prediction cannot recover x0 at t = 1 (x0 = y − σ·ε̂ with
            σ = ∞), the flow twin of VP's zero-terminal-SNR restriction; it is allowed, but
            its first step from pure noise carries no information about x0.
    """

    path = "flow"
    """The probability path of the network: samplers whose steps depend on the ODE's time
    variable read it (``heun``'s ``time="auto"`` takes the trapezoid in flow time t)."""

    def __init__(self, model: nn.Module, schedule: FlowSchedule, prediction: str = "velocity") -> None:
        super().__init__()
        if not isinstance(schedule, FlowSchedule):
            raise ConfigError(
                f"FlowDenoiser needs a FlowSchedule (diffkit.build('schedule', 'flow', ...)), got "
                f"{type(schedule).__name__}; a VP schedule goes with VPDenoiser"
            )
        self.model = model
        self.schedule = schedule
        self.prediction = check_choice("flow prediction type", prediction, FLOW_PREDICTIONS)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """x: [B, ...] in σ form; sigma: [B]. Returns the x0 estimate, shaped like x."""
        _check_sigma(x, sigma)
        s = _per_sample(sigma, x)  # [B, 1, ..., 1]
        t = s / (1 + s)  # flow time
        x_t = x / (1 + s)  # (1 − t)·y
        out = _call(self.model, x_t.to(x.dtype), self.schedule.sigma_to_t(sigma.to(s.dtype)), cond)
        _shaped_like(out, x, f"a flow {self.prediction!r}-prediction model")
        out = out.to(s.dtype)
        if self.prediction == "velocity":
            x0 = x_t - t * out  # x0 = x_t − t·v
        elif self.prediction == "x0":
            x0 = out
        else:
            x0 = x - s * out  # x0 = y − σ·ε
        return x0.to(x.dtype)


def edm_preconditioning(
    sigma: torch.Tensor, sigma_data: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) of Karras et al. 2022, Table 1 ("Ours"), shaped like sigma.

    σ = 0 gives c_skip = 1, c_out = 0 (so D(x; 0) = x) and c_noise = ¼ ln(tiny), not −∞.
    """
    sd2 = sigma_data * sigma_data
    total = sigma * sigma + sd2  # σ² + σd²
    # skip: the share of y kept as is; minimizes the variance of the effective training target
    c_skip = sd2 / total
    # out: scales F so the effective training target has unit variance
    c_out = sigma * sigma_data * torch.rsqrt(total)
    # in: the network input c_in·y has unit variance when Var x0 = σd²
    c_in = torch.rsqrt(total)
    # noise: the network's noise-level input, ¼ ln σ
    c_noise = sigma.clamp(min=torch.finfo(sigma.dtype).tiny).log() / 4
    return c_skip, c_out, c_in, c_noise


class EDMDenoiser(nn.Module):
    """EDM preconditioning (Karras et al. 2022, §5 and Table 1) around a raw network F.

        D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ))

    σ is continuous (no schedule): F is called as ``model(c_in·x, c_noise)`` or
    ``model(c_in·x, c_noise, cond)`` with c_noise of shape [B]. Coefficients are computed in
    float32 (float64 for float64 input), the network input is cast to x's dtype, and D is
    returned in x's dtype (as NVlabs' ``EDMPrecond.forward``).

    Args:
        model: the raw network F.
        sigma_data: σd, the standard deviation of the data (0.5 for images in [−1, 1]).
    """

    def __init__(self, model: nn.Module, sigma_data: float = 0.5) -> None:
        super().__init__()
        if not is_real(sigma_data) or not (
            math.isfinite(sigma_data) and sigma_data > 0
        ):
            raise ConfigError(f"sigma_data must be a finite number > 0, got {sigma_data!r}")
        self.model = model
        self.sigma_data = float(sigma_data)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """x: [B, ...] in σ form; sigma: [B]. Returns the x0 estimate, shaped like x."""
        _check_sigma(x, sigma)
        c_skip, c_out, c_in, c_noise = edm_preconditioning(_per_sample(sigma, x), self.sigma_data)
        out = _call(self.model, (c_in * x).to(x.dtype), c_noise.reshape(-1), cond)  # F(c_in·x; c_noise)
        _shaped_like(out, x, "the EDM network F")
        return (c_skip * x + c_out * out.to(c_out.dtype)).to(x.dtype)


def check_x0_bound(bound: Any) -> float:
    """A clamp bound for the x0 estimate: a positive finite number, as a float."""
    if not is_real(bound) or not 0 < bound < math.inf:
        raise ConfigError(f"the x0 clamp bound must be a positive finite number, got {bound!r}")
    return float(bound)


class ClampedDenoiser(nn.Module):
    """``D(x, σ, cond)`` with its x0 estimate clamped to [−bound, bound].

    diffusers' ``clip_sample`` (with ``clip_sample_range`` = bound) for pixel-space models whose data
    lie in [−1, 1]: DDPM's posterior mean from the clamped x0 is then diffusers' step exactly. (DDIM
    in diffusers keeps the network's ε beside the clamped x0; here every sampler derives its ε from
    the clamped x0, which is diffusers' ``use_clipped_model_output=True``.)
    """

    def __init__(self, denoiser: Any, bound: float) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.bound = check_x0_bound(bound)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        return self.denoiser(x, sigma, cond).clamp(-self.bound, self.bound)
