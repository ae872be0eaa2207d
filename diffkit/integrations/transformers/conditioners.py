"""Pretrained ``transformers`` text encoders as diffkit conditioners, equal to diffusers' ``encode_prompt``.

Each conditioner computes, for a list of B prompts, exactly what the named diffusers 0.42
pipeline's ``encode_prompt`` computes (same tokenizer calls, same layers, same casts), and
packs it into a :class:`~diffkit.models.conditioners.Conditioning` record:

==============  ==================================  =============================================
name            diffusers pipeline                  record
==============  ==================================  =============================================
``clip_text``   StableDiffusionPipeline (SD 1/2)    context [B, 77, d]
``sdxl_text``   StableDiffusionXLPipeline           context [B, 77, d₁ + d₂],
                                                    vector [B, P + 6] = (pooled, time ids)
``t5_text``     PixArtAlphaPipeline / Sigma         context [B, M, d_t5], mask bool [B, M]
``sd3_text``    StableDiffusion3Pipeline            context [B, 77 + M, d_t5], vector [B, P₁ + P₂]
``flux_text``   FluxPipeline                        context [B, M, d_t5], vector [B, d_clip]
==============  ==================================  =============================================

(77 stands for the CLIP tokenizer's ``model_max_length``, M for ``max_sequence_length``; the
shapes are detailed on each class.) The null condition ∅ — CFG's unconditional branch
(``force_drop``) and the training drop — is what each pipeline uses when no negative prompt is
given: the encoding of "" (for SDXL with ``force_zeros_for_empty_prompt``: zeros, time ids kept).
Like diffusers, ∅ is encoded without ``clip_skip``.

The encoders are frozen: their parameters do not require gradients, they run under
``torch.no_grad()``, and they stay in eval mode when the conditioner is put in training mode
(only the drop depends on ``training``). They are submodules, so ``.to(device, dtype)`` moves
them and the records follow; their weights are the conditioner's state dict, under the
pipeline's names (``text_encoder.…``, ``text_encoder_2.…``), in the layout of the pretrained
checkpoints (a CLIPTextModel's keys keep their ``text_model.`` prefix, which transformers 5
removes from the module), so a saved component does not depend on the transformers version's
module layout.

Saving (``diffkit.save_pretrained(conditioner, folder, kind="conditioner")``) writes the usual
component folder; the config (``diffkit.json``) carries each encoder's transformers config and
each tokenizer's ``tokenizer.json`` text and settings (:class:`TokenizerSpec`). That keeps the
component one config plus one weights file, read by the unchanged generic loader
(``load_component``: meta-device probe, then the real build, then a strict load), at the cost
of a larger ``diffkit.json`` (CLIP's tokenizer is about 2 MB of JSON, T5's about 2.4 MB);
nothing refers back to the diffusers folder. (A tokenizer is a few MB of text, weights are
hundreds of MB to GB: a side file would save little and need a change to the component format.)
Like every component, ``load_component`` holds the weights it read and the module at once, and
builds the encoders with transformers' random initialisation before loading (seconds for CLIP,
longer for T5-XXL). Building from a diffusers pipeline folder,
:func:`~diffkit.integrations.transformers.from_pipeline_folder`, loads each encoder once with
``from_pretrained`` and keeps it; :func:`~diffkit.integrations.transformers.from_components`
wraps encoders already loaded (a diffusers pipeline's ``components``).

Prompts are a sequence of str (at least one); texts longer than the context are cut, with a
warning. PixArt's ``clean_caption=True`` (its ``__call__`` default; it needs bs4 and ftfy, and
diffusers falls back to False without them) is not reproduced: prompts are lower-cased and
stripped, as with ``clean_caption=False``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from diffkit.errors import ConfigError
from diffkit.integrations.transformers.configs import (
    ClipTextConfig,
    FluxTextConfig,
    Sd3TextConfig,
    SdxlTextConfig,
    T5TextConfig,
)
from diffkit.integrations.transformers.extra import require
from diffkit.integrations.transformers.tokenizers import TextTokenizer
from diffkit.models.conditioners.base import Conditioner, check_batch_list
from diffkit.models.conditioners.record import Conditioning
from diffkit.validators import check_int

CLIP = "CLIPTextModel"
CLIP_PROJECTION = "CLIPTextModelWithProjection"
T5_ENCODER = "T5EncoderModel"
CONFIG_CLASSES = {CLIP: "CLIPTextConfig", CLIP_PROJECTION: "CLIPTextConfig", T5_ENCODER: "T5Config"}
"""The transformers encoder classes and their config classes."""


def check_prompts(inputs: Any) -> list[str]:
    """``inputs`` as a list of B ≥ 1 prompts (str); anything else is a :class:`ConfigError`."""
    texts = list(check_batch_list(inputs, "prompts"))
    if not texts:
        raise ConfigError("prompts must hold at least one prompt, got an empty sequence")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ConfigError(f"prompts must be str, got {type(text).__name__} at position {i}: {text!r}")
    return texts


def build_encoder(class_name: str, config: Mapping[str, Any]) -> nn.Module:
    """A randomly initialised ``transformers.<class_name>`` of the config dict (weights come by loading)."""
    transformers = require()
    config_class = getattr(transformers, CONFIG_CLASSES[class_name])
    return getattr(transformers, class_name)(config_class.from_dict(dict(config)))


def final_layer_norm(encoder: nn.Module) -> nn.Module:
    """A CLIPTextModel's final LayerNorm (under ``text_model`` in transformers 4, on the model in 5)."""
    return getattr(encoder, "text_model", encoder).final_layer_norm


# -- state-dict keys in the checkpoint layout ---------------------------------------------------------------


def _to_checkpoint_keys(module: TransformersTextConditioner, state_dict: dict, prefix: str, metadata: Any) -> None:
    """``state_dict`` hook: ``text_encoder.embeddings…`` → ``text_encoder.text_model.embeddings…``, in order."""
    renames = [(f"{prefix}{name}.", f"{prefix}{name}.text_model.") for name in module._flat_clip]
    items = list(state_dict.items())
    state_dict.clear()
    for key, value in items:
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        state_dict[key] = value


def _from_checkpoint_keys(module: TransformersTextConditioner, state_dict: dict, prefix: str, *args: Any) -> None:
    """``load_state_dict`` pre-hook: the inverse of :func:`_to_checkpoint_keys`."""
    for name in module._flat_clip:
        old, new = f"{prefix}{name}.text_model.", f"{prefix}{name}."
        for key in [k for k in state_dict if k.startswith(old)]:
            state_dict[new + key[len(old):]] = state_dict.pop(key)


# -- the shared base --------------------------------------------------------------------------------------


class TransformersTextConditioner(Conditioner):
    """Prompts → a record, through frozen pretrained text encoders; see the module docstring.

    Subclasses name their encoders in :attr:`encoder_classes` (attribute → transformers class;
    the tokenizer of ``text_encoder_k`` is ``tokenizer_k``) and implement :meth:`_encode`
    (the prompts' record, as diffusers computes it) and :meth:`_null` (∅ for one sample).

    Args:
        config: the conditioner's config.
        encoders: already loaded encoders by attribute name (as :func:`from_pipeline_folder`
            passes them, so that no second copy of the weights is made); the others are built
            from their configs with random weights, for a state dict to be loaded into.
    """

    inputs = "text"
    encoder_classes: ClassVar[dict[str, str]] = {}

    def __init__(self, config: Any, *, encoders: Mapping[str, nn.Module] | None = None) -> None:
        super().__init__(config)
        given = dict(encoders or {})
        unknown = sorted(set(given) - set(self.encoder_classes))
        if unknown:
            raise ConfigError(
                f"{type(self).__name__} has no encoder {unknown[0]!r} (it has {list(self.encoder_classes)})"
            )
        flat = []
        for name, class_name in self.encoder_classes.items():
            tokenizer_name = name.replace("text_encoder", "tokenizer")
            encoder_config, spec = getattr(config, name), getattr(config, tokenizer_name)
            if encoder_config is None:
                if given.get(name) is not None:
                    raise ConfigError(f"an encoder was given for {name}, but the config has none")
                self.register_module(name, None)
                setattr(self, tokenizer_name, None)
                continue
            encoder = given.get(name)
            if encoder is None:
                encoder = build_encoder(class_name, encoder_config)
            elif type(encoder).__name__ != class_name:
                raise ConfigError(f"{name} must be a transformers {class_name}, got {type(encoder).__name__}")
            self.add_module(name, encoder.requires_grad_(False).eval())
            setattr(self, tokenizer_name, TextTokenizer(spec))
            if class_name == CLIP and "text_model" not in encoder._modules:
                flat.append(name)
                # transformers 5's flat CLIPTextModel: its keys get the checkpoints' text_model.
                # prefix (the hooks below); a plain attribute text_model → the model itself (not a
                # submodule: nothing is registered twice) lets whoever resolves those keys as
                # attribute paths find them (FSDP's get/set_model_state_dict)
                object.__setattr__(encoder, "text_model", encoder)
        self._flat_clip = tuple(flat)
        self._register_state_dict_hook(_to_checkpoint_keys)
        self._register_load_state_dict_pre_hook(_from_checkpoint_keys, with_module=True)

    # -- modes, devices ---------------------------------------------------------------------------

    def encoders(self) -> list[nn.Module]:
        """The text encoders present."""
        return [module for name in self.encoder_classes if (module := getattr(self, name)) is not None]

    def train(self, mode: bool = True) -> TransformersTextConditioner:
        """Training mode for the drop; the frozen encoders stay in eval mode."""
        super().train(mode)
        for encoder in self.encoders():
            encoder.eval()
        return self

    def _check_clip_skip(self, layers_from_end: int) -> None:
        """clip_skip picks hidden_states[−(clip_skip + ``layers_from_end``)]: it must exist in every CLIP encoder."""
        skip = getattr(self.config, "clip_skip", None)
        if skip is None:
            return
        for name, class_name in self.encoder_classes.items():
            encoder = getattr(self, name)
            if encoder is not None and class_name != T5_ENCODER:
                layers = int(encoder.config.num_hidden_layers)
                if skip + layers_from_end > layers + 1:
                    raise ConfigError(
                        f"clip_skip={skip} skips more layers than {name} has ({layers}); valid: 0 … "
                        f"{layers + 1 - layers_from_end}"
                    )

    # -- the conditioner interface ----------------------------------------------------------------

    def batch_size_of(self, inputs: Any) -> int:
        return len(check_prompts(inputs))

    def prepare(self, inputs: Any, generator: torch.Generator | None) -> list[str]:
        return check_prompts(inputs)

    def apply_drop(self, batch: Sequence[str], drop: torch.Tensor) -> Conditioning:
        """The record of the prompts, the samples marked in ``drop`` (bool [B]) ∅.

        The encoders run only as far as needed: no prompt is encoded when every sample is
        dropped (``force_drop=True``), and ∅ is not computed when none is (eval mode).
        """
        if bool(drop.all()):
            return self.null(len(batch))
        if not bool(drop.any()):
            return self.encode(batch)
        return self.encode(batch).where(drop, self.null_record())

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> Conditioning:
        """The record of the prompts (none dropped), on the encoders' device and in their dtype."""
        return self._encode(check_prompts(texts))

    @torch.no_grad()
    def null_record(self) -> Conditioning:
        """∅ for one sample."""
        return self._null()

    def null(self, batch_size: int, device: torch.device | str | None = None) -> Conditioning:
        check_int("batch_size", batch_size, minimum=1)
        record = self.null_record().expand(batch_size)
        return record if device is None else record.to(device)

    def _encode(self, texts: list[str]) -> Conditioning:
        raise NotImplementedError

    def _null(self) -> Conditioning:
        raise NotImplementedError

    # -- helpers ------------------------------------------------------------------------------------

    def _tokens(self, tokenizer: TextTokenizer, texts: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return tokenizer(texts, length, device=self.module_device())

    def extra_repr(self) -> str:
        skip = {*self.encoder_classes, *(n.replace("text_encoder", "tokenizer") for n in self.encoder_classes)}
        return ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items() if k not in skip)


# -- the pipelines ------------------------------------------------------------------------------------------


class ClipTextConditioner(TransformersTextConditioner):
    """Stable Diffusion 1.x / 2.x: ``StableDiffusionPipeline.encode_prompt``.

    The prompts are padded and cut to L = the tokenizer's ``model_max_length`` (77) and
    encoded by the CLIPTextModel (with the attention mask only when its config says
    ``use_attention_mask``)::

        context [B, L, d]   last_hidden_state; with clip_skip k: final_layer_norm(hidden_states[−(k + 1)])

    No mask (SD's UNet attends to all L tokens), no vector. ∅ = the context of "" (without
    clip_skip, as diffusers encodes the negative prompt). (diffusers 0.42 finds the final
    LayerNorm under ``text_encoder.text_model``, which transformers 5 no longer has, so its
    clip_skip path fails there; this conditioner applies the same LayerNorm wherever it is.)
    """

    config_class = ClipTextConfig
    encoder_classes: ClassVar[dict[str, str]] = {"text_encoder": CLIP}
    config: ClipTextConfig

    def __init__(self, config: ClipTextConfig, *, encoders: Mapping[str, nn.Module] | None = None) -> None:
        super().__init__(config, encoders=encoders)
        self._check_clip_skip(1)

    def _context(self, texts: list[str], clip_skip: int | None) -> torch.Tensor:
        encoder = self.text_encoder
        ids, mask = self._tokens(self.tokenizer, texts, self.tokenizer.model_max_length)
        attention_mask = mask.long() if getattr(encoder.config, "use_attention_mask", False) else None
        if clip_skip is None:
            hidden = encoder(ids, attention_mask=attention_mask)[0]
        else:
            out = encoder(ids, attention_mask=attention_mask, output_hidden_states=True)
            hidden = final_layer_norm(encoder)(out.hidden_states[-(clip_skip + 1)])
        return hidden.to(encoder.dtype)

    def _encode(self, texts: list[str]) -> Conditioning:
        return Conditioning(context=self._context(texts, self.config.clip_skip))

    def _null(self) -> Conditioning:
        return Conditioning(context=self._context([""], None))


class SdxlTextConditioner(TransformersTextConditioner):
    """Stable Diffusion XL: ``StableDiffusionXLPipeline.encode_prompt`` and ``_get_add_time_ids``.

    Both CLIP encoders read the prompts padded to L = 77 tokens::

        context [B, L, d₁ + d₂]   cat(hidden_states[−2] of text_encoder, of text_encoder_2), dim −1
                                  (clip_skip k: hidden_states[−(k + 2)])
        vector  [B, P + 6]        cat(pooled, time ids): pooled = text_encoder_2's text_embeds [B, P],
                                  time ids = (original h, w, crop top, left, target h, w) in pixels

    (The refiner: no text_encoder, context [B, L, d₂]; with ``aesthetic_score`` the time ids
    are (original h, w, crop top, left, score): vector [B, P + 5].) ∅ = zeros for the context
    and the pooled part when ``force_zeros_for_empty_prompt``, else the encoding of "" (without
    clip_skip); its time ids are the prompts' (the refiner's carry ``negative_aesthetic_score``).
    """

    config_class = SdxlTextConfig
    encoder_classes: ClassVar[dict[str, str]] = {"text_encoder": CLIP, "text_encoder_2": CLIP_PROJECTION}
    config: SdxlTextConfig

    def __init__(self, config: SdxlTextConfig, *, encoders: Mapping[str, nn.Module] | None = None) -> None:
        super().__init__(config, encoders=encoders)
        self._check_clip_skip(2)

    @property
    def length(self) -> int:
        """L, the tokens of every prompt (the tokenizers' ``model_max_length``)."""
        return self.tokenizer_2.model_max_length

    def _hidden(self, texts: list[str], clip_skip: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [(self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)]
        hidden, pooled = [], None
        for tokenizer, encoder in pairs:
            if encoder is None:
                continue
            ids, _ = self._tokens(tokenizer, texts, self.length)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2 if clip_skip is None else -(clip_skip + 2)])
            pooled = out.text_embeds if encoder is self.text_encoder_2 else pooled
        return torch.cat(hidden, dim=-1).to(self.text_encoder_2.dtype), pooled

    def for_image_size(self, height: int, width: int) -> SdxlTextConditioner:
        """This conditioner with the time ids of an image of ``height`` × ``width`` pixels.

        As ``StableDiffusionXLPipeline`` defaults them for ``height=, width=``: original_size and
        target_size (height, width), the crop kept. The config's sizes are those of the pipeline's
        default image, so that size returns ``self``; any other returns a shallow copy with the
        changed config, sharing the encoders (no weights are copied).
        """
        size = (int(height), int(width))
        if self.config.original_size == size and (self.config.aesthetic_score is not None
                                                  or self.config.target_size == size):
            return self
        sized = copy.copy(self)  # the same submodules and tokenizers; only the config differs
        sized.config = attrs.evolve(self.config, original_size=size, target_size=size)
        return sized

    def _record(self, context: torch.Tensor, pooled: torch.Tensor, time_ids: tuple[float, ...]) -> Conditioning:
        ids = torch.tensor([time_ids], dtype=context.dtype, device=context.device).expand(pooled.shape[0], -1)
        return Conditioning(context=context, vector=torch.cat([pooled, ids], dim=-1))

    def _encode(self, texts: list[str]) -> Conditioning:
        return self._record(*self._hidden(texts, self.config.clip_skip), self.config.time_ids)

    def _null(self) -> Conditioning:
        if not self.config.force_zeros_for_empty_prompt:
            return self._record(*self._hidden([""], None), self.config.null_time_ids)
        width = sum(int(e.config.hidden_size) for e in self.encoders())
        options = {"dtype": self.text_encoder_2.dtype, "device": self.module_device()}
        context = torch.zeros(1, self.length, width, **options)
        pooled = torch.zeros(1, int(self.text_encoder_2.config.projection_dim), **options)
        return self._record(context, pooled, self.config.null_time_ids)


class T5TextConditioner(TransformersTextConditioner):
    """PixArt-α / PixArt-Σ: ``PixArtAlphaPipeline.encode_prompt`` (clean_caption=False).

    Prompts are lower-cased and stripped, padded and cut to M = ``max_sequence_length`` T5
    tokens, and encoded with their attention mask::

        context [B, M, d_t5]   T5 last_hidden_state
        mask    [B, M] bool    the tokenizer's attention mask (True on the prompt's tokens and </s>)

    ∅ = the record of "" (</s> and padding; its mask True on the first token only).
    """

    config_class = T5TextConfig
    encoder_classes: ClassVar[dict[str, str]] = {"text_encoder": T5_ENCODER}
    config: T5TextConfig

    def _run(self, texts: list[str]) -> Conditioning:
        texts = [text.lower().strip() for text in texts]
        ids, mask = self._tokens(self.tokenizer, texts, self.config.max_sequence_length)
        hidden = self.text_encoder(ids, attention_mask=mask.long())[0]
        return Conditioning(context=hidden.to(self.text_encoder.dtype), mask=mask)

    def _encode(self, texts: list[str]) -> Conditioning:
        return self._run(texts)

    def _null(self) -> Conditioning:
        return self._run([""])


class Sd3TextConditioner(TransformersTextConditioner):
    """Stable Diffusion 3 / 3.5: ``StableDiffusion3Pipeline.encode_prompt``.

    CLIP-L and CLIP-G read the prompts padded to L = CLIP-L's ``model_max_length`` (77); T5
    reads them padded to M = ``max_sequence_length``::

        clip    [B, L, d_l + d_g]   cat(hidden_states[−2] of CLIP-L, of CLIP-G) (clip_skip k: [−(k + 2)]),
                                    zero-padded (or cut) to d_t5
        context [B, L + M, d_t5]    cat(clip, T5 last_hidden_state), dim 1 (no T5: zeros [B, M,
                                    joint_attention_dim] in its place, d_t5 = joint_attention_dim)
        vector  [B, P_l + P_g]      cat(text_embeds of CLIP-L, of CLIP-G)

    No mask (the pipeline passes none). ∅ = the record of "" (without clip_skip).
    """

    config_class = Sd3TextConfig
    encoder_classes: ClassVar[dict[str, str]] = {
        "text_encoder": CLIP_PROJECTION, "text_encoder_2": CLIP_PROJECTION, "text_encoder_3": T5_ENCODER,
    }
    config: Sd3TextConfig

    def __init__(self, config: Sd3TextConfig, *, encoders: Mapping[str, nn.Module] | None = None) -> None:
        super().__init__(config, encoders=encoders)
        self._check_clip_skip(2)

    def _clip(self, tokenizer: TextTokenizer, encoder: nn.Module, texts: list[str], clip_skip: int | None) -> Any:
        ids, _ = self._tokens(tokenizer, texts, self.tokenizer.model_max_length)
        out = encoder(ids, output_hidden_states=True)
        hidden = out.hidden_states[-2 if clip_skip is None else -(clip_skip + 2)]
        return hidden.to(self.text_encoder.dtype), out.text_embeds

    def _t5(self, texts: list[str]) -> torch.Tensor:
        length = self.config.max_sequence_length
        if self.text_encoder_3 is None:
            shape = (len(texts), length, self.config.joint_attention_dim)
            return torch.zeros(shape, dtype=self.text_encoder.dtype, device=self.module_device())
        ids, _ = self._tokens(self.tokenizer_3, texts, length)
        return self.text_encoder_3(ids)[0].to(self.text_encoder_3.dtype)

    def _run(self, texts: list[str], clip_skip: int | None) -> Conditioning:
        hidden_l, pooled_l = self._clip(self.tokenizer, self.text_encoder, texts, clip_skip)
        hidden_g, pooled_g = self._clip(self.tokenizer_2, self.text_encoder_2, texts, clip_skip)
        clip = torch.cat([hidden_l, hidden_g], dim=-1)
        t5 = self._t5(texts)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))  # a negative width cuts, as in diffusers
        return Conditioning(context=torch.cat([clip, t5], dim=-2), vector=torch.cat([pooled_l, pooled_g], dim=-1))

    def _encode(self, texts: list[str]) -> Conditioning:
        return self._run(texts, self.config.clip_skip)

    def _null(self) -> Conditioning:
        return self._run([""], None)


class FluxTextConditioner(TransformersTextConditioner):
    """FLUX.1: ``FluxPipeline.encode_prompt``.

    ::

        vector  [B, d_clip]   CLIP pooler_output (prompts padded to CLIP's model_max_length, 77)
        context [B, M, d_t5]  T5 last_hidden_state (prompts padded to M = max_sequence_length)

    No mask (the pipeline passes none). ∅ = the record of "".
    """

    config_class = FluxTextConfig
    encoder_classes: ClassVar[dict[str, str]] = {"text_encoder": CLIP, "text_encoder_2": T5_ENCODER}
    config: FluxTextConfig

    def _run(self, texts: list[str]) -> Conditioning:
        ids, _ = self._tokens(self.tokenizer, texts, self.tokenizer.model_max_length)
        pooled = self.text_encoder(ids, output_hidden_states=False).pooler_output.to(self.text_encoder.dtype)
        ids, _ = self._tokens(self.tokenizer_2, texts, self.config.max_sequence_length)
        hidden = self.text_encoder_2(ids, output_hidden_states=False)[0].to(self.text_encoder_2.dtype)
        return Conditioning(context=hidden, vector=pooled)

    def _encode(self, texts: list[str]) -> Conditioning:
        return self._run(texts)

    def _null(self) -> Conditioning:
        return self._run([""])


CONDITIONERS: dict[str, type[TransformersTextConditioner]] = {
    "clip_text": ClipTextConditioner, "sdxl_text": SdxlTextConditioner, "t5_text": T5TextConditioner,
    "sd3_text": Sd3TextConditioner, "flux_text": FluxTextConditioner,
}
"""Registry name → conditioner class."""
