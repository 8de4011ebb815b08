"""Low-precision Gemms: matmuls whose left operand is int8 activations quantized per row (from
`graph.passes.dynamic_quant`) or bf16 activations (from `graph.passes.bf16`), against a constant weight of the
same kind. They become a `Gemm` whose a is the int8 (bf16) rows read in place (an int8 one with its rows' step
and zero offset) and whose b is the weight packed at load time in groups along k; a backend renders it on its
dot-product units (`backends/c/igemm.py`). Any other form computes the f32 activations and an f32 Gemm.

Scheduling hooks (`kernel/schedule.py`): `operand_buffer` says what gets a buffer so that a Gemm can read such an
operand, `low_precision_nodes` what stays unbuffered however many Gemms read it.
"""
from __future__ import annotations

from dataclasses import replace

from dnet.core.dtypes import DType
from dnet.core.shapes import Sym, numel
from dnet.graph.ir import Graph
from dnet.graph.ops import Op, OpClass
from dnet.kernel import index as ix
from dnet.kernel.gemm import _axes, _builder, _element, _gemm_kernel, _view, packable
from dnet.kernel.ir import Cast, Gemm, GemmTile, Kernel, Load, Operand
from dnet.kernel.lower import KernelBuilder, Materialize, first_computed


def bf16_weight(graph: Graph, nid: int, materialized: set[int], users) -> tuple | None:
    """The bf16 view when the right operand `nid` is f32(W) of a constant bf16 weight (from
    `graph.passes.bf16`), which a Gemm keeps packed as bf16 pairs; else None."""
    got = _element(graph, nid, materialized, users)
    if got is None or not isinstance(got[2], Cast) or len(got[0].params) != 1:
        return None
    b, names, e = got
    if not (isinstance(e.x, Load) and e.x.dtype is DType.BF16):
        return None
    view = _view(b, names, e.x)
    return view if view is not None and packable(graph, view, graph.nodes[nid].shape) else None


def low_precision_rows(graph: Graph, nid: int) -> tuple[int, int | None] | None:
    """(q, p) when left operand `nid` is (f32(q) + z) * s, q int8 and z, s one per row, the slices of
    one (..., 2) tensor p of the rows' parameters (activations quantized by `graph.passes.dynamic_quant`);
    (q, None) when it is f32(q) of a computed bf16 q (from `graph.passes.bf16`); else None. A Gemm
    against a matching weight reads q (and p) as buffers."""
    node = graph.nodes[nid]
    if node.op is Op.CAST and node.dtype is DType.F32:
        source = graph.nodes[node.inputs[0]]
        return (source.id, None) if source.dtype is DType.BF16 and source.op is not Op.CONST else None
    if node.op is not Op.MUL or node.dtype is not DType.F32:
        return None
    for shifted, step in (node.inputs, node.inputs[::-1]):
        shifted, step = graph.nodes[shifted], graph.nodes[step]
        if shifted.op is not Op.ADD:
            continue
        for cast, zero in (shifted.inputs, shifted.inputs[::-1]):
            cast, zero = graph.nodes[cast], graph.nodes[zero]
            if cast.op is Op.CAST and graph.nodes[cast.inputs[0]].dtype is DType.I8:
                params = _row_parameters(graph, node, step, zero)
                if params is not None:
                    return cast.inputs[0], params
    return None


def _row_parameters(graph: Graph, node, step, zero) -> int | None:
    """p when `step` and `zero` are expand(p[..., 0:1]) and expand(p[..., 1:2]) of one (..., 2) tensor p
    (a row of one element needs no expand, and simplification removes it)."""
    parts = tuple(graph.nodes[x.inputs[0]] if x.op is Op.EXPAND else x for x in (step, zero))
    if any(p.op is not Op.SLICE for p in parts) or parts[0].inputs != parts[1].inputs:
        return None
    params = graph.nodes[parts[0].inputs[0]]
    if params.shape[:-1] != node.shape[:-1] or params.shape[-1] != 2:
        return None
    ok = all(p.attrs["starts"][-1] == i and p.attrs["steps"][-1] == 1 for i, p in enumerate(parts))
    return params.id if ok else None


def low_precision_nodes(graph: Graph, users) -> set[int]:
    """The nodes between low-precision activations (q, and p) and the Gemms that read them, where every
    reader is a matmul taking them as its left operand: computed inside each Gemm as it reads q, never
    given a buffer of their own however many Gemms read them (attention's q, k and v projections); and
    the product x * (1 / s) that a smoothed input's q and p are computed from."""
    inside: set[int] = set()
    for node in graph.nodes:
        low = low_precision_rows(graph, node.id) if node.op in (Op.MUL, Op.CAST) else None
        if low is None or not users[node.id] or not all(
                graph.nodes[u].op is Op.MATMUL and graph.nodes[u].inputs[0] == node.id
                and graph.nodes[u].inputs[1] != node.id for u in users[node.id]):
            continue
        stack = [node.id]
        while stack:
            x = stack.pop()
            if x not in low and x not in inside:
                inside.add(x)
                stack.extend(graph.nodes[x].inputs)
        source = _quantized_source(graph, low[0]) if low[1] is not None else None
        if source is not None and _unscaled(graph, source) != source:
            inside.add(source)   # a smoothed input's x * (1 / s): one multiply in each kernel that quantizes it
    return inside


def operand_buffer(graph: Graph, nid: int, right: bool, materialized: set[int]) -> int:
    """The node to give a buffer so that a Gemm can read operand `nid`: the int8 (or bf16) values and
    then the row parameters of low-precision activations, else the first computed node of `nid` itself."""
    low = None if right else low_precision_rows(graph, nid)
    if low is not None and low[1] is not None:
        # the activation quantized: read by the kernels of q and of p, each would inline (and so own) all
        # that computes it, and the first node they share would become a buffer (an embedding table)
        source = _unscaled(graph, _quantized_source(graph, low[0]))
        if source is not None and source not in materialized:
            return first_computed(graph, source, materialized)
    for x in low or ():
        if x is not None and x not in materialized:
            return x
    return first_computed(graph, nid, materialized)


def _unscaled(graph: Graph, source: int | None) -> int | None:
    """x when `source` is x * expand(constant) (an input smoothed by `graph.passes.smooth`), else `source`: x
    gets the buffer and the product is computed where it is quantized. Were the product the buffer, x (a
    norm's output, also read by the residual path) would be inlined into several kernels, and the scheduler
    would give buffers to everything below it first, down to the dequantized embedding table (MiniLM: 12 ms)."""
    node = graph.nodes[source] if source is not None else None
    if node is None or node.op is not Op.MUL:
        return source
    for x, scale in (node.inputs, node.inputs[::-1]):
        view = graph.nodes[scale]
        while view.op in (Op.EXPAND, Op.RESHAPE):
            view = graph.nodes[view.inputs[0]]
        if view.op is Op.CONST and graph.nodes[x].op.cls is not OpClass.SOURCE:
            return x
    return source


def _quantized_source(graph: Graph, q: int) -> int | None:
    """The activation whose rows int8 values `q` quantize: what the reductions of its range read."""
    stack, seen = [q], set()
    while stack:
        x = stack.pop()
        if x in seen:
            continue
        seen.add(x)
        node = graph.nodes[x]
        if node.op in (Op.REDUCE_MAX, Op.REDUCE_MIN):
            return node.inputs[0]
        if node.op.cls not in (OpClass.SOURCE, OpClass.MATMUL, OpClass.CONV):
            stack.extend(node.inputs)
    return None


def low_precision_view(graph: Graph, nid: int, materialized: set[int], users) -> tuple | None:
    """(q view, p view or None) of low-precision activations whose buffers exist, else None."""
    low = low_precision_rows(graph, nid)
    if low is None or any(x is not None and x not in materialized for x in low):
        return None
    b = KernelBuilder(graph, materialized, users)
    b.flat = True
    shape = graph.nodes[nid].shape
    names = [b.fresh("v") for _ in shape]
    for n, d in zip(names, shape):
        b.var_depth[n], b.bounds[n] = 0, d
    views = []
    for x in low:
        if x is None:
            views.append(None)
            continue
        own = graph.nodes[x].shape
        idx = tuple(Sym(n) for n in names[:-1]) + ((Sym(names[-1]),) if own[-1] == shape[-1] else (0,))
        try:
            expr = b.value(x, idx).expr
        except Materialize:
            return None
        view = _view(b, names, expr) if isinstance(expr, Load) else None
        if view is None:
            return None
        views.append(view)
    return tuple(views)


MAX_INT8_K = 65536   # a * (b + 128) summed over k, as VNNI computes it (|a| <= 128), stays within int32 up to here


def lower_low_precision(graph: Graph, root: int, mm: int, low: tuple, quant: tuple | None, materialized: set[int],
                         users, tile: GemmTile) -> Kernel:
    """A Gemm on int8 activations (a step and a zero offset per row) and int8 weights, or on bf16
    activations and bf16 weights: a (m, k) row-major, its rows' parameters contiguous, b a constant
    packed at load time in groups along k (4 int8, 2 bf16). Any other form computes the f32 activations
    instead."""
    node = graph.nodes[mm]
    a_id, b_id = node.inputs
    qv, sv = low
    if sv is not None:
        weight = quant[0] if quant is not None else None
    else:
        weight = bf16_weight(graph, b_id, materialized, users) if quant is None else None
    if weight is None:
        raise Materialize(a_id, "low-precision activations need a weight of the same kind")
    a_shape, m = graph.nodes[a_id].shape, node.shape[-2]
    batch = node.shape[:-2]
    _, offset, strides = qv
    rows_run_on = all(s == (numel(a_shape[i + 1:-1]) * strides[-2]) for i, s in enumerate(strides[:-2]))
    scales_run_on = sv is None or (sv[1] == 0 and sv[2][-2] == 2 and all(   # (step, zero) per row
        s == 2 * numel(a_shape[i + 1:-1]) for i, s in enumerate(sv[2][:-2])))
    deep = sv is not None and not (isinstance(a_shape[-1], int) and a_shape[-1] <= MAX_INT8_K)
    if strides[-1] != 1 or not rows_run_on or not scales_run_on or len(graph.nodes[b_id].shape) != 2 or deep:
        raise Materialize(a_id, "low-precision activations must be row-major rows, their parameters contiguous")
    builder = _builder(graph, root, materialized, users)
    dtype = DType.I8 if sv is not None else DType.BF16
    a = Operand(builder.param(qv[0]), dtype, offset, (), strides[-2], 1,
                scale=builder.param(sv[0]) if sv is not None else "")
    layout = "i8x4" if dtype is DType.I8 else "bf16x2"
    b = Operand(builder.param(("packed", weight[0], tile.nr, layout)), dtype, weight[1], (), weight[2][-2],
                weight[2][-1], packed=True)
    if quant is not None:
        scale_node, s_offset, s_strides = quant[1]
        b = replace(b, scale=builder.param(("scales", scale_node, tile.nr, s_offset, s_strides[-1])))
    for d in batch:
        m = m * d
    names = _axes(builder, [m, node.shape[-1]])
    rows = ix.delinearize(Sym(names[0]), tuple(batch) + (node.shape[-2],), builder.bounds) if batch else (
        Sym(names[0]),)
    idx = tuple(rows) + (Sym(names[1]),)
    return _gemm_kernel(builder, mm, root, Gemm((), m, node.shape[-1], a_shape[-1], a, b, "out",
                                                graph.nodes[root].dtype, tuple(names), None, (), "", tile), idx)
