"""GraphBuilder: appends typed nodes to a Graph, making broadcasts and casts explicit.

Frontends and lowerings never build `Node`s by hand; they call the builder, which
runs shape inference on every node so that a bad graph fails where it is built,
with the symbol path of what built it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np

from dnet.core.dtypes import DType, promote
from dnet.core.shapes import Dim, shape_str
from dnet.core.types import TensorType
from dnet.errors import ShapeError, WeightError
from dnet.graph.infer import infer, norm_axis
from dnet.graph.ir import Graph, Node
from dnet.graph.ops import Op



class Value(int):
    """A node id handed out by the builder; distinct from a Python int scalar operand."""

    def __repr__(self) -> str:
        return f"%{int(self)}"


class GraphBuilder:
    def __init__(self) -> None:
        self.graph = Graph()
        self._scope: list[str] = []

    # -- naming -----------------------------------------------------------------
    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Nodes built inside carry `name` in their symbol path (for errors and inspection)."""
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    @contextmanager
    def at(self, path: str) -> Iterator[None]:
        """Like `scope`, but `path` is absolute: it replaces the enclosing scopes instead of extending them."""
        saved, self._scope = self._scope, [path] if path else []
        try:
            yield
        finally:
            self._scope = saved

    @property
    def where(self) -> str:
        return ".".join(self._scope)

    # -- core -------------------------------------------------------------------
    def node(self, op: Op, inputs: Sequence[Value] = (), **attrs: Any) -> Value:
        types = [self.graph.nodes[i].type for i in inputs]
        out = infer(op, types, attrs, self.where)
        node = Node(len(self.graph.nodes), op, tuple(int(i) for i in inputs), attrs, out, self.where)
        self.graph.nodes.append(node)
        return Value(node.id)

    def type(self, v: Value) -> TensorType:
        return self.graph.nodes[v].type

    def shape(self, v: Value) -> tuple:
        return self.graph.nodes[v].type.shape

    def dtype(self, v: Value) -> DType:
        return self.graph.nodes[v].type.dtype

    # -- sources ----------------------------------------------------------------
    def input(self, name: str, type: TensorType) -> Value:
        v = self.node(Op.INPUT, name=name, shape=type.shape, dtype=type.dtype)
        self.graph.inputs.append(int(v))
        return v

    def state(self, name: str, type: TensorType) -> Value:
        """An input the caller keeps across calls and SCATTER writes in place (a KV cache)."""
        v = self.node(Op.STATE, name=name, shape=type.shape, dtype=type.dtype)
        self.graph.inputs.append(int(v))
        return v

    def scatter(self, dest: Value, index: Value, values: Value, axis: int) -> Value:
        return self.node(Op.SCATTER, [dest, index, values], axis=axis)

    def block_const(self, name: str, storage: np.ndarray, dtype: DType, shape: Sequence[int]) -> Value:
        """A weight kept in a block format (`dnet.core.quant`): uint8 `storage` of logical `shape`."""
        from dnet.core.quant import storage_shape

        if tuple(storage.shape) != storage_shape(dtype, tuple(shape)) or storage.dtype != np.uint8:
            raise WeightError(f"weight '{name}': {dtype} storage {storage.dtype}{tuple(storage.shape)} does not "
                              f"hold shape {tuple(shape)}", self.where)
        self.graph.weights[name] = storage
        return self.node(Op.CONST, name=name, shape=tuple(shape), dtype=dtype)

    def const(self, name: str, array: np.ndarray) -> Value:
        """A weight. The same name twice must be the same array (one node is reused)."""
        array = np.ascontiguousarray(array)
        known = self.graph.weights.get(name)
        if known is not None:
            if known is not array and (known.dtype != array.dtype or not np.array_equal(known, array)):
                raise WeightError(f"weight '{name}' defined twice with different values", self.where)
            for n in self.graph.nodes:
                if n.op is Op.CONST and n.attrs["name"] == name:
                    return Value(n.id)
        self.graph.weights[name] = array
        return self.node(Op.CONST, name=name, shape=tuple(array.shape), dtype=DType.from_numpy(array.dtype))

    def full(self, shape: Sequence, value: float | int | bool, dtype: DType) -> Value:
        return self.node(Op.FULL, shape=tuple(shape), value=_cast_scalar(value, dtype), dtype=dtype)

    def scalar(self, value: float | int | bool, dtype: DType) -> Value:
        return self.full((), value, dtype)

    def arange(self, stop, start=0, step=1, dtype: DType = DType.I64) -> Value:
        return self.node(Op.ARANGE, start=start, stop=stop, step=step, dtype=dtype)

    def output(self, name: str, v: Value) -> None:
        self.graph.outputs.append(int(v))
        self.graph.output_names.append(name)

    def finish(self) -> Graph:
        return self.graph

    # -- movement ---------------------------------------------------------------
    def reshape(self, x: Value, shape: Sequence) -> Value:
        shape = tuple(shape)
        if shape == self.shape(x):
            return x
        return self.node(Op.RESHAPE, [x], shape=shape)

    def permute(self, x: Value, perm: Sequence[int]) -> Value:
        rank = len(self.shape(x))
        perm = tuple(norm_axis(p, rank, "permute", self.where) for p in perm)
        if perm == tuple(range(len(perm))):
            return x
        return self.node(Op.PERMUTE, [x], perm=perm)

    def transpose(self, x: Value, a: int = -2, b: int = -1) -> Value:
        perm = list(range(len(self.shape(x))))
        a, b = (norm_axis(i, len(perm), "transpose", self.where) for i in (a, b))
        perm[a], perm[b] = perm[b], perm[a]
        return self.permute(x, perm)

    def expand(self, x: Value, shape: Sequence) -> Value:
        """Broadcast to `shape`, numpy style (adds leading axes first)."""
        shape = tuple(shape)
        cur = self.shape(x)
        if len(cur) > len(shape):
            raise ShapeError(f"cannot broadcast {shape_str(cur)} to {shape_str(shape)}", self.where)
        if len(cur) < len(shape):
            x = self.reshape(x, (1,) * (len(shape) - len(cur)) + cur)
        if self.shape(x) == shape:
            return x
        return self.node(Op.EXPAND, [x], shape=shape)

    def slice(self, x: Value, axis: int, start, stop, step: int = 1) -> Value:
        shape = self.shape(x)
        axis = norm_axis(axis, len(shape), "slice", self.where)
        starts = [0] * len(shape)
        stops = list(shape)
        steps = [1] * len(shape)
        starts[axis], stops[axis], steps[axis] = start, stop, step
        if start == 0 and stop == shape[axis] and step == 1:
            return x
        return self.node(Op.SLICE, [x], starts=tuple(starts), stops=tuple(stops), steps=tuple(steps))

    # -- element-wise with broadcasting and promotion ---------------------------
    def broadcast_shape(self, *shapes: tuple) -> tuple:
        rank = max(len(s) for s in shapes)
        out = []
        for i in range(rank):
            dims = {s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0}
            dims.discard(1)
            if len(dims) > 1:
                raise ShapeError(
                    "shapes " + " and ".join(shape_str(s) for s in shapes) + " do not broadcast", self.where)
            out.append(dims.pop() if dims else 1)
        return tuple(out)

    def elementwise(self, op: Op, *args: Value | float | int | bool) -> Value:
        """An element-wise op on tensors and Python scalars, with numpy-style broadcasting."""
        tensors = [a for a in args if _is_value(a)]
        if not tensors:
            raise ShapeError(f"{op}: needs at least one tensor argument", self.where)
        dtype = self._result_dtype(op, args)
        shape = self.broadcast_shape(*(self.shape(t) for t in tensors))
        vals = []
        for i, a in enumerate(args):
            want = DType.BOOL if (op is Op.WHERE and i == 0) else dtype
            if _is_value(a):
                vals.append(self.expand(self.cast(a, want), shape))
            else:  # a scalar becomes a fill of the result's shape: kernels read it as a constant
                vals.append(self.full(shape, a, want))
        return self.node(op, vals)

    def _result_dtype(self, op: Op, args) -> DType:
        operands = args[1:] if op is Op.WHERE else args
        dtype: DType | None = None
        for a in operands:
            if _is_value(a):
                dtype = self.dtype(a) if dtype is None else promote(dtype, self.dtype(a))
        if dtype is None:
            raise ShapeError(f"{op}: needs a tensor operand", self.where)
        if any(isinstance(a, float) for a in operands) and not dtype.is_float:
            dtype = DType.F32
        return dtype

    def cast(self, x: Value, dtype: DType) -> Value:
        return x if self.dtype(x) == dtype else self.node(Op.CAST, [x], dtype=dtype)

    def unary(self, op: Op, x: Value) -> Value:
        return self.node(op, [x])

    # -- reductions and contractions --------------------------------------------
    def reduce(self, op: Op, x: Value, axes: Sequence[int] | int | None = None, keepdim: bool = False) -> Value:
        rank = len(self.shape(x))
        if axes is None:
            axes = range(rank)
        elif isinstance(axes, int):
            axes = [axes]
        axes = tuple(sorted({norm_axis(a, rank, op, self.where) for a in axes})) if rank else ()
        return self.node(op, [x], axes=axes, keepdim=keepdim)

    def matmul(self, a: Value, b: Value) -> Value:
        """numpy matmul semantics, 1-D operands included."""
        sa, sb = self.shape(a), self.shape(b)
        if len(sa) == 1:
            return self._squeeze_axis(self.matmul(self.reshape(a, (1,) + sa), b), -2)
        if len(sb) == 1:
            return self._squeeze_axis(self.matmul(a, self.reshape(b, sb + (1,))), -1)
        dtype = promote(self.dtype(a), self.dtype(b))
        return self.node(Op.MATMUL, [self.cast(a, dtype), self.cast(b, dtype)])

    def _squeeze_axis(self, x: Value, axis: int) -> Value:
        shape = list(self.shape(x))
        del shape[axis]
        return self.reshape(x, shape)


def _is_value(a: Any) -> bool:
    return isinstance(a, Value)


def _cast_scalar(value, dtype: DType):
    if isinstance(value, Dim):
        return value
    if dtype.is_float:
        return float(value)
    if dtype is DType.BOOL:
        return bool(value)
    return int(value)
