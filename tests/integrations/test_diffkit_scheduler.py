"""DiffkitScheduler: diffkit samplers inside unmodified diffusers pipelines (tiny pipelines built in the test).

Parity: with ``DiffkitScheduler.from_scheduler(theirs, sampler=X)`` a pipeline gives the images it
gives with diffusers' own scheduler for X, on the same grid, noise and network (float32). Where
diffusers' scheduler cannot run in a pipeline (Euler-type schedulers in DDPMPipeline, which never
scales its latents), the reference is diffkit's own sampler on the same network.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import diffkit
from diffkit.errors import ConfigError, UnknownNameError

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("greenlet")
pytest.importorskip("transformers")

from diffkit.integrations.diffusers import DiffkitScheduler
from diffkit.integrations.diffusers.noise import multistep_timesteps, noise_process
from tests.sweeps import builtin_samplers

from .tiny_pipelines import ddpm_pipeline, dit_pipeline, sd_pipeline

TOLERANCE = 1e-4  # images in [0, 1], float32
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def peers(**config) -> list[tuple[str, object]]:
    """(diffkit sampler, the diffusers scheduler it must equal) on the noise process ``config``."""
    return [
        ("ddim", diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **config)),
        ("euler", diffusers.EulerDiscreteScheduler(**config)),
        ("heun", diffusers.HeunDiscreteScheduler(**config)),
        ("dpmpp_2m", diffusers.DPMSolverMultistepScheduler(**config)),
        ("unipc", diffusers.UniPCMultistepScheduler(**config)),
    ]


def _ids(cases):
    return [name for name, _ in cases]


SD_CASES = peers(**SD_BETAS, steps_offset=1)


@pytest.mark.parametrize("name, theirs", SD_CASES, ids=_ids(SD_CASES))
def test_stable_diffusion_gives_diffusers_images(name, theirs, tmp_path):
    """Text encoder, CFG (scale 3), VAE decode: the whole StableDiffusionPipeline, 6 steps, 16×16."""
    pipe = sd_pipeline(theirs, tmp_path / "tokenizer")

    def run():
        return pipe("a red cat", num_inference_steps=6, guidance_scale=3.0, height=16, width=16,
                    generator=torch.Generator().manual_seed(0), output_type="np").images

    reference = run()
    pipe.scheduler = DiffkitScheduler.from_scheduler(theirs, sampler=name)
    ours = run()
    assert reference.std() > 0.05  # the tiny network draws something, not a constant image
    np.testing.assert_allclose(ours, reference, rtol=0, atol=TOLERANCE)


DIT_CASES = [case for case in peers() if case[0] in ("ddim", "dpmpp_2m", "unipc")]


@pytest.mark.parametrize("name, theirs", DIT_CASES, ids=_ids(DIT_CASES))
def test_dit_gives_diffusers_images(name, theirs):
    """DiTPipeline: class labels, CFG over a doubled batch, learned-σ channels split off. (Euler-type
    schedulers need their noise scaled by init_noise_sigma, which DiTPipeline never does.)"""
    pipe = dit_pipeline(theirs)

    def run():
        return pipe(class_labels=[1, 2], num_inference_steps=6, guidance_scale=3.0,
                    generator=torch.Generator().manual_seed(0), output_type="np").images

    reference = run()
    pipe.scheduler = DiffkitScheduler.from_scheduler(theirs, sampler=name)
    np.testing.assert_allclose(run(), reference, rtol=0, atol=TOLERANCE)


DDPM_CASES = [case for case in peers() if case[0] in ("ddim", "dpmpp_2m")]


@pytest.mark.parametrize("name, theirs", DDPM_CASES, ids=_ids(DDPM_CASES))
def test_ddpm_pipeline_gives_diffusers_images(name, theirs):
    """DDPMPipeline passes generator= to step(), which UniPC's step does not take, and never scales its
    noise, which Euler-type schedulers need: of the five, diffusers runs DDIM and DPM-Solver there.
    DiffkitScheduler runs every sampler there (the next test)."""
    pipe = ddpm_pipeline(theirs)

    def run():
        return pipe(batch_size=2, num_inference_steps=8, generator=torch.Generator().manual_seed(1), output_type="np").images

    reference = run()
    pipe.scheduler = DiffkitScheduler.from_scheduler(theirs, sampler=name)
    np.testing.assert_allclose(run(), reference, rtol=0, atol=TOLERANCE)


def _diffkit_images(pipe, name: str, steps: int, seed: int, options=None) -> np.ndarray:
    """What ``diffkit.sample``'s machinery gives on the pipeline's own UNet: the same start z (x_T, read
    as y_0 = √(1 + σ_0²)·z), then the generator's later draws for a stochastic sampler."""
    scheduler = pipe.scheduler
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn((2, 3, 8, 8), generator=generator)
    scheduler.set_timesteps(steps)
    grid = scheduler._stepper.sigmas
    denoiser = diffkit.VPDenoiser(lambda x_t, t: pipe.unet(x_t, t).sample, scheduler.noise.schedule, "eps")
    sampler = diffkit.get("sampler", name)
    with torch.no_grad():
        y = sampler(denoiser, z * (1 + float(grid[0]) ** 2) ** 0.5, grid, generator=generator, **(options or {}))
    return (y / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("name", sorted(builtin_samplers()))
def test_every_sampler_runs_in_ddpm_pipeline_as_diffkit_runs_it(name):
    """Each registered sampler in DDPMPipeline equals the same sampler run by diffkit on the pipeline's
    UNet (stochastic ones too: both draw from the pipeline's generator in the same order)."""
    pipe = ddpm_pipeline(diffusers.DDPMScheduler())
    pipe.scheduler = DiffkitScheduler.from_scheduler(pipe.scheduler, sampler=name, spacing="karras")
    images = pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(3), output_type="np").images
    assert np.isfinite(images).all()
    np.testing.assert_allclose(images, _diffkit_images(pipe, name, 5, 3), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("name", sorted(builtin_samplers()))
def test_every_sampler_runs_in_dit_and_stable_diffusion(name, tmp_path):
    """Two evaluations per step (heun, dpm2), stochastic draws from the pipeline's generator, multistep
    history: finite images, reproducible with the same generator seed."""
    dit = dit_pipeline(diffusers.DDIMScheduler())
    dit.scheduler = DiffkitScheduler.from_scheduler(dit.scheduler, sampler=name)
    first = dit(class_labels=[3], num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np")
    assert np.isfinite(first.images).all()
    sd = sd_pipeline(diffusers.EulerDiscreteScheduler(**SD_BETAS), tmp_path / "tokenizer")
    sd.scheduler = DiffkitScheduler.from_scheduler(sd.scheduler, sampler=name)
    runs = [sd("a blue dog", num_inference_steps=4, height=16, width=16, generator=torch.Generator().manual_seed(5),
               output_type="np").images for _ in range(2)]
    assert np.isfinite(runs[0]).all() and np.array_equal(runs[0], runs[1])


def test_heun_announces_both_evaluations_of_each_step():
    scheduler = DiffkitScheduler.from_scheduler(diffusers.HeunDiscreteScheduler(**SD_BETAS), sampler="heun")
    scheduler.set_timesteps(6)
    theirs = diffusers.HeunDiscreteScheduler(**SD_BETAS)
    theirs.set_timesteps(6)
    assert len(scheduler.timesteps) == 2 * 6 - 1
    torch.testing.assert_close(scheduler.timesteps, theirs.timesteps.float(), rtol=0, atol=1e-3)


@pytest.mark.parametrize("name, theirs", peers(**SD_BETAS, steps_offset=1) + peers(timestep_spacing="trailing")
                         + peers(timestep_spacing="linspace"))
def test_the_grid_is_the_replaced_schedulers_grid(name, theirs):
    """from_scheduler places the replaced scheduler's own grid: DDIM's leading (with the offset), the
    Euler-type schedulers' fractional linspace, the multistep solvers' N + 1-point linspace/leading."""
    ours = DiffkitScheduler.from_scheduler(theirs, sampler="euler")
    for steps in (1, 7, 25):
        theirs.set_timesteps(steps)
        ours.set_timesteps(steps)
        want = theirs.timesteps.to(torch.float64)
        if name == "heun":
            want = want[::2]  # diffusers lists Heun's second evaluation of each step again
        np.testing.assert_allclose(ours.timesteps.numpy(), want.numpy(), rtol=0, atol=2e-3)


@pytest.mark.parametrize("cls", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler"])
@pytest.mark.parametrize("spacing, offset", [("linspace", 0), ("leading", 0), ("leading", 1)])
def test_multistep_timesteps_are_diffusers(cls, spacing, offset):
    for steps in (1, 3, 10, 17, 50):
        theirs = getattr(diffusers, cls)(timestep_spacing=spacing, steps_offset=offset)
        theirs.set_timesteps(steps)
        assert multistep_timesteps(1000, steps, spacing, offset).tolist() == theirs.timesteps.tolist()


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_noise_process_is_the_schedulers_table(beta_schedule, zero_snr):
    theirs = diffusers.DDPMScheduler(beta_schedule=beta_schedule, rescale_betas_zero_snr=zero_snr)
    process = noise_process(theirs.config)
    np.testing.assert_allclose(process.schedule.alphas_cumprod.numpy(), theirs.alphas_cumprod.numpy(),
                               rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["ddim", "heun", "euler_ancestral"])
def test_a_saved_pipeline_loads_back_with_diffusers(name, tmp_path):
    pipe = ddpm_pipeline(diffusers.DDIMScheduler())
    pipe.scheduler = DiffkitScheduler.from_scheduler(pipe.scheduler, sampler=name, spacing="karras",
                                                     spacing_options={"rho": 5.0})
    before = pipe(batch_size=1, num_inference_steps=4, generator=torch.Generator().manual_seed(2), output_type="np").images
    pipe.save_pretrained(tmp_path / "pipe")
    again = diffusers.DDPMPipeline.from_pretrained(tmp_path / "pipe")
    again.set_progress_bar_config(disable=True)
    assert isinstance(again.scheduler, DiffkitScheduler)
    assert {k: v for k, v in again.scheduler.config.items() if not k.startswith("_")} == {
        k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    after = again(batch_size=1, num_inference_steps=4, generator=torch.Generator().manual_seed(2), output_type="np").images
    np.testing.assert_array_equal(after, before)


def test_an_optimized_grid_is_used_as_given():
    grid = [9.0, 3.0, 1.0, 0.2]
    scheduler = DiffkitScheduler(sampler="dpmpp_2m", sigmas=grid)
    scheduler.set_timesteps(4)
    np.testing.assert_allclose(scheduler.sigmas.numpy(), grid + [0.0], rtol=1e-6)
    with pytest.raises(ConfigError, match="num_inference_steps=4"):
        scheduler.set_timesteps(3)


def test_flow_matching_scheduler_is_read_as_a_flow_model():
    theirs = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    ours = DiffkitScheduler.from_scheduler(theirs, sampler="euler")
    assert ours.noise.is_flow and ours.noise.schedule.shift == 3.0
    theirs.set_timesteps(8)
    ours.set_timesteps(8)
    np.testing.assert_allclose(ours.timesteps.numpy(), theirs.timesteps.numpy(), rtol=1e-5)
    # the loop itself: flow Euler on a fixed velocity field, from x_1 = z
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, generator=g)

    def field(x, t):
        return torch.tanh(x) * (t / 1000) + 0.3

    def loop(scheduler):
        x = z * getattr(scheduler, "init_noise_sigma", 1.0)  # FlowMatch pipelines start from z itself
        for t in scheduler.timesteps:
            x = scheduler.step(field(x, t), t, x).prev_sample  # flow pipelines feed the latents as they are
        return x

    torch.testing.assert_close(loop(ours), loop(theirs), rtol=1e-5, atol=1e-5)


def test_bad_input_is_refused_before_any_work():
    with pytest.raises(UnknownNameError, match="euler"):
        DiffkitScheduler(sampler="eulr")
    with pytest.raises(ConfigError, match="eta"):
        DiffkitScheduler(sampler="ddim", sampler_options={"eta": -1.0})
    with pytest.raises(ConfigError, match="trained_betas"):
        DiffkitScheduler(trained_betas=[0.1] * 1000)
    with pytest.raises(ConfigError, match="beta_schedule 'exp'"):
        DiffkitScheduler(beta_schedule="exp")
    with pytest.raises(ConfigError, match="start_noise"):
        DiffkitScheduler(start_noise="loud")
    with pytest.raises(ConfigError, match="timestep_convention"):
        DiffkitScheduler(timestep_convention="dpm")
    with pytest.raises(UnknownNameError, match="karras"):
        DiffkitScheduler(spacing="karas")
    with pytest.raises(ConfigError, match="spacing_options"):
        DiffkitScheduler(spacing="karras", spacing_options=[7.0])
    scheduler = DiffkitScheduler(sampler="euler")
    with pytest.raises(ConfigError, match="set_timesteps"):
        scheduler.step(torch.zeros(1, 2), 999, torch.zeros(1, 2))
    scheduler.set_timesteps(4)
    with pytest.raises(ConfigError, match="announced"):
        scheduler.step(torch.zeros(1, 2), 123.0, torch.zeros(1, 2))
    with pytest.raises(ConfigError, match="spacing"):
        DiffkitScheduler(sigmas=[2.0, 1.0], spacing="karras")


def test_diffusers_is_not_needed_by_import_diffkit():
    import subprocess
    import sys

    code = "import sys, diffkit; diffkit.names('sampler'); assert 'diffusers' not in sys.modules, 'diffusers imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_step_takes_what_pipelines_pass():
    params = inspect.signature(DiffkitScheduler.step).parameters
    assert {"model_output", "timestep", "sample", "generator", "return_dict"} <= set(params)


def test_img2img_strength_below_one_is_refused_up_front():
    scheduler = DiffkitScheduler(sampler="euler")
    scheduler.set_begin_index(0)
    with pytest.raises(ConfigError, match="part-way"):
        scheduler.set_begin_index(12)


def test_reading_a_scheduler_config_needs_neither_diffusers_nor_greenlet():
    import subprocess
    import sys

    code = ("import sys; from diffkit.integrations.diffusers import noise_process; "
            "p = noise_process({'beta_schedule': 'scaled_linear', 'prediction_type': 'v_prediction'}); "
            "assert p.prediction == 'v' and not {'diffusers', 'greenlet'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_copied_scheduler_answers_with_its_own_outputs():
    """diffusers and training scripts deepcopy schedulers: the copy's denoiser adapter must read the copy."""
    import copy

    original = DiffkitScheduler(sampler="euler")
    twin = copy.deepcopy(original)
    for scheduler in (original, twin):
        scheduler.set_timesteps(3)
    x = torch.ones(1, 2)
    mine = twin.step(torch.full((1, 2), 0.5), twin.timesteps[0], x).prev_sample
    theirs = original.step(torch.full((1, 2), 0.5), original.timesteps[0], x).prev_sample
    torch.testing.assert_close(mine, theirs)
    assert twin._adapter.model.__self__ is twin
