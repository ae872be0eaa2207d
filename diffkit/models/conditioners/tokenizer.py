"""Tokenizers that need no vocabulary file (nothing to download): bytes, or words from captions.

A text is its UTF-8 bytes, one token per byte (ids 0 … 255), framed by BOS and EOS and padded
with PAD to a fixed length L = ``max_length``:

    [BOS, b_1, …, b_n, EOS, PAD, …, PAD]        n ≤ L − 2, mask True on BOS … EOS

Longer texts are cut to at most L − 2 bytes, at a character boundary (a multi-byte UTF-8
character is never split), so ``decode(encode(s))`` is always a prefix of s, and s itself when
it fits. The mask marks the real tokens (BOS, bytes, EOS); every text has at least the two
framing tokens, so no row of the mask is empty.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import torch

from diffkit.errors import ConfigError
from diffkit.validators import is_integer

PAD, BOS, EOS = 256, 257, 258
VOCAB_SIZE = 259


class ByteTokenizer:
    """UTF-8 bytes + PAD/BOS/EOS (vocabulary 259) at a fixed length ``max_length`` ≥ 2."""

    pad_id, bos_id, eos_id, vocab_size = PAD, BOS, EOS, VOCAB_SIZE

    def __init__(self, max_length: int) -> None:
        if not is_integer(max_length) or max_length < 2:
            raise ConfigError(f"max_length must be an integer ≥ 2 (BOS and EOS), got {max_length!r}")
        self.max_length = max_length

    def token_ids(self, text: str) -> list[int]:
        """The real tokens of one text: [BOS, bytes…, EOS], at most ``max_length`` of them."""
        if not isinstance(text, str):
            raise ConfigError(f"texts must be str, got {type(text).__name__}")
        data = text.encode("utf-8")
        limit = self.max_length - 2
        if len(data) > limit:
            cut = limit
            while cut > 0 and data[cut] & 0xC0 == 0x80:  # data[cut] continues a character: back off
                cut -= 1
            data = data[:cut]
        return [BOS, *data, EOS]

    def units(self, text: str) -> int:
        """How many tokens ``text`` has before truncation (without BOS/EOS)."""
        return len(text.encode("utf-8"))

    def encode(
        self, texts: Sequence[str], device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids int64 [B, L], mask bool [B, L]) for a sequence of texts; mask True = real token.

        Texts longer than the context are cut, with a warning naming how many.
        """
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
            raise ConfigError(f"encode takes a sequence of str (one per sample), got {type(texts).__name__}")
        cut = sum(1 for text in texts if isinstance(text, str) and self.units(text) > self.max_length - 2)
        if cut:
            warnings.warn(
                f"{cut} of {len(texts)} texts are longer than the context ({self.max_length - 2} tokens "
                f"between BOS and EOS) and were truncated",
                stacklevel=2,
            )
        ids = torch.full((len(texts), self.max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), self.max_length), dtype=torch.bool)
        for row, text in enumerate(texts):
            tokens = self.token_ids(text)
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, : len(tokens)] = True
        return ids.to(device), mask.to(device)

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Texts from ids [B, L] (or [L]): the bytes between BOS and the first EOS/PAD."""
        if ids.ndim == 1:
            ids = ids[None]
        texts = []
        for row in ids.tolist():
            start = 1 if row and row[0] == BOS else 0
            data = bytearray()
            for token in row[start:]:
                if token in (EOS, PAD):
                    break
                if not 0 <= token < 256:
                    raise ConfigError(f"token id {token} is not a byte (0 … 255) where text was expected")
                data.append(token)
            texts.append(data.decode("utf-8", errors="replace"))
        return texts


WORD_PAD, WORD_BOS, WORD_EOS, WORD_UNK = 0, 1, 2, 3
_WORD = re.compile(r"[^\W_]+|[^\w\s]", re.UNICODE)  # runs of letters/digits, or one punctuation mark


def words_of(text: str) -> list[str]:
    """Lower-cased words and punctuation marks of ``text`` (the units a vocabulary holds)."""
    return _WORD.findall(text.lower())


def build_vocabulary(texts: Sequence[str], *, min_count: int = 1) -> tuple[str, ...]:
    """The sorted words that occur at least ``min_count`` times in ``texts`` (e.g. training captions)."""
    counts: dict[str, int] = {}
    for text in texts:
        for word in words_of(text):
            counts[word] = counts.get(word, 0) + 1
    return tuple(sorted(word for word, count in counts.items() if count >= min_count))


class WordTokenizer(ByteTokenizer):
    """Word-level tokens from a fixed vocabulary (built from the training captions; no download).

        [BOS, w_1, …, w_n, EOS, PAD, …]     ids: PAD 0, BOS 1, EOS 2, UNK 3, vocabulary words from 4

    A word outside the vocabulary becomes UNK (never an error); texts are lower-cased and split
    into letter/digit runs and single punctuation marks; longer texts keep their first
    ``max_length`` − 2 words. One token per word makes attribute words directly visible to a
    small encoder, where bytes must first be assembled into words.
    """

    pad_id, bos_id, eos_id = WORD_PAD, WORD_BOS, WORD_EOS

    def __init__(self, max_length: int, vocabulary: Sequence[str]) -> None:
        super().__init__(max_length)
        words = list(vocabulary)
        if not words or len(set(words)) != len(words) or not all(isinstance(w, str) and w for w in words):
            raise ConfigError("a word vocabulary must be a non-empty list of distinct non-empty strings")
        self.vocabulary = tuple(words)
        self.index = {word: i + 4 for i, word in enumerate(words)}
        self.vocab_size = len(words) + 4

    def units(self, text: str) -> int:
        return len(words_of(text))

    def token_ids(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ConfigError(f"texts must be str, got {type(text).__name__}")
        ids = [self.index.get(word, WORD_UNK) for word in words_of(text)][: self.max_length - 2]
        return [WORD_BOS, *ids, WORD_EOS]

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Texts from ids [B, L] (or [L]): the words between BOS and EOS, UNK as ``<unk>``."""
        if ids.ndim == 1:
            ids = ids[None]
        texts = []
        for row in ids.tolist():
            words = []
            for token in row[1 if row and row[0] == WORD_BOS else 0 :]:
                if token in (WORD_EOS, WORD_PAD):
                    break
                words.append("<unk>" if token == WORD_UNK else self.vocabulary[token - 4])
            texts.append(" ".join(words))
        return texts
