"""Matmul and convolution kernels: strided operands, register/cache tiles for the host, fused epilogues.

An f32 matmul whose operands are strided views of buffers (transposes and batch
broadcasts included) becomes one `Gemm` statement. The element-wise ops that consume
only its result (bias, GELU, a residual add, a cast) become its epilogue, applied to
each register tile as it is written. A constant right-hand operand is packed once,
at load time, into the panel layout of the micro-kernel; an int8 one (`f32(q) * s`,
from `graph.passes.quantize`) stays int8 with its per-column scales. An f32
convolution without groups is a Gemm of its weight and its input's im2col matrix.
"""
from __future__ import annotations

from dataclasses import replace

from dnet.core.dtypes import DType
from dnet.core.shapes import Dim, Sym, numel
from dnet.graph.ir import Graph
from dnet.graph.ops import Op
from dnet.hardware import Host
from dnet.kernel import index as ix
from dnet.kernel import winograd
from dnet.kernel.ir import Binary, Cast, Gemm, GemmTile, Im2col, Kernel, Load, Operand, Ref
from dnet.kernel.lower import KernelBuilder, Materialize, V, _finish

SCRATCH = -2   # the parameter id of a Gemm's packing workspace


def choose_tile(host: Host) -> GemmTile:
    """Register and cache blocking from the host's vector width, register count and caches.

    mr x nr accumulators use most vector registers (two vectors per row; with 32 registers,
    12 rows; with 16, 6). A kc x nr sliver of b takes about two thirds of L1 (the mr x kc
    sliver of a it meets, most of the rest), an mc x kc block of a about an eighth of L2,
    and a kc x nc block of b, streamed past each sliver of a, a quarter of L2 (measured on
    MiniLM, where the result and a share L2 with it: half of L2 is slower at batch 1, an
    eighth at batch 8).
    """
    lanes = host.f32_lanes
    nr = 2 * lanes if lanes > 1 else 4
    mr = 12 if host.vector_registers >= 32 else 6
    kc = max(64, min(512, (host.l1d * 2 // 3) // (4 * nr) // 16 * 16))
    mc = max(mr, min(480, (host.l2 // 8) // (4 * kc) // mr * mr))
    nc = max(nr, (host.l2 // 4) // (4 * kc) // nr * nr)
    return GemmTile(mr=mr, nr=nr, lanes=lanes, kc=kc, mc=mc, nc=nc)


def is_fast_matmul(graph: Graph, nid: int) -> bool:
    node = graph.nodes[nid]
    return node.op is Op.MATMUL and node.dtype is DType.F32


def affine(index, names: list[str]):
    """(offset, strides) of an index expression affine in `names`, or None."""
    strides = {n: 0 for n in names}
    offset = 0
    for m, c in (index.terms if isinstance(index, Dim) else ([((), index)] if index else [])):
        var_atoms = [a for a in m if a in strides]
        others = [a for a in m if a not in strides]
        if any(not isinstance(a, str) for a in others) or len(var_atoms) > 1:
            return None
        rest = c
        for a in others:
            rest = rest * Sym(a)
        if var_atoms:
            strides[var_atoms[0]] = strides[var_atoms[0]] + rest
        else:
            offset = offset + rest
    return offset, [strides[n] for n in names]


def _element(graph: Graph, nid: int, materialized: set[int], users):
    """(builder, axis variable names, expression) for element (v0, v1, ...) of node `nid`, or None."""
    b = KernelBuilder(graph, materialized, users)
    b.flat = True
    shape = graph.nodes[nid].shape
    names = [b.fresh("v") for _ in shape]
    for n, d in zip(names, shape):
        b.var_depth[n], b.bounds[n] = 0, d
    try:
        return b, names, b.value(nid, tuple(Sym(n) for n in names)).expr
    except Materialize:
        return None


def _view(b: KernelBuilder, names: list[str], load: Load):
    """(buffer node, offset, strides per axis) of a load affine in the axis variables, or None."""
    found = affine(load.index, names)
    if found is None:
        return None
    base = next(nid for nid, name in b.params.items() if name == load.buffer)
    return base, found[0], found[1]


def operand_view(graph: Graph, nid: int, materialized: set[int], users) -> tuple[int, object, list] | None:
    """(buffer node, offset, strides per axis) when node `nid` is a strided view of one buffer."""
    got = _element(graph, nid, materialized, users)
    if got is None or not isinstance(got[2], Load) or len(got[0].params) != 1:
        return None
    return _view(got[0], got[1], got[2])


def dequant_view(graph: Graph, nid: int, materialized: set[int], users) -> tuple | None:
    """(int8 view, scale view) when node `nid` is f32(q) * s, q int8 and s the same down each
    column (the form `graph.passes.quantize` gives a matmul weight), else None."""
    got = _element(graph, nid, materialized, users)
    if got is None or not isinstance(got[2], Binary) or got[2].op is not Op.MUL or len(got[0].params) != 2:
        return None
    b, names, e = got
    for q, s in ((e.a, e.b), (e.b, e.a)):
        if (isinstance(q, Cast) and isinstance(q.x, Load) and q.x.dtype is DType.I8 and isinstance(s, Load)
                and s.dtype is DType.F32):
            qv, sv = _view(b, names, q.x), _view(b, names, s)
            # the same down each column (a stride along a one-row axis is never used)
            if qv is not None and sv is not None and (sv[2][-2] == 0 or graph.nodes[nid].shape[-2] == 1):
                return qv, sv
    return None


def _operand(view, batch_rank: int, shape: tuple, name: str, packed: bool = False) -> Operand:
    _, offset, strides = view
    own = len(shape) - 2
    batch = [0] * (batch_rank - own) + [0 if d == 1 else s for d, s in zip(shape[:own], strides[:own])]
    return Operand(name, DType.F32, offset, tuple(batch), strides[-2], strides[-1], packed)


def packable(graph: Graph, view, shape: tuple) -> bool:
    """A constant 2-D right operand of static size: packed once at load time."""
    base = graph.nodes[view[0]]
    return (base.op is Op.CONST and len(shape) == 2
            and all(isinstance(d, int) for d in shape) and isinstance(view[1], int)
            and all(isinstance(s, int) for s in view[2]))


def int8_weight(graph: Graph, nid: int, materialized: set[int], users) -> tuple | None:
    """(int8 view, scale view) when the right operand `nid` is a constant int8 weight with
    constant per-column scales, which a Gemm keeps packed as int8; else None."""
    quant = dequant_view(graph, nid, materialized, users)
    if quant is None or not packable(graph, quant[0], graph.nodes[nid].shape):
        return None
    scale = quant[1]
    static = isinstance(scale[1], int) and all(isinstance(x, int) for x in scale[2])
    return quant if graph.nodes[scale[0]].op is Op.CONST and static else None


def readable(graph: Graph, nid: int, right: bool, materialized: set[int], users) -> bool:
    """Whether a Gemm can read operand `nid` where it lies (else it gets a buffer first)."""
    from dnet.kernel.lowp_gemm import bf16_weight, low_precision_view
    from dnet.kernel.qgemm import quant_weight

    return (operand_view(graph, nid, materialized, users) is not None
            or right and (int8_weight(graph, nid, materialized, users) is not None
                          or bf16_weight(graph, nid, materialized, users) is not None
                          or quant_weight(graph, nid, materialized, users) is not None)
            or not right and low_precision_view(graph, nid, materialized, users) is not None)


def lower_gemm(graph: Graph, root: int, mm: int, materialized: set[int], users, tile: GemmTile,
               winograd: str = "off") -> Kernel:
    """The kernel computing `root`, an element-wise function of matmul or convolution `mm` (or `mm` itself);
    `winograd`: the target's mode for 3x3 convolutions (`kernel.winograd.choose`)."""
    if graph.nodes[mm].op is Op.CONV2D:
        return _lower_conv(graph, root, mm, materialized, users, tile, winograd)
    node = graph.nodes[mm]
    a_id, b_id = node.inputs
    views = [operand_view(graph, x, materialized, users) for x in (a_id, b_id)]
    quant = int8_weight(graph, b_id, materialized, users) if views[1] is None else None
    if quant is not None:
        views[1] = quant[0]
    if views[0] is None:   # int8 or bf16 activations (graph.passes.dynamic_quant, graph.passes.bf16)?
        from dnet.kernel.lowp_gemm import low_precision_view, lower_low_precision

        low = low_precision_view(graph, a_id, materialized, users)
        if low is not None:
            return lower_low_precision(graph, root, mm, low, quant, materialized, users, tile)
    for x, view in zip((a_id, b_id), views):
        if view is None:
            raise Materialize(x, "a matmul operand must be a strided view of a buffer")
    builder = _builder(graph, root, materialized, users)
    pa = builder.param(views[0][0])
    b_shape = graph.nodes[b_id].shape
    packed = packable(graph, views[1], b_shape)
    pb = builder.param(("packed", views[1][0], tile.nr) if packed else views[1][0])
    batch_rank = len(node.shape) - 2
    a = _operand(views[0], batch_rank, graph.nodes[a_id].shape, pa)
    b = _operand(views[1], batch_rank, b_shape, pb, packed)
    if quant is not None:   # scales: ('scales', node, nr, offset, stride along the columns)
        scale_node, offset, strides = quant[1]
        ps = builder.param(("scales", scale_node, tile.nr, offset, strides[-1]))
        b = replace(b, dtype=DType.I8, scale=ps)
    batch, m = list(node.shape[:-2]), node.shape[-2]
    # fold batch axes into the rows where b is shared and a's rows run on into the next batch
    while batch and b.batch_strides[len(batch) - 1] == 0 and a.batch_strides[len(batch) - 1] == m * a.row_stride:
        m = m * batch.pop()
    a = replace(a, batch_strides=a.batch_strides[:len(batch)])
    b = replace(b, batch_strides=b.batch_strides[:len(batch)])
    names = _axes(builder, list(batch) + [m, node.shape[-1]])
    row = Sym(names[-2])
    folded = node.shape[len(batch):-2]
    rows = ix.delinearize(row, tuple(folded) + (node.shape[-2],), builder.bounds) if folded else (row,)
    idx = tuple(Sym(n) for n in names[:-2]) + tuple(rows) + (Sym(names[-1]),)
    return _gemm_kernel(builder, mm, root, Gemm(tuple(batch), m, node.shape[-1], graph.nodes[a_id].shape[-1],
                                                a, b, "out", graph.nodes[root].dtype, tuple(names), None, (),
                                                "", tile), idx)


MIN_GROUP_ROWS = 8   # output channels per group below which a grouped convolution stays a loop nest


def is_fast_conv(graph: Graph, nid: int, group_rows: int = MIN_GROUP_ROWS) -> bool:
    """An f32 convolution that is a Gemm of its weight and its input's im2col matrix (one per group):
    without groups, or with at least `group_rows` output channels per group. The target says how many
    (`CpuTarget.conv_group_rows`): where the Gemm gathers im2col panels, a depthwise convolution would
    use one row of twelve (the default keeps it a loop nest); the C backend's direct convolution
    (`backends/c/conv.py`) runs one-row Gemms vectorised along the pixels, so it takes them all."""
    node = graph.nodes[nid]
    if node.op is not Op.CONV2D or node.dtype is not DType.F32:
        return False
    groups = node.attrs["groups"]
    return groups == 1 or graph.nodes[node.inputs[1]].shape[0] // groups >= group_rows


def is_gemm(graph: Graph, nid: int, group_rows: int = MIN_GROUP_ROWS) -> bool:
    return is_fast_matmul(graph, nid) or is_fast_conv(graph, nid, group_rows)


def conv_weight_ok(graph: Graph, nid: int, materialized: set[int], users) -> bool:
    """A convolution's weight must lie contiguous (OIHW): it is read as an O x (I*H*W) matrix."""
    view = operand_view(graph, nid, materialized, users)
    shape = graph.nodes[nid].shape
    return view is not None and list(view[2]) == list(ix.contiguous_strides(shape))


def _lower_conv(graph: Graph, root: int, conv: int, materialized: set[int], users, tile: GemmTile,
                winograd: str = "off") -> Kernel:
    """out[n, g, o, (oh, ow)] = sum over k = (c, y, z) of w[g, o, k] * im2col(x[n, g])[k, (oh, ow)]: one Gemm
    per batch item and group (g: the group's slice of the channels), the im2col gather done while b is
    packed into panels (no im2col matrix in memory). A constant 3x3 filter of stride 1 may instead be
    read as its Winograd transform, packed at load time (`('packed', w, mr, 'winograd<m>')`)."""
    node = graph.nodes[conv]
    x_id, w_id = node.inputs
    xv = operand_view(graph, x_id, materialized, users)
    if xv is None:
        raise Materialize(x_id, "a convolution's input must be a strided view of a buffer")
    if not conv_weight_ok(graph, w_id, materialized, users):
        raise Materialize(w_id, "a convolution's weight must be contiguous")
    builder = _builder(graph, root, materialized, users)
    wv = operand_view(graph, w_id, materialized, users)
    n_, o, oh, ow = node.shape
    _, c, kh, kw = graph.nodes[w_id].shape          # c: input channels per group
    _, _, h, w = graph.nodes[x_id].shape
    groups, k = node.attrs["groups"], c * kh * kw
    rows = o // groups                               # output channels per group
    top, left, _, _ = node.attrs["padding"]
    geometry = Im2col(h, w, (kh, kw), tuple(node.attrs["stride"]), tuple(node.attrs["dilation"]), (top, left), ow,
                      tuple(xv[2][1:]))
    m = _winograd_tile(graph, node, w_id, wv, winograd)
    if m:   # "auto" keeps the filters as they are too, for batches with too few tiles (a forced m: never)
        geometry = replace(geometry, winograd=m, fallback=builder.param(wv[0]) if winograd == "auto" else "")
        a = Operand(builder.param(("packed", wv[0], tile.mr, f"winograd{m}")), DType.F32, 0, (0, 0), k, 1, packed=True)
    else:
        a = Operand(builder.param(wv[0]), DType.F32, wv[1], (0, rows * k), k, 1)
    b = Operand(builder.param(xv[0]), DType.F32, xv[1], (xv[2][0], c * xv[2][1]), 0, 0, im2col=geometry)
    names = _axes(builder, [n_, groups, rows, oh * ow])
    pixel = ix.delinearize(Sym(names[3]), (oh, ow), builder.bounds)
    idx = (Sym(names[0]), Sym(names[1]) * rows + Sym(names[2])) + tuple(pixel)
    return _gemm_kernel(builder, conv, root, Gemm((n_, groups), rows, oh * ow, k, a, b, "out",
                                                  graph.nodes[root].dtype, tuple(names), None, (), "", tile), idx)


def _winograd_tile(graph: Graph, node, w_id: int, wv, mode: str) -> int:
    """The Winograd output tile m of convolution `node` (0: none): its filter a whole constant, its shape one
    Winograd computes, and the mode's rule (`kernel.winograd.choose`) says so."""
    if mode == "off" or not winograd.eligible(graph.nodes[w_id].shape[2:], node.attrs["stride"],
                                              node.attrs["dilation"], node.attrs["groups"]):
        return 0
    if graph.nodes[wv[0]].op is not Op.CONST or wv[1] != 0 or graph.nodes[wv[0]].shape != graph.nodes[w_id].shape:
        return 0
    o, c = graph.nodes[w_id].shape[:2]
    return winograd.choose(mode, c, o, node.shape[2], node.shape[3])


def _builder(graph: Graph, root: int, materialized: set[int], users) -> KernelBuilder:
    builder = KernelBuilder(graph, materialized - {root}, users)
    builder.flat = True
    builder.params[root] = "out"
    return builder


def _axes(builder: KernelBuilder, bounds: list) -> list[str]:
    """Fresh names for the Gemm's batch, row and column variables, with their bounds."""
    names = [builder.fresh("b") for _ in bounds[:-2]] + [builder.fresh("i"), builder.fresh("j")]
    for n, d in zip(names, bounds):
        builder.var_depth[n], builder.bounds[n] = 0, d
    return names


def _gemm_kernel(builder: KernelBuilder, mm: int, root: int, gemm: Gemm, idx: tuple) -> Kernel:
    """`gemm` (its epilogue still to fill) as the kernel computing `root`; `idx` is where element
    (batch..., i, j) of the product lies in node `mm`'s own index space."""
    builder.cache[(mm, idx)] = V(Ref("acc", DType.F32), 0)
    epilogue = builder.value(root, idx).expr
    scratch = "" if gemm.b.packed or _winograd(gemm) else builder.param(SCRATCH)
    gemm = replace(gemm, epilogue=epilogue, epilogue_lets=tuple(builder.scopes[0].stmts), scratch=scratch)
    return _finish(builder, builder.graph.nodes[root], (gemm,))


def _winograd(gemm: Gemm) -> bool:
    return gemm.b.im2col is not None and gemm.b.im2col.winograd > 0


def scratch_elements(gemm: Gemm):
    """f32 elements of workspace a Gemm needs to pack its right operand (every batch item)."""
    if gemm.b.packed or _winograd(gemm):
        return 0
    nr = gemm.tile.nr
    panels = (gemm.n + nr - 1) // nr if isinstance(gemm.n, int) else gemm.n // nr + 1
    return numel(gemm.batch) * panels * nr * gemm.k
