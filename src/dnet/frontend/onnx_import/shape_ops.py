"""Shape computations and movement: folded on static values, graph nodes on tensors.

Every rule here accepts static inputs (numpy arrays of ints and symbolic dims) and
folds them when it can, because this is how exporters spell shape arithmetic; on a
tensor it builds the movement op. Shape-like inputs (Reshape's shape, Slice's bounds,
axes) must be static: a shape computed from tensor data has no place in a graph with
static (symbolic) shapes.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from onnx import numpy_helper

from dnet.core.dtypes import DType
from dnet.core.shapes import Dim, exact_div, numel, shape_str
from dnet.errors import ShapeError, UnsupportedOpError
from dnet.frontend.onnx_import.context import Context, Input
from dnet.frontend.onnx_import.values import Missing, Static, dims_array, dtype_of, numpy_dtype, simplify
from dnet.graph.infer import norm_axis
from dnet.graph.ops import Op

_OPEN_END = 2 ** 31 - 1  # exporters write "to the end" as INT32_MAX or INT64_MAX


def constant(ctx: Context) -> Static:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in ctx.attrs:
            value = ctx.attrs[key]
            array = numpy_helper.to_array(value) if key == "value" else np.array(
                value, dtype=np.float32 if "float" in key else np.int64)
            return ctx.static_out(array)
    raise UnsupportedOpError(f"Constant with attributes {sorted(ctx.attrs)}",
                             hint="dnet reads value, value_float(s) and value_int(s)")


def shape(ctx: Context, x: Input) -> Static:
    dims = list(ctx.shape(x))
    start, end = ctx.attr("start", 0), ctx.attr("end", None)
    return ctx.static_out(dims_array(dims[start:end]))


def size(ctx: Context, x: Input) -> Static:
    return ctx.static_out(simplify(numel(ctx.shape(x))))


def identity(ctx: Context, x: Input) -> Input:
    return x


def dropout(ctx: Context, x: Input, *_: Input) -> tuple:
    """Inference: the identity; the mask output is not computed."""
    return x, Missing("Dropout's mask")


def cast(ctx: Context, x: Input) -> Input:
    to = ctx.attr("to")
    if isinstance(x, Static):
        if x.symbolic and np.dtype(numpy_dtype(to, "Cast")).kind in "iu":
            return ctx.static_out(x.array)  # dims stay dims in any integer type
        if not x.symbolic:
            return ctx.static_out(x.array.astype(numpy_dtype(to, "Cast")))
    return ctx.b.cast(ctx.tensor(x), dtype_of(to, "Cast"))


def gather(ctx: Context, data: Input, indices: Input) -> Input:
    axis = norm_axis(ctx.attr("axis", 0), ctx.rank(data), "Gather", ctx.b.where)
    size = ctx.shape(data)[axis]
    if isinstance(indices, Static) and not indices.symbolic and indices.array.size and indices.array.min() < 0:
        if isinstance(size, Dim):
            raise UnsupportedOpError("negative indices into a symbolic axis")
        indices = Static(np.where(indices.array < 0, indices.array + size, indices.array), indices.name)
    if isinstance(data, Static) and isinstance(indices, Static) and not indices.symbolic:
        return ctx.static_out(simplify(np.take(data.array, indices.array, axis=axis)))
    return ctx.node(Op.GATHER, [data, indices], axis=axis)


def unsqueeze(ctx: Context, x: Input, axes: Input = None) -> Input:
    dims, picked = list(ctx.shape(x)), ctx.axes(axes)
    rank = len(dims) + len(picked)
    for a in sorted(norm_axis(a, rank, "Unsqueeze", ctx.b.where) for a in picked):
        dims.insert(a, 1)
    return _reshaped(ctx, x, dims)


def squeeze(ctx: Context, x: Input, axes: Input = None) -> Input:
    dims = list(ctx.shape(x))
    picked = ctx.axes(axes)
    if picked is None:
        drop = {i for i, d in enumerate(dims) if isinstance(d, int) and d == 1}
    else:
        drop = {norm_axis(a, len(dims), "Squeeze", ctx.b.where) for a in picked}
    if any(dims[i] != 1 for i in drop):
        raise ShapeError(f"axes {sorted(drop)} of {shape_str(dims)} are not all of size 1")
    return _reshaped(ctx, x, [d for i, d in enumerate(dims) if i not in drop])


def reshape(ctx: Context, x: Input, target: Input) -> Input:
    src = ctx.shape(x)
    dims = ctx.ints(target, "shape")
    if not ctx.attr("allowzero", 0):
        dims = [src[i] if isinstance(d, int) and d == 0 else d for i, d in enumerate(dims)]
    if -1 in dims:
        known = numel(d for d in dims if not (isinstance(d, int) and d == -1))
        rest = exact_div(numel(src), known)
        if rest is None:
            raise ShapeError(f"cannot reshape {shape_str(src)} to {shape_str(dims)}")
        dims = [rest if isinstance(d, int) and d == -1 else d for d in dims]
    return _reshaped(ctx, x, dims)


def flatten(ctx: Context, x: Input) -> Input:
    dims = ctx.shape(x)
    axis = ctx.attr("axis", 1)
    axis = axis + len(dims) if axis < 0 else axis
    return _reshaped(ctx, x, [numel(dims[:axis]), numel(dims[axis:])])


def _reshaped(ctx: Context, x: Input, dims: list) -> Input:
    if isinstance(x, Static) and all(isinstance(d, int) for d in dims):
        return ctx.static_out(x.array.reshape(dims))
    return ctx.b.reshape(ctx.tensor(x), dims)


def transpose(ctx: Context, x: Input) -> Input:
    perm = ctx.attr("perm") or list(reversed(range(ctx.rank(x))))
    if isinstance(x, Static):
        return ctx.static_out(np.transpose(x.array, perm))
    return ctx.b.permute(x, perm)


def expand(ctx: Context, x: Input, target: Input) -> Input:
    out = ctx.b.broadcast_shape(tuple(ctx.shape(x)), tuple(ctx.ints(target, "shape")))
    if isinstance(x, Static) and all(isinstance(d, int) for d in out):
        return ctx.static_out(np.broadcast_to(x.array, out).copy())
    return ctx.b.expand(ctx.tensor(x), out)


def concat(ctx: Context, *xs: Input) -> Input:
    rank = ctx.rank(xs[0])
    axis = norm_axis(ctx.attr("axis"), rank, "Concat", ctx.b.where)
    xs = tuple(x for x in xs if not _empty_on(ctx, x, axis)) or xs[:1]
    if all(isinstance(x, Static) for x in xs):
        return ctx.static_out(simplify(np.concatenate([x.array for x in xs], axis=axis)))
    if len(xs) == 1:
        return ctx.tensor(xs[0])
    return ctx.node(Op.CONCAT, list(xs), axis=axis)


def _empty_on(ctx: Context, x: Input, axis: int) -> bool:
    size = ctx.shape(x)[axis]
    return isinstance(size, int) and size == 0


def slice_(ctx: Context, data: Input, starts: Input, ends: Input, axes: Input = None, steps: Input = None) -> Input:
    los, his = ctx.ints(starts, "starts"), ctx.ints(ends, "ends")
    rank = ctx.rank(data)
    picked = ctx.axes(axes) if axes is not None else list(range(len(los)))
    strides = ctx.ints(steps, "steps") if steps is not None else [1] * len(los)
    picked = [norm_axis(a, rank, "Slice", ctx.b.where) for a in picked]
    if isinstance(data, Static) and all(isinstance(v, int) for v in los + his):
        index = [slice(None)] * rank
        for a, lo, hi, st in zip(picked, los, his, strides):
            index[a] = slice(lo, hi, st)
        return ctx.static_out(data.array[tuple(index)])
    dims = ctx.shape(data)
    lo_all, hi_all, st_all = [0] * rank, list(dims), [1] * rank
    for a, lo, hi, st in zip(picked, los, his, strides):
        if not isinstance(st, int) or st <= 0:
            raise UnsupportedOpError(f"step {st} on a tensor (dnet slices with positive steps)")
        lo_all[a], hi_all[a], st_all[a] = _bound(lo, dims[a]), _bound(hi, dims[a]), st
    return ctx.b.node(Op.SLICE, [ctx.tensor(data)], starts=tuple(lo_all), stops=tuple(hi_all), steps=tuple(st_all))


def split(ctx: Context, x: Input, sizes: Input = None) -> tuple:
    """Parts along an axis: sizes given (an input, or an attribute before opset 13) or equal parts, the last
    one smaller when they do not divide evenly (opset 18's rule)."""
    rank = ctx.rank(x)
    axis = norm_axis(ctx.attr("axis", 0), rank, "Split", ctx.b.where)
    total = ctx.shape(x)[axis]
    parts = ctx.ints(sizes, "split") if sizes is not None else ctx.attr("split")
    if parts is None:
        n = ctx.attr("num_outputs", ctx.n_outputs)
        size = exact_div(total, n)
        if size is None and isinstance(total, Dim):
            raise UnsupportedOpError(f"splitting a symbolic axis of size {total} into {n} parts")
        size = size if size is not None else -(-total // n)
        parts = [size] * (n - 1) + [total - size * (n - 1)]
    outs, start = [], 0
    for part in parts:
        outs.append(_slice_axis(ctx, x, axis, start, start + part))
        start = start + part
    return tuple(outs)


def _slice_axis(ctx: Context, x: Input, axis: int, lo: Any, hi: Any) -> Input:
    if isinstance(x, Static) and isinstance(lo, int) and isinstance(hi, int):
        return ctx.static_out(x.array[(slice(None),) * axis + (slice(lo, hi),)])
    return ctx.b.slice(ctx.tensor(x), axis, lo, hi)


def _bound(v: Any, size: Any) -> Any:
    """A slice bound in [0, size]: negative counts from the end, an open end is the size."""
    if isinstance(v, Dim):
        return v  # a symbolic bound is taken to lie inside the axis, as exporters make it
    if v < 0:
        v = v + size
    if isinstance(size, int):
        return min(max(v, 0), size)
    return size if v >= _OPEN_END else v


def constant_of_shape(ctx: Context, target: Input) -> Input:
    dims = ctx.ints(target, "shape")
    value = ctx.attr("value")
    fill = numpy_helper.to_array(value).reshape(-1) if value is not None else np.zeros(1, np.float32)
    if all(isinstance(d, int) for d in dims):
        return ctx.static_out(np.full(dims, fill[0], dtype=fill.dtype))
    return ctx.b.full(dims, fill[0].item(), dtype_of(int(value.data_type) if value is not None else 1, "value"))


def range_(ctx: Context, start: Input, limit: Input, delta: Input) -> Input:
    arrays = [ctx.static(v, what).array for v, what in ((start, "start"), (limit, "limit"), (delta, "delta"))]
    if all(a.dtype != object for a in arrays):
        return ctx.static_out(np.arange(*(a.item() for a in arrays), dtype=arrays[0].dtype))
    lo, hi, step = (a.reshape(-1)[0] for a in arrays)
    if isinstance(lo, Dim) or isinstance(step, Dim):
        raise UnsupportedOpError("a symbolic start or delta", hint="dnet's arange has a symbolic stop only")
    dtype = DType.I64 if arrays[0].dtype == object else DType.from_numpy(arrays[0].dtype)
    return ctx.b.arange(hi, int(lo), int(step), dtype)


def pad(ctx: Context, x: Input, pads: Input = None, value: Input = None, axes: Input = None) -> Input:
    mode = ctx.attr("mode", "constant")
    if mode != "constant":
        raise UnsupportedOpError(f"Pad mode '{mode}'", hint="dnet pads with a constant")
    rank = ctx.rank(x)
    amounts = ctx.ints(pads, "pads")
    picked = ctx.axes(axes) if axes is not None else list(range(rank))
    per_axis = [(0, 0)] * rank
    for i, a in enumerate(picked):
        per_axis[norm_axis(a, rank, "Pad", ctx.b.where)] = (amounts[i], amounts[i + len(picked)])
    if any(isinstance(p, int) and p < 0 for pair in per_axis for p in pair):
        raise UnsupportedOpError("negative pads (cropping)")
    fill = ctx.static(value, "value").array.reshape(-1)[0].item() if value is not None else 0
    return ctx.b.node(Op.PAD, [ctx.tensor(x)], pads=tuple(per_axis), value=fill)


RULES = {
    "Constant": constant, "Shape": shape, "Size": size, "Identity": identity, "Dropout": dropout, "Cast": cast,
    "Gather": gather, "Unsqueeze": unsqueeze, "Squeeze": squeeze, "Reshape": reshape, "Flatten": flatten,
    "Transpose": transpose, "Expand": expand, "Concat": concat, "Slice": slice_,
    "ConstantOfShape": constant_of_shape, "Range": range_, "Pad": pad, "Split": split,
}
