"""Conditioners: user input (class labels, text, images, scalars) → a :class:`Conditioning` record.

Built-ins (``diffkit.build("conditioner", name, **config)``): ``class_label``, ``timestep``,
``concat``, ``text``; they register through the ``diffkit_register_conditioners`` hook like any
plugin (:mod:`diffkit.models.conditioners.builtin`).

The record (:class:`Conditioning`, frozen, every field optional) carries ``labels`` [B] int64,
``vector`` [B, D], ``context`` [B, M, d_ctx], ``mask`` bool [B, M] (True = attend) and
``concat`` [B, C_c, H, W]. Backbones read it: ``unet``/``dit`` take ``labels`` (class table
with a null row) and ``vector`` (``vector_dim`` > 0: added to the time embedding),
``latent_unet`` takes ``context``/``mask`` (cross-attention) and ``vector``, and ``unet`` /
``latent_unet`` concatenate ``concat`` to x. :func:`diffkit.sampling.guidance.batch_conditions` batches
two records field by field for classifier-free guidance.

The interface every conditioner implements (the pipeline and the trainer rely on it):

``forward(inputs, *, force_drop=None, generator=None) -> Conditioning``
    The record of ``inputs``. In training mode (``module.training``) each sample is replaced
    by the null condition with probability ``config.drop_prob`` (CFG training, Ho & Salimans
    2022), decided by B uniform draws from ``generator`` (a ``torch.Generator`` or None for
    the global one). ``force_drop`` — True/False, or a bool tensor [B] — forces the null
    condition on the samples it marks (inference: CFG's unconditional branch). In eval mode
    nothing is dropped unless forced. A dropped sample's fields equal those of :meth:`null`.
``null(batch_size, device=None) -> Conditioning``
    The unconditional record ∅ for ``batch_size`` samples (``concat`` also needs the image
    size: its config's ``size`` or ``null(B, size=(H, W))``).
``batch_size_of(inputs) -> int``
    B, the number of samples in ``inputs`` (validating them).
``config``
    The frozen attrs config the conditioner was built from (``to_dict()`` / ``from_dict``),
    so ``diffkit.save_pretrained`` / ``load_pretrained`` work for conditioners with weights.

Conditioners subclass :class:`Conditioner` (which provides the drop rule, ``drop_mask``, and a
``forward`` built on two steps a subclass implements, ``prepare`` and ``apply_drop``).
"""

from diffkit.models.conditioners.base import Conditioner
from diffkit.models.conditioners.class_label import ClassLabelConditioner, ClassLabelConfig, build_class_label
from diffkit.models.conditioners.concat import ConcatConditioner, ConcatConfig, build_concat
from diffkit.models.conditioners.record import FIELDS, Conditioning
from diffkit.models.conditioners.text import TextConditioner, TextConfig, build_text
from diffkit.models.conditioners.text_encoder import TextEncoder, masked_mean
from diffkit.models.conditioners.timestep import TimestepConditioner, TimestepConfig, build_timestep
from diffkit.models.conditioners.tokenizer import ByteTokenizer

__all__ = [
    "FIELDS", "ByteTokenizer", "ClassLabelConditioner", "ClassLabelConfig", "ConcatConditioner",
    "ConcatConfig", "Conditioner", "Conditioning", "TextConditioner", "TextConfig", "TextEncoder",
    "TimestepConditioner", "TimestepConfig", "build_class_label", "build_concat", "build_text",
    "build_timestep", "masked_mean",
]
