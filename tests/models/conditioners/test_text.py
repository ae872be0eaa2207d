"""The byte tokenizer and the text conditioner: round trips, masks, truncation, the encoder's
masking, the null (empty-prompt) record and saving."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffkit
from diffkit.errors import ConfigError
from diffkit.models.conditioners import ByteTokenizer, TextConditioner, TextConfig, masked_mean
from diffkit.models.conditioners.tokenizer import BOS, EOS, PAD

SMALL = TextConfig(width=32, depth=2, heads=4, max_length=24, context_dim=16, drop_prob=0.5)


def small(seed: int = 0) -> TextConditioner:
    torch.manual_seed(seed)
    return TextConditioner(SMALL).eval()


# -- tokenizer ----------------------------------------------------------------------------------


@given(st.lists(st.text(max_size=30), min_size=1, max_size=4))
def test_tokenizer_round_trip_masks_and_truncation(texts):
    tokenizer = ByteTokenizer(16)
    ids, mask = tokenizer.encode(texts)
    assert ids.shape == mask.shape == (len(texts), 16) and ids.dtype == torch.long and mask.dtype == torch.bool
    for text, row, keep, decoded in zip(texts, ids.tolist(), mask.tolist(), tokenizer.decode(ids)):
        data = text.encode("utf-8")
        n = sum(keep)
        assert keep == [True] * n + [False] * (16 - n)  # real tokens first, then padding
        assert row[0] == BOS and row[n - 1] == EOS and row[n:] == [PAD] * (16 - n)
        if len(data) <= 14:
            assert decoded == text and n == len(data) + 2
        else:  # cut at a character boundary: a prefix of whole characters, at most 14 bytes
            assert text.startswith(decoded) and len(decoded.encode("utf-8")) == n - 2 <= 14
            assert n - 2 + len(text[len(decoded)].encode("utf-8")) > 14  # the next character would not fit


def test_tokenizer_cuts_at_character_boundaries_and_checks_inputs():
    tokenizer = ByteTokenizer(7)  # 5 bytes of text
    ids, mask = tokenizer.encode(["é" * 10, "", "abcdefgh"])
    assert tokenizer.decode(ids) == ["éé", "", "abcde"]  # "é" is 2 bytes: 4 of the 5 are used
    assert mask.sum(dim=1).tolist() == [6, 2, 7]
    assert ids[1].tolist() == [BOS, EOS] + [PAD] * 5
    with pytest.raises(ConfigError, match="sequence of str"):
        tokenizer.encode("abc")
    with pytest.raises(ConfigError, match="str"):
        tokenizer.encode([b"abc"])
    with pytest.raises(ConfigError, match="≥ 2"):
        ByteTokenizer(1)


# -- encoder and conditioner ----------------------------------------------------------------------


def test_text_record_shapes_and_pooled_vector():
    conditioner = small()
    texts = ["a red square", "", "x" * 100]
    record = conditioner(texts)
    assert record.context.shape == (3, 24, 16) and record.mask.shape == (3, 24) and record.vector.shape == (3, 16)
    assert record.mask.sum(dim=1).tolist() == [14, 2, 24]
    for i in range(3):  # vector = mean of the context over the real tokens
        real = record.context[i, record.mask[i]]
        torch.testing.assert_close(record.vector[i], real.mean(dim=0), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(record.context[0], record.context[2])
    assert conditioner.batch_size_of(texts) == 3
    with pytest.raises(ConfigError, match="sequence"):
        conditioner("one prompt")
    with pytest.raises(ConfigError, match="str"):
        conditioner(["ok", 3])


def test_padding_never_changes_real_tokens():
    """With the key mask, a real token's output (and the pooled vector) does not depend on the
    padding: changing the PAD embedding, or the batch's other (longer) texts, changes nothing."""
    conditioner = small()
    alone = conditioner(["short"])
    with torch.no_grad():
        conditioner.encoder.token_embedding.weight[PAD].normal_(0, 5.0)
    changed = conditioner(["short"])
    real = alone.mask[0]
    torch.testing.assert_close(changed.context[0, real], alone.context[0, real], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(changed.vector, alone.vector, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(changed.context[0, ~real], alone.context[0, ~real])  # the pads did change
    batched = conditioner(["short", "a much longer prompt than the first"])
    torch.testing.assert_close(batched.context[0, real], changed.context[0, real], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batched.vector[0], changed.vector[0], rtol=1e-5, atol=1e-6)


def test_null_is_the_empty_prompt_over_every_position():
    conditioner = small()
    null = conditioner.null(3)
    assert null.batch_size == 3 and bool(null.mask.all())
    context, token_mask = conditioner.encode([""])
    torch.testing.assert_close(null.context, context.expand(3, -1, -1), rtol=0, atol=0)
    torch.testing.assert_close(null.vector[0], context[0].mean(dim=0), rtol=1e-6, atol=1e-6)
    forced = conditioner(["a", "b", "c"], force_drop=torch.tensor([False, True, False]))
    for name in ("context", "mask", "vector"):
        torch.testing.assert_close(getattr(forced, name)[1], getattr(null, name)[0], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(forced.context[0], null.context[0])


def test_training_drops_to_the_learned_null():
    conditioner = small().train()
    texts = [f"prompt {i}" for i in range(32)]
    record = conditioner(texts, generator=torch.Generator().manual_seed(0))
    dropped = record.mask.all(dim=1)  # real prompts here are shorter than 24 tokens
    assert 0 < int(dropped.sum()) < 32
    null = conditioner.null(1)
    expected = null.context.expand(int(dropped.sum()), -1, -1)
    torch.testing.assert_close(record.context[dropped], expected, rtol=1e-6, atol=1e-6)
    # The null condition is learned: its gradient reaches the encoder.
    conditioner.zero_grad()
    conditioner(["x"], force_drop=True).context.square().sum().backward()
    assert conditioner.encoder.token_embedding.weight.grad[BOS].abs().sum() > 0
    assert conditioner.encoder.token_embedding.weight.grad[ord("x")].abs().sum() == 0


def test_masked_mean_and_config_checks():
    tokens = torch.arange(12.0).reshape(1, 4, 3)
    mask = torch.tensor([[True, False, True, False]])
    torch.testing.assert_close(masked_mean(tokens, mask), (tokens[0, 0] + tokens[0, 2])[None] / 2)
    with pytest.raises(ConfigError, match="divisible"):
        TextConfig(width=30, heads=4)
    with pytest.raises(ConfigError, match="max_length"):
        TextConfig(max_length=1)


def test_registry_and_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    conditioner = diffkit.build("conditioner", "text", **SMALL.to_dict()).eval()
    assert sum(p.numel() for p in diffkit.build("conditioner", "text").parameters()) == pytest.approx(3.3e6, rel=0.02)
    diffkit.save_pretrained(conditioner, tmp_path / "text")
    loaded = diffkit.load_pretrained(tmp_path / "text").eval()
    assert isinstance(loaded, TextConditioner) and loaded.config == SMALL
    torch.testing.assert_close(loaded(["hello"]).context, conditioner(["hello"]).context, rtol=0, atol=0)
