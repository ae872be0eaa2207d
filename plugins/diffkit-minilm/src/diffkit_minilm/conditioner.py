"""Text prompts → the token states of the pretrained all-MiniLM-L6-v2 encoder.

A list of B strings is tokenized (WordPiece, lower-cased, [CLS] text [SEP], cut or padded to
L = ``max_length`` ids) and encoded by the 6-layer BERT encoder of all-MiniLM-L6-v2 (Wang et
al. 2020, MiniLM; tuned as a sentence encoder by Reimers & Gurevych 2019, Sentence-BERT):

    h       [B, L, 384]     the last layer's token states at the n_i real tokens, 0 at padding
    context [B, L, d_ctx]   h, or W·h + b (``project_dim`` = d_ctx), 0 at padding
    mask    [B, L] bool     True on the n_i real tokens ([CLS], word pieces, [SEP])
    vector  [B, d_ctx]      Σ mask·context / Σ mask, the masked mean (all-MiniLM-L6-v2's own
                            sentence pooling, before its L2 normalisation)

Padding is masked out of the encoder's attention, so a text's record does not depend on L or
on the other texts of the batch (the encoder runs only up to the longest text of the batch).

The null condition ∅ is the record of the empty prompt "": [CLS] and [SEP] encoded, with
their mask — as the built-in ``text`` conditioner, ∅ is the empty prompt's encoding, but here
the padding positions hold zeros, so ∅ attends to its two real tokens only. A dropped sample
(CFG training) is encoded as "" and so gets exactly ∅.

With ``freeze`` (the default) the encoder is not a submodule: it takes no part in
``parameters()`` or ``state_dict()`` — a saved pipeline holds only the projection, the
encoder comes from the installed package — and it follows the conditioner's device and dtype
(``.to(...)``) on the next call. Its token states are cached per text (the encoder is fixed),
and deep copies (the trainer's EMA model) share the encoder and its cache.
"""

from __future__ import annotations

import collections
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffkit.errors import ConfigError
from diffkit.models.conditioners.base import Conditioner, check_batch_list, config_signature
from diffkit.models.conditioners.record import Conditioning
from diffkit.models.conditioners.text_encoder import masked_mean
from diffkit_minilm.config import HIDDEN_SIZE, MiniLMConfig
from diffkit_minilm.model_files import load_encoder, load_tokenizer, model_folder

CACHE_SIZE = 4096
"""Texts whose frozen token states are kept (about 18 kB each for a 12-token prompt)."""


def token_states(encoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The encoder's last-layer states [B, L, 384] of ids [B, L] with mask [B, L], 0 at padding.

    The encoder runs on the first T = max_i n_i positions only: padding is never attended to,
    so cutting it changes no real token's state and spares the O(L) cost of the padding.
    """
    length = ids.shape[1]
    t = int(mask.sum(dim=1).max())  # T ≥ 2: every text has [CLS] and [SEP]
    h = encoder(input_ids=ids[:, :t], attention_mask=mask[:, :t].long()).last_hidden_state  # (B, T, 384)
    h = h * mask[:, :t, None].to(h.dtype)  # (B, T, 384), zero at padding
    return F.pad(h, (0, 0, 0, length - t))  # (B, L, 384)


class FrozenEncoder:
    """The fixed pretrained encoder with a cache of token states per text.

    Not an ``nn.Module`` attribute of the conditioner (so neither trained nor saved); moved to
    the requested device and dtype on use. Deep copies return the same object: the encoder is
    read-only, so copies can share it and its cache.
    """

    def __init__(self, encoder: nn.Module, capacity: int = CACHE_SIZE) -> None:
        self.encoder = encoder.requires_grad_(False).eval()
        self.capacity = capacity
        self.cache: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()  # text → [n, 384]

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenEncoder:
        return self

    def place(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move the encoder to ``device`` / ``dtype`` (emptying the cache) unless it is there."""
        weight = next(self.encoder.parameters())
        if weight.device != device or weight.dtype != dtype:
            self.encoder.to(device=device, dtype=dtype)
            self.cache.clear()

    @torch.no_grad()
    def states(
        self, texts: list[str], ids: torch.Tensor, mask: torch.Tensor, *, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """The token states [B, L, 384] of ``texts`` (tokenized as ``ids``, ``mask`` [B, L] on the CPU)."""
        self.place(device, dtype)
        lengths = mask.sum(dim=1).tolist()  # n_i
        found: dict[str, torch.Tensor] = {t: self.cache[t] for t in texts if t in self.cache}
        new = list(dict.fromkeys(t for t in texts if t not in found))  # distinct, in order
        if new:
            rows = [texts.index(t) for t in new]
            h = token_states(self.encoder, ids[rows].to(device), mask[rows].to(device))  # (N, L, 384)
            for j, (text, row) in enumerate(zip(new, rows)):
                found[text] = h[j, : lengths[row]].clone()
        out = torch.zeros(len(texts), ids.shape[1], HIDDEN_SIZE, device=device, dtype=dtype)  # (B, L, 384)
        for i, text in enumerate(texts):
            out[i, : lengths[i]] = found[text]
        for text, states in found.items():  # most recently used last; the oldest are evicted
            self.cache[text] = states
            self.cache.move_to_end(text)
        while len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        return out


class MiniLMConditioner(Conditioner):
    """A list of str → ``Conditioning(context, mask, vector)`` from pretrained all-MiniLM-L6-v2.

    See the module docstring. Submodules: ``proj`` (Linear 384 → ``project_dim``, or None),
    ``encoder`` (only when ``freeze`` is False); ``tokenizer`` is a plain attribute.
    """

    config_class = MiniLMConfig
    inputs = "text"

    config: MiniLMConfig

    def __init__(self, config: MiniLMConfig) -> None:
        super().__init__(config)
        folder = model_folder()
        self.tokenizer = load_tokenizer(folder, config.max_length)
        encoder = load_encoder(folder)
        # A parameter-free marker of the conditioner's device and dtype, moved by .to(), never saved.
        self.register_buffer("_where", torch.empty(0), persistent=False)
        if config.freeze:
            self.frozen: FrozenEncoder | None = FrozenEncoder(encoder)
        else:
            self.frozen = None
            self.encoder = encoder
        self.proj = None if config.project_dim is None else nn.Linear(HIDDEN_SIZE, config.project_dim)

    @property
    def context_dim(self) -> int:
        """d_ctx, the width of ``context`` and ``vector``."""
        return self.config.context_dim

    def module_device(self) -> torch.device:
        return self._where.device

    def _texts(self, inputs: Any) -> list[str]:
        texts = list(check_batch_list(inputs, "text inputs"))
        for text in texts:
            if not isinstance(text, str):
                raise ConfigError(f"text inputs must be str, got {type(text).__name__}: {text!r}")
        return texts

    def batch_size_of(self, inputs: Any) -> int:
        return len(self._texts(inputs))

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, L] int64, mask [B, L] bool) on the CPU: [CLS] word pieces [SEP], then [PAD]."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool)
        return ids.reshape(len(texts), -1), mask.reshape(len(texts), -1)

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(context [B, L, d_ctx], mask [B, L]) of the texts, on the conditioner's device."""
        if not texts:
            raise ConfigError("text inputs must hold at least one text")
        ids, mask = self.tokenize(texts)  # (B, L) each, CPU
        device, dtype = self._where.device, self._where.dtype
        if self.frozen is not None:
            h = self.frozen.states(texts, ids, mask, device=device, dtype=dtype)  # (B, L, 384)
        else:
            h = token_states(self.encoder, ids.to(device), mask.to(device))  # (B, L, 384)
        mask = mask.to(device)
        if self.proj is None:
            return h, mask
        return self.proj(h) * mask[:, :, None].to(h.dtype), mask  # (B, L, d_ctx), 0 at padding

    def forward(
        self,
        inputs: Any,
        *,
        force_drop: bool | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Conditioning:
        texts = self._texts(inputs)
        drop = self.drop_mask(len(texts), force_drop=force_drop, generator=generator)  # (B,) on the CPU
        texts = ["" if dropped else text for text, dropped in zip(texts, drop.tolist())]
        context, mask = self.encode(texts)  # (B, L, d_ctx), (B, L)
        return Conditioning(context=context, mask=mask, vector=masked_mean(context, mask))

    def null(self, batch_size: int, device: torch.device | str | None = None) -> Conditioning:
        context, mask = self.encode([""])  # (1, L, d_ctx), (1, L): [CLS] [SEP]
        record = Conditioning(context=context, mask=mask, vector=masked_mean(context, mask))
        record = record.expand(batch_size)
        return record if device is None else record.to(device)


def build_minilm(**config: Any) -> MiniLMConditioner:
    """Text prompts via the pretrained all-MiniLM-L6-v2 sentence encoder (token states + mask)."""
    return MiniLMConditioner(MiniLMConfig.from_dict(config))


build_minilm.__signature__ = config_signature(MiniLMConfig)  # type: ignore[attr-defined]
