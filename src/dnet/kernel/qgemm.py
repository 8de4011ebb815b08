"""Matmuls against weights kept in GGUF block formats: `QMatmul` statements.

The graph spells a quantized linear layer as `matmul(x, permute(cast(W, f32)))`, W a CONST of
a block dtype with shape (n, k): its rows are the weight's output features, each a run of
whole blocks. The cast is never given a buffer (that would expand the weight to f32); instead
the matmul becomes one `QMatmul`, which reads the blocks as they are stored, and the
element-wise ops after it (a residual add, SiLU times the up projection) become its epilogue.
"""
from __future__ import annotations

from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.graph.ir import Graph
from dnet.graph.ops import Op
from dnet.kernel import index as ix
from dnet.kernel.gemm import _axes, _builder, _element, _view, operand_view
from dnet.kernel.ir import Cast, Kernel, Load, Operand, QMatmul, Ref
from dnet.kernel.lower import Materialize, V, _finish, first_computed


def is_dequant(graph: Graph, nid: int) -> bool:
    """A cast of a block-dtype tensor to a float: free to inline anywhere, never a buffer of its own."""
    node = graph.nodes[nid]
    return node.op is Op.CAST and graph.nodes[node.inputs[0]].dtype.is_block


def quant_weight(graph: Graph, nid: int, materialized: set[int], users) -> int | None:
    """The block-dtype CONST node when matmul right operand `nid` (k, n) is exactly the f32
    transpose of a whole (n, k) block weight; else None."""
    node = graph.nodes[nid]
    if len(node.shape) != 2 or node.dtype is not DType.F32:
        return None
    got = _element(graph, nid, materialized, users)
    if got is None or not isinstance(got[2], Cast) or not isinstance(got[2].x, Load) or len(got[0].params) != 1:
        return None
    b, names, e = got
    view = _view(b, names, e.x)
    if view is None:
        return None
    const = graph.nodes[view[0]]
    if const.op is not Op.CONST or not const.dtype.is_block or len(const.shape) != 2:
        return None
    n, k = const.shape
    if tuple(node.shape) != (k, n) or view[1] != 0 or list(view[2]) != [1, k]:
        return None
    return const.id


def lower_qmatmul(graph: Graph, root: int, mm: int, weight: int, materialized: set[int], users) -> Kernel:
    """The kernel computing `root`, an element-wise function of matmul `mm` (or `mm` itself), whose
    right operand is the block weight `weight`."""
    node = graph.nodes[mm]
    a_id = node.inputs[0]
    view = operand_view(graph, a_id, materialized, users)
    rows = node.shape[:-1]
    n, k = graph.nodes[weight].shape
    if view is None or view[2][-1] != 1 or not _rows_fold(view[2], graph.nodes[a_id].shape):
        raise Materialize(first_computed(graph, a_id, materialized),
                          "a quantized matmul reads its activations as contiguous rows")
    builder = _builder(graph, root, materialized, users)
    pa = builder.param(view[0])
    pw = builder.param(weight)
    m = 1
    for d in rows:
        m = m * d
    names = _axes(builder, [m, n])
    row = Sym(names[0])
    idx = tuple(ix.delinearize(row, tuple(rows), builder.bounds)) + (Sym(names[1]),) if len(rows) > 1 \
        else (row, Sym(names[1]))
    builder.cache[(mm, idx)] = V(Ref("acc", DType.F32), 0)
    epilogue = builder.value(root, idx).expr
    a = Operand(pa, DType.F32, view[1], (), view[2][-2], 1)
    stmt = QMatmul(m, n, k, a, pw, graph.nodes[weight].dtype, "out", (names[0], names[1]), epilogue,
                   tuple(builder.scopes[0].stmts))
    return _finish(builder, graph.nodes[root], (stmt,))


def _rows_fold(strides: list, shape: tuple) -> bool:
    """Whether the leading axes of a strided view run on as one sequence of rows (row i at i * stride)."""
    row_stride = strides[-2] if len(shape) > 1 else 0
    expected = row_stride
    for d, s in zip(reversed(shape[:-1]), reversed(strides[:-1])):
        if d != 1 and s != expected:
            return False
        expected = expected * d
    return True
