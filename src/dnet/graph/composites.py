"""Composite operations, expanded into primitive graph ops.

Each composite is a function of the builder, its tensor inputs and its attributes.
They are how softmax, the norms, the activations and attention enter the graph: the
scheduler later fuses the primitives back into one kernel each.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

from dnet.core.dtypes import DType
from dnet.core.shapes import numel
from dnet.graph.builder import GraphBuilder, Value
from dnet.graph.infer import norm_axis
from dnet.graph.ops import Op


def _count(b: GraphBuilder, x: Value, axes: Sequence[int]):
    shape = b.shape(x)
    return numel(shape[a] for a in axes)


def _axes(b: GraphBuilder, x: Value, axes, what: str) -> tuple[int, ...]:
    rank = len(b.shape(x))
    if axes is None:
        return tuple(range(rank))
    if isinstance(axes, int):
        axes = (axes,)
    return tuple(sorted(norm_axis(a, rank, what, b.where) for a in axes))


def mean(b: GraphBuilder, x: Value, axes=None, keepdim: bool = False) -> Value:
    axes = _axes(b, x, axes, "mean")
    total = b.reduce(Op.SUM, x, axes, keepdim)
    n = _count(b, x, axes)
    return b.elementwise(Op.DIV, total, b.scalar(n, b.dtype(x)))


def var(b: GraphBuilder, x: Value, axes=None, keepdim: bool = False, correction: int = 0) -> Value:
    axes = _axes(b, x, axes, "var")
    d = b.elementwise(Op.SUB, x, mean(b, x, axes, keepdim=True))
    sq = b.reduce(Op.SUM, b.elementwise(Op.MUL, d, d), axes, keepdim)
    return b.elementwise(Op.DIV, sq, b.scalar(_count(b, x, axes) - correction, b.dtype(x)))


def softmax(b: GraphBuilder, x: Value, axis: int = -1) -> Value:
    m = b.reduce(Op.REDUCE_MAX, x, axis, keepdim=True)
    e = b.unary(Op.EXP, b.elementwise(Op.SUB, x, m))
    return b.elementwise(Op.DIV, e, b.reduce(Op.SUM, e, axis, keepdim=True))


def log_softmax(b: GraphBuilder, x: Value, axis: int = -1) -> Value:
    m = b.reduce(Op.REDUCE_MAX, x, axis, keepdim=True)
    shifted = b.elementwise(Op.SUB, x, m)
    lse = b.unary(Op.LOG, b.reduce(Op.SUM, b.unary(Op.EXP, shifted), axis, keepdim=True))
    return b.elementwise(Op.SUB, shifted, lse)


def rsqrt(b: GraphBuilder, x: Value) -> Value:
    return b.unary(Op.RECIP, b.unary(Op.SQRT, x))


def layer_norm(b: GraphBuilder, x: Value, weight: Value | None = None, bias: Value | None = None,
               eps: float = 1e-5, ndim: int = 1) -> Value:
    """Normalise over the last `ndim` axes, then scale and shift."""
    rank = len(b.shape(x))
    axes = tuple(range(rank - ndim, rank))
    d = b.elementwise(Op.SUB, x, mean(b, x, axes, keepdim=True))
    v = mean(b, b.elementwise(Op.MUL, d, d), axes, keepdim=True)
    y = b.elementwise(Op.MUL, d, rsqrt(b, b.elementwise(Op.ADD, v, float(eps))))
    if weight is not None:
        y = b.elementwise(Op.MUL, y, weight)
    if bias is not None:
        y = b.elementwise(Op.ADD, y, bias)
    return y


def rms_norm(b: GraphBuilder, x: Value, weight: Value | None = None, eps: float = 1e-6) -> Value:
    ms = mean(b, b.elementwise(Op.MUL, x, x), -1, keepdim=True)
    y = b.elementwise(Op.MUL, x, rsqrt(b, b.elementwise(Op.ADD, ms, float(eps))))
    return y if weight is None else b.elementwise(Op.MUL, y, weight)


def sigmoid(b: GraphBuilder, x: Value) -> Value:
    return b.unary(Op.RECIP, b.elementwise(Op.ADD, b.unary(Op.EXP, b.unary(Op.NEG, x)), 1.0))


def relu(b: GraphBuilder, x: Value) -> Value:
    return b.elementwise(Op.MAX, x, 0.0 if b.dtype(x).is_float else 0)


def silu(b: GraphBuilder, x: Value) -> Value:
    return b.elementwise(Op.MUL, x, sigmoid(b, x))


def gelu(b: GraphBuilder, x: Value, approximate: str = "none") -> Value:
    if approximate == "tanh":
        inner = b.elementwise(Op.MUL, b.elementwise(
            Op.ADD, x, b.elementwise(Op.MUL, b.elementwise(Op.MUL, b.elementwise(Op.MUL, x, x), x), 0.044715)),
            math.sqrt(2.0 / math.pi))
        return b.elementwise(Op.MUL, b.elementwise(Op.MUL, x, 0.5),
                             b.elementwise(Op.ADD, b.unary(Op.TANH, inner), 1.0))
    cdf = b.elementwise(Op.ADD, b.unary(Op.ERF, b.elementwise(Op.MUL, x, 1.0 / math.sqrt(2.0))), 1.0)
    return b.elementwise(Op.MUL, b.elementwise(Op.MUL, x, 0.5), cdf)


def linear(b: GraphBuilder, x: Value, weight: Value, bias: Value | None = None) -> Value:
    """x @ weight.T + bias, with weight stored (out_features, in_features) as PyTorch does."""
    y = b.matmul(x, b.transpose(weight))
    return y if bias is None else b.elementwise(Op.ADD, y, bias)


def causal_mask(b: GraphBuilder, q_len, k_len) -> Value:
    """Bool (q_len, k_len): key j visible to query i when j <= i + (k_len - q_len)."""
    rows = b.reshape(b.arange(q_len), (q_len, 1))
    cols = b.reshape(b.arange(k_len), (1, k_len))
    return b.elementwise(Op.LE, cols, b.elementwise(Op.ADD, rows, k_len - q_len))


def scaled_dot_product_attention(b: GraphBuilder, q: Value, k: Value, v: Value, mask: Value | None = None,
                                 scale: float | None = None, causal: bool = False) -> Value:
    """softmax(q @ k^T * scale + mask) @ v over (..., seq, head_dim). A bool mask keeps True entries."""
    head_dim = b.shape(q)[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    scores = b.elementwise(Op.MUL, b.matmul(q, b.transpose(k)), float(scale))
    neg = -3.0e38 if b.dtype(scores) is DType.F32 else -6.0e4
    if causal:
        keep = causal_mask(b, b.shape(q)[-2], b.shape(k)[-2])
        scores = b.elementwise(Op.WHERE, keep, scores, neg)
    if mask is not None:
        if b.dtype(mask) is DType.BOOL:
            scores = b.elementwise(Op.WHERE, mask, scores, neg)
        else:
            scores = b.elementwise(Op.ADD, scores, mask)
    return b.matmul(softmax(b, scores, -1), v)


COMPOSITES: dict[str, Callable[..., Value]] = {
    "mean": mean, "var": var, "softmax": softmax, "log_softmax": log_softmax, "rsqrt": rsqrt,
    "layer_norm": layer_norm, "rms_norm": rms_norm, "sigmoid": sigmoid, "relu": relu, "silu": silu,
    "gelu": gelu, "linear": linear, "scaled_dot_product_attention": scaled_dot_product_attention,
}
