"""Text prompts → cross-attention context, its mask and a pooled vector.

A list of B strings is tokenized by :class:`~diffkit.models.conditioners.tokenizer.ByteTokenizer`
(UTF-8 bytes, fixed length L) and encoded by a small transformer trained from scratch
(:class:`~diffkit.models.conditioners.text_encoder.TextEncoder`):

    context [B, L, d_ctx]   the encoder's output tokens (for ``latent_unet``'s cross-attention)
    mask    [B, L] bool     True on the real tokens (BOS, bytes, EOS), False on padding
    vector  [B, d_ctx]      Σ mask·context / Σ mask, the masked mean (for ``vector_dim``)

The null condition ∅ is the encoding of the empty string — a real, learned context, as
Stable Diffusion's empty-prompt embedding — attended over all L positions (mask all True;
``vector`` the mean over all L positions). A dropped sample (CFG training) gets exactly ∅:
its text is replaced by "" before encoding and its mask set to True.
"""

from __future__ import annotations

import warnings
from typing import Any

import attrs
import torch

from diffkit.errors import ConfigError
from diffkit.models.conditioners.base import Conditioner, check_batch_list, config_signature
from diffkit.models.conditioners.record import Conditioning
from diffkit.models.conditioners.text_encoder import TextEncoder, masked_mean
from diffkit.models.conditioners.tokenizer import ByteTokenizer, WordTokenizer
from diffkit.models.configs import ModelConfig
from diffkit.validators import int_at_least, probability


@attrs.frozen(kw_only=True)
class TextConfig(ModelConfig):
    """Configuration of :class:`TextConditioner` (the defaults: 3.3 M parameters)."""

    width: int = attrs.field(default=256, validator=int_at_least(1))
    """W, the encoder width (divisible by ``heads``)."""
    depth: int = attrs.field(default=4, validator=int_at_least(1))
    """Transformer blocks."""
    heads: int = attrs.field(default=4, validator=int_at_least(1))
    """Attention heads."""
    max_length: int = attrs.field(default=77, validator=int_at_least(2))
    """L, tokens per text including BOS and EOS (CLIP's 77); longer texts are cut."""
    context_dim: int = attrs.field(default=256, validator=int_at_least(1))
    """d_ctx, the width of ``context`` and ``vector`` (the backbone's ``context_dim``)."""
    drop_prob: float = attrs.field(default=0.1, validator=probability)
    """p_uncond, the training-time probability of the empty-prompt condition."""
    vocabulary: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    """Empty: byte tokens. Otherwise the word vocabulary of a :class:`WordTokenizer`
    (e.g. ``build_vocabulary(training_captions)``; unknown words become UNK)."""

    def __attrs_post_init__(self) -> None:
        if self.width % self.heads:
            raise ConfigError(f"width {self.width} is not divisible by heads {self.heads}")


class TextConditioner(Conditioner):
    """A list of str → ``Conditioning(context, mask, vector)``; see the module docstring.

    Submodules: ``encoder`` (:class:`TextEncoder`); ``tokenizer`` is a plain attribute.
    """

    config_class = TextConfig
    inputs = "text"

    config: TextConfig

    def __init__(self, config: TextConfig) -> None:
        super().__init__(config)
        self.tokenizer = (
            WordTokenizer(config.max_length, config.vocabulary) if config.vocabulary else ByteTokenizer(config.max_length)
        )
        self.encoder = TextEncoder(
            vocab_size=self.tokenizer.vocab_size,
            max_length=config.max_length,
            width=config.width,
            depth=config.depth,
            heads=config.heads,
            context_dim=config.context_dim,
        )

    def _texts(self, inputs: Any) -> list[str]:
        texts = list(check_batch_list(inputs, "text inputs"))
        for i, text in enumerate(texts):
            if isinstance(text, (bytes, bytearray)):  # bytes: UTF-8, invalid sequences replaced (with a warning)
                try:
                    texts[i] = bytes(text).decode("utf-8")
                except UnicodeDecodeError as error:
                    warnings.warn(f"text input {i} is not valid UTF-8 ({error.reason}); invalid bytes replaced by U+FFFD")
                    texts[i] = bytes(text).decode("utf-8", errors="replace")
            elif not isinstance(text, str):
                raise ConfigError(f"text inputs must be str (or UTF-8 bytes), got {type(text).__name__}: {text!r}")
        return texts

    def batch_size_of(self, inputs: Any) -> int:
        return len(self._texts(inputs))

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(context [B, L, d_ctx], token mask [B, L]) of the texts, on the encoder's device."""
        ids, mask = self.tokenizer.encode(texts, device=self.module_device())  # (B, L) each
        return self.encoder(ids, mask), mask

    def prepare(self, inputs: Any, generator: torch.Generator | None) -> list[str]:
        return self._texts(inputs)

    def apply_drop(self, batch: list[str], drop: torch.Tensor) -> Conditioning:
        device = self.module_device()
        # the texts and the empty text, tokenized on the host (fixed length L), moved asynchronously
        tokens = (*self.tokenizer.encode(batch), *self.tokenizer.encode([""]))  # (B, L) ×2, (1, L) ×2
        ids, mask, null_ids, null_mask = (t.to(device, non_blocking=device.type == "cuda") for t in tokens)
        # a dropped sample reads the empty text: chosen on the device, never read back to the host
        ids = torch.where(drop[:, None], null_ids, ids)
        mask = torch.where(drop[:, None], null_mask, mask)
        context = self.encoder(ids, mask)  # (B, L, d_ctx)
        mask = mask | drop[:, None]  # ∅ attends over all L positions
        return Conditioning(context=context, mask=mask, vector=masked_mean(context, mask))

    def null(self, batch_size: int, device: torch.device | str | None = None) -> Conditioning:
        context, token_mask = self.encode([""])  # (1, L, d_ctx)
        mask = torch.ones_like(token_mask)  # (1, L): every position
        record = Conditioning(context=context, mask=mask, vector=masked_mean(context, mask))
        record = record.expand(batch_size)
        return record if device is None else record.to(device)


def build_text(**config: Any) -> TextConditioner:
    """Text prompts via a byte tokenizer and a small transformer encoder trained from scratch."""
    return TextConditioner(TextConfig.from_dict(config))


build_text.__signature__ = config_signature(TextConfig)  # type: ignore[attr-defined]
