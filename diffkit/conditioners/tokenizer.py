"""A byte-level tokenizer that needs no vocabulary file (nothing to download).

A text is its UTF-8 bytes, one token per byte (ids 0 … 255), framed by BOS and EOS and padded
with PAD to a fixed length L = ``max_length``:

    [BOS, b_1, …, b_n, EOS, PAD, …, PAD]        n ≤ L − 2, mask True on BOS … EOS

Longer texts are cut to at most L − 2 bytes, at a character boundary (a multi-byte UTF-8
character is never split), so ``decode(encode(s))`` is always a prefix of s, and s itself when
it fits. The mask marks the real tokens (BOS, bytes, EOS); every text has at least the two
framing tokens, so no row of the mask is empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diffkit.errors import ConfigError

PAD, BOS, EOS = 256, 257, 258
VOCAB_SIZE = 259


class ByteTokenizer:
    """UTF-8 bytes + PAD/BOS/EOS (vocabulary 259) at a fixed length ``max_length`` ≥ 2."""

    pad_id, bos_id, eos_id, vocab_size = PAD, BOS, EOS, VOCAB_SIZE

    def __init__(self, max_length: int) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
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

    def encode(
        self, texts: Sequence[str], device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids int64 [B, L], mask bool [B, L]) for a sequence of texts; mask True = real token."""
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
            raise ConfigError(f"encode takes a sequence of str (one per sample), got {type(texts).__name__}")
        ids = torch.full((len(texts), self.max_length), PAD, dtype=torch.long)
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
