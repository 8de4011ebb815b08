"""Parameter-free layers: activations, softmax, and the ones that are identities at inference."""
from __future__ import annotations

from dnet.frontend import functional as F
from dnet.frontend.module import Module


class Identity(Module):
    def __init__(self, *args, **kwargs) -> None:  # PyTorch's Identity ignores its arguments too
        super().__init__()

    def forward(self, x):
        return x


class Dropout(Module):
    """The identity: dnet compiles for inference. `p` is kept for the record."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x):
        return F.dropout(x, self.p)


class GELU(Module):
    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class SiLU(Module):
    def forward(self, x):
        return F.silu(x)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class Softmax(Module):
    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.softmax(x, self.dim)
