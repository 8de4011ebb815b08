"""Linear, Embedding and Flatten."""
from __future__ import annotations

from dnet.core.dtypes import DType
from dnet.frontend import functional as F
from dnet.frontend.module import Module, Parameter


class Linear(Module):
    """y = x @ weight.T + bias, weight stored (out_features, in_features) as in PyTorch."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: DType = DType.F32) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(shape=(out_features, in_features), dtype=dtype)
        self.bias = Parameter(shape=(out_features,), dtype=dtype) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Embedding(Module):
    """Rows of `weight` (num_embeddings, embedding_dim) picked by integer indices."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: DType = DType.F32) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(shape=(num_embeddings, embedding_dim), dtype=dtype)

    def forward(self, indices):
        return F.embedding(indices, self.weight)


class Flatten(Module):
    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim, self.end_dim)
