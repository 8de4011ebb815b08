"""A `Gemm` in OpenCL C: a local-memory tiled, register-blocked kernel.

A work-group of t x t work-items computes a (t*w) x (t*w) block of the result; each work-item
keeps w x w results in registers: rows ti, ti + t, ...; columns tj*w .. tj*w + w - 1, side by side,
so each k step reads b's w values for them as one vector (vload) and adds a row of a times it. Along k the group walks DEPTH-wide steps: its
work-items together copy a's (t*w) x DEPTH block and b's DEPTH x (t*w) block into local memory,
wait at a barrier, each accumulates its w x w results from local memory, and wait again before
the next step overwrites the blocks. So an element of a or b is read from global memory once per
work-group instead of once per result. Rows, columns and k past the matrix load zeros, so any
m, n and k work; the bounds test comes after the last barrier, which every work-item of a group
must reach. The third grid dimension runs the batch. t and w come from the device type
(`renderer.CPU_GEMM`, `renderer.GPU_GEMM`).

The epilogue (bias, GELU, a residual add) is applied to each result before its one store.
Right operands come as the scheduler left them: strided, packed into nr-wide panels (a weight),
int8 panels with per-column scales, or a convolution's input read as its im2col matrix
(gathered while the block is loaded; zero outside the image). Low-precision Gemms
(`quantize="int8-dynamic"`, `precision="bf16"`) read their operands in the C backend's layouts
(`program/panels.py`) and widen each element to f32 as it is loaded: the reference's own arithmetic.
"""
from __future__ import annotations

from dnet.backends.opencl.renderer import OpenCLRenderer, RenderedKernel, Tiles
from dnet.core.dtypes import DType
from dnet.kernel.ir import Gemm, Operand

DEPTH = 16     # the k step: columns of a's block and rows of b's block held in local memory


def render_gemm_kernel(r: OpenCLRenderer, g: Gemm) -> RenderedKernel:
    ts, work, ix = r.gemm_shape.threads, r.gemm_shape.work, r.index   # ts x ts work-items, work x work results each
    block, threads = ts * work, ts * ts      # the block of the result one work-group computes
    loads = block * DEPTH // threads         # elements of each operand's block a work-item loads per k step
    i, j = g.vars[-2], g.vars[-1]
    local, barrier = r.local_prefix, r.barrier_code
    lines = r.header(f"__attribute__((reqd_work_group_size({ts}, {ts}, 1))) ") + [
        f"    const int64_t g_M = {ix(g.m)}, g_N = {ix(g.n)}, g_K = {ix(g.k)};",
        "    const int g_ti = (int)get_local_id(1), g_tj = (int)get_local_id(0);",
        f"    const int g_tid = g_ti * {ts} + g_tj;",
        f"    const int64_t g_row0 = (int64_t)get_group_id(1) * {block}, g_col0 = (int64_t)get_group_id(0) * {block};",
        "    const int64_t g_bb = (int64_t)get_global_id(2);"]
    lines += ["    " + x for x in _batch_decl(r, g)]
    lines += [f"    {local} float g_a[{DEPTH}][{block}];",
              f"    {local} float g_b[{DEPTH}][{block}];",
              # a vector per row, not an array: a CPU driver keeps each value live across barriers in its own
              # per-item array (a private array of scalars: half the speed, measured on PoCL), and a work-item's
              # columns lie side by side, so b's row for them is one vector load from local memory
              "    " + " ".join(f"float{work} g_acc{a} = (float{work})(0.0f);" for a in range(work)),
              "    const int g_steps = (int)((g_K + {0}) / {1});".format(DEPTH - 1, DEPTH),
              "    for (int g_step = 0; g_step < g_steps; ++g_step) {",
              f"        const int64_t g_k0 = (int64_t)g_step * {DEPTH};",
              f"        for (int g_l = 0; g_l < {loads}; ++g_l) {{   /* a's block: {block} rows x {DEPTH} */",
              f"            const int g_f = g_tid + g_l * {threads}, g_kk = g_f % {DEPTH}, g_rr = g_f / {DEPTH};",
              "            const int64_t g_i = g_row0 + g_rr, g_k = g_k0 + g_kk;",
              f"            g_a[g_kk][g_rr] = g_i < g_M && g_k < g_K ? {_element_a(r, g.a, 'g_i', 'g_k')} : 0.0f;",
              "        }",
              f"        for (int g_l = 0; g_l < {loads}; ++g_l) {{   /* b's block: {DEPTH} x {block} columns */",
              f"            const int g_f = g_tid + g_l * {threads}, g_cc = g_f % {block}, g_kk = g_f / {block};",
              "            const int64_t g_j = g_col0 + g_cc, g_k = g_k0 + g_kk;",
              f"            g_b[g_kk][g_cc] = g_k < g_K && g_j < g_N ? {_element_b(r, g, 'g_k', 'g_j', block)} : 0.0f;",
              "        }",
              f"        {barrier}",
              "        #pragma unroll",
              f"        for (int g_kk = 0; g_kk < {DEPTH}; ++g_kk) {{",
              f"            const float{work} g_bv = vload{work}(g_tj, &g_b[g_kk][0]);",
              "            " + " ".join(f"g_acc{a} += g_a[g_kk][g_ti + {a * ts}] * g_bv;" for a in range(work)),
              "        }",
              f"        {barrier}",
              "    }",
              f"    float g_acc[{work}][{work}];   /* past the last barrier: the epilogue loops over them */",
              "    " + " ".join(f"vstore{work}(g_acc{a}, 0, &g_acc[{a}][0]);" for a in range(work)),
              f"    for (int g_r = 0; g_r < {work}; ++g_r) {{",
              f"        const int64_t {i} = g_row0 + g_ti + g_r * {ts};",
              f"        if ({i} >= g_M) break;",
              f"        for (int g_c = 0; g_c < {work}; ++g_c) {{",
              f"            const int64_t {j} = g_col0 + g_tj * {work} + g_c;",
              f"            if ({j} >= g_N) break;",
              "            const float acc = g_acc[g_r][g_c];"]
    lines += r.stmts(g.epilogue_lets, "            ")
    value = r.store_value(r.expr(g.epilogue), g.epilogue.dtype, r.buffer_dtype(g.out))
    lines += [f"            {g.out}[(g_bb * g_M + {i}) * g_N + {j}] = {value};", "        }", "    }", "}"]
    return RenderedKernel(r.kernel.name, "\n".join(lines), Tiles(g.batch, g.m, g.n, ts, block))


def _batch_decl(r: OpenCLRenderer, g: Gemm) -> list[str]:
    """The batch variables from the flat batch index, and each operand's offset for this batch item."""
    out, rest = [], "g_bb"
    names = g.vars[:-2]
    for k in reversed(range(len(names))):
        out.append(f"const int64_t {names[k]} = ({rest}) % {r.index(g.batch[k])};")
        rest = f"({rest}) / {r.index(g.batch[k])}"
    for tag, op in (("a", g.a), ("b", g.b)):
        terms = [r.index(op.offset)] + [f"{n} * {r.index(s)}" for n, s in zip(names, op.batch_strides)]
        out.append(f"const int64_t g_off_{tag} = {' + '.join(terms)};")
    return out


def _element_a(r: OpenCLRenderer, a: Operand, row: str, k: str) -> str:
    value = f"{a.buffer}[g_off_a + {row} * {r.index(a.row_stride)} + {k} * {r.index(a.col_stride)}]"
    if a.dtype is DType.I8:     # int8 activations, per row its step s and zero offset z side by side: (q + z) s
        return f"(((float){value} + {a.scale}[2 * {row} + 1]) * {a.scale}[2 * {row}])"
    if a.dtype is DType.BF16:
        return f"dn_bf16_to_f32({value})"
    return value


def _element_b(r: OpenCLRenderer, g: Gemm, k: str, col: str, block: int = 0) -> str:
    b = g.b
    if b.im2col is not None:
        return _im2col_element(r, g, k, col)
    nr = g.tile.nr
    if b.packed and g.a.dtype is DType.I8:      # program/panels.py's i8x4: bytes b + 128, 4 along k per column
        at = f"({col} / {nr}) * ((g_K + 3) / 4 * {nr * 4} + {4 * nr}) + (({k} / 4) * {nr} + {col} % {nr}) * 4 + {k} % 4"
        return f"((float)(char)((uchar){b.buffer}[{at}] ^ 0x80) * {b.scale}[{col}])"
    if b.packed and b.dtype is DType.BF16:      # program/panels.py's bf16x2: 2 along k per column
        at = f"({col} / {nr}) * ((g_K + 1) / 2 * {nr * 2}) + (({k} / 2) * {nr} + {col} % {nr}) * 2 + {k} % 2"
        return f"dn_bf16_to_f32({b.buffer}[{at}])"
    if b.packed:      # panels of nr columns: (n / nr, k, nr), zero-padded; packed weights start at 0
        panel, within = f"({col} / {nr})", f"({col} % {nr})"
        if block and block % nr == 0:     # the group's first panel once, then 32-bit arithmetic on its column
            panel, within = f"(g_col0 / {nr} + g_cc / {nr})", f"(g_cc % {nr})"
        value = f"{b.buffer}[{panel} * g_K * {nr} + {k} * {nr} + {within}]"
        return f"((float){value} * {b.scale}[{col}])" if b.scale else value
    return f"{b.buffer}[g_off_b + {k} * {r.index(b.row_stride)} + {col} * {r.index(b.col_stride)}]"


def _im2col_element(r: OpenCLRenderer, g: Gemm, k: str, col: str) -> str:
    """Row k = (c, y, z), column = (oh, ow) of the im2col matrix: x[c, oh*sh + y*dh - top, ow*sw + z*dw - left]."""
    geo = g.b.im2col
    kh, kw = geo.kernel
    (sh, sw), (dh, dw), (top, left) = geo.stride, geo.dilation, geo.pad
    ow_count, ix = r.index(geo.out_width), r.index
    h = f"(({col}) / {ow_count} * {sh} + (({k}) / {kw}) % {kh} * {dh} - {top})"
    w = f"(({col}) % {ow_count} * {sw} + ({k}) % {kw} * {dw} - {left})"
    sc, sy, sx = (ix(s) for s in geo.strides)
    inside = f"({h} >= 0 && {h} < {ix(geo.height)} && {w} >= 0 && {w} < {ix(geo.width)})"
    at = f"g_off_b + ({k}) / {kh * kw} * {sc} + {h} * {sy} + {w} * {sx}"
    return f"({inside} ? {g.b.buffer}[{at}] : 0.0f)"
