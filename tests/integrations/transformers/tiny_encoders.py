"""Tiny text encoders and tokenizers, and the diffusers pipelines around them (no downloads).

The CLIP tokenizer is tests/integrations/tiny_pipelines.py's (a BPE over a few whole words,
``model_max_length`` 12); the T5 tokenizer is a ``T5Tokenizer`` over a Unigram vocabulary of
the same words and their letters. The encoders are seeded random transformers models of width
16–64. The pipelines get ``None`` for every component ``encode_prompt`` does not read.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

from tests.integrations.tiny_pipelines import WORDS, write_tokenizer

CLIP_LENGTH = 12  # write_tokenizer's model_max_length
T5_LENGTH = 10  # max_sequence_length of the tests (cuts the longest prompt)

PROMPTS = ["a red cat", "A PHOTO of a  Blue dog ", "photo", "cat " * 14, ""]
"""Upper case and extra spaces (PixArt lower-cases and strips), a prompt longer than every
context (cut), and the empty prompt."""


def clip_tokenizer(folder: Path):
    """(the CLIP tokenizer, its vocabulary size)."""
    return write_tokenizer(folder)


def t5_tokenizer():
    """A T5 (Unigram) tokenizer: <pad> 0, </s> 1, <unk> 2, the words, their letters."""
    letters = sorted({c for word in WORDS for c in word})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{word}", -1.0 - 0.1 * i) for i, word in enumerate(WORDS)] + [(c, -5.0) for c in letters]
    return transformers.T5Tokenizer(vocab=vocab, extra_ids=0)


def clip_encoder(vocab_size: int, *, hidden: int = 32, projection: int = 32, layers: int = 2,
                 with_projection: bool = False, seed: int = 0, **options):
    """A CLIPTextModel (or CLIPTextModelWithProjection) of ``layers`` layers, seeded."""
    config = transformers.CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=CLIP_LENGTH, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        projection_dim=projection, **options,
    )
    torch.manual_seed(seed)
    model_class = transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
    return model_class(config).eval()


def t5_encoder(vocab_size: int, *, d_model: int = 32, seed: int = 0):
    """A two-layer T5EncoderModel, seeded."""
    config = transformers.T5Config(
        vocab_size=vocab_size, d_model=d_model, d_ff=37, num_layers=2, num_heads=4, d_kv=8,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    return transformers.T5EncoderModel(config).eval()


class Kit:
    """One set of tokenizers and encoders, shared by the pipelines of a test module."""

    def __init__(self, folder: Path) -> None:
        self.clip_tokenizer, vocab = clip_tokenizer(folder / "clip_tokenizer")
        self.t5_tokenizer = t5_tokenizer()
        t5_vocab = len(self.t5_tokenizer)
        self.clip_l = clip_encoder(vocab, seed=1)  # CLIPTextModel, width 32
        self.clip_l_masked = clip_encoder(vocab, seed=1, use_attention_mask=True)
        self.clip_l_projection = clip_encoder(vocab, with_projection=True, seed=2)  # width 32, projection 32
        self.clip_g_projection = clip_encoder(vocab, hidden=24, projection=20, layers=3, with_projection=True, seed=3)
        self.t5 = t5_encoder(t5_vocab, seed=4)  # width 32
        self.t5_wide = t5_encoder(t5_vocab, d_model=64, seed=5)  # wider than CLIP-L + CLIP-G (56): zero-padded

    # -- the diffusers pipelines -------------------------------------------------------------

    def sd(self, *, masked: bool = False):
        return diffusers.StableDiffusionPipeline(
            vae=None, text_encoder=self.clip_l_masked if masked else self.clip_l, tokenizer=self.clip_tokenizer,
            unet=None, scheduler=None, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )

    def sdxl(self, *, force_zeros: bool = True):
        return diffusers.StableDiffusionXLPipeline(
            vae=None, text_encoder=self.clip_l, text_encoder_2=self.clip_g_projection, tokenizer=self.clip_tokenizer,
            tokenizer_2=self.clip_tokenizer, unet=None, scheduler=None, force_zeros_for_empty_prompt=force_zeros,
            add_watermarker=False,
        )

    def sdxl_refiner(self):
        return diffusers.StableDiffusionXLImg2ImgPipeline(
            vae=None, text_encoder=None, text_encoder_2=self.clip_g_projection, tokenizer=None,
            tokenizer_2=self.clip_tokenizer, unet=None, scheduler=None, requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=False, add_watermarker=False,
        )

    def pixart(self, *, sigma: bool = False):
        pipeline_class = diffusers.PixArtSigmaPipeline if sigma else diffusers.PixArtAlphaPipeline
        return pipeline_class(tokenizer=self.t5_tokenizer, text_encoder=self.t5, vae=None, transformer=None,
                              scheduler=None)

    def sd3(self, *, t5: bool = True):
        return diffusers.StableDiffusion3Pipeline(
            transformer=None, scheduler=None, vae=None, text_encoder=self.clip_l_projection,
            tokenizer=self.clip_tokenizer, text_encoder_2=self.clip_g_projection, tokenizer_2=self.clip_tokenizer,
            text_encoder_3=self.t5_wide if t5 else None, tokenizer_3=self.t5_tokenizer if t5 else None,
        )

    def flux(self):
        return diffusers.FluxPipeline(
            scheduler=None, vae=None, text_encoder=self.clip_l, tokenizer=self.clip_tokenizer,
            text_encoder_2=self.t5, tokenizer_2=self.t5_tokenizer, transformer=None,
        )


def sdxl_time_ids(pipeline, original, crops, target, dtype, projection: int, *, aesthetic=None, negative=None):
    """diffusers' own ``_get_add_time_ids`` (base or img2img), called without a UNet: (prompts', ∅'s) [1, n]."""
    n = 6 if aesthetic is None else 5
    fake = SimpleNamespace(
        unet=SimpleNamespace(
            config=SimpleNamespace(addition_time_embed_dim=8),
            add_embedding=SimpleNamespace(linear_1=SimpleNamespace(in_features=8 * n + projection)),
        ),
        config=SimpleNamespace(requires_aesthetics_score=aesthetic is not None),
    )
    if isinstance(pipeline, diffusers.StableDiffusionXLImg2ImgPipeline):
        return type(pipeline)._get_add_time_ids(
            fake, original, crops, target, aesthetic, negative, original, crops, target, dtype,
            text_encoder_projection_dim=projection,
        )
    ids = type(pipeline)._get_add_time_ids(fake, original, crops, target, dtype, text_encoder_projection_dim=projection)
    return ids, ids  # the base pipeline's negative time ids are the prompts' (no negative sizes given)
