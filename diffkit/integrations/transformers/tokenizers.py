"""Tokenizers as JSON, and the exact ids of the diffusers pipelines' tokenizer calls.

Every pipeline here tokenizes with ``tokenizer(texts, padding="max_length", max_length=L,
truncation=True)``. For a ``transformers`` fast tokenizer (every tokenizer in transformers 5)
that call sets truncation (L, longest first, stride 0, the tokenizer's truncation side) and
padding (to L with its pad token, on its padding side) on the ``tokenizers`` backend and runs
``encode_batch(texts, add_special_tokens=True)``. :class:`TextTokenizer` does the same on a
backend rebuilt from a :class:`~diffkit.integrations.transformers.configs.TokenizerSpec`: the
backend's own serialization plus those settings — the tokenizer travels inside the component's
config, and nothing else about the ``transformers`` tokenizer class is used by the call.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import torch

from diffkit.errors import ConfigError
from diffkit.integrations.transformers.configs import TokenizerSpec
from diffkit.integrations.transformers.extra import require

_LENGTH_LIMIT = 2**31  # transformers' "no limit" is int(1e30)


def tokenizer_spec_of(tokenizer: Any) -> TokenizerSpec:
    """The :class:`TokenizerSpec` of a ``transformers`` tokenizer (fast; a slow one is converted).

    Raises :class:`ConfigError` for a tokenizer without a padding token (the pipelines pad).
    """
    tokenizers = require("tokenizers")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow (Python) tokenizer of transformers 4: convert it as transformers does
        try:
            from transformers.convert_slow_tokenizer import convert_slow_tokenizer

            backend = convert_slow_tokenizer(tokenizer)
        except Exception as exc:  # any failure: the same advice
            raise ConfigError(
                f"cannot convert the {type(tokenizer).__name__} to a fast tokenizer ({exc}); load the fast one"
            ) from exc
    backend = tokenizers.Tokenizer.from_str(backend.to_str())  # a copy: the settings below stay ours
    backend.no_padding()
    backend.no_truncation()
    if tokenizer.pad_token is None or tokenizer.pad_token_id is None:
        raise ConfigError(f"the {type(tokenizer).__name__} has no padding token; the pipelines pad every prompt")
    length = getattr(tokenizer, "model_max_length", None)
    return TokenizerSpec(
        tokenizer_json=backend.to_str(),
        pad_token=str(tokenizer.pad_token),
        pad_id=int(tokenizer.pad_token_id),
        pad_type_id=int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
        padding_side=str(tokenizer.padding_side),
        truncation_side=str(tokenizer.truncation_side),
        split_special_tokens=bool(getattr(tokenizer, "split_special_tokens", False)),
        model_max_length=int(length) if isinstance(length, int) and 0 < length < _LENGTH_LIMIT else None,
    )


class TextTokenizer:
    """Texts → (ids int64 [B, L], attention mask bool [B, L]), as the pipelines' tokenizer call.

    Built from a :class:`TokenizerSpec`; not a module (it holds no tensors). A lock guards the
    backend, whose truncation and padding are set on every call.
    """

    def __init__(self, spec: TokenizerSpec) -> None:
        tokenizers = require("tokenizers")
        self.spec = spec
        try:
            self.backend = tokenizers.Tokenizer.from_str(spec.tokenizer_json)
        except Exception as exc:  # the library's errors are plain Exceptions
            raise ConfigError(f"the tokenizer's tokenizer_json cannot be read by tokenizers: {exc}") from exc
        if spec.split_special_tokens or hasattr(self.backend, "encode_special_tokens"):  # tokenizers ≥ 0.19
            self.backend.encode_special_tokens = spec.split_special_tokens
        self._lock = threading.Lock()

    @property
    def model_max_length(self) -> int | None:
        return self.spec.model_max_length

    def __deepcopy__(self, memo: dict[int, Any]) -> TextTokenizer:
        return TextTokenizer(self.spec)  # the backend is rebuilt: copies never share its settings

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"])  # type: ignore[misc]

    def __call__(
        self, texts: list[str], max_length: int, *, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, L], mask [B, L]) with L = ``max_length``; texts longer than L tokens are cut (with a warning)."""
        spec = self.spec
        with self._lock:
            self.backend.enable_truncation(
                max_length=max_length, stride=0, strategy="longest_first", direction=spec.truncation_side
            )
            self.backend.enable_padding(
                length=max_length, direction=spec.padding_side, pad_id=spec.pad_id, pad_type_id=spec.pad_type_id,
                pad_token=spec.pad_token, pad_to_multiple_of=None,
            )
            encodings = self.backend.encode_batch(list(texts), add_special_tokens=True, is_pretokenized=False)
        cut = sum(1 for e in encodings if e.overflowing)
        if cut:
            warnings.warn(
                f"{cut} of {len(texts)} texts are longer than the context ({max_length} tokens) and were truncated",
                stacklevel=3,
            )
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long).reshape(len(texts), max_length)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool).reshape(len(texts), max_length)
        return ids.to(device), mask.to(device)

    def __repr__(self) -> str:
        vocab = self.backend.get_vocab_size(with_added_tokens=True)
        return f"TextTokenizer(vocab={vocab}, pad={self.spec.pad_token!r}, model_max_length={self.model_max_length})"
