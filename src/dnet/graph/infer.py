"""Shape and dtype inference: one rule per op, over symbolic shapes.

A rule gets the input types and the attributes and returns the output type, or
raises a ShapeError/DTypeError that names the op, the shapes and the symbol.
"""
from __future__ import annotations

from typing import Any, Callable

from dnet.core.dtypes import DType
from dnet.core.shapes import Dim, numel, shape_str
from dnet.core.types import TensorType
from dnet.errors import DTypeError, Location, ShapeError
from dnet.graph.ops import COMPARISONS, LOGICAL, Op, OpClass

Rule = Callable[[Op, list[TensorType], dict[str, Any], str], TensorType]


def infer(op: Op, inputs: list[TensorType], attrs: dict[str, Any], where: str = "") -> TensorType:
    if op.arity >= 0 and len(inputs) != op.arity:
        raise ShapeError(f"{op} takes {op.arity} inputs, got {len(inputs)}", where)
    missing = [a for a in op.attr_names if a not in attrs]
    if missing:
        raise ShapeError(f"{op} is missing attribute(s) {', '.join(missing)}", where)
    rule = _RULES.get(op) or _CLASS_RULES[op.cls]
    return rule(op, inputs, attrs, where)


def _shapes(inputs: list[TensorType]) -> str:
    return " and ".join(shape_str(t.shape) for t in inputs)


def norm_axis(axis: int, rank: int, what: object, where: str | Location | None = None) -> int:
    """`axis` as an index in [0, rank), counting a negative one from the end (PyTorch's and
    numpy's spelling); outside [-rank, rank) it is a ShapeError naming `what` (an op)."""
    if not -rank <= axis < max(rank, 1):
        raise ShapeError(f"{what}: axis {axis} out of range for rank {rank}", where)
    return axis % rank if rank else 0


def _source(op, inputs, attrs, where):
    if op is Op.FULL:
        return TensorType(tuple(attrs["shape"]), attrs["dtype"])
    if op is Op.ARANGE:
        start, stop, step = attrs["start"], attrs["stop"], attrs["step"]
        if step == 0:
            raise ShapeError("arange: step is zero", where)
        length = stop - start if step == 1 else (stop - start + step - 1) // step
        return TensorType((length,), attrs["dtype"])
    return TensorType(tuple(attrs["shape"]), attrs["dtype"])  # INPUT, CONST


def _unary(op, inputs, attrs, where):
    (t,) = inputs
    if op is Op.NOT and t.dtype is not DType.BOOL:
        raise DTypeError(f"not: needs bool, got {t.dtype}", where)
    if op not in (Op.NEG, Op.ABS, Op.NOT) and not t.dtype.is_float:
        raise DTypeError(f"{op}: needs a float tensor, got {t.dtype}", where)
    return t


def _same_shape(op, inputs, where):
    first = inputs[0].shape
    for t in inputs[1:]:
        if t.shape != first:
            raise ShapeError(f"{op}: shapes {_shapes(inputs)} differ (broadcasts must be explicit expands)", where)
    return first


def _binary(op, inputs, attrs, where):
    shape = _same_shape(op, inputs, where)
    a, b = inputs
    if a.dtype != b.dtype:
        raise DTypeError(f"{op}: dtypes {a.dtype} and {b.dtype} differ (casts must be explicit)", where)
    if op in LOGICAL and a.dtype is not DType.BOOL:
        raise DTypeError(f"{op}: needs bool inputs, got {a.dtype}", where)
    return TensorType(shape, DType.BOOL if op in COMPARISONS else a.dtype)


def _where(op, inputs, attrs, where):
    shape = _same_shape(op, inputs, where)
    c, a, b = inputs
    if c.dtype is not DType.BOOL:
        raise DTypeError(f"where: condition must be bool, got {c.dtype}", where)
    if a.dtype != b.dtype:
        raise DTypeError(f"where: branches have dtypes {a.dtype} and {b.dtype}", where)
    return TensorType(shape, a.dtype)


def _cast(op, inputs, attrs, where):
    if attrs["dtype"].is_block:
        raise DTypeError(f"cast: {attrs['dtype']} is a storage format; quantize weights when they are made", where)
    if inputs[0].dtype.is_block and not attrs["dtype"].is_float:
        raise DTypeError(f"cast: a {inputs[0].dtype} tensor dequantizes to a float dtype, not {attrs['dtype']}", where)
    return TensorType(inputs[0].shape, attrs["dtype"])


def _reduce(op, inputs, attrs, where):
    (t,) = inputs
    if op is Op.ARGMAX:
        axes = {norm_axis(attrs["axis"], t.rank, op, where)}
    else:
        axes = {norm_axis(a, t.rank, op, where) for a in attrs["axes"]}
    if attrs["keepdim"]:
        shape = tuple(1 if i in axes else d for i, d in enumerate(t.shape))
    else:
        shape = tuple(d for i, d in enumerate(t.shape) if i not in axes)
    return TensorType(shape, DType.I64 if op is Op.ARGMAX else t.dtype)


def _broadcast_batch(a: tuple, b: tuple, op, inputs, where) -> tuple:
    out = []
    for i in range(max(len(a), len(b))):
        x = a[len(a) - 1 - i] if i < len(a) else 1
        y = b[len(b) - 1 - i] if i < len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise ShapeError(f"{op}: batch dims of {_shapes(inputs)} do not broadcast", where)
    return tuple(reversed(out))


def _matmul(op, inputs, attrs, where):
    a, b = inputs
    if a.rank < 2 or b.rank < 2:
        raise ShapeError(f"matmul: needs rank >= 2, got {_shapes(inputs)}", where)
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(
            f"matmul: inner dims differ, {shape_str(a.shape)} @ {shape_str(b.shape)} "
            f"({a.shape[-1]} != {b.shape[-2]})", where)
    if a.dtype != b.dtype:
        raise DTypeError(f"matmul: dtypes {a.dtype} and {b.dtype} differ", where)
    batch = _broadcast_batch(a.shape[:-2], b.shape[:-2], op, inputs, where)
    return TensorType(batch + (a.shape[-2], b.shape[-1]), a.dtype)


def _window(size, k, stride, lo, hi, dilation=1):
    return (size + lo + hi - dilation * (k - 1) - 1) // stride + 1


def _conv(op, inputs, attrs, where):
    x, w = inputs
    if x.rank != 4 or w.rank != 4:
        raise ShapeError(f"conv2d: needs NCHW input and OIHW weight, got {_shapes(inputs)}", where)
    g = attrs["groups"]
    if x.shape[1] != w.shape[1] * g:
        raise ShapeError(
            f"conv2d: input channels {x.shape[1]} != weight in-channels {w.shape[1]} x groups {g} "
            f"(shapes {_shapes(inputs)})", where)
    (sh, sw), (dh, dw) = attrs["stride"], attrs["dilation"]
    top, left, bottom, right = attrs["padding"]
    h = _window(x.shape[2], w.shape[2], sh, top, bottom, dh)
    wd = _window(x.shape[3], w.shape[3], sw, left, right, dw)
    return TensorType((x.shape[0], w.shape[0], h, wd), x.dtype)


def _pool(op, inputs, attrs, where):
    (x,) = inputs
    if x.rank != 4:
        raise ShapeError(f"{op}: needs an NCHW input, got {shape_str(x.shape)}", where)
    (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
    top, left, bottom, right = attrs["padding"]
    return TensorType((x.shape[0], x.shape[1], _window(x.shape[2], kh, sh, top, bottom),
                       _window(x.shape[3], kw, sw, left, right)), x.dtype)


def _reshape(op, inputs, attrs, where):
    (t,) = inputs
    shape = tuple(attrs["shape"])
    if numel(shape) != numel(t.shape):
        raise ShapeError(f"reshape: cannot reshape {shape_str(t.shape)} to {shape_str(shape)} "
                         f"({numel(t.shape)} vs {numel(shape)} elements)", where)
    return TensorType(shape, t.dtype)


def _permute(op, inputs, attrs, where):
    (t,) = inputs
    perm = tuple(attrs["perm"])
    if sorted(perm) != list(range(t.rank)):
        raise ShapeError(f"permute: {perm} is not a permutation of the axes of {shape_str(t.shape)}", where)
    return TensorType(tuple(t.shape[p] for p in perm), t.dtype)


def _expand(op, inputs, attrs, where):
    (t,) = inputs
    shape = tuple(attrs["shape"])
    if len(shape) != t.rank or any(s != d and s != 1 for s, d in zip(t.shape, shape)):
        raise ShapeError(f"expand: cannot expand {shape_str(t.shape)} to {shape_str(shape)}", where)
    return TensorType(shape, t.dtype)


def _slice(op, inputs, attrs, where):
    (t,) = inputs
    starts, stops, steps = attrs["starts"], attrs["stops"], attrs["steps"]
    if not len(starts) == len(stops) == len(steps) == t.rank:
        raise ShapeError(f"slice: needs one start/stop/step per axis of {shape_str(t.shape)}", where)
    out = []
    for lo, hi, st in zip(starts, stops, steps):
        if isinstance(st, Dim) or st <= 0:
            raise ShapeError(f"slice: steps must be positive ints, got {st}", where)
        out.append(hi - lo if st == 1 else (hi - lo + st - 1) // st)
    return TensorType(tuple(out), t.dtype)


def _concat(op, inputs, attrs, where):
    if not inputs:
        raise ShapeError("concat: no inputs", where)
    rank = inputs[0].rank
    axis = norm_axis(attrs["axis"], rank, op, where)
    total = 0
    for t in inputs:
        if t.rank != rank or any(d != e for i, (d, e) in enumerate(zip(t.shape, inputs[0].shape)) if i != axis):
            raise ShapeError(f"concat: shapes {_shapes(inputs)} differ off axis {axis}", where)
        if t.dtype != inputs[0].dtype:
            raise DTypeError(f"concat: dtypes differ ({', '.join(str(t.dtype) for t in inputs)})", where)
        total = total + t.shape[axis]
    shape = list(inputs[0].shape)
    shape[axis] = total
    return TensorType(tuple(shape), inputs[0].dtype)


def _gather(op, inputs, attrs, where):
    x, idx = inputs
    if not idx.dtype.is_int:
        raise DTypeError(f"gather: indices must be integers, got {idx.dtype}", where)
    axis = norm_axis(attrs["axis"], x.rank, op, where)
    return TensorType(x.shape[:axis] + idx.shape + x.shape[axis + 1:], x.dtype)


def _pad(op, inputs, attrs, where):
    (t,) = inputs
    pads = attrs["pads"]
    if len(pads) != t.rank:
        raise ShapeError(f"pad: needs (lo, hi) for each axis of {shape_str(t.shape)}", where)
    return TensorType(tuple(d + lo + hi for d, (lo, hi) in zip(t.shape, pads)), t.dtype)


def _scatter(op, inputs, attrs, where):
    dest, index, values = inputs
    axis = norm_axis(attrs["axis"], dest.rank, op, where)
    if not index.dtype.is_int:
        raise DTypeError(f"scatter: indices must be integers, got {index.dtype}", where)
    if values.dtype != dest.dtype:
        raise DTypeError(f"scatter: values are {values.dtype}, the destination {dest.dtype}", where)
    if (values.rank != dest.rank or index.shape != values.shape[:axis + 1]
            or values.shape[:axis] != dest.shape[:axis] or values.shape[axis + 1:] != dest.shape[axis + 1:]):
        raise ShapeError(f"scatter: destination, index and values {_shapes(inputs)} do not fit along axis {axis}",
                         where)
    return dest


def _collective(op, inputs, attrs, where):
    if not isinstance(attrs["size"], int) or attrs["size"] < 1:
        raise ShapeError(f"{op}: a group's size is a positive integer, got {attrs['size']!r}", where)
    if not inputs[0].dtype.is_float:
        raise DTypeError(f"{op}: sums floats, got {inputs[0].dtype}", where)
    return inputs[0]


_CLASS_RULES: dict[OpClass, Rule] = {
    OpClass.SOURCE: _source, OpClass.UNARY: _unary, OpClass.BINARY: _binary,
    OpClass.TERNARY: _where, OpClass.CAST: _cast, OpClass.REDUCE: _reduce,
    OpClass.MATMUL: _matmul, OpClass.CONV: _conv, OpClass.POOL: _pool, OpClass.SCATTER: _scatter,
    OpClass.COLLECTIVE: _collective,
}
_RULES: dict[Op, Rule] = {
    Op.RESHAPE: _reshape, Op.PERMUTE: _permute, Op.EXPAND: _expand, Op.SLICE: _slice,
    Op.CONCAT: _concat, Op.GATHER: _gather, Op.PAD: _pad,
}
