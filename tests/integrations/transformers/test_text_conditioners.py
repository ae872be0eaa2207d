"""The transformers text conditioners against the peer: each record equals what the diffusers pipeline's
``encode_prompt`` returns (prompts and the unconditional branch, ≤ 1e-6 in float32), and survives
``save_pretrained`` → ``load_component`` and a diffusers pipeline folder unchanged.

Tiny seeded encoders and tokenizers (tests/integrations/transformers/tiny_encoders.py); nothing is
downloaded.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("diffusers")

import diffkit
from diffkit.errors import CheckpointError, ConfigError, DiffkitError, UnknownNameError
from diffkit.integrations.transformers import (
    ClipTextConditioner,
    ClipTextConfig,
    SdxlTextConfig,
    TextTokenizer,
    conditioner_name_for,
    from_components,
    from_pipeline_folder,
    tokenizer_spec_of,
)
from diffkit.io.components import load_component, save_pretrained
from diffkit.models.conditioners import Conditioning
from tests.integrations.transformers.tiny_encoders import CLIP_LENGTH, PROMPTS, T5_LENGTH, Kit, sdxl_time_ids

B = len(PROMPTS)


@dataclass
class Case:
    """A conditioner and what diffusers computes: the prompts' record and the unconditional one (batch B)."""

    name: str
    pipeline: Any
    settings: dict[str, Any]
    expected: Conditioning
    null: Conditioning

    def conditioner(self, **changes: Any) -> Any:
        return from_components(self.name, self.pipeline.components, **{**self.settings, **changes})


def _sd(kit: Kit, *, clip_skip: int | None = None, masked: bool = False) -> Case:
    pipe = kit.sd(masked=masked)
    try:
        embeds, negative = pipe.encode_prompt(PROMPTS, "cpu", 1, True, clip_skip=clip_skip)
    except AttributeError:  # diffusers 0.42 reads text_encoder.text_model, gone in transformers 5: its formula
        _, negative = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
        ids = kit.clip_tokenizer(PROMPTS, padding="max_length", max_length=CLIP_LENGTH, truncation=True,
                                 return_tensors="pt").input_ids
        out = pipe.text_encoder(ids, output_hidden_states=True)
        embeds = pipe.text_encoder.final_layer_norm(out.hidden_states[-(clip_skip + 1)])
    settings = {} if clip_skip is None else {"clip_skip": clip_skip}
    return Case("clip_text", pipe, settings, Conditioning(context=embeds), Conditioning(context=negative))


SIZES = {"original_size": (96, 64), "crops_coords_top_left": (8, 4), "target_size": (128, 112)}


def _sdxl(kit: Kit, *, force_zeros: bool = True, clip_skip: int | None = None, refiner: bool = False) -> Case:
    pipe = kit.sdxl_refiner() if refiner else kit.sdxl(force_zeros=force_zeros)
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, clip_skip=clip_skip
    )
    scores = {"aesthetic_score": 7.0, "negative_aesthetic_score": 2.0} if refiner else {}
    ids, null_ids = sdxl_time_ids(
        pipe, SIZES["original_size"], SIZES["crops_coords_top_left"], SIZES["target_size"], embeds.dtype,
        pooled.shape[-1], aesthetic=scores.get("aesthetic_score"), negative=scores.get("negative_aesthetic_score"),
    )
    settings = {**SIZES, **scores, "force_zeros_for_empty_prompt": pipe.config.force_zeros_for_empty_prompt}
    if clip_skip is not None:
        settings["clip_skip"] = clip_skip
    return Case(
        "sdxl_text", pipe, settings,
        Conditioning(context=embeds, vector=torch.cat([pooled, ids.repeat(B, 1)], dim=-1)),
        Conditioning(context=negative, vector=torch.cat([negative_pooled, null_ids.repeat(B, 1)], dim=-1)),
    )


def _pixart(kit: Kit) -> Case:
    pipe = kit.pixart()
    embeds, mask, negative, negative_mask = pipe.encode_prompt(
        PROMPTS, True, "", 1, "cpu", clean_caption=False, max_sequence_length=T5_LENGTH
    )
    return Case(
        "t5_text", pipe, {"max_sequence_length": T5_LENGTH},
        Conditioning(context=embeds, mask=mask.bool()), Conditioning(context=negative, mask=negative_mask.bool()),
    )


def _sd3(kit: Kit, *, t5: bool = True, clip_skip: int | None = None) -> Case:
    pipe = kit.sd3(t5=t5)
    settings: dict[str, Any] = {"max_sequence_length": T5_LENGTH}
    if not t5:  # the zeros in T5's place take the transformer's width; 40 < 56 = CLIP-L + CLIP-G: cut
        pipe.transformer = SimpleNamespace(config=SimpleNamespace(joint_attention_dim=40))
        settings["joint_attention_dim"] = 40
    if clip_skip is not None:
        settings["clip_skip"] = clip_skip
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        PROMPTS, None, None, device="cpu", clip_skip=clip_skip, max_sequence_length=T5_LENGTH
    )
    return Case(
        "sd3_text", pipe, settings,
        Conditioning(context=embeds, vector=pooled), Conditioning(context=negative, vector=negative_pooled),
    )


def _flux(kit: Kit) -> Case:
    pipe = kit.flux()
    embeds, pooled, _ = pipe.encode_prompt(PROMPTS, None, device="cpu", max_sequence_length=T5_LENGTH)
    negative, negative_pooled, _ = pipe.encode_prompt([""], None, device="cpu", max_sequence_length=T5_LENGTH)
    return Case(
        "flux_text", pipe, {"max_sequence_length": T5_LENGTH},
        Conditioning(context=embeds, vector=pooled), Conditioning(context=negative, vector=negative_pooled).expand(B),
    )


CASES = {
    "sd": _sd,
    "sd-clip_skip": lambda kit: _sd(kit, clip_skip=1),
    "sd-attention_mask": lambda kit: _sd(kit, masked=True),
    "sdxl": _sdxl,
    "sdxl-empty_prompt": lambda kit: _sdxl(kit, force_zeros=False),
    "sdxl-clip_skip": lambda kit: _sdxl(kit, clip_skip=1),
    "sdxl-refiner": lambda kit: _sdxl(kit, refiner=True),
    "pixart": _pixart,
    "sd3": _sd3,
    "sd3-clip_skip": lambda kit: _sd3(kit, clip_skip=1),
    "sd3-without_t5": lambda kit: _sd3(kit, t5=False),
    "flux": _flux,
}
FOLDER_CASES = ["sd", "sdxl", "sdxl-refiner", "pixart", "sd3", "sd3-without_t5", "flux"]


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Kit:
    return Kit(tmp_path_factory.mktemp("kit"))


@pytest.fixture(scope="module")
def cases(kit):
    built: dict[str, Case] = {}

    def get(case_id: str) -> Case:
        if case_id not in built:
            with torch.no_grad():
                built[case_id] = CASES[case_id](kit)
        return built[case_id]

    return get


def assert_records_close(actual: Conditioning, expected: Conditioning, atol: float = 1e-6) -> None:
    assert actual.present() == expected.present()
    for name, value in expected.as_dict().items():
        got = getattr(actual, name)
        assert got.shape == value.shape and got.dtype == value.dtype, name
        if value.dtype == torch.bool:
            assert torch.equal(got, value), name
        else:
            torch.testing.assert_close(got, value, rtol=0, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def assert_records_equal(actual: Conditioning, expected: Conditioning) -> None:
    assert actual.present() == expected.present()
    for name, value in expected.as_dict().items():
        assert torch.equal(getattr(actual, name), value), name


# -- parity with diffusers ------------------------------------------------------------------------------


@pytest.mark.parametrize("case_id", list(CASES))
def test_record_equals_the_pipelines_encode_prompt(cases, case_id):
    case = cases(case_id)
    conditioner = case.conditioner()
    assert_records_close(conditioner(PROMPTS), case.expected)
    assert_records_close(conditioner.null(B), case.null)  # diffusers' negative_prompt=None branch
    assert_records_close(conditioner(PROMPTS, force_drop=True), case.null)  # CFG's unconditional branch
    assert conditioner.batch_size_of(PROMPTS) == B


def test_the_records_have_the_documented_shapes(cases):
    """77 → CLIP_LENGTH (12), M → T5_LENGTH (10); widths: CLIP-L 32, CLIP-G 24 (projection 20), T5 32 / 64."""
    shapes = {
        "sd": {"context": (B, 12, 32)},
        "sdxl": {"context": (B, 12, 32 + 24), "vector": (B, 20 + 6)},
        "sdxl-refiner": {"context": (B, 12, 24), "vector": (B, 20 + 5)},
        "pixart": {"context": (B, 10, 32), "mask": (B, 10)},
        "sd3": {"context": (B, 12 + 10, 64), "vector": (B, 32 + 20)},
        "sd3-without_t5": {"context": (B, 12 + 10, 40), "vector": (B, 32 + 20)},
        "flux": {"context": (B, 10, 32), "vector": (B, 32)},
    }
    for case_id, fields in shapes.items():
        record = cases(case_id).conditioner()(PROMPTS)
        assert {name: tuple(value.shape) for name, value in record.as_dict().items()} == fields, case_id


def test_sdxl_null_is_zeros_with_the_time_ids(cases):
    conditioner = cases("sdxl").conditioner()
    null = conditioner.null(2)
    assert torch.equal(null.context, torch.zeros(2, CLIP_LENGTH, 56))
    assert torch.equal(null.vector[:, :20], torch.zeros(2, 20))
    assert null.vector[0, 20:].tolist() == [96.0, 64.0, 8.0, 4.0, 128.0, 112.0]


def test_pixart_mask_marks_the_prompt_tokens(cases):
    record = cases("pixart").conditioner()(["a red cat", ""])
    assert record.mask.sum(dim=1).tolist() == [4, 1]  # ▁a ▁red ▁cat </s>; </s>


# -- training drop, modes, dtype --------------------------------------------------------------------------


@pytest.mark.parametrize("case_id", ["sd", "sdxl", "pixart", "flux"])
def test_training_drop_replaces_samples_by_the_null_record(cases, case_id):
    case = cases(case_id)
    conditioner = case.conditioner(drop_prob=0.5).train()
    assert conditioner.training and not any(m.training for e in conditioner.encoders() for m in e.modules())
    assert not any(p.requires_grad for p in conditioner.parameters())
    prompts = PROMPTS * 2
    record = conditioner(prompts, generator=torch.Generator().manual_seed(3))
    dropped = torch.rand(len(prompts), generator=torch.Generator().manual_seed(3)) < 0.5
    assert 0 < int(dropped.sum()) < len(prompts)
    kept = conditioner.eval()(prompts)
    null = conditioner.null(len(prompts))
    for name, value in record.as_dict().items():
        assert torch.equal(value[dropped], getattr(null, name)[dropped]), name
        torch.testing.assert_close(value[~dropped], getattr(kept, name)[~dropped], rtol=0, atol=1e-6)
    assert not value.requires_grad


def test_force_drop_tensor_and_eval_mode(cases):
    conditioner = cases("sd").conditioner(drop_prob=0.9)  # eval mode: only forced samples are dropped
    which = torch.tensor([True, False, False, True, False])
    record = conditioner(PROMPTS, force_drop=which)
    plain = conditioner(PROMPTS)
    null = conditioner.null(B)
    assert torch.equal(record.context[which], null.context[which])
    assert torch.equal(record.context[~which], plain.context[~which])
    assert torch.equal(conditioner(PROMPTS, force_drop=False).context, plain.context)


def test_the_encoders_run_only_for_what_is_kept_or_dropped(cases, monkeypatch):
    """All dropped (CFG's ∅ branch): no prompt is encoded; none dropped (eval): ∅ is not built."""
    conditioner = cases("sd").conditioner()
    calls: list[str] = []
    encode, null = conditioner._encode, conditioner._null
    monkeypatch.setattr(conditioner, "_encode", lambda texts: calls.append("encode") or encode(texts))
    monkeypatch.setattr(conditioner, "_null", lambda: calls.append("null") or null())
    conditioner(PROMPTS, force_drop=True)
    assert calls == ["null"]
    calls.clear()
    conditioner(PROMPTS)
    assert calls == ["encode"]
    calls.clear()
    conditioner(PROMPTS, force_drop=torch.tensor([True, False, False, True, False]))
    assert sorted(calls) == ["encode", "null"]


def test_dtype_and_device_follow_the_module(cases):
    case = cases("sdxl")
    conditioner = copy.deepcopy(case.conditioner()).to(torch.float64)
    record = conditioner(PROMPTS)
    assert record.context.dtype == record.vector.dtype == torch.float64
    assert conditioner.null(1).vector.dtype == torch.float64
    torch.testing.assert_close(record.vector.float(), case.expected.vector, rtol=0, atol=1e-5)
    assert conditioner.null(2, device="meta").context.device.type == "meta"


def test_state_dict_keys_keep_the_checkpoint_layout(cases):
    conditioner = cases("sdxl").conditioner()
    keys = list(conditioner.state_dict())
    assert keys[0].startswith("text_encoder.text_model.embeddings.")  # as in the CLIPTextModel checkpoints
    assert any(k.startswith("text_encoder_2.text_model.") for k in keys)
    assert any(k == "text_encoder_2.text_projection.weight" for k in keys)
    fresh = diffkit.build("conditioner", "sdxl_text", **conditioner.config.to_dict())
    fresh.load_state_dict(conditioner.state_dict(), strict=True)
    assert_records_equal(fresh(PROMPTS), conditioner(PROMPTS))


# -- saving and loading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case_id", list(CASES))
def test_save_pretrained_and_load_component_round_trip(cases, case_id, tmp_path):
    conditioner = cases(case_id).conditioner(drop_prob=0.25)
    save_pretrained(conditioner, tmp_path / "conditioner", kind="conditioner")
    loaded = load_component(tmp_path / "conditioner").eval()
    assert type(loaded) is type(conditioner) and loaded.config == conditioner.config
    assert_records_equal(loaded(PROMPTS), conditioner(PROMPTS))
    assert_records_equal(loaded.null(2), conditioner.null(2))
    saved = json.loads((tmp_path / "conditioner" / "diffkit.json").read_text())
    assert saved["name"] == cases(case_id).name and saved["kind"] == "conditioner"


@pytest.mark.parametrize("case_id", FOLDER_CASES)
def test_diffusers_folder_round_trip(cases, case_id, tmp_path):
    """from_pipeline_folder reads the folder diffusers writes; the component saved from it needs the folder no more."""
    case = cases(case_id)
    folder = tmp_path / "pipeline"
    pipe = case.pipeline
    if case_id == "sd3-without_t5":  # the stand-in transformer cannot be saved; its width goes to config.json
        pipe = type(pipe)(**{**pipe.components, "transformer": None})
    pipe.save_pretrained(folder)
    if case_id == "sd3-without_t5":
        (folder / "transformer").mkdir()
        (folder / "transformer" / "config.json").write_text(json.dumps({"joint_attention_dim": 40}))
    model_index = json.loads((folder / "model_index.json").read_text())
    assert conditioner_name_for(model_index) == case.name
    settings = {k: v for k, v in case.settings.items() if k not in ("joint_attention_dim", "aesthetic_score")}
    loaded = from_pipeline_folder(case.name, folder, model_index, **settings)
    # the folder's defaults: the transformer's joint_attention_dim, the refiner's aesthetic score 6.0 (diffusers')
    expected = case.conditioner(**({"aesthetic_score": 6.0} if case_id == "sdxl-refiner" else {}))
    assert loaded.config == expected.config
    # the same weights, but transformers leaves some unaligned in memory: a last-bit difference is possible
    assert_records_close(loaded(PROMPTS), expected(PROMPTS))
    assert_records_close(loaded.null(1), expected.null(1))
    save_pretrained(loaded, tmp_path / "component", kind="conditioner")
    shutil.rmtree(folder)
    again = diffkit.load_pretrained(tmp_path / "component")
    assert_records_equal(again(PROMPTS), loaded(PROMPTS))


def test_folder_defaults_come_from_the_pipeline(cases, tmp_path):
    folder = tmp_path / "sdxl"
    cases("sdxl").pipeline.save_pretrained(folder)
    (folder / "unet").mkdir()
    (folder / "unet" / "config.json").write_text(json.dumps({"sample_size": 16}))
    (folder / "vae").mkdir()
    (folder / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [8, 16, 32]}))
    config = from_pipeline_folder("sdxl_text", folder).config
    assert config.original_size == config.target_size == (64, 64) and config.crops_coords_top_left == (0, 0)
    assert config.force_zeros_for_empty_prompt and config.aesthetic_score is None
    index = json.loads((folder / "model_index.json").read_text())
    index["force_zeros_for_empty_prompt"] = False
    config = from_pipeline_folder("sdxl_text", folder, index, original_size=(8, 8)).config
    assert not config.force_zeros_for_empty_prompt and config.original_size == (8, 8)

    folder = tmp_path / "sigma"
    cases("pixart").pipeline.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert from_pipeline_folder("t5_text", folder, index).config.max_sequence_length == 120
    index["_class_name"] = "PixArtSigmaPipeline"
    assert from_pipeline_folder("t5_text", folder, index).config.max_sequence_length == 300


def test_folder_errors_name_the_missing_or_wrong_component(cases, tmp_path):
    folder = tmp_path / "sd"
    cases("sd").pipeline.save_pretrained(folder)
    with pytest.raises(CheckpointError, match="text_encoder_2"):
        from_pipeline_folder("sdxl_text", folder)
    with pytest.raises(ConfigError, match="CLIPTextModelWithProjection"):
        from_pipeline_folder("sd3_text", folder, {**json.loads((folder / "model_index.json").read_text()),
                                                  "text_encoder_2": ["transformers", "CLIPTextModel"]})
    with pytest.raises(UnknownNameError, match="clip_txt"):
        from_pipeline_folder("clip_txt", folder)
    with pytest.raises(ConfigError, match="text_encoder"):
        from_pipeline_folder("clip_text", folder, text_encoder={})
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(CheckpointError, match="tokenizer"):
        from_pipeline_folder("clip_text", folder)


# -- bad inputs and configs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompts", "message"),
    [("a red cat", "sequence"), ([], "at least one"), (["a cat", 3], "must be str"), ([b"a cat"], "must be str"),
     (None, "sequence"), ([["a", "cat"]], "must be str")],
)
def test_bad_prompts_are_config_errors(cases, prompts, message):
    conditioner = cases("sd").conditioner()
    with pytest.raises(ConfigError, match=message):
        conditioner(prompts)
    with pytest.raises(ConfigError, match=message):
        conditioner.batch_size_of(prompts)


def test_bad_configs_are_config_errors(cases):
    sd = cases("sd").conditioner().config.to_dict()
    with pytest.raises(ConfigError, match="clip_skip=3 skips more layers"):
        ClipTextConditioner(ClipTextConfig.from_dict({**sd, "clip_skip": 3}))
    with pytest.raises(ConfigError, match="model_type 'clip_text_model'"):
        ClipTextConfig.from_dict({**sd, "text_encoder": {**sd["text_encoder"], "model_type": "t5"}})
    with pytest.raises(ConfigError, match="drop_prob"):
        ClipTextConfig.from_dict({**sd, "drop_prob": 1.0})
    with pytest.raises(UnknownNameError, match="clip_skp"):
        ClipTextConfig.from_dict({**sd, "clip_skp": 1})
    with pytest.raises(ConfigError, match="model_max_length"):
        ClipTextConfig.from_dict({**sd, "tokenizer": {**sd["tokenizer"], "model_max_length": None}})
    sdxl = cases("sdxl").conditioner().config.to_dict()
    with pytest.raises(ConfigError, match="go together"):
        SdxlTextConfig.from_dict({**sdxl, "tokenizer": None})
    with pytest.raises(ConfigError, match="different lengths"):
        SdxlTextConfig.from_dict({**sdxl, "tokenizer": {**sdxl["tokenizer"], "model_max_length": 77}})
    with pytest.raises(ConfigError, match="original_size"):
        SdxlTextConfig.from_dict({**sdxl, "original_size": [1024]})
    with pytest.raises(ConfigError, match="from_pipeline_folder"):
        diffkit.build("conditioner", "clip_text")
    with pytest.raises(ConfigError, match="CLIPTextModelWithProjection"):
        components = {**cases("sd3").pipeline.components, "text_encoder": cases("sd").pipeline.text_encoder}
        from_components("sd3_text", components)
    with pytest.raises(ConfigError, match="batch_size"):
        cases("sd").conditioner().null(0)


def test_long_prompts_are_cut_with_a_warning(cases):
    conditioner = cases("sd").conditioner()
    with pytest.warns(UserWarning, match="1 of 2 texts are longer than the context"):
        conditioner(["cat " * 20, "a cat"])


def test_the_tokenizer_gives_the_transformers_ids(kit):
    texts = ["a red cat", "A  PHOTO of a Blue dog!", "", "cat " * 20, "unknown wörds ✓", "<|endoftext|> a"]
    for tokenizer, length in ((kit.clip_tokenizer, CLIP_LENGTH), (kit.t5_tokenizer, T5_LENGTH), (kit.t5_tokenizer, 40)):
        ours = TextTokenizer(tokenizer_spec_of(tokenizer))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ids, mask = ours(texts, length)
        assert len(caught) == (length < 40) and all("longer than the context" in str(w.message) for w in caught)
        theirs = tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        assert torch.equal(ids, theirs.input_ids) and torch.equal(mask, theirs.attention_mask.bool())
    copied = copy.deepcopy(ours)
    assert torch.equal(copied(texts, 40)[0], ids)


# -- the optional extra ----------------------------------------------------------------------------------------


def test_import_diffkit_does_not_import_transformers():
    code = (
        "import diffkit, sys; names = diffkit.names('conditioner'); "
        "assert {'clip_text', 'sdxl_text', 't5_text', 'sd3_text', 'flux_text'} <= set(names), names; "
        "import diffkit.integrations.transformers as t; t.ClipTextConfig; "
        "assert 'transformers' not in sys.modules and 'tokenizers' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_without_transformers_the_error_names_the_extra(cases, monkeypatch, tmp_path):
    config = cases("sd").conditioner().config.to_dict()
    folder = tmp_path / "sd"
    cases("sd").pipeline.save_pretrained(folder)
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers → ImportError
    for build in (lambda: diffkit.build("conditioner", "clip_text", **config),
                  lambda: from_pipeline_folder("clip_text", folder)):
        with pytest.raises(DiffkitError, match=r"pip install 'diffkit\[transformers\]'"):
            build()
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ConfigError, match=r"diffkit\[transformers\]"):
        TextTokenizer(ClipTextConfig.from_dict(config).tokenizer)


# -- in a diffkit pipeline ---------------------------------------------------------------------------------------


def test_a_diffkit_pipeline_trains_samples_and_saves_with_it(cases, tmp_path):
    conditioner = cases("sd").conditioner(drop_prob=0.5)
    pipe = diffkit.Pipeline(
        backbone=("latent_unet", {
            "sample_size": 8, "in_channels": 2, "out_channels": 2, "block_out_channels": (16, 16),
            "layers_per_block": 1, "cross_attention_levels": (1,), "num_heads": 2, "context_dim": 32, "norm_groups": 8,
        }),
        conditioner=conditioner, sample_shape=(2, 8, 8), default_steps=2,
    )
    pipe.train()
    assert not any(m.training for m in conditioner.text_encoder.modules())
    g = torch.Generator().manual_seed(0)
    loss, _ = pipe.loss(torch.rand(3, 2, 8, 8, generator=g) * 2 - 1, ["a red cat", "photo", ""], generator=g)
    loss.backward()
    assert all(p.grad is None for p in conditioner.parameters())
    out = pipe.sample(2, cond=["a red cat", "a blue dog"], steps=2, guidance=2.0, generator=0)
    assert out.shape == (2, 2, 8, 8) and torch.isfinite(out).all()
    pipe.save(tmp_path / "pipe")
    loaded = diffkit.load_pretrained(tmp_path / "pipe")
    again = loaded.sample(2, cond=["a red cat", "a blue dog"], steps=2, guidance=2.0, generator=0)
    torch.testing.assert_close(again, pipe.eval().sample(2, cond=["a red cat", "a blue dog"], steps=2, guidance=2.0,
                                                         generator=0), rtol=0, atol=1e-6)
