"""The rules: one entry per core-ATen overload, saying which dnet operations build it.

A rule is called as `rule(node, *args, **kwargs)` with the FX node's arguments, in
which earlier nodes are already traced dnet values (`Tensor`, `SymInt`, Python
numbers). `node` (a `NodeInfo`) carries what torch inferred for the output, its
dtype above all: torch's type promotion differs from dnet's, so arithmetic rules
compute in the dtype torch says the result has.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from dnet.core.dtypes import DType
from dnet.errors import UnsupportedOpError
from dnet.frontend import functional as F
from dnet.frontend.trace import Tensor, record


@dataclass(frozen=True)
class NodeInfo:
    """What torch.export recorded about one node's output."""
    target: str
    dtype: DType | None  # of the (first) tensor output
    shape: tuple | None


@dataclass(frozen=True)
class Missing:
    """An output dnet does not compute (max_pool2d's indices, batch norm's saved statistics)."""
    what: str


Rule = Callable[..., Any]
_BIG = 2 ** 62  # torch writes an open slice end as sys.maxsize


def _as(node: NodeInfo, x: Any) -> Any:
    """x in the node's output dtype (Python scalars are left to the op)."""
    return F.cast(x, node.dtype) if isinstance(x, Tensor) and x.dtype != node.dtype else x


def _unsupported(node: NodeInfo, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"{node.target}: {why}")


def _axes(x: Tensor, dims: Any) -> tuple[int, ...] | None:
    """torch's reduction dims (None or [] = all) as normalised axes."""
    if dims is None or (isinstance(dims, (list, tuple)) and not dims):
        return None
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    return tuple(d % x.ndim for d in dims)


def _product(sizes: Sequence[Any]) -> Any:
    out: Any = 1
    for s in sizes:
        out = out * s
    return out


# -- element-wise ----------------------------------------------------------------------------------------
def unary(op: str) -> Rule:
    return lambda n, x: record(op, [_as(n, x)])


def binary(op: str, swap: bool = False) -> Rule:
    """An arithmetic op computed in the output dtype; `swap` for rsub-style reversed operands."""
    def rule(n, a, b, alpha=1):
        if alpha != 1:
            b = record("mul", [_as(n, b), alpha])
        a, b = (b, a) if swap else (a, b)
        return record(op, [_as(n, a), _as(n, b)])
    return rule


def compare(op: str, swap: bool = False) -> Rule:
    return lambda n, a, b: record(op, [b, a] if swap else [a, b])


def logical(op: str) -> Rule:
    def rule(n, *args):
        if any(isinstance(a, Tensor) and a.dtype is not DType.BOOL for a in args):
            raise _unsupported(n, "bitwise operations are supported on bool tensors only")
        return record(op, list(args))
    return rule


def _div_mode(n, a, b, rounding_mode=None):
    if rounding_mode is None:
        return binary("div")(n, a, b)
    if rounding_mode == "floor":
        q = record("div", [_as(n, a), _as(n, b)])  # dnet's integer division already floors
        return F.floor(q) if n.dtype.is_float else q
    raise _unsupported(n, f"rounding_mode='{rounding_mode}'")


def _where(n, cond, a, b):
    return record("where", [cond, _as(n, a), _as(n, b)])


def _clamp(n, x, min=None, max=None):  # noqa: A002 - torch's names
    x = _as(n, x)
    if min is not None:
        x = F.maximum(x, min)
    if max is not None:
        x = F.minimum(x, max)
    return x


def _leaky_relu(n, x, negative_slope=0.01):
    return F.where(F.lt(0.0, x), x, F.mul(x, negative_slope))


def _gelu(n, x, approximate="none"):
    return F.gelu(x, approximate)


# -- reductions --------------------------------------------------------------------------------------
def _sum(n, x, dim=None, keepdim=False, dtype=None):
    return F.sum(_as(n, x), _axes(x, dim), keepdim)


def _mean(n, x, dim=None, keepdim=False, dtype=None):
    return F.mean(_as(n, x), _axes(x, dim), keepdim)


def _var(n, x, dim=None, correction=None, keepdim=False):
    return F.var(_as(n, x), _axes(x, dim), keepdim, 1 if correction is None else correction)


def _reduce(fn: Callable) -> Rule:
    return lambda n, x, dim=(), keepdim=False: fn(x, _axes(x, dim), keepdim)


def _any(n, x, dim=None, keepdim=False):
    """Whether any element is non-zero: a count of them, compared with zero."""
    count = F.sum(F.cast(F.ne(x, 0) if x.dtype is not DType.BOOL else x, DType.I64), _axes(x, dim), keepdim)
    return F.ne(count, 0)


def _all(n, x, dim=None, keepdim=False):
    zero = F.eq(x, 0) if x.dtype is not DType.BOOL else F.logical_not(x)
    return F.logical_not(_any(n, zero, dim, keepdim))


def _max_dim(n, x, dim, keepdim=False):
    return F.amax(x, dim, keepdim), F.argmax(x, dim, keepdim)


def _min_dim(n, x, dim, keepdim=False):
    return F.amin(x, dim, keepdim), F.argmax(F.neg(x), dim, keepdim)


def _argmax(n, x, dim=None, keepdim=False):
    if dim is None:
        return F.argmax(F.reshape(x, (-1,)), 0)
    return F.argmax(x, dim, keepdim)


def _softmax(n, x, dim, half_to_float=False):
    return F.softmax(x, dim)


def _log_softmax(n, x, dim, half_to_float=False):
    return F.log_softmax(x, dim)


def _safe_softmax(n, x, dim, dtype=None):
    """softmax, but a row that is all -inf gives zeros instead of NaNs."""
    empty = F.eq(F.amax(x, dim, keepdim=True), float("-inf"))
    return F.where(empty, 0.0, F.softmax(x, dim))


def _cumsum(n, x, dim, dtype=None):
    """sum of x[..., j] over j <= i: a triangular mask and a sum, in primitives."""
    x = _as(n, x)
    axis = dim % x.ndim
    last = F.transpose(x, axis, -1) if axis != x.ndim - 1 else x
    size = last.shape[-1]
    rows = F.reshape(F.arange(size), (size, 1))
    keep = F.le(F.reshape(F.arange(size), (1, size)), rows)
    out = F.sum(F.where(keep, F.unsqueeze(last, -2), 0), -1)
    return F.transpose(out, axis, -1) if axis != x.ndim - 1 else out


# -- contractions and layers -------------------------------------------------------------------------
def _matmul(n, a, b):
    return F.matmul(a, b)


def _addmm(n, bias, a, b, beta=1, alpha=1):
    product = F.matmul(a, b)
    if alpha != 1:
        product = F.mul(product, alpha)
    return F.add(F.mul(bias, beta) if beta != 1 else bias, product)


def _linear(n, x, weight, bias=None):
    return F.linear(x, weight, bias)


def _layer_norm(n, x, normalized_shape, weight=None, bias=None, eps=1e-5):
    ndim = len(normalized_shape)
    axes = tuple(range(x.ndim - ndim, x.ndim))
    mean = F.mean(x, axes, keepdim=True)
    rstd = F.rsqrt(F.add(F.var(x, axes, keepdim=True, correction=0), eps))
    return F.layer_norm(x, weight, bias, eps, ndim), mean, rstd


def _batch_norm(n, x, weight, bias, running_mean, running_var, momentum, eps):
    """Inference batch norm over axis 1: (x - mean) * weight / sqrt(var + eps) + bias."""
    per_channel = (-1,) + (1,) * (x.ndim - 2)
    scale = F.rsqrt(F.add(running_var, eps))
    if weight is not None:
        scale = F.mul(scale, weight)
    y = F.mul(F.sub(x, F.reshape(running_mean, per_channel)), F.reshape(scale, per_channel))
    if bias is not None:
        y = F.add(y, F.reshape(bias, per_channel))
    saved = Missing("the saved statistics of batch norm")
    return y, saved, saved


def _convolution(n, x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    if transposed:
        raise _unsupported(n, "transposed convolution")
    if x.ndim == 3:  # conv1d as a conv2d of height 1
        y = _convolution(n, F.unsqueeze(x, 2), F.unsqueeze(weight, 2), bias, [1, *stride], [0, *padding],
                         [1, *dilation], False, output_padding, groups)
        return F.squeeze(y, 2)
    if x.ndim != 4:
        raise _unsupported(n, f"{x.ndim - 2}-d convolution")
    return F.conv2d(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups)


def _max_pool2d(n, x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    if ceil_mode or _pair(dilation) != (1, 1):
        raise _unsupported(n, "max pooling with ceil_mode or dilation")
    y = F.max_pool2d(x, _pair(kernel_size), _pair(stride or kernel_size), _pair(padding))
    return y, Missing("the indices of max_pool2d_with_indices")


def _avg_pool2d(n, x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
                divisor_override=None):
    if ceil_mode or divisor_override is not None:
        raise _unsupported(n, "average pooling with ceil_mode or divisor_override")
    return F.avg_pool2d(x, _pair(kernel_size), _pair(stride or kernel_size), _pair(padding), count_include_pad)


def _adaptive_avg_pool2d(n, x, output_size):
    """Even windows become one avg_pool2d; uneven ones, torch's windows one by one."""
    (h, w), (oh, ow) = x.shape[2:], tuple(output_size)
    if not all(isinstance(d, int) for d in (h, w)):
        raise _unsupported(n, "adaptive pooling over symbolic spatial dims")
    if h % oh == 0 and w % ow == 0:
        return F.avg_pool2d(x, (h // oh, w // ow), (h // oh, w // ow), 0)
    rows = []
    for i in range(oh):
        r0, r1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        cells = [F.mean(F.slice_axis(F.slice_axis(x, 2, r0, r1), 3, (j * w) // ow, -((-(j + 1) * w) // ow)),
                        (2, 3), keepdim=True) for j in range(ow)]
        rows.append(F.cat(cells, 3))
    return F.cat(rows, 2)


def _pair(v: Any) -> tuple:
    v = tuple(v) if isinstance(v, (list, tuple)) else (v,)
    return v * 2 if len(v) == 1 else v


def _constant_pad(n, x, pad, value=0):
    if any(isinstance(p, int) and p < 0 for p in pad):
        raise _unsupported(n, "negative padding (cropping)")
    return F.pad(x, list(pad), value)


# -- movement ------------------------------------------------------------------------------------------
def _identity(n, x, *args, **kwargs):
    return x


def _view(n, x, size):
    return F.reshape(x, list(size))


def _expand(n, x, size, implicit=False):
    return F.expand(x, list(size))


def _permute(n, x, dims):
    return F.permute(x, list(dims))


def _transpose(n, x, dim0=0, dim1=1):
    return F.transpose(x, dim0, dim1) if x.ndim > 1 else x


def _unsqueeze(n, x, dim):
    return F.unsqueeze(x, dim)


def _squeeze(n, x, dims=None):
    if dims is None:
        return F.squeeze(x)
    dims = [dims] if isinstance(dims, int) else dims
    keep = [s for i, s in enumerate(x.shape) if not (i in {d % x.ndim for d in dims} and s == 1)]
    return F.reshape(x, keep)


def _to_copy(n, x, dtype=None, **_):
    return F.cast(x, n.dtype)


def _bound(v: Any, size: Any, default: Any) -> Any:
    """A slice bound as torch reads it: None is the default, negatives count from the end, clamped."""
    if v is None:
        return default
    if isinstance(v, int) and v < 0:
        v = size + v
        return max(v, 0) if isinstance(v, int) else v
    if isinstance(v, int) and (v >= _BIG or (isinstance(size, int) and v > size)):
        return size
    return v


def _slice(n, x, dim=0, start=None, end=None, step=1):
    size = x.shape[dim]
    return F.slice_axis(x, dim, _bound(start, size, 0), _bound(end, size, size), step)


def _select(n, x, dim, index):
    size = x.shape[dim]
    start = size + index if isinstance(index, int) and index < 0 else index
    shape = list(x.shape)
    del shape[dim % x.ndim]
    return F.reshape(F.slice_axis(x, dim, start, start + 1), shape)


def _cat(n, tensors, dim=0):
    return F.cat([_as(n, t) for t in tensors], dim)


def _split_with_sizes(n, x, split_sizes, dim=0):
    out, start = [], 0
    for size in split_sizes:
        out.append(F.slice_axis(x, dim, start, start + size))
        start = start + size
    return out


def _split(n, x, split_size, dim=0):
    total = x.shape[dim]
    if not isinstance(total, int) or not isinstance(split_size, int):
        raise _unsupported(n, "splitting a symbolic dim")
    return _split_with_sizes(n, x, [min(split_size, total - s) for s in range(0, total, split_size)], dim)


def _unbind(n, x, dim=0):
    if not isinstance(x.shape[dim], int):
        raise _unsupported(n, "unbinding a symbolic dim")
    return [_select(n, x, dim, i) for i in range(x.shape[dim])]


def _repeat(n, x, repeats):
    """Tile: a new axis of size r before each axis, expanded, then merged."""
    x = F.reshape(x, [1] * (len(repeats) - x.ndim) + list(x.shape))
    interleaved = [d for s in x.shape for d in (1, s)]
    tiled = F.expand(F.reshape(x, interleaved), [d for r, s in zip(repeats, x.shape) for d in (r, s)])
    return F.reshape(tiled, [r * s for r, s in zip(repeats, x.shape)])


def _embedding(n, weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    return F.embedding(indices, weight)


def _index_select(n, x, dim, index):
    return record("gather", [x, index], {"axis": dim % x.ndim})


def _wrap(index: Tensor, size: Any) -> Tensor:
    """Negative indices count from the end, as in torch."""
    return F.where(F.lt(index, 0), F.add(index, size), index)


def _gather(n, x, dim, index, sparse_grad=False):
    """torch.gather: out[i][j] = x[i][index[i][j]] (dim=1), as a take from the flattened x."""
    dim %= x.ndim
    strides = [_product(x.shape[k + 1:]) for k in range(x.ndim)]
    flat = F.mul(index, strides[dim])  # torch.gather rejects negative indices: no wrapping
    for k in range(x.ndim):
        if k != dim:
            size = index.shape[k]
            position = F.reshape(F.arange(size), [size if i == k else 1 for i in range(x.ndim)])
            flat = F.add(flat, F.mul(position, strides[k]))
    return record("gather", [F.reshape(x, [_product(x.shape)]), flat], {"axis": 0})


def _index(n, x, indices):
    """x[i0, i1, ...] with integer index tensors (None: the whole axis), numpy's advanced indexing."""
    axes = [k for k, i in enumerate(indices) if i is not None]
    if any(indices[k].dtype is DType.BOOL for k in axes):
        raise _unsupported(n, "boolean mask indexing (its output size depends on the data)")
    rest = [k for k in range(x.ndim) if k not in axes]
    moved = F.permute(x, axes + rest) if axes + rest != list(range(x.ndim)) else x
    sizes = [x.shape[k] for k in axes]
    table = F.reshape(moved, [_product(sizes)] + [x.shape[k] for k in rest])
    flat = None
    for j, k in enumerate(axes):
        term = F.mul(_wrap(indices[k], x.shape[k]), _product(sizes[j + 1:]))
        flat = term if flat is None else F.add(flat, term)
    out = record("gather", [table, flat], {"axis": 0})
    contiguous = axes == list(range(axes[0], axes[-1] + 1))
    if not contiguous or axes[0] == 0:
        return out  # numpy puts the index dims first when the indexed axes are apart
    nb = out.ndim - len(rest)  # move the index dims to where the indexed axes were
    perm = list(range(nb, nb + axes[0])) + list(range(nb)) + list(range(nb + axes[0], out.ndim))
    return F.permute(out, perm)


# -- sources ---------------------------------------------------------------------------------------------
def _arange(n, *args, dtype=None, **_):
    """arange(end), arange(start, end), arange(start, end, step)."""
    start, end, step = (0, args[0], 1) if len(args) == 1 else (args[0], args[1], args[2] if len(args) > 2 else 1)
    if n.dtype.is_int and all(not isinstance(v, float) for v in (start, end, step)):
        return F.arange(end, start, step, dtype=n.dtype)
    count = n.shape[0]  # float steps: torch's own count, then start + i * step
    return F.add(F.mul(F.cast(F.arange(count), n.dtype), float(step)), float(start))


def _full(n, size, fill_value, **_):
    return F.full(list(size), fill_value, n.dtype)


def _full_like(n, x, fill_value, **_):
    return F.full(list(x.shape), fill_value, n.dtype)


def _scalar_tensor(n, value, **_):
    return F.full((), value, n.dtype)


# -- symbolic sizes --------------------------------------------------------------------------------------
def _sym_size(n, x, dim):
    return x.shape[dim]


def _sym_numel(n, x):
    return _product(x.shape)


def _python(fn: Callable) -> Rule:
    return lambda n, *args: fn(*args)


def _nothing(n, *args, **kwargs):
    """Runtime checks torch inserts (dtype asserts, size ranges): nothing to compute."""
    return None


RULES: dict[str, Rule] = {
    # element-wise
    "aten.add.Tensor": binary("add"), "aten.add.Scalar": binary("add"),
    "aten.sub.Tensor": binary("sub"), "aten.sub.Scalar": binary("sub"), "aten.rsub.Scalar": binary("sub", swap=True),
    "aten.rsub.Tensor": binary("sub", swap=True),
    "aten.mul.Tensor": binary("mul"), "aten.mul.Scalar": binary("mul"),
    "aten.div.Tensor": binary("div"), "aten.div.Scalar": binary("div"), "aten.div.Tensor_mode": _div_mode,
    "aten.pow.Tensor_Scalar": binary("pow"), "aten.pow.Tensor_Tensor": binary("pow"), "aten.pow.Scalar": binary("pow"),
    "aten.maximum.default": binary("max"), "aten.minimum.default": binary("min"),
    "aten.remainder.Tensor": binary("mod"), "aten.remainder.Scalar": binary("mod"),
    "aten.neg.default": unary("neg"), "aten.exp.default": unary("exp"), "aten.log.default": unary("log"),
    "aten.sqrt.default": unary("sqrt"), "aten.rsqrt.default": unary("rsqrt"),
    "aten.reciprocal.default": unary("recip"), "aten.tanh.default": unary("tanh"), "aten.erf.default": unary("erf"),
    "aten.sin.default": unary("sin"), "aten.cos.default": unary("cos"), "aten.abs.default": unary("abs"),
    "aten.floor.default": unary("floor"), "aten.sigmoid.default": unary("sigmoid"),
    "aten.relu.default": unary("relu"), "aten.silu.default": unary("silu"), "aten.gelu.default": _gelu,
    "aten.leaky_relu.default": _leaky_relu, "aten.clamp.default": _clamp, "aten.clamp.Tensor": _clamp,
    "aten.clamp_min.default": lambda n, x, m: _clamp(n, x, min=m),
    "aten.clamp_max.default": lambda n, x, m: _clamp(n, x, max=m),
    "aten.hardtanh.default": lambda n, x, lo=-1.0, hi=1.0: _clamp(n, x, lo, hi),
    "aten.where.self": _where,
    "aten.eq.Tensor": compare("eq"), "aten.eq.Scalar": compare("eq"),
    "aten.ne.Tensor": compare("ne"), "aten.ne.Scalar": compare("ne"),
    "aten.lt.Tensor": compare("lt"), "aten.lt.Scalar": compare("lt"),
    "aten.le.Tensor": compare("le"), "aten.le.Scalar": compare("le"),
    "aten.gt.Tensor": compare("lt", swap=True), "aten.gt.Scalar": compare("lt", swap=True),
    "aten.ge.Tensor": compare("le", swap=True), "aten.ge.Scalar": compare("le", swap=True),
    "aten.logical_not.default": logical("not"), "aten.bitwise_not.default": logical("not"),
    "aten.logical_and.default": logical("and"), "aten.bitwise_and.Tensor": logical("and"),
    "aten.logical_or.default": logical("or"), "aten.bitwise_or.Tensor": logical("or"),
    # reductions
    "aten.sum.dim_IntList": _sum, "aten.sum.default": _sum, "aten.mean.dim": _mean, "aten.mean.default": _mean,
    "aten.var.correction": _var, "aten.amax.default": _reduce(F.amax), "aten.amin.default": _reduce(F.amin),
    "aten.any.dim": _any, "aten.any.dims": _any, "aten.any.default": _any,
    "aten.all.dim": _all, "aten.all.dims": _all, "aten.all.default": _all,
    "aten.max.dim": _max_dim, "aten.min.dim": _min_dim, "aten.argmax.default": _argmax,
    "aten._softmax.default": _softmax, "aten._log_softmax.default": _log_softmax,
    "aten._safe_softmax.default": _safe_softmax, "aten.cumsum.default": _cumsum,
    # contractions and layers
    "aten.mm.default": _matmul, "aten.bmm.default": _matmul, "aten.matmul.default": _matmul,
    "aten.addmm.default": _addmm, "aten.baddbmm.default": _addmm, "aten.linear.default": _linear,
    "aten.native_layer_norm.default": _layer_norm,
    "aten._native_batch_norm_legit_no_training.default": _batch_norm,
    "aten.convolution.default": _convolution, "aten.max_pool2d_with_indices.default": _max_pool2d,
    "aten.avg_pool2d.default": _avg_pool2d, "aten._adaptive_avg_pool2d.default": _adaptive_avg_pool2d,
    "aten.constant_pad_nd.default": _constant_pad,
    # movement
    "aten.view.default": _view, "aten._unsafe_view.default": _view, "aten.reshape.default": _view,
    "aten.expand.default": _expand, "aten.permute.default": _permute, "aten.t.default": _transpose,
    "aten.transpose.int": _transpose, "aten.unsqueeze.default": _unsqueeze,
    "aten.squeeze.dim": _squeeze, "aten.squeeze.dims": _squeeze, "aten.squeeze.default": _squeeze,
    "aten.clone.default": _identity, "aten.alias.default": _identity, "aten.detach.default": _identity,
    "aten.lift_fresh_copy.default": _identity, "aten.dropout.default": _identity,
    "aten._to_copy.default": _to_copy, "aten.slice.Tensor": _slice, "aten.select.int": _select,
    "aten.cat.default": _cat, "aten.split_with_sizes.default": _split_with_sizes, "aten.split.Tensor": _split,
    "aten.unbind.int": _unbind, "aten.repeat.default": _repeat,
    "aten.embedding.default": _embedding, "aten.index_select.default": _index_select,
    "aten.gather.default": _gather, "aten.index.Tensor": _index,
    # sources
    "aten.arange.default": _arange, "aten.arange.start": _arange, "aten.arange.start_step": _arange,
    "aten.full.default": _full, "aten.full_like.default": _full_like, "aten.scalar_tensor.default": _scalar_tensor,
    # symbolic sizes and Python arithmetic on them
    "aten.sym_size.int": _sym_size, "aten.sym_numel.default": _sym_numel,
    "operator.getitem": _python(operator.getitem), "operator.add": _python(operator.add),
    "operator.sub": _python(operator.sub), "operator.mul": _python(operator.mul),
    "operator.floordiv": _python(operator.floordiv),
    # checks torch inserts
    "aten._assert_tensor_metadata.default": _nothing, "aten._assert_scalar.default": _nothing,
    "aten.sym_constrain_range_for_size.default": _nothing, "aten.sym_constrain_range.default": _nothing,
    "aten._assert_async.msg": _nothing,
}
