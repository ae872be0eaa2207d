"""Tiny diffusers pipelines built in the test from small configs, with seeded random weights (no downloads).

As diffusers' own tests do: DDPMPipeline (a 2-level UNet2DModel), DiTPipeline (a one-block
DiTTransformer2DModel with a learned-σ output and a one-level AutoencoderKL) and
StableDiffusionPipeline (UNet2DConditionModel, AutoencoderKL, a one-layer CLIP text encoder and a
CLIP tokenizer whose vocabulary and merges the test writes itself).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")


def ddpm_pipeline(scheduler) -> diffusers.DDPMPipeline:
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8,
    ).eval()
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _vae() -> diffusers.AutoencoderKL:
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16), latent_channels=4,
        norm_num_groups=8, sample_size=16,
    ).eval()


def dit_pipeline(scheduler) -> diffusers.DiTPipeline:
    torch.manual_seed(0)
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1, sample_size=8,
        patch_size=2, num_embeds_ada_norm=1000, norm_num_groups=8,
    ).eval()
    pipe = diffusers.DiTPipeline(transformer=transformer, vae=_vae(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


WORDS = ["a", "red", "cat", "photo", "of", "blue", "dog"]


def write_tokenizer(folder: Path):
    """A CLIP BPE tokenizer over a few whole words (vocab.json, merges.txt written here)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    letters = sorted({c for word in WORDS for c in word})
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in letters + [c + "</w>" for c in letters]:
        vocab.setdefault(token, len(vocab))
    merges = []
    for word in WORDS:  # merge left to right until the whole word (with </w>) is one token
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n", encoding="utf-8")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=12), len(vocab)


def sd_pipeline(scheduler, folder: Path) -> diffusers.StableDiffusionPipeline:
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer, vocab_size = write_tokenizer(folder)
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8,
    ).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=12, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )).eval()
    pipe = diffusers.StableDiffusionPipeline(
        unet=unet, vae=_vae(), text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- the text-to-image families (encoders from tests/integrations/transformers/tiny_encoders.Kit) -----------


def _flow_vae(shift: float = 0.1, scale: float = 1.5) -> diffusers.AutoencoderKL:
    """SD3's and Flux's kind of VAE: no quant convs, a shift factor."""
    torch.manual_seed(1)
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16), latent_channels=4,
        norm_num_groups=8, sample_size=16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=shift,
        scaling_factor=scale,
    ).eval()


def _ready(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_pipeline(scheduler, kit) -> diffusers.StableDiffusionXLPipeline:
    """SDXL: a 2-level UNet with the text-time embedding over CLIP-L (32) + CLIP-G (24, pooled 20)."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=20 + 6 * 8,
        cross_attention_dim=32 + 24, norm_num_groups=8,
    ).eval()
    return _ready(diffusers.StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=kit.clip_l, text_encoder_2=kit.clip_g_projection, tokenizer=kit.clip_tokenizer,
        tokenizer_2=kit.clip_tokenizer, unet=unet, scheduler=scheduler, add_watermarker=False,
    ))


def pixart_pipeline(scheduler, kit, *, sigma: bool = False):
    """PixArt-α/Σ: a 2-layer PixArt transformer (learned σ) over the T5 encoder (width 32)."""
    torch.manual_seed(0)
    transformer = diffusers.PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    ).eval()
    pipeline_class = diffusers.PixArtSigmaPipeline if sigma else diffusers.PixArtAlphaPipeline
    return _ready(pipeline_class(tokenizer=kit.t5_tokenizer, text_encoder=kit.t5, vae=_vae(), transformer=transformer,
                                 scheduler=scheduler))


def sd3_pipeline(scheduler, kit) -> diffusers.StableDiffusion3Pipeline:
    """SD3: a one-layer MMDiT over CLIP-L + CLIP-G (pooled 32 + 20) and T5 (width 64)."""
    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=32 + 20, out_channels=4,
        pos_embed_max_size=16,
    ).eval()
    return _ready(diffusers.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=_flow_vae(0.0609, 1.5305), text_encoder=kit.clip_l_projection,
        tokenizer=kit.clip_tokenizer, text_encoder_2=kit.clip_g_projection, tokenizer_2=kit.clip_tokenizer,
        text_encoder_3=kit.t5_wide, tokenizer_3=kit.t5_tokenizer,
    ))


def flux_pipeline(scheduler, kit, *, guidance_embeds: bool = True) -> diffusers.FluxPipeline:
    """Flux: a one-double, one-single block transformer over CLIP-L's pooled output (32) and T5 (32)."""
    torch.manual_seed(0)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=guidance_embeds,
    ).eval()
    return _ready(diffusers.FluxPipeline(
        scheduler=scheduler, vae=_flow_vae(), text_encoder=kit.clip_l, tokenizer=kit.clip_tokenizer,
        text_encoder_2=kit.t5, tokenizer_2=kit.t5_tokenizer, transformer=transformer,
    ))
