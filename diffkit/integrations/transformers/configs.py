"""The configurations of the transformers text conditioners: plain attrs, no transformers import.

The registry needs these classes when it registers the conditioners (``options=``) and when a
saved component is matched to its entry, so this module imports neither ``transformers`` nor
``tokenizers``. A config holds everything that rebuilds its conditioner without the diffusers
folder it came from:

* each text encoder's ``transformers`` configuration, as the dict its ``config.to_dict()``
  gives (``text_encoder``, ``text_encoder_2``, …; the folder path it was read from is dropped);
* each tokenizer as a :class:`TokenizerSpec`: the ``tokenizers`` serialization
  (``tokenizer.json`` text) and the few settings of the ``transformers`` tokenizer that decide
  its ids (padding token and side, truncation side, ``model_max_length``);
* the options of the diffusers pipeline's ``encode_prompt`` the record depends on
  (``clip_skip``, ``max_sequence_length``, SDXL's time ids, …) and ``drop_prob``.

Every field is JSON (``to_dict`` / ``from_dict`` round-trip exactly), so a component folder's
``diffkit.json`` holds the whole description and ``model.safetensors`` the weights.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from diffkit.errors import ConfigError
from diffkit.models.configs import ModelConfig
from diffkit.validators import as_tuple, boolean, finite_real, int_at_least, one_of, optional, probability

CLIP_TEXT = "clip_text_model"
T5 = "t5"

DROPPED_KEYS = ("_name_or_path", "_commit_hash", "dtype", "torch_dtype", "_attn_implementation_autoset")
"""Keys of a transformers ``config.to_dict()`` that are not kept: where it was read from, and the
dtype it was loaded in (a component is built in float32, like every diffkit module; ``.to()``)."""


def encoder_config(value: Any) -> Any:
    """attrs converter: a transformers config dict copied as plain JSON, :data:`DROPPED_KEYS` removed.

    Anything else is returned as it is, for the field's validator to refuse.
    """
    if not isinstance(value, dict):
        return value
    try:
        data = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"a text encoder's config must be plain JSON: {exc}") from exc
    return {k: v for k, v in data.items() if k not in DROPPED_KEYS}


def _model_type(model_type: str) -> Any:
    """attrs validator: the dict of a transformers config of ``model_type``."""

    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not isinstance(value, dict):
            raise ConfigError(
                f"{attribute.name} must be the dict of a transformers {model_type!r} config (config.to_dict()), "
                f"got {type(value).__name__}"
            )
        if value.get("model_type") != model_type:
            raise ConfigError(
                f"{attribute.name} must be a transformers config with model_type {model_type!r}, "
                f"got {value.get('model_type')!r}"
            )

    return check


clip_config = _model_type(CLIP_TEXT)
"""attrs validator: a CLIPTextConfig dict."""
t5_config = _model_type(T5)
"""attrs validator: a T5Config dict."""


def _pair(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not (isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                  and 0 <= v < 2**31 for v in value)):
        raise ConfigError(f"{attribute.name} must be two integers ≥ 0 (pixels: height, width), got {value!r}")


def _max_length(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    int_at_least(1, at_most=2**20)(instance, attribute, value)


@attrs.frozen(kw_only=True)
class TokenizerSpec(ModelConfig):
    """A ``transformers`` fast tokenizer as JSON: what decides the ids of
    ``tokenizer(texts, padding="max_length", max_length=L, truncation=True)``.

    The call runs the ``tokenizers`` backend with truncation to L (longest first, on
    ``truncation_side``) and padding to L with ``pad_token`` / ``pad_id`` on ``padding_side``;
    :class:`diffkit.integrations.transformers.tokenizers.TextTokenizer` does exactly that.
    """

    tokenizer_json: str = attrs.field()
    """The backend's serialization (``tokenizer.json``), its padding and truncation cleared."""
    pad_token: str = attrs.field()
    """The padding token (``tokenizer.pad_token``)."""
    pad_id: int = attrs.field(validator=int_at_least(0))
    """Its id (``tokenizer.pad_token_id``)."""
    pad_type_id: int = attrs.field(default=0, validator=int_at_least(0))
    """``tokenizer.pad_token_type_id``."""
    padding_side: str = attrs.field(default="right", validator=one_of(("right", "left")))
    truncation_side: str = attrs.field(default="right", validator=one_of(("right", "left")))
    split_special_tokens: bool = attrs.field(default=False, validator=boolean)
    """``tokenizer.split_special_tokens``: special tokens written in a text are split like words."""
    model_max_length: int | None = attrs.field(default=None, validator=optional(_max_length))
    """``tokenizer.model_max_length`` (CLIP's 77: the length the pipelines pad CLIP prompts to);
    None where the tokenizer has none (T5's is "very large": the pipelines pass their own)."""

    @tokenizer_json.validator
    def _check_json(self, attribute: attrs.Attribute, value: Any) -> None:
        if not isinstance(value, str) or not value.lstrip().startswith("{"):
            raise ConfigError(f"{attribute.name} must be the text of a tokenizer.json (a JSON object)")

    @pad_token.validator
    def _check_pad(self, attribute: attrs.Attribute, value: Any) -> None:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{attribute.name} must be a non-empty string, got {value!r}")

    def __repr__(self) -> str:  # the JSON runs to megabytes
        return (
            f"TokenizerSpec(<{len(self.tokenizer_json)} characters of tokenizer.json>, pad_token={self.pad_token!r}, "
            f"pad_id={self.pad_id}, model_max_length={self.model_max_length})"
        )


def tokenizer_spec(value: Any) -> Any:
    """attrs converter: a :class:`TokenizerSpec` from its dict (as read from JSON); None stays None."""
    if value is None or isinstance(value, TokenizerSpec):
        return value
    if isinstance(value, dict):
        return TokenizerSpec.from_dict(value)
    raise ConfigError(f"a tokenizer must be a TokenizerSpec or its dict, got {type(value).__name__}")


def _is_spec(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, TokenizerSpec):
        raise ConfigError(f"{attribute.name} is required: a TokenizerSpec (see tokenizer_spec_of)")


def _check_clip_lengths(config: Any, *names: str) -> None:
    """The CLIP tokenizers named pad to a length: their ``model_max_length`` must be set."""
    for name in names:
        spec = getattr(config, name)
        if spec is not None and spec.model_max_length is None:
            raise ConfigError(
                f"{name} has no model_max_length: the pipeline pads CLIP prompts to it (CLIP's is 77)"
            )


def _check_pair_present(config: Any, encoder: str, tokenizer: str) -> None:
    if (getattr(config, encoder) is None) != (getattr(config, tokenizer) is None):
        raise ConfigError(f"{encoder} and {tokenizer} go together: give both or neither")


@attrs.frozen(kw_only=True)
class ClipTextConfig(ModelConfig):
    """``clip_text``: Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline.encode_prompt``)."""

    text_encoder: dict[str, Any] = attrs.field(converter=encoder_config, validator=clip_config, hash=False)
    """The CLIPTextModel's config (``CLIPTextConfig.to_dict()``)."""
    tokenizer: TokenizerSpec = attrs.field(converter=tokenizer_spec, validator=_is_spec)
    """The CLIP tokenizer; prompts are padded and cut to its ``model_max_length`` (77)."""
    clip_skip: int | None = attrs.field(default=None, validator=optional(int_at_least(0)))
    """Layers skipped from the end: context = final_layer_norm(hidden_states[−(clip_skip + 1)]);
    None: ``last_hidden_state``. (diffusers applies it to the prompts only, not to ∅.)"""
    drop_prob: float = attrs.field(default=0.0, validator=probability)
    """p_uncond, the training-time probability of the null condition (the empty prompt)."""

    def __attrs_post_init__(self) -> None:
        _check_clip_lengths(self, "tokenizer")


@attrs.frozen(kw_only=True)
class SdxlTextConfig(ModelConfig):
    """``sdxl_text``: Stable Diffusion XL (``StableDiffusionXLPipeline.encode_prompt`` + ``_get_add_time_ids``).

    Without ``text_encoder``/``tokenizer`` (the SDXL refiner) the context is text_encoder_2's alone.
    """

    text_encoder: dict[str, Any] | None = attrs.field(
        default=None, converter=encoder_config, validator=optional(clip_config), hash=False
    )
    """CLIP ViT-L (CLIPTextModel) config; None for the refiner, which has only text_encoder_2."""
    tokenizer: TokenizerSpec | None = attrs.field(default=None, converter=tokenizer_spec)
    text_encoder_2: dict[str, Any] = attrs.field(converter=encoder_config, validator=clip_config, hash=False)
    """OpenCLIP ViT-bigG (CLIPTextModelWithProjection) config: context and the pooled ``text_embeds``."""
    tokenizer_2: TokenizerSpec = attrs.field(converter=tokenizer_spec, validator=_is_spec)
    clip_skip: int | None = attrs.field(default=None, validator=optional(int_at_least(0)))
    """Context = hidden_states[−(clip_skip + 2)] of each encoder (None: the penultimate layer, −2)."""
    force_zeros_for_empty_prompt: bool = attrs.field(default=True, validator=boolean)
    """∅ is zeros (context and pooled; the time ids kept) instead of the encoding of "" (the
    pipeline's ``force_zeros_for_empty_prompt``: True for SDXL base, False for the refiner)."""
    original_size: tuple[int, int] = attrs.field(default=(1024, 1024), converter=as_tuple, validator=_pair)
    """(height, width) in pixels: the first two time ids."""
    crops_coords_top_left: tuple[int, int] = attrs.field(default=(0, 0), converter=as_tuple, validator=_pair)
    """(top, left) in pixels: the next two."""
    target_size: tuple[int, int] = attrs.field(default=(1024, 1024), converter=as_tuple, validator=_pair)
    """(height, width) in pixels: the last two (not used with ``aesthetic_score``)."""
    aesthetic_score: float | None = attrs.field(default=None, validator=optional(finite_real))
    """None: six time ids (SDXL base). A number: the refiner's five, (original size, crop,
    aesthetic score) — ``requires_aesthetics_score`` pipelines (diffusers' default score 6.0)."""
    negative_aesthetic_score: float = attrs.field(default=2.5, validator=finite_real)
    """The score in ∅'s time ids when ``aesthetic_score`` is set (diffusers' default 2.5)."""
    drop_prob: float = attrs.field(default=0.0, validator=probability)

    def __attrs_post_init__(self) -> None:
        _check_pair_present(self, "text_encoder", "tokenizer")
        _check_clip_lengths(self, "tokenizer", "tokenizer_2")
        if self.tokenizer is not None and self.tokenizer.model_max_length != self.tokenizer_2.model_max_length:
            raise ConfigError(
                f"tokenizer and tokenizer_2 pad to different lengths ({self.tokenizer.model_max_length} and "
                f"{self.tokenizer_2.model_max_length}): their hidden states cannot be concatenated"
            )

    @property
    def time_ids(self) -> tuple[float, ...]:
        """The prompts' time ids: (h, w, top, left, h', w'), or (h, w, top, left, aesthetic score)."""
        last = self.target_size if self.aesthetic_score is None else (self.aesthetic_score,)
        return tuple(float(v) for v in (*self.original_size, *self.crops_coords_top_left, *last))

    @property
    def null_time_ids(self) -> tuple[float, ...]:
        """∅'s time ids: the prompts' (SDXL base), with the negative aesthetic score (refiner)."""
        if self.aesthetic_score is None:
            return self.time_ids
        return (*self.time_ids[:4], float(self.negative_aesthetic_score))


@attrs.frozen(kw_only=True)
class T5TextConfig(ModelConfig):
    """``t5_text``: PixArt-α / PixArt-Σ (``PixArtAlphaPipeline.encode_prompt``, clean_caption=False)."""

    text_encoder: dict[str, Any] = attrs.field(converter=encoder_config, validator=t5_config, hash=False)
    """The T5EncoderModel's config (``T5Config.to_dict()``)."""
    tokenizer: TokenizerSpec = attrs.field(converter=tokenizer_spec, validator=_is_spec)
    max_sequence_length: int = attrs.field(default=120, validator=_max_length)
    """M, tokens per prompt (PixArt-α 120, PixArt-Σ 300)."""
    drop_prob: float = attrs.field(default=0.0, validator=probability)


@attrs.frozen(kw_only=True)
class Sd3TextConfig(ModelConfig):
    """``sd3_text``: Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline.encode_prompt``)."""

    text_encoder: dict[str, Any] = attrs.field(converter=encoder_config, validator=clip_config, hash=False)
    """CLIP-L (CLIPTextModelWithProjection) config."""
    tokenizer: TokenizerSpec = attrs.field(converter=tokenizer_spec, validator=_is_spec)
    """CLIP-L's tokenizer; its ``model_max_length`` (77) is the length of both CLIP prompts."""
    text_encoder_2: dict[str, Any] = attrs.field(converter=encoder_config, validator=clip_config, hash=False)
    """CLIP-G (CLIPTextModelWithProjection) config."""
    tokenizer_2: TokenizerSpec = attrs.field(converter=tokenizer_spec, validator=_is_spec)
    text_encoder_3: dict[str, Any] | None = attrs.field(
        default=None, converter=encoder_config, validator=optional(t5_config), hash=False
    )
    """T5-XXL (T5EncoderModel) config; None: the pipeline without T5 (zeros in its place)."""
    tokenizer_3: TokenizerSpec | None = attrs.field(default=None, converter=tokenizer_spec)
    clip_skip: int | None = attrs.field(default=None, validator=optional(int_at_least(0)))
    """CLIP context = hidden_states[−(clip_skip + 2)] (None: −2, the penultimate layer); prompts only."""
    max_sequence_length: int = attrs.field(default=256, validator=_max_length)
    """T5 tokens per prompt (the pipeline's default 256)."""
    joint_attention_dim: int = attrs.field(default=4096, validator=int_at_least(1))
    """The width of the zeros that stand for T5 when ``text_encoder_3`` is None (the
    transformer's ``joint_attention_dim``; SD3's 4096)."""
    drop_prob: float = attrs.field(default=0.0, validator=probability)

    def __attrs_post_init__(self) -> None:
        _check_pair_present(self, "text_encoder_3", "tokenizer_3")
        _check_clip_lengths(self, "tokenizer")


@attrs.frozen(kw_only=True)
class FluxTextConfig(ModelConfig):
    """``flux_text``: FLUX.1 (``FluxPipeline.encode_prompt``)."""

    text_encoder: dict[str, Any] = attrs.field(converter=encoder_config, validator=clip_config, hash=False)
    """CLIP-L (CLIPTextModel) config: its ``pooler_output`` is the vector."""
    tokenizer: TokenizerSpec = attrs.field(converter=tokenizer_spec, validator=_is_spec)
    text_encoder_2: dict[str, Any] = attrs.field(converter=encoder_config, validator=t5_config, hash=False)
    """T5-XXL (T5EncoderModel) config: its ``last_hidden_state`` is the context."""
    tokenizer_2: TokenizerSpec = attrs.field(converter=tokenizer_spec, validator=_is_spec)
    max_sequence_length: int = attrs.field(default=512, validator=_max_length)
    """T5 tokens per prompt (FLUX.1-dev 512, FLUX.1-schnell 256)."""
    drop_prob: float = attrs.field(default=0.0, validator=probability)

    def __attrs_post_init__(self) -> None:
        _check_clip_lengths(self, "tokenizer")


CONFIGS: dict[str, type[ModelConfig]] = {
    "clip_text": ClipTextConfig, "sdxl_text": SdxlTextConfig, "t5_text": T5TextConfig,
    "sd3_text": Sd3TextConfig, "flux_text": FluxTextConfig,
}
"""Registry name → config class."""
