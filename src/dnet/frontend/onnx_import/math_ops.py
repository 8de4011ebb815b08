"""Arithmetic: element-wise ops (folded when every input is static), reductions, matmul, norms.

ONNX broadcasts numpy-style and gives both operands one dtype, so element-wise ops
map straight onto `GraphBuilder.elementwise`. Folding covers what shape arithmetic
needs: +, -, *, /, comparisons and logic over ints and symbolic dims.
"""
from __future__ import annotations

import operator
from typing import Callable

import numpy as np

from dnet.core.shapes import Dim, numel
from dnet.errors import UnsupportedOpError
from dnet.frontend.onnx_import.context import Context, Input
from dnet.frontend.onnx_import.values import Missing, Static, simplify
from dnet.graph import composites as C
from dnet.graph.ops import Op

Rule = Callable[..., Input]


class _Undecided(Exception):
    """A fold whose answer depends on the value of a symbolic dim: the op is left to run."""


def _equal(a, b) -> bool:
    if isinstance(a, Dim) or isinstance(b, Dim):
        if a == b:
            return True
        constant = b if isinstance(a, Dim) else a
        if isinstance(constant, int) and constant < 0:
            return False  # a size is never negative: this is how exporters test for their -1 markers
        raise _Undecided
    return a == b


def _int_div(a, b):
    """ONNX integer division truncates; sizes are non-negative, where it is floor division."""
    if isinstance(a, Dim) or isinstance(b, Dim):
        return a // b
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _fold_dims(fn: Callable, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """fn element by element over arrays holding dims (numpy hands it Python ints and `Dim`s);
    None when the answer depends on a symbol's value (or `Dim` has no such operation)."""
    try:
        return simplify(np.vectorize(fn, otypes=[object])(a, b))
    except (_Undecided, TypeError):
        return None


def _numeric_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        return np.vectorize(_int_div, otypes=[a.dtype])(a, b)
    return np.divide(a, b).astype(a.dtype)


_FOLDS: dict[Op, Callable] = {
    Op.ADD: operator.add, Op.SUB: operator.sub, Op.MUL: operator.mul,
    Op.MAX: max, Op.MIN: min, Op.LT: operator.lt, Op.LE: operator.le,
    Op.AND: operator.and_, Op.OR: operator.or_,
}
_NUMPY_FOLDS: dict[Op, Callable] = {
    Op.ADD: np.add, Op.SUB: np.subtract, Op.MUL: np.multiply, Op.DIV: _numeric_div, Op.POW: np.power,
    Op.MAX: np.maximum, Op.MIN: np.minimum, Op.EQ: np.equal, Op.LT: np.less,
    Op.LE: np.less_equal, Op.AND: np.logical_and, Op.OR: np.logical_or,
}


def elementwise(op: Op, swap: bool = False) -> Rule:
    """A binary (or variadic, for Max/Min) ONNX op; `swap` reverses the operands (Greater = Less swapped)."""
    def rule(ctx: Context, *xs: Input) -> Input:
        xs = xs[::-1] if swap else xs
        out = xs[0]
        for x in xs[1:]:
            out = _binary(ctx, op, out, x)
        return out
    return rule


def _binary(ctx: Context, op: Op, a: Input, b: Input) -> Input:
    if isinstance(a, Static) and isinstance(b, Static):
        folded = _fold_binary(op, a.array, b.array)
        if folded is not None:
            return ctx.static_out(folded)
    return ctx.b.elementwise(op, ctx.tensor(a), ctx.tensor(b))


def _fold_binary(op: Op, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    if a.dtype != object and b.dtype != object:
        return np.asarray(_NUMPY_FOLDS[op](a, b)) if op in _NUMPY_FOLDS else None
    fn = {Op.EQ: _equal, Op.DIV: _int_div, **_FOLDS}.get(op)
    return None if fn is None else _fold_dims(fn, a, b)


def unary(op: Op) -> Rule:
    def rule(ctx: Context, x: Input) -> Input:
        if op is Op.NEG and isinstance(x, Static):
            return ctx.static_out(simplify(-x.array))
        if op is Op.NOT and isinstance(x, Static):
            return ctx.static_out(np.logical_not(x.array))
        return ctx.b.unary(op, ctx.tensor(x))
    return rule


def composite(fn: Callable) -> Rule:
    """A one-input composite of `dnet.graph.composites` (Relu, Sigmoid)."""
    return lambda ctx, x: fn(ctx.b, ctx.tensor(x))


def is_nan(ctx: Context, x: Input) -> Input:
    v = ctx.tensor(x)
    return ctx.b.elementwise(Op.NE, v, v)


def reciprocal(ctx: Context, x: Input) -> Input:
    return ctx.b.unary(Op.RECIP, ctx.tensor(x))


def ceil(ctx: Context, x: Input) -> Input:
    b = ctx.b
    return b.unary(Op.NEG, b.unary(Op.FLOOR, b.unary(Op.NEG, ctx.tensor(x))))


def leaky_relu(ctx: Context, x: Input) -> Input:
    v = ctx.tensor(x)
    return ctx.b.elementwise(Op.WHERE, ctx.b.elementwise(Op.LT, v, 0.0), ctx.b.elementwise(
        Op.MUL, v, float(ctx.attr("alpha", 0.01))), v)


def gelu(ctx: Context, x: Input) -> Input:
    return C.gelu(ctx.b, ctx.tensor(x), ctx.attr("approximate", "none"))


def where(ctx: Context, cond: Input, a: Input, b: Input) -> Input:
    if all(isinstance(v, Static) for v in (cond, a, b)):
        return ctx.static_out(simplify(np.where(cond.array, a.array, b.array)))
    return ctx.b.elementwise(Op.WHERE, ctx.tensor(cond), ctx.tensor(a), ctx.tensor(b))


def clip(ctx: Context, x: Input, lo: Input = None, hi: Input = None) -> Input:
    """A bound left out does not clip."""
    y = ctx.tensor(x)
    for op, bound in ((Op.MAX, lo), (Op.MIN, hi)):
        if bound is not None:
            y = ctx.b.elementwise(op, y, ctx.tensor(bound))
    return y


# -- reductions --------------------------------------------------------------------------------------------
def reduce(kind: str) -> Rule:
    """ReduceSum/Mean/Max/Min/L2: axes from the attribute or (newer opsets) the second input."""
    def rule(ctx: Context, x: Input, axes_in: Input = None) -> Input:
        v, keep = ctx.tensor(x), bool(ctx.attr("keepdims", 1))
        axes = ctx.axes(axes_in)
        if not axes:
            if ctx.attr("noop_with_empty_axes", 0):
                return v
            axes = None
        b = ctx.b
        if kind == "mean":
            return C.mean(b, v, axes, keep)
        if kind == "l2":
            return b.unary(Op.SQRT, b.reduce(Op.SUM, b.elementwise(Op.MUL, v, v), axes, keep))
        return b.reduce({"sum": Op.SUM, "max": Op.REDUCE_MAX, "min": Op.REDUCE_MIN}[kind], v, axes, keep)
    return rule


def arg_max(ctx: Context, x: Input) -> Input:
    if ctx.attr("select_last_index", 0):
        raise UnsupportedOpError("ArgMax with select_last_index=1")
    axis = ctx.attr("axis", 0) % ctx.rank(x)
    return ctx.b.node(Op.ARGMAX, [ctx.tensor(x)], axis=axis, keepdim=bool(ctx.attr("keepdims", 1)))


def softmax(fn: Callable) -> Rule:
    """Softmax over one axis (opset 13); before, over the axes from `axis` on, as one flattened axis."""
    def rule(ctx: Context, x: Input) -> Input:
        v, b = ctx.tensor(x), ctx.b
        if ctx.opset >= 13:
            return fn(b, v, ctx.attr("axis", -1))
        dims = b.shape(v)
        axis = ctx.attr("axis", 1) % len(dims)
        flat = b.reshape(v, (*dims[:axis], numel(dims[axis:])))
        return b.reshape(fn(b, flat, -1), dims)
    return rule


def layer_norm(ctx: Context, x: Input, scale: Input, bias: Input = None) -> tuple:
    v = ctx.tensor(x)
    rank = len(ctx.b.shape(v))
    axis = ctx.attr("axis", -1) % rank
    y = C.layer_norm(ctx.b, v, ctx.tensor(scale), None if bias is None else ctx.tensor(bias),
                     float(ctx.attr("epsilon", 1e-5)), ndim=rank - axis)
    return y, Missing("LayerNormalization's mean"), Missing("LayerNormalization's inverse std")


# -- contractions ------------------------------------------------------------------------------------------
def matmul(ctx: Context, a: Input, b: Input) -> Input:
    return ctx.b.matmul(ctx.tensor(a), ctx.tensor(b))


def gemm(ctx: Context, a: Input, w: Input, c: Input = None) -> Input:
    """alpha * A' @ B' + beta * C, A' and B' transposed by transA/transB."""
    b = ctx.b
    lhs, rhs = ctx.tensor(a), ctx.tensor(w)
    if ctx.attr("transA", 0):
        lhs = b.transpose(lhs)
    if ctx.attr("transB", 0):
        rhs = b.transpose(rhs)
    y = b.matmul(lhs, rhs)
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    if alpha != 1.0:
        y = b.elementwise(Op.MUL, y, alpha)
    if c is not None:
        bias = ctx.tensor(c)
        y = b.elementwise(Op.ADD, y, bias if beta == 1.0 else b.elementwise(Op.MUL, bias, beta))
    return y


RULES: dict[str, Rule] = {
    "Add": elementwise(Op.ADD), "Sum": elementwise(Op.ADD), "Sub": elementwise(Op.SUB), "Mul": elementwise(Op.MUL),
    "Div": elementwise(Op.DIV), "Pow": elementwise(Op.POW), "Max": elementwise(Op.MAX),
    "Min": elementwise(Op.MIN), "Equal": elementwise(Op.EQ), "Less": elementwise(Op.LT),
    "LessOrEqual": elementwise(Op.LE), "Greater": elementwise(Op.LT, swap=True),
    "GreaterOrEqual": elementwise(Op.LE, swap=True), "And": elementwise(Op.AND), "Or": elementwise(Op.OR),
    "Neg": unary(Op.NEG), "Abs": unary(Op.ABS), "Sqrt": unary(Op.SQRT), "Exp": unary(Op.EXP),
    "Log": unary(Op.LOG), "Tanh": unary(Op.TANH), "Erf": unary(Op.ERF), "Sin": unary(Op.SIN),
    "Cos": unary(Op.COS), "Floor": unary(Op.FLOOR), "Not": unary(Op.NOT), "Reciprocal": reciprocal,
    "Ceil": ceil, "IsNaN": is_nan, "Relu": composite(C.relu), "Sigmoid": composite(C.sigmoid),
    "LeakyRelu": leaky_relu, "Gelu": gelu, "Where": where, "Clip": clip,
    "ReduceSum": reduce("sum"), "ReduceMean": reduce("mean"), "ReduceMax": reduce("max"),
    "ReduceMin": reduce("min"), "ReduceL2": reduce("l2"), "ArgMax": arg_max,
    "Softmax": softmax(C.softmax), "LogSoftmax": softmax(C.log_softmax), "LayerNormalization": layer_norm,
    "MatMul": matmul, "Gemm": gemm,
}
