"""A whole-loop diffkit sampler driven one denoiser call at a time.

diffkit samplers own their loop (``sampler(denoiser, x, sigmas)``); a diffusers pipeline owns its
loop too and calls ``scheduler.step`` once per network evaluation. :class:`SteppedSampler` lets the
pipeline lead without changing the sampler contract: the sampler runs in a greenlet (a coroutine
on the same thread, so torch's grad mode and autocast stay as the pipeline set them), and its
denoiser hands each request (y, σ) out to the caller and waits for the answer x̂0:

    stepper = SteppedSampler(sampler, sigmas, options)
    request = stepper.start(y0, generator)          # (y, σ) of the first denoiser call
    while not stepper.done:
        request = stepper.answer(x0_estimate)       # the next (y, σ), or None with stepper.result

:func:`evaluation_sigmas` runs the sampler once against a dummy denoiser to list every σ it will
ask about — two per step for Heun and DPM2, the churned σ̂ of EDM's churn — so the scheduler can
announce its ``timesteps`` before the pipeline's loop starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import greenlet
import torch

from diffkit.errors import ConfigError

Request = tuple[torch.Tensor, float]  # (y [B, ...] in σ form, σ)


def evaluation_sigmas(sampler: Callable[..., torch.Tensor], sigmas: torch.Tensor, options: Mapping[str, Any]) -> list[float]:
    """Every σ at which ``sampler`` calls its denoiser on the grid ``sigmas``, in order.

    A dry run on one float64 scalar point with D ≡ 0 and a seeded generator: the built-in samplers'
    σ sequence depends on the grid and the options only, never on x or the noise drawn.
    """
    seen: list[float] = []

    def record(x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        seen.append(float(sigma.reshape(-1)[0]))
        return torch.zeros_like(x)

    start = torch.ones(1, 1, dtype=torch.float64) * float(sigmas[0])
    sampler(record, start, sigmas, generator=torch.Generator().manual_seed(0), **options)
    return seen


class SteppedSampler:
    """One run of a sampler, advanced by the caller one denoiser answer at a time.

    Args:
        sampler: a function with the diffkit sampler contract.
        sigmas: the σ grid (float64 CPU, decreasing, last 0).
        options: the sampler's keyword options.
        cond: passed through to the denoiser calls (unused here: the pipeline conditions the network).
    """

    def __init__(self, sampler: Callable[..., torch.Tensor], sigmas: torch.Tensor, options: Mapping[str, Any]) -> None:
        self.sampler, self.sigmas, self.options = sampler, sigmas, dict(options)
        self.result: torch.Tensor | None = None
        self._run: greenlet.greenlet | None = None

    @property
    def started(self) -> bool:
        return self._run is not None

    @property
    def done(self) -> bool:
        return self.result is not None

    def start(self, y0: torch.Tensor, generator: Any = None) -> Request | None:
        """Run the sampler from ``y0`` (σ form, at σ_0) up to its first denoiser call."""
        if self.started:
            raise ConfigError("this sampler run has already started; set_timesteps() begins a new one")
        self._run = greenlet.greenlet(self._loop)
        return self._settle(self._run.switch(y0, generator))

    def answer(self, x0: torch.Tensor) -> Request | None:
        """Give the denoiser's answer to the last request; returns the next request, or None when done."""
        if self._run is None or self.done:
            raise ConfigError("no denoiser request is waiting: the sampler has not started or has finished")
        return self._settle(self._run.switch(x0))

    def _loop(self, y0: torch.Tensor, generator: Any) -> tuple[str, torch.Tensor]:
        parent = greenlet.getcurrent().parent

        def denoiser(y: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
            return parent.switch(("request", y, float(sigma.reshape(-1)[0])))

        out = self.sampler(denoiser, y0, self.sigmas, generator=generator, **self.options)
        return ("result", out)

    def _settle(self, message: tuple) -> Request | None:
        if message[0] == "result":
            self.result = message[1]
            return None
        return message[1], message[2]
