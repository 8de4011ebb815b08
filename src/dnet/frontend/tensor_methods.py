"""PyTorch-style operators and methods on traced tensors.

Importing this module attaches them to `dnet.frontend.trace.Tensor` (the `dnet`
package imports it), so model code reads as it would in PyTorch:
`(q @ k.transpose(-2, -1) / 8).softmax(-1)`, `x[:, 0]`, `mask[:, None, None, :]`.
Each method records the same operation as its `dnet.functional` counterpart.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from dnet.core.dtypes import DType
from dnet.errors import DnetError, DTypeError, ShapeError
from dnet.frontend import functional as F
from dnet.frontend.trace import SymInt, Tensor, user_location


class MaxResult(NamedTuple):
    """What `x.max(dim)` returns, as in PyTorch."""
    values: Tensor
    indices: Tensor


def _dtype(dtype: Any) -> DType:
    if isinstance(dtype, DType):
        return dtype
    if isinstance(dtype, str):
        return DType.parse(dtype)
    return DType.from_numpy(np.dtype(dtype))


# -- arithmetic and comparison operators ---------------------------------------------------
def _true_div(a: Any, b: Any) -> Tensor:
    """`/` is true division, as in PyTorch: integer tensors are divided as f32."""
    def as_float(v):
        return F.cast(v, DType.F32) if isinstance(v, Tensor) and not v.dtype.is_float else v
    return F.div(as_float(a), as_float(b))


def _floor_div(a: Any, b: Any) -> Tensor:
    quotient = F.div(a, b)
    return F.floor(quotient) if quotient.dtype.is_float else quotient


_OPERATORS = {
    "__add__": F.add, "__sub__": F.sub, "__mul__": F.mul, "__truediv__": _true_div,
    "__floordiv__": _floor_div, "__mod__": F.remainder, "__pow__": F.pow,
    "__matmul__": F.matmul, "__and__": F.logical_and, "__or__": F.logical_or,
}


def _attach_operators() -> None:
    for name, fn in _OPERATORS.items():
        setattr(Tensor, name, lambda self, other, fn=fn: fn(self, other))
        setattr(Tensor, name.replace("__", "__r", 1), lambda self, other, fn=fn: fn(other, self))
    comparisons = {"__eq__": F.eq, "__ne__": F.ne, "__lt__": F.lt, "__le__": F.le, "__gt__": F.gt, "__ge__": F.ge}
    for name, fn in comparisons.items():
        setattr(Tensor, name, lambda self, other, fn=fn: fn(self, other))
    Tensor.__neg__ = lambda self: F.neg(self)
    Tensor.__pos__ = lambda self: self
    Tensor.__abs__ = lambda self: F.abs(self)
    Tensor.__invert__ = lambda self: F.logical_not(self)
    Tensor.__hash__ = object.__hash__  # tensors are keys by identity, as in PyTorch


# -- indexing ----------------------------------------------------------------------------------
def _normalise_index(x: Tensor, index: Any) -> list:
    """The index as a list of ints, slices and Nones, with `...` expanded and missing axes added."""
    items = list(index) if isinstance(index, tuple) else [index]
    if sum(i is Ellipsis for i in items) > 1:
        raise ShapeError("an index can hold only one '...'", user_location())
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    if consumed > x.ndim:
        raise ShapeError(f"too many indices ({consumed}) for a tensor of rank {x.ndim}", user_location())
    rest = [slice(None)] * (x.ndim - consumed)
    for at, item in enumerate(items):  # by identity: `in` would compare traced values with ==
        if item is Ellipsis:
            return items[:at] + rest + items[at + 1:]
    return items + rest


def _bound(value: Any, size: Any) -> Any:
    """A negative start/stop counts from the end of the axis."""
    return size + value if isinstance(value, int) and value < 0 else value


def _axis_slice(s: slice, size: Any) -> tuple[Any, Any, int]:
    step = 1 if s.step is None else s.step
    if not isinstance(step, int) or step <= 0:
        raise ShapeError(f"slice step must be a positive int, got {step} (PyTorch has no negative steps either)",
                         user_location())
    if isinstance(size, int) and all(isinstance(v, (int, type(None))) for v in (s.start, s.stop)):
        start, stop, _ = s.indices(size)  # Python's clamping for static sizes
        return start, max(stop, start), step
    start = 0 if s.start is None else _bound(s.start, size)
    stop = size if s.stop is None else _bound(s.stop, size)
    return start, stop, step


def _position(i: Any, size: Any) -> Any:
    if isinstance(i, int) and isinstance(size, int) and not -size <= i < size:
        raise ShapeError(f"index {i} is out of range for an axis of size {size}", user_location())
    return _bound(i, size)


def getitem(x: Tensor, index: Any) -> Tensor:
    """Basic indexing: ints, slices, `None` and `...`; or one integer tensor (rows, as `embedding`).

    It becomes at most one SLICE (the window on every axis) and one RESHAPE (dropping the
    int-indexed axes and inserting the `None` ones).
    """
    if isinstance(index, Tensor):
        if not index.dtype.is_int:
            raise DTypeError(f"a tensor index must hold integers, got {index.dtype}", user_location(),
                             "boolean masks are not supported; use where")
        return F.record("gather", [x, index], {"axis": 0})
    items = _normalise_index(x, index)
    shape = list(x.shape)
    starts, stops, steps = [0] * x.ndim, list(shape), [1] * x.ndim
    axis = 0
    for item in items:
        if item is None:
            continue
        if isinstance(item, slice):
            starts[axis], stops[axis], steps[axis] = _axis_slice(item, shape[axis])
        elif isinstance(item, (int, SymInt)) and not isinstance(item, bool):
            starts[axis] = _position(item, shape[axis])
            stops[axis] = starts[axis] + 1
        else:
            raise ShapeError(f"unsupported index {item!r}", user_location(),
                             "use ints, slices, None, ... or one integer tensor")
        axis += 1
    y = x
    if (starts, stops, steps) != ([0] * x.ndim, shape, [1] * x.ndim):
        y = F.record("slice", [x], {"starts": tuple(starts), "stops": tuple(stops), "steps": tuple(steps)})
    if all(isinstance(item, slice) for item in items):
        return y
    sliced = iter(y.shape)
    final = []
    for item in items:
        if item is None:
            final.append(1)
        elif isinstance(item, slice):
            final.append(next(sliced))
        else:
            next(sliced)
    return F.reshape(y, final)


# -- methods -------------------------------------------------------------------------------
def _shape_args(shape: tuple) -> tuple:
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (list, tuple)) else shape


def _reduction(fn):
    def method(self, dim=None, keepdim: bool = False):
        return fn(self, dim, keepdim)
    return method


def _max(self: Tensor, dim: Any = None, keepdim: bool = False):
    """`x.max()`: the maximum; `x.max(dim)`: (values, indices); `x.max(other)`: element-wise maximum."""
    if isinstance(dim, Tensor):
        return F.maximum(self, dim)
    if dim is None:
        return F.amax(self)
    return MaxResult(F.amax(self, dim, keepdim), F.argmax(self, dim, keepdim))


def _min(self: Tensor, dim: Any = None, keepdim: bool = False):
    if isinstance(dim, Tensor):
        return F.minimum(self, dim)
    if dim is None:
        return F.amin(self)
    return MaxResult(F.amin(self, dim, keepdim), F.argmax(F.neg(self), dim, keepdim))


def _clamp(self: Tensor, min: Any = None, max: Any = None) -> Tensor:  # noqa: A002 - PyTorch's names
    y = self if min is None else F.maximum(self, min)
    return y if max is None else F.minimum(y, max)


def _std(self: Tensor, dim=None, keepdim: bool = False, correction: int = 1) -> Tensor:
    return F.sqrt(F.var(self, dim, keepdim, correction))


def _argmax(self: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Without `dim`, the index into the flattened tensor, as in PyTorch."""
    return F.argmax(F.reshape(self, (-1,)), 0) if dim is None else F.argmax(self, dim, keepdim)


def _len(self: Tensor) -> int:
    if self.ndim == 0:
        raise DnetError("len() of a 0-d tensor", user_location())
    size = self.type.shape[0]
    if not isinstance(size, int):
        raise DnetError(f"len() of a tensor with leading size {size}: only static sizes are Python ints",
                        user_location())
    return size


def _iter(self: Tensor):
    return (self[i] for i in range(len(self)))


def _expand(self: Tensor, *shape) -> Tensor:
    return F.expand(self, _shape_args(shape))


def _T(self: Tensor) -> Tensor:  # noqa: N802 - PyTorch's name
    return F.permute(self, tuple(reversed(range(self.ndim))))


_METHODS = {
    # shape and layout
    "reshape": lambda self, *shape: F.reshape(self, _shape_args(shape)),
    "view": lambda self, *shape: F.reshape(self, _shape_args(shape)),
    "permute": lambda self, *dims: F.permute(self, _shape_args(dims)),
    "transpose": lambda self, a, b: F.transpose(self, a, b),
    "unsqueeze": F.unsqueeze, "squeeze": F.squeeze, "flatten": F.flatten, "expand": _expand,
    "expand_as": lambda self, other: F.expand(self, other.shape),
    "view_as": lambda self, other: F.reshape(self, other.shape),
    "contiguous": lambda self: self,  # layout is the compiler's business
    "narrow": F.narrow, "__getitem__": getitem, "__len__": _len, "__iter__": _iter,
    # dtype
    "to": lambda self, dtype: F.cast(self, _dtype(dtype)),
    "type_as": lambda self, other: F.cast(self, other.dtype),
    "float": lambda self: F.cast(self, DType.F32), "half": lambda self: F.cast(self, DType.F16),
    "bfloat16": lambda self: F.cast(self, DType.BF16), "long": lambda self: F.cast(self, DType.I64),
    "int": lambda self: F.cast(self, DType.I32), "bool": lambda self: F.cast(self, DType.BOOL),
    # element-wise
    "exp": F.exp, "log": F.log, "sqrt": F.sqrt, "rsqrt": F.rsqrt, "reciprocal": F.reciprocal, "tanh": F.tanh,
    "erf": F.erf, "sin": F.sin, "cos": F.cos, "abs": F.abs, "floor": F.floor, "sigmoid": F.sigmoid,
    "relu": F.relu, "neg": F.neg, "pow": F.pow, "clamp": _clamp, "masked_fill": F.masked_fill,
    "add": F.add, "sub": F.sub, "mul": F.mul, "div": _true_div, "matmul": F.matmul,
    "maximum": F.maximum, "minimum": F.minimum, "logical_not": F.logical_not,
    # reductions
    "sum": _reduction(F.sum), "mean": _reduction(F.mean), "amax": _reduction(F.amax), "amin": _reduction(F.amin),
    "max": _max, "min": _min, "argmax": _argmax,
    "var": lambda self, dim=None, keepdim=False, correction=1: F.var(self, dim, keepdim, correction),
    "std": _std,
    "softmax": lambda self, dim=-1: F.softmax(self, dim),
    "log_softmax": lambda self, dim=-1: F.log_softmax(self, dim),
}


def _attach() -> None:
    _attach_operators()
    for name, fn in _METHODS.items():
        setattr(Tensor, name, fn)
    Tensor.T = property(_T)
    Tensor.mT = property(lambda self: F.transpose(self, -2, -1))


_attach()
