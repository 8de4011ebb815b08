"""Interprets graph IR node by node with numpy.

Semantics every other backend must reproduce: f16/bf16 values are computed in f32
and rounded to their storage type after each op; integer division floors; symbolic
dims are bound from the input shapes.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
from scipy import special

from dnet.core.dtypes import DType
from dnet.core.quant import dequantize
from dnet.core.shapes import Dim, evaluate_shape, substitute
from dnet.errors import ShapeError
from dnet.graph.ir import Graph, Node
from dnet.graph.ops import Op
from dnet.program.binding import InputBinder
from dnet.program.collective import Collective, missing_collective
from dnet.program.inputs import check_gather_indices


def bind_symbols(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Symbol values from the actual input shapes; a clear error for a wrong or missing input
    (`program.binding`, the check every backend makes)."""
    return InputBinder.of_graph(graph).bind(inputs, cast=False).env


def run_graph(graph: Graph, inputs: Mapping[str, np.ndarray],
              collective: Collective | None = None) -> dict[str, np.ndarray]:
    """The graph's outputs; `collective` sums an ALL_REDUCE's partials over its group (`program.collective`)."""
    env = bind_symbols(graph, inputs)
    values: list[np.ndarray | None] = [None] * len(graph.nodes)
    for node in graph.nodes:
        args = [values[i] for i in node.inputs]
        if node.op is Op.ALL_REDUCE:
            out = _all_reduce(args[0], node, collective)
        else:
            out = _eval(node, args, graph, inputs, env)
        values[node.id] = np.asarray(out).astype(node.dtype.np, copy=False)
    return {name: values[i] for name, i in zip(graph.output_names, graph.outputs)}


def _v(x: Any, env: Mapping[str, int]) -> Any:
    """Evaluate a symbolic attribute (a dim, or a tuple of them)."""
    if isinstance(x, Dim):
        return int(substitute(x, env))
    if isinstance(x, (list, tuple)):
        return type(x)(_v(e, env) for e in x)
    return x


def _compute(x: np.ndarray) -> np.ndarray:
    """Half types are computed in f32."""
    return x.astype(np.float32) if x.dtype.kind == "f" and x.dtype.itemsize < 4 or x.dtype.name == "bfloat16" else x


_UNARY: dict[Op, Callable] = {
    Op.NEG: np.negative, Op.EXP: np.exp, Op.LOG: np.log, Op.SQRT: np.sqrt,
    Op.RECIP: lambda x: np.reciprocal(x), Op.TANH: np.tanh, Op.ERF: special.erf, Op.SIN: np.sin,
    Op.COS: np.cos, Op.ABS: np.abs, Op.FLOOR: np.floor, Op.NOT: np.logical_not,
}
_BINARY: dict[Op, Callable] = {
    Op.ADD: np.add, Op.SUB: np.subtract, Op.MUL: np.multiply, Op.POW: np.power,
    Op.MAX: np.maximum, Op.MIN: np.minimum, Op.MOD: np.mod, Op.EQ: np.equal, Op.NE: np.not_equal,
    Op.LT: np.less, Op.LE: np.less_equal, Op.AND: np.logical_and, Op.OR: np.logical_or,
}


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        return np.floor_divide(a, b)
    return np.divide(a, b)


def _eval(node: Node, args: list, graph: Graph, inputs: Mapping[str, np.ndarray], env) -> np.ndarray:
    op, a = node.op, {k: _v(v, env) for k, v in node.attrs.items()}
    if op is Op.INPUT:
        return np.asarray(inputs[a["name"]])
    if op is Op.STATE:
        return _state(inputs[a["name"]], node)
    if op is Op.SCATTER:
        return _scatter(*args, a["axis"], in_place=graph.nodes[node.inputs[0]].op is Op.STATE)
    if op is Op.CONST:
        return graph.weights[a["name"]]
    if op is Op.FULL:
        return np.full(evaluate_shape(a["shape"], env), a["value"], dtype=node.dtype.np)
    if op is Op.ARANGE:
        return np.arange(a["start"], a["stop"], a["step"])
    with np.errstate(all="ignore"):  # inf/nan propagate as IEEE says, as in the C backend
        if op in _UNARY:
            return _UNARY[op](_compute(args[0]))
        if op in _BINARY:
            return _BINARY[op](_compute(args[0]), _compute(args[1]))
        if op is Op.DIV:
            return _div(_compute(args[0]), _compute(args[1]))
        if op is Op.WHERE:
            return np.where(args[0], _compute(args[1]), _compute(args[2]))
        if op is Op.CAST:
            source = graph.nodes[node.inputs[0]]
            if source.dtype.is_block:
                return dequantize(args[0], source.dtype, evaluate_shape(source.shape, env))
            return _cast(args[0], node.dtype)
        if op is Op.SUM:
            x = _compute(args[0])
            return np.sum(x, axis=a["axes"], keepdims=a["keepdim"], dtype=x.dtype)
        if op in (Op.REDUCE_MAX, Op.REDUCE_MIN):
            return _extremum(op, args[0], a["axes"], a["keepdim"])
        if op is Op.ARGMAX:
            return np.argmax(args[0], axis=a["axis"], keepdims=a["keepdim"])
        if op is Op.MATMUL:
            return np.matmul(_compute(args[0]), _compute(args[1]))
        if op is Op.CONV2D:
            return _conv2d(_compute(args[0]), _compute(args[1]), **a)
        if op in (Op.MAXPOOL2D, Op.AVGPOOL2D):
            return _pool2d(op, _compute(args[0]), **a)
    return _movement(op, args, a)


def _extremum(op: Op, x: np.ndarray, axes: tuple[int, ...], keepdim: bool) -> np.ndarray:
    """max/min over axes; over an empty axis the reduction's identity (-inf for a max), which is where the
    compiled backends' accumulators start, so a softmax over nothing is empty there and here alike."""
    reduce = np.max if op is Op.REDUCE_MAX else np.min
    if all(x.shape[axis] for axis in axes):
        return reduce(x, axis=axes, keepdims=keepdim)
    if x.dtype.kind == "f":
        initial = -np.inf if op is Op.REDUCE_MAX else np.inf
    elif x.dtype.kind == "b":
        initial = op is Op.REDUCE_MIN
    else:
        info = np.iinfo(x.dtype)
        initial = info.min if op is Op.REDUCE_MAX else info.max
    return reduce(x, axis=axes, keepdims=keepdim, initial=initial)


def _all_reduce(x: np.ndarray, node: Node, collective: Collective | None) -> np.ndarray:
    group, size = node.attrs["group"], node.attrs["size"]
    if size == 1:
        return x
    if collective is None:
        raise missing_collective(group, size)
    total = np.array(x, dtype=node.dtype.np, order="C")   # a copy: the collective writes the sum into it
    collective(group, total)
    return total


def _state(array: np.ndarray, node: Node) -> np.ndarray:
    """The caller's own array, which SCATTER writes in place: never a copy."""
    if not isinstance(array, np.ndarray) or array.dtype != node.dtype.np or not array.flags.c_contiguous \
            or not array.flags.writeable:
        raise ShapeError(f"state '{node.attrs['name']}' must be a writeable C-contiguous {node.dtype} numpy array")
    return array


def _scatter(dest: np.ndarray, index: np.ndarray, values: np.ndarray, axis: int, in_place: bool) -> np.ndarray:
    out = dest if in_place else dest.copy()
    size = dest.shape[axis]
    if index.size and (index.min() < 0 or index.max() >= size):
        raise ShapeError(f"scatter: index out of range [0, {size})")
    lead = np.indices(index.shape, sparse=True)
    out[(*lead[:axis], index)] = values
    return out


def _cast(x: np.ndarray, dtype: DType) -> np.ndarray:
    if dtype.is_int and x.dtype.kind == "f":
        x = np.trunc(x)  # C semantics: truncate towards zero
    return x.astype(dtype.np)


def _movement(op: Op, args: list, a: dict) -> np.ndarray:
    x = args[0]
    if op is Op.RESHAPE:
        return x.reshape(a["shape"])
    if op is Op.PERMUTE:
        return np.transpose(x, a["perm"])
    if op is Op.EXPAND:
        return np.broadcast_to(x, a["shape"])
    if op is Op.SLICE:
        return x[tuple(slice(lo, hi, st) for lo, hi, st in zip(a["starts"], a["stops"], a["steps"]))]
    if op is Op.CONCAT:
        return np.concatenate(args, axis=a["axis"])
    if op is Op.GATHER:
        idx = args[1]
        size = x.shape[a["axis"]]
        check_gather_indices(idx, size)
        return np.take(x, idx, axis=a["axis"])
    if op is Op.PAD:
        return np.pad(x, a["pads"], constant_values=a["value"])
    raise NotImplementedError(f"reference backend: no rule for {op}")  # the op set is closed


def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int = 1, dw: int = 1) -> np.ndarray:
    """(N, C, OH, OW, kh, kw) view of the windows of a padded NCHW tensor."""
    n, c, h, w = x.shape
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (w - dw * (kw - 1) - 1) // sw + 1
    s = x.strides
    return np.lib.stride_tricks.as_strided(
        x, (n, c, oh, ow, kh, kw), (s[0], s[1], s[2] * sh, s[3] * sw, s[2] * dh, s[3] * dw), writeable=False)


def _conv2d(x, w, stride, padding, dilation, groups) -> np.ndarray:
    top, left, bottom, right = padding
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    o, cg, kh, kw = w.shape
    outs = []
    for g in range(groups):
        xg = x[:, g * cg:(g + 1) * cg]
        wg = w[g * (o // groups):(g + 1) * (o // groups)]
        win = _windows(xg, kh, kw, stride[0], stride[1], dilation[0], dilation[1])
        outs.append(np.einsum("nchwij,ocij->nohw", win, wg, optimize=True))
    return np.concatenate(outs, axis=1)


def _pool2d(op: Op, x, kernel, stride, padding, count_include_pad=True) -> np.ndarray:
    top, left, bottom, right = padding
    pads = ((0, 0), (0, 0), (top, bottom), (left, right))
    if op is Op.MAXPOOL2D:
        xp = np.pad(x, pads, constant_values=-np.inf)
        return _windows(xp, *kernel, *stride).max(axis=(-2, -1))
    xp = np.pad(x, pads)
    sums = _windows(xp, *kernel, *stride).sum(axis=(-2, -1))
    if count_include_pad:
        return sums / (kernel[0] * kernel[1])
    ones = np.pad(np.ones(x.shape[2:], x.dtype), pads[2:])[None, None]
    return sums / _windows(ones, *kernel, *stride).sum(axis=(-2, -1))
