"""diffkit.Pipeline: save/load round trips, crash-safe saves, missing plugins, bad input,
classifier-free guidance, the training loss, and latent pipelines with the ``kl`` autoencoder.

Every model here is tiny (widths 16, 8×8 latents or images, a few sampler steps). The
backbones zero their output layers at initialisation (DDPM/ADM, adaLN-Zero), which would make
every prediction independent of x and of the condition; :func:`perturb` moves every weight
off its initial value first, so that conditions, guidance and weights visibly matter.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import diffkit
from diffkit import registry
from diffkit.errors import CheckpointError, ConfigError, ShapeError, UnknownNameError
from diffkit.pipeline import Pipeline, load_pipeline
from diffkit.training.objectives import Objective
from tests.model_helpers import perturb

K = 3  # classes of the class-conditional pipelines
CTX = 16  # context width of the text conditioner and the latent UNet

UNET = {
    "sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": (16, 16),
    "layers_per_block": 1, "attention_levels": (), "mid_attention": False, "norm_groups": 8, "dropout": 0.0,
}
LATENT_UNET = {
    "sample_size": 8, "in_channels": 2, "out_channels": 2, "block_out_channels": (16, 16),
    "layers_per_block": 1, "cross_attention_levels": (1,), "num_heads": 2, "context_dim": CTX, "norm_groups": 8,
}
DIT = {
    "input_size": 8, "patch_size": 4, "in_channels": 2, "hidden_size": 16, "depth": 1, "num_heads": 2,
    "frequency_embedding_size": 16, "num_classes": K,
}
TEXT = {"width": 16, "depth": 1, "heads": 2, "max_length": 8, "context_dim": CTX}
KL = {  # one downsampling (f = 2): 16×16×1 images ↔ 8×8×2 latents
    "in_channels": 1, "out_channels": 1, "block_out_channels": (8, 8), "layers_per_block": 1,
    "latent_channels": 2, "norm_num_groups": 4, "mid_block_attention": False,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def class_pipeline(seed: int = 0, **changes: Any) -> Pipeline:
    """unet + class_label (K classes), v-prediction on the cosine schedule, weights perturbed."""
    options = {
        "backbone": ("unet", {**UNET, "num_classes": K}),
        "conditioner": ("class_label", {"num_classes": K, "drop_prob": 0.2}),
        "schedule": "cosine",
        "parameterization": "v",
        "default_steps": 4,
        **changes,
    }
    return perturb(Pipeline(**options), scale=0.1, seed=seed)


def text_pipeline(seed: int = 0, **changes: Any) -> Pipeline:
    """latent_unet + text (cross-attention on the context), weights perturbed."""
    options = {
        "backbone": ("latent_unet", LATENT_UNET),
        "conditioner": ("text", TEXT),
        "parameterization": "eps",
        "default_steps": 4,
        **changes,
    }
    return perturb(Pipeline(**options), scale=0.1, seed=seed)


def latent_pipeline(seed: int = 0, **changes: Any) -> Pipeline:
    """latent_unet (no context) on the latents of a tiny kl autoencoder."""
    options = {
        "backbone": ("latent_unet", {**LATENT_UNET, "cross_attention_levels": ()}),
        "autoencoder": ("kl", KL),
        "default_steps": 3,
        **changes,
    }
    pipe = Pipeline(**options)
    perturb(pipe.backbone, scale=0.1, seed=seed)
    perturb(pipe.autoencoder, scale=0.02, seed=seed + 1)
    return pipe


def images(n: int, size: int = 8, channels: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1  # in [−1, 1]


def state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- save → load ---------------------------------------------------------------------------------


def _unet_class_label() -> tuple[Pipeline, Any]:
    pipe = class_pipeline(
        sampler="ddim", sampler_options={"eta": 0.5}, objective={"weighting": "min_snr", "snr_gamma": 3.0},
        default_guidance=2.0,
    )
    return pipe, [0, 2, 1]


def _latent_unet_text() -> tuple[Pipeline, Any]:
    pipe = text_pipeline(
        schedule=("scaled_linear", {"rescale_zero_terminal_snr": True}), parameterization="v",
        sampler="dpmpp_2m_sde",
    )
    return pipe, ["a red square", "", "two blue dots"]


def _dit_learned_sigma() -> tuple[Pipeline, Any]:
    pipe = Pipeline(
        backbone=("dit", DIT), conditioner=("class_label", {"num_classes": K}), schedule="linear",
        sampler="ddpm", sampler_options={"variance": "learned"}, default_steps=4,
    )
    assert pipe.learned_variance  # DiT's learn_sigma: 2C output channels
    return perturb(pipe, scale=0.1, seed=3), [1, 1, 0]


def _latent_kl() -> tuple[Pipeline, Any]:
    return latent_pipeline(parameterization="x0", sampler="euler_ancestral"), None


def _dit_flow() -> tuple[Pipeline, Any]:
    pipe = Pipeline(
        backbone=("dit", {**DIT, "learn_sigma": False}), conditioner=("class_label", {"num_classes": K}),
        schedule=("flow", {"shift": 3.0}), parameterization="flow", sampler="dpmpp_2m",
        objective={"timesteps": "logit_normal", "logit_mean": 0.5, "weighting": "cosmap"}, default_steps=4,
    )
    return perturb(pipe, scale=0.1, seed=4), [2, 0, 1]


COMPOSITIONS = {
    "unet+class_label": _unet_class_label,
    "dit+class_label(flow)": _dit_flow,
    "latent_unet+text": _latent_unet_text,
    "dit(learned σ)+class_label": _dit_learned_sigma,
    "latent_unet+kl": _latent_kl,
}


@pytest.mark.parametrize("make", COMPOSITIONS.values(), ids=COMPOSITIONS.keys())
def test_save_then_load_pretrained_gives_the_same_pipeline(tmp_path, make):
    pipe, cond = make()
    pipe.save(tmp_path / "pipe")
    registry.reset()  # as a fresh process would: the registry is filled again on lookup
    loaded = diffkit.load_pretrained(tmp_path / "pipe")

    assert isinstance(loaded, Pipeline) and not loaded.training
    assert state_dicts_equal(loaded, pipe)
    assert type(loaded.schedule) is type(pipe.schedule) and loaded.schedule == pipe.schedule
    assert (loaded.sampler, loaded.sampler_options) == (pipe.sampler, pipe.sampler_options)
    assert loaded.parameterization == pipe.parameterization and loaded.objective == pipe.objective
    assert loaded.sample_shape == pipe.sample_shape and loaded.default_steps == pipe.default_steps
    assert loaded.default_guidance == pipe.default_guidance
    assert loaded.learned_variance == pipe.learned_variance
    for name in ("backbone", "conditioner", "autoencoder"):
        original, copy = getattr(pipe, name), getattr(loaded, name)
        assert (original is None) == (copy is None)
        if copy is not None:
            assert type(copy) is type(original) and copy.config == original.config and copy is not original
    # no tensor of the loaded pipeline shares memory with the original
    original_storage = {t.untyped_storage().data_ptr() for t in pipe.state_dict().values()}
    assert not original_storage & {t.untyped_storage().data_ptr() for t in loaded.state_dict().values()}

    guidance = 1.0 if cond is None else 2.5
    kwargs = {"cond": cond, "guidance": guidance, "n": 3}
    expected = pipe.sample(**kwargs, generator=11)
    again = loaded.sample(**kwargs, generator=11)
    assert torch.isfinite(expected).all()
    assert torch.equal(again, expected)
    assert torch.equal(load_pipeline(tmp_path / "pipe").sample(**kwargs, generator=11), expected)


def test_loaded_pipeline_trains(tmp_path):
    pipe, labels = _unet_class_label()
    pipe.save(tmp_path / "pipe")
    loaded = diffkit.load_pretrained(tmp_path / "pipe").train()
    loss, _ = loaded.loss(images(3), labels, generator=torch.Generator().manual_seed(0))
    loss.backward()
    grads = [p.grad for p in loaded.backbone.parameters()]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)


_CHILD = """
import sys, torch, diffkit
from safetensors.torch import save_file
torch.set_num_threads(1)
pipe = diffkit.load_pretrained(sys.argv[1])
out = pipe.sample(3, cond=[0, 2, 1], guidance=2.5, generator=11)
save_file({"x": out.contiguous()}, sys.argv[2])
"""


def test_a_fresh_process_loads_the_pipeline_and_samples_the_same(tmp_path):
    from safetensors.torch import load_file

    pipe, labels = _unet_class_label()
    pipe.save(tmp_path / "pipe")
    out = tmp_path / "child.safetensors"
    env = {**os.environ, "DIFFKIT_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "pipe"), str(out)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert torch.equal(load_file(out)["x"], pipe.sample(3, cond=labels, guidance=2.5, generator=11))


# -- saving over a folder, and saves that fail -----------------------------------------------------


def test_saving_over_a_pipeline_folder_replaces_it(tmp_path):
    first = class_pipeline(seed=1)
    first.save(tmp_path / "pipe")
    second = latent_pipeline(seed=2, sampler="heun")  # other components: no conditioner, an autoencoder
    second.save(tmp_path / "pipe")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # nothing staged or moved aside is left
    assert sorted(p.name for p in (tmp_path / "pipe").iterdir()) == ["autoencoder", "backbone", "pipeline.json"]
    loaded = diffkit.load_pretrained(tmp_path / "pipe")
    assert loaded.conditioner is None and loaded.sampler == "heun"
    assert state_dicts_equal(loaded, second)


def fail_on_second_component(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make ``save_pretrained`` raise on its second call (a pipeline's second component).

    Returns the list of component folders it was called for. Both the function in
    :mod:`diffkit.io.components` and the name :mod:`diffkit.pipeline` imported are patched.
    """
    import diffkit.io.components
    import diffkit.pipeline

    original = diffkit.io.components.save_pretrained
    calls: list[str] = []

    def failing(module: torch.nn.Module, folder: Any, **kwargs: Any) -> Path:
        calls.append(Path(folder).name)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return original(module, folder, **kwargs)

    monkeypatch.setattr(diffkit.io.components, "save_pretrained", failing)
    if hasattr(diffkit.pipeline, "save_pretrained"):
        monkeypatch.setattr(diffkit.pipeline, "save_pretrained", failing)
    return calls


def test_a_failed_save_leaves_the_old_pipeline_and_no_temporaries(tmp_path, monkeypatch):
    previous = class_pipeline(seed=1)
    previous.save(tmp_path / "pipe")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    calls = fail_on_second_component(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        class_pipeline(seed=2).save(tmp_path / "pipe")
    assert calls == ["backbone", "conditioner"]
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # the previous save, byte for byte, and nothing staged beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
    monkeypatch.undo()
    assert state_dicts_equal(diffkit.load_pretrained(tmp_path / "pipe"), previous)


def test_a_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    fail_on_second_component(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        class_pipeline().save(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


def test_saving_over_a_folder_that_is_not_a_pipeline_is_refused(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not a pipeline")
    with pytest.raises((ConfigError, CheckpointError), match="not a pipeline"):
        class_pipeline().save(mine)
    assert (mine / "notes.txt").read_text() == "not a pipeline"


# -- a component whose plugin is not installed ---------------------------------------------------------


def test_a_missing_backbone_plugin_is_named(tmp_path):
    class_pipeline().save(tmp_path / "pipe")
    config = tmp_path / "pipe" / "backbone" / "diffkit.json"
    record = json.loads(config.read_text())
    record["name"] = "fancy_unet"
    record["origin"] = {"plugin": "fancy", "distribution": "diffkit-fancy", "version": "1.2"}
    config.write_text(json.dumps(record))
    with pytest.raises(UnknownNameError) as info:
        diffkit.load_pretrained(tmp_path / "pipe")
    message = str(info.value)
    assert "unknown backbone 'fancy_unet'" in message
    assert "from the plugin 'fancy' (distribution diffkit-fancy 1.2); install it" in message


def test_a_missing_schedule_plugin_is_named(tmp_path):
    class_pipeline().save(tmp_path / "pipe")
    spec_file = tmp_path / "pipe" / "pipeline.json"
    spec = json.loads(spec_file.read_text())
    spec["schedule"].update(name="fancy_cosine", plugin="fancy")
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(UnknownNameError) as info:
        diffkit.load_pretrained(tmp_path / "pipe")
    message = str(info.value)
    assert "unknown schedule 'fancy_cosine'" in message and "plugin 'fancy'" in message and "install it" in message


def test_a_missing_sampler_plugin_is_named(tmp_path, monkeypatch):
    entry = registry.get_entry("sampler", "example_heun") if "example_heun" in diffkit.names("sampler") else None
    if entry is None:
        pytest.skip("needs the example plugin (pip install -e plugins/diffkit-example-sampler)")
    class_pipeline(sampler="example_heun").save(tmp_path / "pipe")
    monkeypatch.setenv("DIFFKIT_DISABLE_PLUGINS", entry.origin.distribution)
    registry.reset()
    assert "example_heun" not in diffkit.names("sampler")
    with pytest.raises(UnknownNameError) as info:
        diffkit.load_pretrained(tmp_path / "pipe")
    assert entry.origin.distribution in str(info.value) and "install" in str(info.value)


def test_pipeline_folder_errors_name_the_problem(tmp_path):
    class_pipeline().save(tmp_path / "pipe")
    spec_file = tmp_path / "pipe" / "pipeline.json"
    spec = json.loads(spec_file.read_text())
    spec_file.write_text(json.dumps({**spec, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99"):
        diffkit.load_pretrained(tmp_path / "pipe")
    spec_file.write_text(json.dumps({k: v for k, v in spec.items() if k != "sample_shape"}))
    with pytest.raises(CheckpointError, match="sample_shape"):
        diffkit.load_pretrained(tmp_path / "pipe")
    spec_file.write_text("{ not json")
    with pytest.raises(CheckpointError, match="JSON"):
        load_pipeline(tmp_path / "pipe")


# -- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "wrong", "meant"),
    [
        ({"backbone": ("unett", {})}, "unett", "unet"),
        ({"sampler": "unpc"}, "unpc", "unipc"),
        ({"schedule": "cosin"}, "cosin", "cosine"),
        ({"conditioner": ("class_labels", {"num_classes": K})}, "class_labels", "class_label"),
        ({"autoencoder": ("kll", {})}, "kll", "kl"),
        ({"parameterization": "epsilon"}, "epsilon", "eps"),
    ],
    ids=["backbone", "sampler", "schedule", "conditioner", "autoencoder", "parameterization"],
)
def test_unknown_component_names_suggest_close_matches(changes, wrong, meant):
    with pytest.raises(UnknownNameError, match=f"unknown .*'{wrong}'; did you mean '{meant}'"):
        class_pipeline(**changes)


def test_an_unknown_sampler_at_sample_time_suggests_close_matches():
    with pytest.raises(UnknownNameError, match="did you mean 'unipc'"):
        class_pipeline().sample(1, cond=[0], sampler="unpc")


@pytest.mark.parametrize("guidance", [-0.5, -1e-9, math.nan, math.inf, -math.inf, True, "2"])
def test_bad_guidance_is_rejected(guidance):
    with pytest.raises(ConfigError, match="guidance"):
        class_pipeline().sample(1, cond=[0], guidance=guidance)


@pytest.mark.parametrize("n", [0, -2, 1.0, 2.5, True, None])
def test_bad_sample_counts_are_rejected(n):
    with pytest.raises(ConfigError, match="n must be an integer ≥ 1"):
        class_pipeline().sample(n, cond=[0])


def test_zero_steps_are_rejected():
    with pytest.raises(ConfigError, match="steps"):
        class_pipeline().sample(1, cond=[0], steps=0)


def test_default_steps_must_be_a_positive_integer():
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ConfigError, match="default_steps"):
            class_pipeline(default_steps=bad)


def test_cond_must_match_whether_the_pipeline_is_conditioned():
    unconditional = latent_pipeline()
    with pytest.raises(ConfigError, match="no conditioner"):
        unconditional.sample(1, cond=[0])
    with pytest.raises(ConfigError, match="no conditioner"):
        unconditional.loss(images(2, size=16), [0, 1])
    conditional = class_pipeline()
    with pytest.raises(ConfigError, match="pass cond="):
        conditional.sample(2)
    with pytest.raises(ConfigError, match="pass cond="):
        conditional.loss(images(2), None)
    with pytest.raises(ShapeError, match="3 conditions for n=2"):
        conditional.sample(2, cond=[0, 1, 2])
    with pytest.raises(ConfigError, match="negative="):
        conditional.sample(2, cond=[0, 1], negative=[1, 1], guidance=1.0)


@pytest.mark.parametrize("label", [K, -1, 100])
def test_class_labels_out_of_range_are_rejected(label):
    pipe = class_pipeline()
    with pytest.raises(ConfigError, match=rf"class label {label} is outside the valid range 0 … {K - 1}"):
        pipe.sample(2, cond=[0, label])
    with pytest.raises(ConfigError, match="outside the valid range"):
        pipe.loss(images(2), [label, 0])


def test_wrong_sample_shapes_are_rejected():
    # a shape the backbone does not take is refused when the pipeline is built, not when sampling
    with pytest.raises(ConfigError, match=r"sample_shape \(3, 8, 8\) does not fit the UNet backbone.*\(1, 8, 8\)"):
        class_pipeline(sample_shape=(3, 8, 8))  # the unet takes 1 channel
    with pytest.raises(ShapeError, match=r"per-sample shape \(1, 16, 16\), the pipeline \(1, 8, 8\)"):
        class_pipeline().loss(images(2, size=16), [0, 1])
    with pytest.raises(ConfigError, match="sample_shape must be a list of integers"):
        class_pipeline(sample_shape=(1, 0, 8))
    with pytest.raises(ConfigError, match=r"pass sample_shape=\(C, H, W\)"):
        Pipeline(backbone=torch.nn.Conv2d(1, 1, 3, padding=1))
    # a backbone that declares nothing takes any valid shape; the loss still checks the data
    free = Pipeline(backbone=torch.nn.Conv2d(1, 1, 3, padding=1), sample_shape=[1, 4, 6])
    assert free.sample_shape == (1, 4, 6)


@pytest.mark.parametrize(
    "shape",
    ["abc", [1, -8, 8], [1, 8], [1.0, 8, 8], [1.5, 8, 8], [True, 8, 8], [1, 2**70, 8], [1, 16, 16], [2, 8, 8], [], None],
    ids=["string", "negative", "two-dims", "float", "fraction", "bool", "huge", "16x16-on-8x8", "channels", "empty", "null"],
)
def test_an_edited_sample_shape_in_pipeline_json_is_named(tmp_path, shape):
    class_pipeline().save(tmp_path / "pipe")
    spec_file = tmp_path / "pipe" / "pipeline.json"
    spec = json.loads(spec_file.read_text())
    spec_file.write_text(json.dumps({**spec, "sample_shape": shape}))
    with pytest.raises((ConfigError, CheckpointError), match="sample_shape") as info:
        diffkit.load_pretrained(tmp_path / "pipe")
    assert str(spec_file) in str(info.value)


def test_sample_shapes_are_checked_against_concat_channels_and_latents():
    concat = {"backbone": ("unet", {**UNET, "in_channels": 2}), "conditioner": ("concat", {"channels": 1})}
    assert Pipeline(**concat).sample_shape == (1, 8, 8)  # in_channels less the concatenated channel
    with pytest.raises(ConfigError, match=r"less the 1 concat channel\(s\)"):
        Pipeline(**concat, sample_shape=(2, 8, 8))
    with pytest.raises(ConfigError, match="latents of 2 channel"):
        Pipeline(backbone=("unet", {**UNET, "in_channels": 3, "out_channels": 3}), autoencoder=("kl", KL))


def test_parameterization_and_objective_must_agree():
    with pytest.raises(ConfigError, match="objective.prediction='eps' differs from parameterization='v'"):
        class_pipeline(parameterization="v", objective=Objective(prediction="eps"))
    with pytest.raises(ConfigError, match="objective.prediction='x0' differs from parameterization='v'"):
        class_pipeline(parameterization="v", objective={"prediction": "x0"})
    agreed = class_pipeline(parameterization="x0", objective={"weighting": "min_snr"})
    assert agreed.objective == Objective(prediction="x0", weighting="min_snr")


def test_a_misspelt_objective_option_suggests_the_valid_one():
    with pytest.raises(UnknownNameError, match="did you mean 'weighting'"):
        class_pipeline(objective={"weightin": "min_snr"})


def test_a_schedule_must_be_a_registered_schedule():
    with pytest.raises(ConfigError, match="schedule must be a registered schedule"):
        class_pipeline(schedule=object())


@pytest.mark.parametrize("conditioner_classes", [K - 1, K + 2])
def test_conditioner_and_backbone_must_agree_on_the_classes(conditioner_classes):
    with pytest.raises(ConfigError, match="num_classes"):
        class_pipeline(conditioner=("class_label", {"num_classes": conditioner_classes}))


def test_pipeline_is_exported():
    assert diffkit.Pipeline is Pipeline


# -- guidance --------------------------------------------------------------------------------------


def _direct_sample(pipe: Pipeline, record: Any, n: int, seed: int, steps: int = 4) -> torch.Tensor:
    """The sampler run on the pipeline's denoiser with ``record``, without the pipeline's guidance."""
    return diffkit.sample(
        pipe.denoiser(), (n, *pipe.sample_shape), cond=record, schedule=pipe.schedule, sampler=pipe.sampler,
        sampler_options=pipe.sampler_options, steps=steps, generator=torch.Generator().manual_seed(seed),
    )


@torch.no_grad()
def test_guidance_one_is_the_unguided_sample_exactly():
    pipe = class_pipeline().eval()
    labels = [2, 0, 1]
    plain = _direct_sample(pipe, pipe.condition(labels), 3, seed=5)
    assert torch.equal(pipe.sample(3, cond=labels, guidance=1.0, steps=4, generator=5), plain)
    assert torch.equal(pipe.sample(3, cond=labels, guidance=1, steps=4, generator=5), plain)


@torch.no_grad()
def test_guidance_zero_is_the_sample_of_the_null_condition():
    pipe = class_pipeline(sampler="dpmpp_2m").eval()
    null = _direct_sample(pipe, pipe.condition([0, 1, 2], force_drop=True), 3, seed=5)
    guided_zero = pipe.sample(3, cond=[0, 1, 2], guidance=0.0, steps=4, generator=5)
    # one batched [cond; uncond] forward against a forward of the null batch alone
    torch.testing.assert_close(guided_zero, null, rtol=1e-5, atol=1e-5)
    # w = 0 ignores the condition altogether
    assert torch.equal(pipe.sample(3, cond=[2, 2, 0], guidance=0.0, steps=4, generator=5), guided_zero)
    assert not torch.allclose(pipe.sample(3, cond=[0, 1, 2], steps=4, generator=5), guided_zero, atol=1e-4)


@torch.no_grad()
def test_guidance_extrapolates_from_the_null_to_the_conditional_prediction():
    """One Euler step from pure noise x_T to σ = 0 returns D_w(x_T) = D_∅ + w·(D_c − D_∅) exactly."""
    pipe = class_pipeline(sampler="euler").eval()
    one_step = {w: pipe.sample(2, cond=[0, 1], guidance=w, steps=1, generator=3) for w in (0.0, 1.0, 3.0)}
    expected = one_step[0.0] + 3.0 * (one_step[1.0] - one_step[0.0])
    torch.testing.assert_close(one_step[3.0], expected, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_negative_prompts_replace_the_null_condition():
    pipe = text_pipeline().eval()
    prompts, negative = ["a red square", "a blue disc"], ["blurry", "noise"]
    guided = pipe.sample(2, cond=prompts, guidance=3.0, generator=0)
    with_negative = pipe.sample(2, cond=prompts, negative=negative, guidance=3.0, generator=0)
    assert torch.isfinite(with_negative).all()
    assert not torch.allclose(guided, with_negative, atol=1e-4)
    # w = 0 samples the negative prompt alone: the prompts do not matter, and it is the sample
    # conditioned on the negative prompt (up to the rounding of a batch-2B forward against a
    # batch-B one, amplified by ε-prediction's x0 = (x − σ·ε̂) at σ_max ≈ 157)
    only_negative = pipe.sample(2, cond=prompts, negative=negative, guidance=0.0, generator=0)
    assert torch.equal(pipe.sample(2, cond=["x", "y"], negative=negative, guidance=0.0, generator=0), only_negative)
    of_negative = pipe.sample(2, cond=negative, guidance=1.0, generator=0)
    torch.testing.assert_close(only_negative, of_negative, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(only_negative, pipe.sample(2, cond=prompts, generator=0), atol=1e-2)


@torch.no_grad()
def test_guidance_with_a_concat_conditioner_of_any_size():
    pipe = Pipeline(
        backbone=("unet", {**UNET, "in_channels": 2}), conditioner=("concat", {"channels": 1}),
        sample_shape=(1, 8, 8), default_steps=3,
    )
    out = pipe.sample(2, cond=images(2, seed=1), guidance=2.0, generator=0)
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


# -- the training loss ---------------------------------------------------------------------------------


def _embedded_class_pipeline() -> Pipeline:
    """unet reading the class through ``vector_dim`` from the conditioner's own label table."""
    return class_pipeline(
        backbone=("unet", {**UNET, "vector_dim": 8}),
        conditioner=("class_label", {"num_classes": K, "embed_dim": 8}),
    )


@pytest.mark.parametrize(
    ("make", "cond"),
    [(text_pipeline, ["a", "bb", "ccc", "dddd"]), (_embedded_class_pipeline, [0, 1, 2, 0])],
    ids=["text+latent_unet", "class_label(embedded)+unet"],
)
def test_the_loss_is_finite_and_trains_backbone_and_conditioner(make, cond):
    pipe = make().train()
    data = images(4, channels=pipe.sample_shape[0])
    loss, parts = pipe.loss(data, cond, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss) and set(parts) == {"mse"}
    loss.backward()
    for part in (pipe.backbone, pipe.conditioner):
        grads = [p.grad for p in part.parameters()]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.norm() for g in grads) > 0


def test_the_loss_is_reproducible_from_its_generator():
    pipe = class_pipeline().train()
    data = images(4)
    first = pipe.loss(data, [0, 1, 2, 0], generator=torch.Generator().manual_seed(7))[0]
    second = pipe.loss(data, [0, 1, 2, 0], generator=torch.Generator().manual_seed(7))[0]
    other = pipe.loss(data, [0, 1, 2, 0], generator=torch.Generator().manual_seed(8))[0]
    assert torch.equal(first, second) and not torch.equal(first, other)


def test_training_drops_labels_to_the_null_class():
    # drop_prob = 1 is refused by the config (the model would never see a label); p = 1 − 1e-9
    # drops every one of B = 8 uniform draws u < p unless one lands in [p, 1): probability 8e-9.
    pipe = class_pipeline(conditioner=("class_label", {"num_classes": K, "drop_prob": 1 - 1e-9}))
    seen: list[torch.Tensor] = []
    pipe.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[2].labels.clone()))
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    pipe.train().loss(images(8), labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(seen[-1], torch.full((8,), K))  # every label is the null class K
    pipe.eval().loss(images(8), labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(seen[-1], labels)  # in eval mode nothing is dropped


def test_a_learned_variance_unet_trains_with_the_hybrid_loss():
    pipe = class_pipeline(backbone=("unet", {**UNET, "num_classes": K, "out_channels": 2}), parameterization="eps")
    assert pipe.learned_variance
    loss, parts = pipe.train().loss(images(4), [0, 1, 2, 0], generator=torch.Generator().manual_seed(0))
    assert set(parts) == {"mse", "vlb"} and torch.isfinite(parts["vlb"]) and parts["vlb"] >= 0
    # improved DDPM's L_hybrid = L_simple + λ·L_vlb, L_vlb ≈ T·E_t[L_t]
    hybrid = parts["mse"] + pipe.objective.vlb_weight * pipe.schedule.num_train_timesteps * parts["vlb"]
    torch.testing.assert_close(loss.detach(), hybrid)
    loss.backward()
    assert pipe.backbone.conv_out.weight.grad[1].abs().sum() > 0  # the variance channel is trained
    out = pipe.sample(2, cond=[0, 1], sampler="ddpm", sampler_options={"variance": "learned"}, generator=0)
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
    plain = class_pipeline()
    assert not plain.learned_variance and set(plain.loss(images(2), [0, 1])[1]) == {"mse"}


# -- latent pipelines with the kl autoencoder ------------------------------------------------------------


@torch.no_grad()
def test_a_latent_pipeline_samples_decoded_images():
    pipe = latent_pipeline()
    assert pipe.sample_shape == (2, 8, 8)  # the latent_unet's space
    decoded = pipe.sample(2, generator=4)
    latents = pipe.sample(2, generator=4, decode=False)
    assert decoded.shape == (2, 1, 16, 16) and latents.shape == (2, 2, 8, 8)
    assert torch.isfinite(decoded).all()
    assert torch.equal(decoded, pipe.autoencoder.decode_latents(latents))


def test_the_loss_encodes_images_first_unless_encoded():
    pipe = latent_pipeline().train()
    data = images(3, size=16)
    g = torch.Generator().manual_seed(9)
    from_images, _ = pipe.loss(data, generator=g)
    g = torch.Generator().manual_seed(9)
    latents = pipe.encode_images(data, generator=g)  # draws z ~ q(z|x) first, as the loss does
    assert latents.shape == (3, 2, 8, 8)
    from_latents, _ = pipe.loss(latents, generator=g, encoded=True)
    assert torch.equal(from_images, from_latents)

    from_images.backward()
    assert all(p.grad is None for p in pipe.autoencoder.parameters())  # frozen
    assert pipe.backbone.conv_in.weight.grad.abs().sum() > 0  # (without a context, cross-attention has none)
    with pytest.raises(ShapeError, match="per-sample shape"):
        pipe.loss(data, encoded=True)  # images are not latents
    with pytest.raises(ShapeError, match="encoder expects images"):
        pipe.loss(latents)  # latents are not images


def test_the_frozen_autoencoder_stays_in_eval_mode():
    pipe = latent_pipeline(autoencoder=("kl", {**KL, "dropout": 0.5}))
    pipe.train()
    assert not pipe.autoencoder.training
    data = images(2, size=16)
    first = pipe.encode_images(data, generator=torch.Generator().manual_seed(0))
    second = pipe.encode_images(data, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, second)


def test_guidance_on_an_unconditional_pipeline_is_refused():
    pipe = diffkit.Pipeline(
        backbone=("unet", {"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": (8,),
                           "layers_per_block": 1, "attention_levels": (), "norm_groups": 4}),
    )
    with pytest.raises(ConfigError, match="needs a conditioned pipeline"):
        pipe.sample(2, steps=2, guidance=3.0)


def test_a_progress_bar_does_not_change_the_sample(capsys):
    pipe = class_pipeline()
    quiet = pipe.sample(3, cond=[0, 1, 2], steps=4, guidance=2.0, generator=1)
    shown = pipe.sample(3, cond=[0, 1, 2], steps=4, guidance=2.0, generator=1, progress=True)
    assert torch.equal(quiet, shown)
    assert "sample" in capsys.readouterr().err
