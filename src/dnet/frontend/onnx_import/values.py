"""What an ONNX value is during import: known now (`Static`), or a node of the graph being built.

torch.onnx exports compute shapes with tensor ops (Shape, Gather, Concat, ...). Those
values are known at import time, up to the symbolic dims of the inputs, so they are
kept as numpy arrays and folded: an int64 array, or an object array whose elements are
ints and `Dim`s (`batch * seq`). Only values that depend on tensor data become graph
nodes; a `Static` becomes one (`materialize`) when an op needs it as a tensor.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from dnet.core.dtypes import DType
from dnet.core.shapes import Dim
from dnet.errors import DTypeError
from dnet.graph.builder import GraphBuilder, Value
from dnet.graph.ops import Op

# ONNX TensorProto element types dnet computes in (onnx.TensorProto.FLOAT, ...).
ONNX_DTYPES: dict[int, DType] = {1: DType.F32, 3: DType.I8, 6: DType.I32, 7: DType.I64, 9: DType.BOOL,
                                 10: DType.F16, 16: DType.BF16}
_NUMPY_OF_ONNX: dict[int, Any] = {**{k: v.np for k, v in ONNX_DTYPES.items()}, 11: np.float64, 2: np.uint8}


@dataclass
class Static:
    """A value known at import time; `name` is the ONNX name it is materialised under."""
    array: np.ndarray
    name: str
    node: Value | None = field(default=None, repr=False)  # the graph node, once materialised

    @property
    def symbolic(self) -> bool:
        return self.array.dtype == object


@dataclass(frozen=True)
class Missing:
    """An output dnet does not compute (a pool's indices, a norm's saved statistics)."""
    what: str


def dtype_of(elem_type: int, what: str) -> DType:
    if elem_type not in ONNX_DTYPES:
        raise DTypeError(f"ONNX element type {_type_name(elem_type)} of {what} has no dnet dtype",
                         hint="dnet has " + ", ".join(d.value for d in DType))
    return ONNX_DTYPES[elem_type]


def numpy_dtype(elem_type: int, what: str) -> Any:
    """The numpy dtype of an ONNX element type; f64 and u8 are allowed while a value stays static."""
    if elem_type not in _NUMPY_OF_ONNX:
        raise DTypeError(f"ONNX element type {_type_name(elem_type)} of {what} is not supported")
    return _NUMPY_OF_ONNX[elem_type]


def _type_name(elem_type: int) -> str:
    try:
        import onnx

        return onnx.TensorProto.DataType.Name(elem_type)
    except (ImportError, ValueError):
        return str(elem_type)


def dims_array(dims: Iterable[int | Dim]) -> np.ndarray:
    """A shape as a 1-D static array: int64 when every dim is a number, else an object array."""
    dims = list(dims)
    if all(isinstance(d, (int, np.integer)) for d in dims):
        return np.array(dims, dtype=np.int64)
    out = np.empty(len(dims), dtype=object)
    out[:] = [d if isinstance(d, Dim) else int(d) for d in dims]
    return out


def simplify(array: Any) -> np.ndarray:
    """An object array whose elements all became numbers is an int64 array again (numpy's
    indexing of an object array gives back a bare element: it is wrapped as a 0-d array)."""
    if not isinstance(array, np.ndarray):
        array, element = np.empty((), dtype=object), array
        array[()] = element
    if array.dtype == object and all(isinstance(v, (int, np.integer)) for v in array.flat):
        return array.astype(np.int64)
    return array


def dims_of(value: Static, what: str) -> list[int | Dim]:
    """A static 1-D (or 0-d) integer value as a list of dims."""
    array = value.array
    if array.dtype != object and array.dtype.kind not in "iu":
        raise DTypeError(f"{what} must be integers, got {array.dtype}")
    return [v if isinstance(v, Dim) else int(v) for v in array.reshape(-1)]


def materialize(b: GraphBuilder, value: Static) -> Value:
    """The graph node of a static value: a fill for one element, a weight for numbers, fills for dims."""
    if value.node is None:
        value.node = _build(b, value.array, value.name)
    return value.node


def _build(b: GraphBuilder, array: np.ndarray, name: str) -> Value:
    if array.dtype == object:
        parts = [b.full((1,), v, DType.I64) for v in array.reshape(-1)]
        flat = parts[0] if len(parts) == 1 else b.node(Op.CONCAT, parts, axis=0)
        return b.reshape(flat, array.shape)
    dtype = _dtype(array, name)
    if array.size == 1:
        return b.full(array.shape, array.reshape(-1)[0].item(), dtype)
    return b.const(name, array)


def _dtype(array: np.ndarray, name: str) -> DType:
    try:
        return DType.from_numpy(array.dtype)
    except DTypeError:  # its own message does not name the value
        raise DTypeError(f"value '{name}' has dtype {array.dtype}, which dnet does not compute") from None
