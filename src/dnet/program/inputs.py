"""The checks every backend makes on a call's inputs: only a safe cast, and gathers within their table."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from dnet.core.dtypes import DType
from dnet.core.shapes import Dim, bind_shape
from dnet.errors import DTypeError, ShapeError


def input_array(name: str, value: Any, dtype: DType) -> np.ndarray:
    """`value` as an array of `dtype`, when numpy casts it within the same kind (int64 to int32,
    float64 to float32, int to float); complex to float, float to int, strings and None are refused."""
    array = np.asarray(value)
    if array.dtype == dtype.np:
        return array
    if array.dtype.kind in "OUS" or not np.can_cast(array.dtype, dtype.np, "same_kind"):
        raise DTypeError(f"input '{name}' is {array.dtype}, which does not cast safely to {dtype}",
                         hint=f"pass a {dtype} array (or convert it yourself, e.g. x.astype(...))")
    return array


def check_gather_indices(indices: np.ndarray, size: int) -> None:
    """A gather's indices lie in [-size, size) on every backend (negative ones count from the end, as
    in numpy); past that the C kernels would clamp them."""
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise ShapeError(f"gather: index out of range for axis of size {size} "
                         f"(found {indices.min()}..{indices.max()})")


def gathered_inputs(graph: Any) -> dict[str, int]:
    """Inputs used (through casts and reshapes only) as a gather's indices, with the size of the axis
    they index where it is fixed: checked when bound, once per run, instead of inside the kernel."""
    from dnet.graph.ops import Op

    sizes: dict[str, int] = {}
    for node in graph.nodes:
        if node.op is not Op.GATHER:
            continue
        table = graph.nodes[node.inputs[0]].type.shape[node.attrs["axis"]]
        source = graph.nodes[node.inputs[1]]
        while source.op in (Op.CAST, Op.RESHAPE):
            source = graph.nodes[source.inputs[0]]
        if source.op is Op.INPUT and isinstance(table, int):
            name = source.attrs["name"]
            sizes[name] = min(table, sizes.get(name, table))
    return sizes


@dataclass(frozen=True)
class RangeGather:
    """A gather indexed by arange(start, stop, step), whose bounds may be dims (position ids: arange(seq)):
    its first and last index follow from the bound dims, so the check costs nothing per element."""
    start: int | Dim
    stop: int | Dim
    step: int | Dim
    size: int


@dataclass(frozen=True)
class GatherChecks:
    """What a compiled backend checks before each run, since its gather kernels clamp an index where the
    reference raises: inputs used as indices (their values), and aranges of dims used as indices."""
    inputs: dict[str, int] = field(default_factory=dict)
    ranges: tuple[RangeGather, ...] = ()
    shapes: dict[str, tuple] = field(default_factory=dict)   # the graph's input shapes, to bind dims

    @classmethod
    def of_graph(cls, graph: Any) -> "GatherChecks":
        return cls(gathered_inputs(graph), gathered_ranges(graph),
                   {graph.nodes[i].attrs["name"]: graph.nodes[i].shape for i in graph.inputs})

    def check(self, inputs: Mapping[str, Any]) -> None:
        for name, size in self.inputs.items():
            if name in inputs:
                check_gather_indices(np.asarray(inputs[name]), size)
        if not self.ranges:
            return
        env: dict[str, int] = {}
        for name, shape in self.shapes.items():
            if name in inputs:
                bind_shape(shape, np.shape(inputs[name]), env)   # a mismatch is the binder's error, later
        for r in self.ranges:
            start, stop, step = (_value(x, env) for x in (r.start, r.stop, r.step))
            if None in (start, stop, step) or step == 0:
                continue
            count = max(0, -(-(stop - start) // step))
            if count:
                check_gather_indices(np.array([start, start + step * (count - 1)]), r.size)


def _value(x: int | Dim, env: Mapping[str, int]) -> int | None:
    if isinstance(x, Dim):
        return x.evaluate(env) if x.free_symbols() <= env.keys() else None
    return int(x)


def gathered_ranges(graph: Any) -> tuple[RangeGather, ...]:
    """Gathers indexed (through casts, reshapes and broadcasts) by an arange, into an axis of fixed size."""
    from dnet.graph.ops import Op

    found = []
    for node in graph.nodes:
        if node.op is not Op.GATHER:
            continue
        table = graph.nodes[node.inputs[0]].type.shape[node.attrs["axis"]]
        source = graph.nodes[node.inputs[1]]
        while source.op in (Op.CAST, Op.RESHAPE, Op.EXPAND):
            source = graph.nodes[source.inputs[0]]
        bounds = (source.attrs.get("start"), source.attrs.get("stop"), source.attrs.get("step"))
        if source.op is Op.ARANGE and isinstance(table, int):
            found.append(RangeGather(*bounds, size=table))
    return tuple(found)
