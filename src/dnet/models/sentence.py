"""Sentence embeddings: a BERT encoder, mean pooling over real tokens, L2 normalisation.

`SentenceEmbedder` is the dnet Module (one compiled graph from token ids to unit
vectors); `SentenceEncoder` pairs its compiled executable with a tokenizer.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dnet.api import Executable, compile as dnet_compile
from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.frontend import functional as F
from dnet.frontend import nn
from dnet.models.bert import BertConfig, BertModel
from dnet.models.tokenizer import Tokenizer

# What a compiled sentence embedder takes: one row of token ids per text, padded to the longest.
INPUT_TYPES: dict[str, TensorType] = {
    "input_ids": TensorType(("batch", "seq"), DType.I64),
    "attention_mask": TensorType(("batch", "seq"), DType.I64),
}


class SentenceEmbedder(nn.Module):
    """(input_ids, attention_mask) -> (batch, hidden) sentence embeddings, as sentence-transformers'
    Transformer -> Pooling(mean) -> Normalize pipeline computes them."""

    def __init__(self, config: BertConfig, normalize: bool = True) -> None:
        super().__init__()
        self.bert = BertModel(config)
        self.normalize = normalize

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        tokens = self.bert(input_ids, attention_mask, token_type_ids)
        weights = attention_mask.to(tokens.dtype).unsqueeze(-1)
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


class SentenceEncoder:
    """Texts in, embeddings out, through a model compiled once for any batch size and length.

    `module` and `input_types` are there for compiling the same model elsewhere:
    `dnet.compile(encoder.module, encoder.input_types, target=...)`.
    """

    def __init__(self, module: SentenceEmbedder, tokenizer: Tokenizer, target: str = "numpy") -> None:
        self.module, self.tokenizer, self.target = module, tokenizer, target
        self.input_types = dict(INPUT_TYPES)
        self.executable: Executable = dnet_compile(module, self.input_types, target=target)

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The executable's inputs for `texts` (padded to the longest, truncated at the model's limit)."""
        batch = self.tokenizer(texts)
        return {name: batch[name] for name in self.input_types}

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """(len(texts), hidden) float32 embeddings, unit length when the model normalises.
        Texts go through in batches of `batch_size`, each padded to its own longest text."""
        texts = list(texts)
        batches = [self.executable(**self.tokenize(texts[i:i + batch_size]))
                   for i in range(0, len(texts), batch_size)]
        return np.concatenate(batches)
