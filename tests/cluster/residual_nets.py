"""Small models for the cluster and runtime tests, with their numpy oracles."""
from __future__ import annotations

import numpy as np

import dnet
from dnet import functional as F


class Block(dnet.Module):
    """x + softmax(x @ w + mask): a residual and a mask that every block reads."""

    def __init__(self, rng: np.random.Generator, d: int):
        super().__init__()
        self.w = dnet.Parameter((rng.standard_normal((d, d)) / d ** 0.5).astype(np.float32))

    def forward(self, x, mask):
        return x + F.softmax(F.matmul(x, self.w) + mask, -1)


class ResidualNet(dnet.Module):
    def __init__(self, rng: np.random.Generator, d: int = 8, depth: int = 6):
        super().__init__()
        self.d = d
        self.blocks = dnet.ModuleList([Block(rng, d) for _ in range(depth)])

    def forward(self, x, mask):
        for block in self.blocks:
            x = block(x, mask)
        return x


def oracle(net: ResidualNet, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The same computation in plain numpy."""
    for block in net.blocks:
        z = x @ block.w.data + mask
        e = np.exp(z - z.max(-1, keepdims=True))
        x = x + e / e.sum(-1, keepdims=True)
    return x


def residual_graph(rng: np.random.Generator, d: int = 8, depth: int = 6):
    net = ResidualNet(rng, d, depth)
    t = dnet.TensorType(("batch", "seq", d), dnet.f32)
    return net, dnet.to_graph(net, {"x": t, "mask": t})


def request(rng: np.random.Generator, d: int = 8, batch: int = 2, seq: int = 3) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((batch, seq, d)).astype(np.float32),
            "mask": rng.standard_normal((batch, seq, d)).astype(np.float32)}
