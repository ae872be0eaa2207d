"""The word-level tokenizer built from captions, and the text conditioner using it."""

from __future__ import annotations

import pytest
import torch

import diffkit
from diffkit.errors import ConfigError
from diffkit.models.conditioners.tokenizer import (
    WORD_BOS,
    WORD_EOS,
    WORD_PAD,
    WORD_UNK,
    WordTokenizer,
    build_vocabulary,
)

CAPTIONS = ["a red circle on the left", "small blue square at the top", "The green triangle, right side"]


def test_the_vocabulary_is_the_sorted_set_of_caption_words():
    vocabulary = build_vocabulary(CAPTIONS)
    assert list(vocabulary) == sorted(set(vocabulary))
    assert {"red", "circle", "left", "the", ","} <= set(vocabulary)
    assert "The" not in vocabulary  # lower-cased
    assert build_vocabulary(CAPTIONS, min_count=2) == ("the",)


def test_words_map_to_ids_and_back_and_unknown_words_become_unk():
    tokenizer = WordTokenizer(8, build_vocabulary(CAPTIONS))
    ids, mask = tokenizer.encode(["a red circle on the left", "a purple zebra", ""])
    assert ids[0, 0] == WORD_BOS and ids[0, 7] == WORD_EOS
    assert tokenizer.decode(ids) == ["a red circle on the left", "a <unk> <unk>", ""]
    assert (ids[1, 2:4] == WORD_UNK).all()
    assert mask.sum(1).tolist() == [8, 5, 2]
    assert (ids[~mask] == WORD_PAD).all()


def test_long_texts_keep_their_first_words():
    tokenizer = WordTokenizer(4, build_vocabulary(CAPTIONS))
    assert tokenizer.decode(tokenizer.encode(["a red circle on the left"])[0]) == ["a red"]


@pytest.mark.parametrize("vocabulary", [[], ["a", "a"], ["a", ""]])
def test_a_bad_vocabulary_is_refused(vocabulary):
    with pytest.raises(ConfigError, match="vocabulary"):
        WordTokenizer(8, vocabulary)


def test_the_text_conditioner_with_a_vocabulary_round_trips_its_config(tmp_path):
    conditioner = diffkit.build(
        "conditioner", "text", width=16, depth=1, heads=2, max_length=10, context_dim=16,
        vocabulary=list(build_vocabulary(CAPTIONS)),
    )
    record = conditioner.eval()(["a red circle on the left", "a purple zebra"])  # eval: no CFG drop
    assert record.context.shape == (2, 10, 16) and record.mask.sum(1).tolist() == [8, 5]
    diffkit.save_pretrained(conditioner, tmp_path / "text")
    loaded = diffkit.load_pretrained(tmp_path / "text")
    assert loaded.config == conditioner.config
    again = loaded(["a red circle on the left", "a purple zebra"])
    assert torch.equal(again.context, conditioner.eval()(["a red circle on the left", "a purple zebra"]).context)


def test_texts_longer_than_the_context_are_truncated_with_a_warning():
    tokenizer = WordTokenizer(4, build_vocabulary(CAPTIONS))
    with pytest.warns(UserWarning, match="1 of 2 texts are longer than the context"):
        tokenizer.encode(["a red circle on the left", "a red"])


def test_bytes_prompts_are_utf8_and_invalid_bytes_are_replaced_with_a_warning():
    conditioner = diffkit.build("conditioner", "text", width=16, depth=1, heads=2, max_length=40, context_dim=16)
    conditioner.eval()
    same = conditioner([b"a red circle"]).context
    assert torch.equal(same, conditioner(["a red circle"]).context)
    with pytest.warns(UserWarning, match="not valid UTF-8"):
        record = conditioner([b"a red \xff circle", ""])  # the empty prompt: unconditional text
    assert torch.isfinite(record.context).all()
    with pytest.raises(ConfigError, match="must be str"):
        conditioner([3])
