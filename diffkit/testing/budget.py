"""How much work each accuracy check does: the full budget and the ``quick=True`` one."""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class Budget:
    """Sizes of the accuracy checks.

    Attributes:
        convergence_steps: step counts of the convergence check; the observed order is fitted
            on the finest three (coarser grids are pre-asymptotic: the first steps from σ = 80
            are huge, and a biased method's constant error only shows once its
            discretization error has dropped below it).
        flow_convergence_steps: the same on the flow problems, whose shifted uniform-t grid does
            not refine in log σ at its ends: a second-order method's order shows only at 64–256
            steps there (at 32–128 steps UniPC-1 measures 1.08 on the flow mixture), so the quick
            budget keeps these.
        convergence_points: starting points per data set.
        moment_samples: samples per data set in the moment check of stochastic samplers.
        moment_steps: steps of that check (its discretization slack scales as 1/steps).
    """

    convergence_steps: tuple[int, ...] = (16, 32, 64, 128, 256)
    flow_convergence_steps: tuple[int, ...] = (16, 32, 64, 128, 256)
    convergence_points: int = 32
    moment_samples: int = 4096
    moment_steps: int = 1000

    def steps_for(self, path: str) -> tuple[int, ...]:
        """The convergence check's step counts on problems of ``path`` (``"sigma"`` or ``"flow"``)."""
        return self.flow_convergence_steps if path == "flow" else self.convergence_steps


FULL = Budget()
QUICK = Budget(convergence_steps=(16, 32, 64, 128), convergence_points=32, moment_samples=2048, moment_steps=500)
