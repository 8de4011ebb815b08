"""The WordPiece tokenizer of a Hugging Face `tokenizer.json`, padding to the longest text."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from dnet.errors import DnetError


class Tokenizer:
    """Texts -> `input_ids`, `attention_mask`, `token_type_ids` (int64, batch x longest)."""

    def __init__(self, path: str | Path, max_length: int) -> None:
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError:
            raise DnetError("the 'tokenizers' package is missing", hint="pip install tokenizers") from None
        self.max_length = max_length
        self._tok = HFTokenizer.from_file(str(path))
        padding = self._tok.padding or {}
        # The file may fix a padded length; pad to the longest text of each batch instead.
        self._tok.enable_padding(pad_id=padding.get("pad_id", 0), pad_type_id=padding.get("pad_type_id", 0),
                                 pad_token=padding.get("pad_token", "[PAD]"))
        self._tok.enable_truncation(max_length)

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        if isinstance(texts, str) or not texts:
            raise DnetError("tokenize a non-empty list of strings")
        encodings = self._tok.encode_batch(list(texts))

        def stack(field: str) -> np.ndarray:
            return np.array([getattr(e, field) for e in encodings], dtype=np.int64)
        return {"input_ids": stack("ids"), "attention_mask": stack("attention_mask"),
                "token_type_ids": stack("type_ids")}
