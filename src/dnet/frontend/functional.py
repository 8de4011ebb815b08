"""Tensor operations for Python models (dnet.functional, imported as F), in PyTorch's spelling.

Each function records one object-IR operation on traced tensors. Axis arguments are
called `dim` as in PyTorch.
"""
from __future__ import annotations

from typing import Any, Sequence

from dnet.core.dtypes import DType
from dnet.core.shapes import exact_div
from dnet.errors import ShapeError, UnsupportedOpError
from dnet.frontend.trace import SymInt, Tensor, record, user_location
from dnet.graph.infer import norm_axis


def _ints(dims: Any) -> tuple:
    if isinstance(dims, (list, tuple)):
        if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = dims[0]
        return tuple(dims)
    return (dims,)


# -- element-wise -----------------------------------------------------------------------
def add(a, b): return record("add", [a, b])
def sub(a, b): return record("sub", [a, b])
def mul(a, b): return record("mul", [a, b])
def div(a, b): return record("div", [a, b])
def pow(a, b): return record("pow", [a, b])  # noqa: A001 - PyTorch's name
def remainder(a, b): return record("mod", [a, b])  # sign of b, as Python's and PyTorch's %
def maximum(a, b): return record("max", [a, b])
def minimum(a, b): return record("min", [a, b])
def neg(x): return record("neg", [x])
def exp(x): return record("exp", [x])
def log(x): return record("log", [x])
def sqrt(x): return record("sqrt", [x])
def rsqrt(x): return record("rsqrt", [x])
def reciprocal(x): return record("recip", [x])
def tanh(x): return record("tanh", [x])
def erf(x): return record("erf", [x])
def sin(x): return record("sin", [x])
def cos(x): return record("cos", [x])
def abs(x): return record("abs", [x])  # noqa: A001
def floor(x): return record("floor", [x])
def sigmoid(x): return record("sigmoid", [x])
def relu(x): return record("relu", [x])
def silu(x): return record("silu", [x])
def gelu(x, approximate: str = "none"): return record("gelu", [x], {"approximate": approximate})
def where(cond, a, b): return record("where", [cond, a, b])
def eq(a, b): return record("eq", [a, b])
def ne(a, b): return record("ne", [a, b])
def lt(a, b): return record("lt", [a, b])
def le(a, b): return record("le", [a, b])
def gt(a, b): return record("lt", [b, a])
def ge(a, b): return record("le", [b, a])
def logical_and(a, b): return record("and", [a, b])
def logical_or(a, b): return record("or", [a, b])
def logical_not(x): return record("not", [x])
def cast(x, dtype: DType | str): return record("cast", [x], {"dtype": DType.parse(dtype) if isinstance(dtype, str) else dtype})


# -- reductions --------------------------------------------------------------------------
def sum(x, dim=None, keepdim: bool = False):  # noqa: A001
    return record("sum", [x], {"axes": None if dim is None else _ints(dim), "keepdim": keepdim})


def mean(x, dim=None, keepdim: bool = False):
    return record("mean", [x], {"axes": None if dim is None else _ints(dim), "keepdim": keepdim})


def var(x, dim=None, keepdim: bool = False, correction: int = 1):
    return record("var", [x], {"axes": None if dim is None else _ints(dim), "keepdim": keepdim,
                               "correction": correction})


def amax(x, dim=None, keepdim: bool = False):
    return record("reduce_max", [x], {"axes": None if dim is None else _ints(dim), "keepdim": keepdim})


def amin(x, dim=None, keepdim: bool = False):
    return record("reduce_min", [x], {"axes": None if dim is None else _ints(dim), "keepdim": keepdim})


def argmax(x, dim: int = -1, keepdim: bool = False):
    return record("argmax", [x], {"axis": dim, "keepdim": keepdim})


def softmax(x, dim: int = -1): return record("softmax", [x], {"axis": dim})
def log_softmax(x, dim: int = -1): return record("log_softmax", [x], {"axis": dim})


# -- contractions and layers ----------------------------------------------------------------
def matmul(a, b): return record("matmul", [a, b])


def linear(x, weight, bias=None):
    return record("linear", [x, weight] + ([bias] if bias is not None else []))


def layer_norm(x, weight=None, bias=None, eps: float = 1e-5, ndim: int = 1):
    return record("layer_norm", [x, weight, bias], {"eps": eps, "ndim": ndim})


def rms_norm(x, weight=None, eps: float = 1e-6):
    return record("rms_norm", [x, weight], {"eps": eps})


def scaled_dot_product_attention(q, k, v, mask=None, scale: float | None = None, causal: bool = False):
    return record("scaled_dot_product_attention", [q, k, v, mask], {"scale": scale, "causal": causal})


def embedding(indices, table):
    return record("gather", [table, indices], {"axis": 0})


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1):
    y = record("conv2d", [x, weight], {"stride": _pair(stride), "padding": _pad4(padding),
                                       "dilation": _pair(dilation), "groups": groups})
    return y if bias is None else add(y, reshape(bias, (1, -1, 1, 1)))


def max_pool2d(x, kernel_size, stride=None, padding=0):
    return record("maxpool2d", [x], {"kernel": _pair(kernel_size), "stride": _pair(stride or kernel_size),
                                     "padding": _pad4(padding)})


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad: bool = True):
    return record("avgpool2d", [x], {"kernel": _pair(kernel_size), "stride": _pair(stride or kernel_size),
                                     "padding": _pad4(padding), "count_include_pad": count_include_pad})


def adaptive_avg_pool2d_1(x):
    """Global average pooling to 1x1."""
    return mean(x, dim=(2, 3), keepdim=True)


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def _pad4(p) -> tuple:
    """PyTorch padding (int, (h, w)) -> (top, left, bottom, right)."""
    if isinstance(p, int):
        return (p, p, p, p)
    if len(p) == 2:
        return (p[0], p[1], p[0], p[1])
    return tuple(p)


# -- movement ------------------------------------------------------------------------------
def reshape(x: Tensor, shape: Sequence) -> Tensor:
    shape = list(_ints(shape))
    if shape.count(-1) > 1:
        raise ShapeError(f"reshape: more than one -1 in {shape}", user_location())
    if -1 in shape:
        known = 1
        for d in shape:
            if not (isinstance(d, int) and d == -1):
                known = known * (d.value if isinstance(d, SymInt) else d)
        total = 1
        for d in x.type.shape:
            total = total * d
        rest = exact_div(total, known)
        if rest is None:
            raise ShapeError(f"reshape: cannot infer -1 in {shape} for shape {x.type.shape}", user_location())
        shape[shape.index(-1)] = rest
    return record("reshape", [x], {"shape": tuple(shape)})


def _axis(dim: int, rank: int, what: str) -> int:
    """PyTorch's `dim` (negative from the end) as an index; out of range, a ShapeError at the user's line."""
    return norm_axis(dim, rank, what, user_location())


def permute(x: Tensor, *dims) -> Tensor:
    return record("permute", [x], {"perm": tuple(_axis(d, x.ndim, "permute") for d in _ints(dims))})


def transpose(x: Tensor, a: int, b: int) -> Tensor:
    perm = list(range(x.ndim))
    a, b = _axis(a, x.ndim, "transpose"), _axis(b, x.ndim, "transpose")
    perm[a], perm[b] = perm[b], perm[a]
    return permute(x, perm)


def unsqueeze(x: Tensor, dim: int) -> Tensor:
    shape = list(x.shape)
    shape.insert(_axis(dim, x.ndim + 1, "unsqueeze"), 1)
    return reshape(x, shape)


def squeeze(x: Tensor, dim: int | None = None) -> Tensor:
    shape = list(x.shape)
    if dim is None:
        shape = [d for d in shape if not (isinstance(d, int) and d == 1)]
    else:
        dim = _axis(dim, x.ndim, "squeeze")
        if isinstance(shape[dim], int) and shape[dim] == 1:
            del shape[dim]
    return reshape(x, shape)


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    shape = list(x.shape)
    start, end = _axis(start_dim, x.ndim, "flatten"), _axis(end_dim, x.ndim, "flatten")
    merged = 1
    for d in shape[start:end + 1]:
        merged = merged * d
    return reshape(x, shape[:start] + [merged] + shape[end + 1:])


def expand(x: Tensor, *shape) -> Tensor:
    shape = list(_ints(shape))
    cur = list(x.shape)
    offset = len(shape) - len(cur)
    shape = [cur[i - offset] if (isinstance(s, int) and s == -1) else s for i, s in enumerate(shape)]
    return record("expand", [x], {"shape": tuple(shape)})


def cat(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    return record("concat", list(tensors), {"axis": dim})


def narrow(x: Tensor, dim: int, start, length) -> Tensor:
    return slice_axis(x, dim, start, start + length)


def slice_axis(x: Tensor, dim: int, start=0, stop=None, step: int = 1) -> Tensor:
    shape = list(x.shape)
    dim = _axis(dim, x.ndim, "slice")
    starts, stops, steps = [0] * x.ndim, list(shape), [1] * x.ndim
    size = shape[dim]
    if stop is None or (isinstance(stop, int) and isinstance(size, int) and stop > size):
        stop = size
    if isinstance(start, int) and start < 0:
        start = size + start
    if isinstance(stop, int) and stop < 0:
        stop = size + stop
    starts[dim], stops[dim], steps[dim] = start, stop, step
    return record("slice", [x], {"starts": tuple(starts), "stops": tuple(stops), "steps": tuple(steps)})


def pad(x: Tensor, pads: Sequence[int], value: float = 0.0) -> Tensor:
    """PyTorch order: (last_lo, last_hi, second_last_lo, ...)."""
    if len(pads) % 2 or len(pads) > 2 * x.ndim:
        raise ShapeError(f"pad: {tuple(pads)} is not (lo, hi) pairs for at most {x.ndim} axes", user_location())
    pairs = [(0, 0)] * x.ndim
    for i in range(len(pads) // 2):
        pairs[x.ndim - 1 - i] = (pads[2 * i], pads[2 * i + 1])
    return record("pad", [x], {"pads": tuple(pairs), "value": value})


def arange(end, start: int = 0, step: int = 1, dtype: DType = DType.I64) -> Tensor:
    return record("arange", [], {"start": start, "stop": end, "step": step, "dtype": dtype})


def full(shape: Sequence, value, dtype: DType = DType.F32) -> Tensor:
    return record("full", [], {"shape": tuple(_ints(shape)), "value": value, "dtype": dtype})


# -- helpers PyTorch models use ------------------------------------------------------------
def masked_fill(x: Tensor, mask: Tensor, value) -> Tensor:
    """x where mask is False, `value` where it is True."""
    return where(mask, value, x)


def normalize(x: Tensor, p: float = 2.0, dim: int = -1, eps: float = 1e-12) -> Tensor:
    """x / max(||x||_2, eps) along `dim` (p=2 only)."""
    if p != 2.0:
        raise UnsupportedOpError(f"normalize: only p=2 is supported, got p={p}", user_location())
    norm = sqrt(sum(mul(x, x), dim=dim, keepdim=True))
    return div(x, maximum(norm, eps))


def dropout(x: Tensor, p: float = 0.5, training: bool = False) -> Tensor:
    """Identity: dnet compiles for inference."""
    return x


def stack(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    return cat([unsqueeze(t, dim) for t in tensors], dim)
