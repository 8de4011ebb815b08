"""One check every backend makes on an input before binding it: only a safe cast."""
from __future__ import annotations

from typing import Any

import numpy as np

from dnet.core.dtypes import DType
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
