"""A pooling kernel's geometry, for backends that render pools directly instead of their loop nest.

A max or average pool is lowered like any other kernel: a loop nest over the outputs with a small
reduction over the window and guarded loads (`kernel/lower.py`), which every backend can render and
which stays its definition. Where the pool's input is a strided view of one f32 buffer, the
scheduler also records the pool's geometry on the kernel (`kernel.meta["pool"]`), so that a backend
with a vectorised pool (the C backend's `backends/c/pool.py`) can render that instead; the others
ignore it.
"""
from __future__ import annotations

from dataclasses import dataclass

from dnet.core.dtypes import DType
from dnet.graph.ir import Graph
from dnet.graph.ops import Op
from dnet.kernel.ir import Index, Kernel


@dataclass(frozen=True)
class PoolGeometry:
    """out[n, c, oh, ow] = max (or mean) over the window of x[n, c, oh * sh + y - top, ow * sw + z - left]."""
    op: Op                          # MAXPOOL2D or AVGPOOL2D
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]            # top, left (the bottom and right ones follow from the output's size)
    count_include_pad: bool         # average pools: divide by the whole window, or by its part inside x
    height: Index                   # of the input
    width: Index
    out_shape: tuple[Index, Index, Index, Index]   # n, c, oh, ow (the output buffer is contiguous)
    buffer: str                     # the kernel parameter holding x
    offset: Index                   # x[n, c, h, w] lies at offset + n*s0 + c*s1 + h*s2 + w*s3
    strides: tuple[Index, Index, Index, Index]


def pool_geometry(graph: Graph, root: int, kernel: Kernel, materialized: set[int], users) -> PoolGeometry | None:
    """The geometry of pool `root` (lowered as `kernel`), when its input is a strided view of one f32
    buffer; else None."""
    from dnet.kernel.gemm import operand_view

    node = graph.nodes[root]
    if node.op not in (Op.MAXPOOL2D, Op.AVGPOOL2D) or node.dtype is not DType.F32:
        return None
    (x,) = node.inputs
    view = operand_view(graph, x, materialized, users)
    inputs = [p for p in kernel.params if not p.output]
    if view is None or len(inputs) != 1 or len(view[2]) != 4:
        return None
    top, left, _, _ = node.attrs["padding"]
    _, _, h, w = graph.nodes[x].shape
    return PoolGeometry(node.op, tuple(node.attrs["kernel"]), tuple(node.attrs["stride"]), (top, left),
                        bool(node.attrs.get("count_include_pad", False)), h, w, tuple(node.shape), inputs[0].name,
                        view[1], tuple(view[2]))
