"""The plugin's own tests: its entries are found and validated, pass the conformance kit where their β table
reaches, refuse the kit's grids beyond it, and equal diffkit's samplers on diffusers' own grids."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import ClassVar

import pytest
import torch
from diffkit_diffusers import SAMPLERS

import diffkit
from diffkit.errors import ConfigError, UnknownNameError
from diffkit.integrations.diffusers.sampler_adapter import claimed_order
from diffkit.testing import SamplerContract, check_sampler, problems
from diffkit.testing.denoisers import torch_from_numpy

diffusers = pytest.importorskip("diffusers")

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")]

# σ ∈ [0.001, 157.5]: every σ-path grid of the kit (σ_min down to 1/256 and 0.002, the 1-step and 1000-step
# linear grids up to 157.4) lies in this linear β table; diffusers' default table stops at 0.01
KIT_TABLE = {"beta_start": 1e-6, "beta_end": 0.0201}


def test_every_entry_is_registered_with_its_distribution_and_claimed_order():
    for name, class_name, order, paper in SAMPLERS:
        entry = diffkit.get_entry("sampler", f"diffusers.{name}")
        assert entry.origin.distribution == "diffkit-diffusers"
        assert entry.metadata.get("order") == order == claimed_order(class_name), name
        assert entry.metadata["paper"] == paper


def test_loading_the_registry_imports_neither_diffusers_nor_the_adapter():
    code = ("import sys, diffkit\n"
            "assert 'diffusers.euler' in diffkit.names('sampler')\n"
            "assert not {m for m in sys.modules if m.split('.')[0] == 'diffusers'}, 'diffusers imported'\n"
            # the built-ins register diffusers-backed entries lazily (the integrations package imports no
            # diffusers); the adapter, which does, comes in only when a diffusers sampler is built
            "assert 'diffkit.integrations.diffusers.sampler_adapter' not in sys.modules\n"
            "diffkit.build('sampler', 'diffusers.lms', order=2)  # now it is needed\n"
            "assert 'diffusers.schedulers.scheduling_lms_discrete' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_options_are_validated_when_the_sampler_is_chosen():
    diffkit.build("sampler", "diffusers.dpmsolver_multistep", solver_order=3)  # `diffkit check … -o solver_order=3`
    with pytest.raises(UnknownNameError, match="did you mean 'solver_order'"):
        diffkit.build("sampler", "diffusers.dpmsolver_multistep", solver_ordr=3)
    with pytest.raises(ConfigError, match="use_karras_sigmas=True chooses diffusers' own σ grid"):
        diffkit.build("sampler", "diffusers.dpmsolver_multistep", use_karras_sigmas=True)
    with pytest.raises(ConfigError, match="refused the configuration"):
        diffkit.build("sampler", "diffusers.unipc", solver_type="bh3")


def test_an_option_changes_the_measured_order():
    # DPM-Solver order 1 is DDIM: first order (σ-path grids cap what the kit can see at 2)
    first = check_sampler("diffusers.dpmsolver_multistep", options={**KIT_TABLE, "solver_order": 1}, quick=True,
                          order=1)
    second = check_sampler("diffusers.dpmsolver_multistep", options=KIT_TABLE, quick=True)
    assert first["convergence[gaussian]"].measured < 1.2
    assert second["convergence[gaussian]"].measured > 1.8


class _TableScheduler(SamplerContract):
    """A β-table scheduler: the kit's grids beyond its table are refused by design, naming the range."""

    quick = True
    options: ClassVar[dict[str, float]] = KIT_TABLE

    def _refused(self, group: str, some_pass: bool) -> None:
        results = self._run(group)
        for result in results:
            assert result.ok or ("OutOfRangeError" in result.detail and "represents σ ∈ [" in result.detail), \
                result.format()
        assert any(r.ok for r in results) == some_pass, [r.format() for r in results]

    def test_finite_extremes(self) -> None:
        self._refused("finite_extremes", some_pass=True)  # σ_max 1e4, zero-SNR and flow grids: refused

    def test_accuracy_flow_gaussian(self) -> None:
        self._refused("accuracy[flow_gaussian]", some_pass=False)  # start at t = 1: σ = 2³⁰

    def test_accuracy_flow_mixture(self) -> None:
        self._refused("accuracy[flow_mixture]", some_pass=False)


class TestDPMSolverMultistep(_TableScheduler):
    sampler = "diffusers.dpmsolver_multistep"


class TestUniPC(_TableScheduler):
    sampler = "diffusers.unipc"


class TestHeun(_TableScheduler):
    sampler = "diffusers.heun"
    options: ClassVar[dict[str, object]] = {**KIT_TABLE, "beta_schedule": "linear"}


class TestEulerAncestral(_TableScheduler):
    sampler = "diffusers.euler_ancestral"


class TestFlowMatchEuler(SamplerContract):
    """A flow scheduler takes every σ, from t = 1 down: every check applies."""

    sampler = "diffusers.flow_match_euler"
    quick = True


class TestFlowMatchHeun(SamplerContract):
    sampler = "diffusers.flow_match_heun"
    quick = True


# -- parity with diffkit's samplers on diffusers' own grid -------------------------------------------------------

PEERS = [  # (diffusers entry, its options, diffkit sampler, its options)
    ("euler", {}, "euler", {}),
    ("heun", {}, "heun", {}),
    ("dpm2", {}, "dpm2", {}),
    ("lms", {}, "lms", {}),
    ("dpmsolver_multistep", {}, "dpmpp_2m", {}),
    ("dpmsolver_multistep", {"solver_order": 3}, "dpmpp_3m", {}),
    ("unipc", {}, "unipc", {}),
    ("unipc", {"solver_order": 3}, "unipc", {"order": 3}),
    ("ddim", {"clip_sample": False}, "ddim", {}),
    ("edm_euler", {}, "euler", {}),
]


def own_grid(entry: str, steps: int, options: dict) -> torch.Tensor:
    """diffusers' own σ levels for ``steps`` (its ``set_timesteps``), float64 of its float32 values, ending at 0."""
    cls = diffkit.get("sampler", f"diffusers.{entry}").scheduler_class
    scheduler = cls(**options)
    scheduler.set_timesteps(steps)
    if entry == "ddim":  # DDIM holds no σ: they are its ᾱ at the integer timesteps it visits
        a = [float(scheduler.alphas_cumprod[int(t)]) for t in scheduler.timesteps]
        return torch.tensor([math.sqrt((1 - v) / v) for v in a] + [0.0], dtype=torch.float64)
    return torch.unique_consecutive(scheduler.sigmas.double())


@pytest.mark.parametrize("steps", [5, 12, 25])
@pytest.mark.parametrize("entry, options, peer, peer_options", PEERS, ids=[f"{p[0]}-{p[2]}" for p in PEERS])
def test_equals_the_diffkit_sampler_on_diffusers_own_grid(entry, options, peer, peer_options, steps):
    denoise = torch_from_numpy(problems.data("mixture"))  # the exact posterior mean of the kit's mixture

    def denoiser(x, sigma, cond=None):
        return denoise(x, sigma)

    sigmas = own_grid(entry, steps, options)
    x = torch.randn(8, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * float(sigmas[0])
    theirs = diffkit.build("sampler", f"diffusers.{entry}", **options)(denoiser, x, sigmas)
    ours = diffkit.build("sampler", peer, **peer_options)(denoiser, x, sigmas)
    gap = float((theirs - ours).abs().max() / ours.abs().max())
    assert gap <= 1e-6, gap  # diffusers steps in float32: 4e-8 – 3e-7 measured


def test_diffusers_third_order_dpm_solver_is_not_the_taylor_third_order_method():
    # the halved second difference (docs/samplers.md): diffusers' order 3 equals dpmpp_3m's default
    # (above), and differs from d2_weight="taylor" once third-order steps start
    sigmas = own_grid("dpmsolver_multistep", 12, {})
    denoise = torch_from_numpy(problems.data("mixture"))
    x = torch.randn(8, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * float(sigmas[0])
    theirs = diffkit.build("sampler", "diffusers.dpmsolver_multistep", solver_order=3)(lambda y, s, c=None: denoise(y, s),
                                                                                      x, sigmas)
    taylor = diffkit.build("sampler", "dpmpp_3m", d2_weight="taylor")(lambda y, s, c=None: denoise(y, s), x, sigmas)
    assert float((theirs - taylor).abs().max() / taylor.abs().max()) > 1e-4


def test_the_readme_check_commands_run_as_written():
    """The README's "Check a diffusers scheduler" commands: the FlowMatch Heun check passes (exit 0); the
    DPM-Solver order-3 check measures its orders and exits 1 for the grids beyond its β table."""
    import re
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Check a diffusers scheduler", 1)[1].split("\n## ", 1)[0]
    lines = [line.split("#")[0].strip() for line in re.findall(r"^diffkit check .*$", section, flags=re.M)]
    assert len(lines) == 2, lines
    runs = []
    for line in lines:
        argv = [sys.executable, "-m", "diffkit", *shlex.split(line)[1:]]
        runs.append(subprocess.run(argv, capture_output=True, text=True, timeout=600))
    assert runs[0].returncode == 0 and "no check failed" in runs[0].stdout, runs[0].stdout + runs[0].stderr
    assert runs[1].returncode == 1 and "PASS convergence[mixture]: observed order" in runs[1].stdout, runs[1].stdout
    assert "represents σ ∈" in runs[1].stdout  # the refused grids say why
