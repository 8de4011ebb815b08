"""The C form of a Winograd convolution F(m x m, 3 x 3) (a conv `Gemm` whose `Im2col` has `winograd` m).

`kernel/winograd.py` has the algorithm; its filters G g G^T were transformed and packed at load time
(`packing.pack_winograd`: in blocks of input channels, per tile position, slivers of mr output channels).
The tiles of every image of the batch are numbered one after another (image, tile row, tile column) and
cut into panels of nr; a task is a run of panels and a group of output-channel slivers. Per panel:

1. the offset in x of each element (r, s) of each tile's (m + 2) x (m + 2) input block, or none where the
   element lies in the padding, is worked out once; per input channel, one vectorised gather then lays the
   panel's blocks out as d[(r, s)][tile], so that for every (r, s) consecutive tiles are consecutive floats
   (a first version split the input into phase planes of step m instead, as the direct convolution does for
   a stride, and computed one dropped tile a row: 8.3 -> 6.8 ms for 64 channels at 56 x 56, batch 8, here);
2. per block of input channels, the input transform B^T d B, vectorised across the panel's tiles, writes the
   (m + 2)^2 matrices [channels x nr tiles] straight in the layout of the Gemm's packed b panels;
3. (m + 2)^2 products: the Gemm's own micro-kernel (`gemm.py`, `dn_ukernel_<mr>x<nr>`) with the packed
   filters as a and the panel as b, summed over the channel blocks into a panel of products (L2);
4. the output transform A^T M A, vectorised across tiles, interleaved into output rows, and stored
   through the Gemm's epilogue (bias, ReLU, a residual add), the parts of edge tiles past the image dropped.
"""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from dnet.backends.c.gemm import _batch_decl, ukernel_name
from dnet.core.dtypes import DType
from dnet.errors import BackendError
from dnet.kernel.ir import Gemm, Operand
from dnet.kernel.winograd import MODES, matrices

TASKS_PER_THREAD = 2   # tasks a thread gets at least where the work allows (a task here is coarser than the direct one's)
CHANNEL_BLOCK = 128   # input channels a block: (m + 2)^2 x 128 x nr floats of transformed input (590 KiB, m = 4)
PRODUCT_FLOATS = 1 << 17   # a group's panel of products, (m + 2)^2 x its channels x nr floats, at most (512 KiB):
                           # an L2's share beside the panel's transformed input and the filters streaming past
ENV = "DNET_WINOGRAD"   # "auto" (the default: kernel.winograd.choose's rule), "off", "2" or "4" (forced)


def winograd_mode() -> str:
    """Which 3x3 convolutions this process compiles as Winograd's: $DNET_WINOGRAD, else "auto"."""
    mode = os.environ.get(ENV, "auto").strip() or "auto"
    if mode not in MODES:
        raise BackendError(f"${ENV}={mode!r} is not a Winograd mode", hint=f"one of {', '.join(MODES)}")
    return mode


def _combine(mat: np.ndarray, names: list[str]) -> list[str]:
    """The C expressions of mat @ names (integer coefficients; zeros skipped, +-1 without a product)."""
    out = []
    for row in mat:
        terms = []
        for c, n in zip(row, names):
            if c == 0:
                continue
            sign = "-" if c < 0 else "+"
            mag = abs(float(c))
            terms.append(f"{sign} {n}" if mag == 1 else f"{sign} {mag!r}f * {n}")
        text = " ".join(terms)
        out.append(text[2:] if text.startswith("+ ") else f"-{text[2:]}" if text.startswith("- ") else text)
    return out


def _input_transform(m: int, vec: str, vecu: str) -> str:
    """Statements turning the gathered blocks d (alpha x alpha vectors of tiles: element (r, s) at
    g_in + (r alpha + s) * nr) into B^T d B, stored at g_vdst + position * g_pstride."""
    bt, _, _ = matrices(m)
    a = m + 2
    lines = [f"const {vec} d{r}_{s} = *(const {vecu}*)(g_in + {(r * a + s)} * g_nr);" for r in range(a) for s in range(a)]
    for s in range(a):   # t = B^T d, column by column
        for i, e in enumerate(_combine(bt, [f"d{r}_{s}" for r in range(a)])):
            lines.append(f"const {vec} t{i}_{s} = {e};")
    for i in range(a):   # u = t B, row by row, stored as it comes
        for j, e in enumerate(_combine(bt, [f"t{i}_{s}" for s in range(a)])):
            lines.append(f"*({vecu}*)(g_vdst + {i * a + j} * g_pstride) = {e};")
    return "\n".join(lines)


def _output_transform(m: int, vec: str, vecu: str) -> str:
    """Statements turning the products M (alpha x alpha vectors of tiles at g_msrc + position * g_mstride)
    into A^T M A, stored as m x m vectors at g_y."""
    _, _, at = matrices(m)
    a = m + 2
    lines = [f"const {vec} p{i}_{j} = *(const {vecu}*)(g_msrc + {i * a + j} * g_mstride);" for i in range(a)
             for j in range(a)]
    for j in range(a):   # s = A^T M, column by column
        for r, e in enumerate(_combine(at, [f"p{i}_{j}" for i in range(a)])):
            lines.append(f"const {vec} s{r}_{j} = {e};")
    for r in range(m):
        for c, e in enumerate(_combine(at, [f"s{r}_{j}" for j in range(a)])):
            lines.append(f"*({vecu}*)(g_y + {r * m + c} * g_lanes) = {e};")
    return "\n".join(lines)


def render_winograd(r, g: Gemm, pad: str) -> list[str]:
    """The body of a Winograd convolution kernel (`r`: the kernel's CRenderer): where its filters are also
    given as they are (`Im2col.fallback`), a batch with fewer tiles than one panel of the micro-kernel (a
    7 x 7 image alone: 4 tiles of 32) runs the direct convolution instead, which reads a quarter of the
    weights (F(4, 3)'s transformed filters are 4 times the filters, and a layer that small is bound by
    reading them: 512 channels at 7 x 7, batch 1, one core, 9.5 ms as Winograd, 2.1 ms direct)."""
    c = g.b.im2col
    if not c.fallback:
        return _render(r, g, pad)
    from dnet.backends.c.conv import render_conv

    ix, m = r.index, c.winograd
    nb = "*".join(["1"] + [ix(b) for b in g.batch])
    ow = ix(c.out_width)
    tiles = f"({nb}) * ({ow} > 0 ? ({ix(g.n)} / ({ow}) + {m - 1}) / {m} * (({ow}) + {m - 1}) / {m} : 0)"
    direct = replace(g, a=Operand(c.fallback, DType.F32, 0, (0, 0), g.k, 1),
                     b=replace(g.b, im2col=replace(c, winograd=0, fallback="")))
    saved = list(r.locals)   # each branch's outlined body captures its own values only
    first = render_conv(r, direct, pad + "    ")
    r.locals = list(saved)
    second = _render(r, g, pad + "    ")
    r.locals = saved
    return ([f"{pad}if ({tiles} < {g.tile.nr}) {{   /* too few tiles to fill one panel: the direct convolution */"]
            + first + [f"{pad}}} else {{"] + second + [f"{pad}}}"])


def _render(r, g: Gemm, pad: str) -> list[str]:
    """The Winograd convolution itself."""
    c = g.b.im2col
    ix = r.index
    m, t = c.winograd, g.tile
    a = m + 2
    positions = a * a
    mr, nr, lanes = t.mr, t.nr, t.lanes
    sfx = f"{mr}x{nr}"
    vec, vecu = f"dn_vf{sfx}", f"dn_vfu{sfx}"
    top, left = (ix(p) for p in c.pad)
    xc, xh, xw = (ix(s) for s in c.strides)
    nbatch = "*".join(["1"] + [ix(b) for b in g.batch])
    group_slivers = max(1, PRODUCT_FLOATS // (positions * nr * mr))
    lines = [
        f"const int64_t g_M = {ix(g.m)}, g_N = {ix(g.n)}, g_K = {ix(g.k)}, g_NB = {nbatch};",
        f"const int64_t g_H = {ix(c.height)}, g_W = {ix(c.width)}, g_OW = {ix(c.out_width)};",
        "const int64_t g_OH = g_OW > 0 ? g_N / g_OW : 0, g_C = g_K / 9;   /* output rows, input channels */",
        f"const int64_t g_TH = (g_OH + {m - 1}) / {m}, g_TW = (g_OW + {m - 1}) / {m};   /* tiles down and across */",
        f"const int64_t g_KT = g_NB * g_TH * g_TW, g_panels = (g_KT + {nr - 1}) / {nr};   /* every image's tiles */",
        f"const int64_t g_S = (g_M + {mr - 1}) / {mr}, g_nt = dn_threads();",
        f"const int64_t g_kcb = g_C < {CHANNEL_BLOCK} ? g_C : {CHANNEL_BLOCK};",
        f"/* tasks: runs of panels and groups of slivers (at most {group_slivers} a group, so a panel's products stay",
        f"   in L2), {TASKS_PER_THREAD} a thread at least where there is work enough. A group more transforms the input",
        "   once more, a run of panels more costs nothing: runs first */",
        f"const int64_t g_want = g_nt > 1 ? {TASKS_PER_THREAD} * g_nt : 1;",
        f"int64_t g_groups = (g_S + {group_slivers - 1}) / {group_slivers};",
        "int64_t g_bands = (g_want + g_groups - 1) / g_groups < g_panels ? (g_want + g_groups - 1) / g_groups : g_panels;",
        "if (g_bands < 1) g_bands = 1;",
        "while (g_bands * g_groups < g_want && g_groups < g_S) g_groups++;   /* work enough: groups */",
        "/* a multiple of the threads where the slivers allow, so none waits for the last task */",
        "while (g_nt > 1 && (g_bands * g_groups) % g_nt && g_groups < g_S) g_groups++;",
        "const int64_t g_tasks = g_KT > 0 ? g_bands * g_groups : 0;",
    ]
    r.locals += [("const int64_t", n) for n in ("g_M", "g_N", "g_K", "g_NB", "g_H", "g_W", "g_OW", "g_OH", "g_C",
                                                "g_TH", "g_TW", "g_KT", "g_panels", "g_S", "g_nt", "g_kcb",
                                                "g_want", "g_tasks")]
    r.locals += [("int64_t", "g_bands"), ("int64_t", "g_groups")]
    ukernel = f"dn_ukernel_{ukernel_name(t)}"
    i, j = g.vars[-2], g.vars[-1]
    epilogue = [f"const int64_t {j} = g_pix + g_q;", "const float acc = g_src[g_q];"]
    epilogue += [x for s in g.epilogue_lets for x in r.stmt(s, "")]
    epilogue.append(f"g_dst[g_q] = {r.expr(g.epilogue)};")
    table = [   # the panel's tiles: each element of each block, its offset in x and whether inside the image
        f"for (int64_t g_l = 0; g_l < {nr}; ++g_l) {{",
        "    const int64_t g_k = g_j0 + g_l, g_in = g_k < g_KT;",
        "    const int64_t g_bb = g_in ? g_k / (g_TH * g_TW) : 0, g_ty = g_k / g_TW % g_TH, g_tx = g_k % g_TW;",
        *[f"    {x}" for x in _batch_decl("g_bb", g, r)],
        f"    for (int64_t g_rs = 0; g_rs < {positions}; ++g_rs) {{",
        f"        const int64_t g_R = g_ty * {m} + g_rs / {a} - {top}, g_Q = g_tx * {m} + g_rs % {a} - {left};",
        "        const int g_ok = g_in && g_R >= 0 && g_R < g_H && g_Q >= 0 && g_Q < g_W;",
        f"        g_goff[g_rs * {nr} + g_l] = g_ok ? g_off_b + g_R * {xh} + g_Q * {xw} : 0;",
        f"        g_gmask[g_rs * {nr} + g_l] = g_ok ? 1.0f : 0.0f;",
        "    }",
        "}",
    ]
    task = [
        "for (int64_t g_flat = g_begin; g_flat < g_end; ++g_flat) {",
        "    const int64_t g_band = g_flat / g_groups, g_grp = g_flat % g_groups;",
        f"    const int64_t g_p0 = g_band * g_panels / g_bands * {nr}, g_p1 = (g_band + 1) * g_panels / g_bands * {nr};",
        "    const int64_t g_s0 = g_grp * g_S / g_groups, g_s1 = (g_grp + 1) * g_S / g_groups;",
        f"    const int64_t g_cg = (g_s1 - g_s0) * {mr}, g_o1 = g_s1 * {mr} < g_M ? g_s1 * {mr} : g_M;",
        f"    const int64_t g_nr = {nr};",
        f"    float* g_blocks = dn_wino_workspace(0, {positions * nr});   /* one channel of the panel's blocks */",
        f"    float* g_v = dn_wino_workspace(1, {positions * nr} * g_kcb);   /* a panel's transformed input */",
        f"    float* g_prod = dn_wino_workspace(2, {positions * nr} * g_cg);   /* its products */",
        f"    int64_t* g_goff = (int64_t*)dn_wino_workspace(3, {2 * positions * nr});",
        f"    float* g_gmask = dn_wino_workspace(4, {positions * nr});",
        f"    for (int64_t g_j0 = g_p0; g_j0 < g_p1; g_j0 += {nr}) {{",
        *[f"        {x}" for x in table],
        "        for (int64_t g_pc = 0; g_pc < g_C; g_pc += g_kcb) {",
        "            const int64_t g_kc = g_C - g_pc < g_kcb ? g_C - g_pc : g_kcb;",
        f"            const int64_t g_pstride = g_kc * {nr};",
        f"            const float* g_ublk = {g.a.buffer} + g_pc * {positions} * g_S * {mr};   /* this block's filters */",
        "            for (int64_t g_cc = 0; g_cc < g_kc; ++g_cc) {",
        f"                dn_wino_gather(g_blocks, {g.b.buffer} + (g_pc + g_cc) * {xc}, g_goff, g_gmask, {positions * nr});",
        f"                for (int64_t g_vv = 0; g_vv < {nr}; g_vv += {lanes}) {{",
        "                    const float* g_in = g_blocks + g_vv;",
        f"                    float* g_vdst = g_v + g_cc * {nr} + g_vv;",
        *[f"                    {x}" for x in _input_transform(m, vec, vecu).split("\n")],
        "                }",
        "            }",
        f"            for (int64_t g_xi = 0; g_xi < {positions}; ++g_xi)",
        "                for (int64_t g_s = g_s0; g_s < g_s1; ++g_s) {",
        f"                    const int64_t g_mr = g_M - g_s * {mr} < {mr} ? g_M - g_s * {mr} : {mr};",
        "                    /* the micro-kernel prefetches from its last argument: the next sliver's filters, which",
        "                       come from memory where the layer's are many (512 channels: 38 MB as F(4, 3)) */",
        "                    const float* g_bp = g_v + g_xi * g_pstride;",
        f"                    {ukernel}(g_kc, g_ublk + (g_xi * g_S + g_s) * g_kc * {mr}, g_bp, "
        f"g_prod + (g_xi * g_cg + (g_s - g_s0) * {mr}) * {nr}, {nr}, g_pc > 0, g_mr, {nr}, "
        f"g_ublk + (g_xi * g_S + g_s + 1) * g_kc * {mr});",
        "                }",
        "        }",
        f"        for (int64_t {i} = g_s0 * {mr}; {i} < g_o1; ++{i}) {{",
        f"            float g_out[{m}][{m * nr}] __attribute__((aligned(64)));   /* the panel's tiles, row by row */",
        f"            for (int64_t g_vv = 0; g_vv < {nr}; g_vv += {lanes}) {{",
        f"                float g_y[{m * m * lanes}] __attribute__((aligned(64)));",
        f"                const float* g_msrc = g_prod + ({i} - g_s0 * {mr}) * {nr} + g_vv;",
        f"                const int64_t g_mstride = g_cg * {nr}, g_lanes = {lanes};",
        *[f"                {x}" for x in _output_transform(m, vec, vecu).split("\n")],
        f"                for (int64_t g_rr = 0; g_rr < {m}; ++g_rr)   /* tile l's row rr: m floats side by side */",
        f"                    for (int64_t g_l = 0; g_l < {lanes}; ++g_l)",
        f"                        for (int64_t g_cc = 0; g_cc < {m}; ++g_cc)",
        f"                            g_out[g_rr][(g_vv + g_l) * {m} + g_cc] = g_y[(g_rr * {m} + g_cc) * {lanes} + g_l];",
        "            }",
        "            /* runs of tiles within one tile row of one image: the output's rows, through the epilogue */",
        f"            for (int64_t g_jj = 0; g_jj < {nr} && g_j0 + g_jj < g_KT; ) {{",
        "                const int64_t g_row = (g_j0 + g_jj) / g_TW, g_tx = (g_j0 + g_jj) % g_TW;",
        f"                const int64_t g_run = g_TW - g_tx < {nr} - g_jj ? g_TW - g_tx : {nr} - g_jj;",
        "                const int64_t g_ty = g_row % g_TH, g_bb = g_row / g_TH;",
        *[f"                {x}" for x in _batch_decl("g_bb", g, r)],
        f"                const int64_t g_ow0 = g_tx * {m}, g_ow1 = (g_tx + g_run) * {m} < g_OW ? (g_tx + g_run) * {m} : g_OW;",
        f"                for (int64_t g_rr = 0; g_rr < {m} && g_ty * {m} + g_rr < g_OH; ++g_rr) {{",
        f"                    const int64_t g_pix = (g_ty * {m} + g_rr) * g_OW + g_ow0;",
        f"                    const float* g_src = g_out[g_rr] + g_jj * {m};",
        f"                    float* g_dst = out + (g_bb * g_M + {i}) * g_N + g_pix;",
        "                    #pragma omp simd",
        "                    for (int64_t g_q = 0; g_q < g_ow1 - g_ow0; ++g_q) {",
        *[f"                        {x}" for x in epilogue],
        "                    }",
        "                }",
        "                g_jj += g_run;",
        "            }",
        "        }",
        "    }",
        "}",
    ]
    if WORKSPACE not in r.helpers:
        r.helpers.append(WORKSPACE)
    return [pad + x for x in lines] + r.outline(task, "g_tasks", "1", pad)


WORKSPACE = """
#ifndef DN_WINO_WORKSPACE
#define DN_WINO_WORKSPACE 1
/* a thread's Winograd workspaces (0: a gathered channel,
   1: a panel's transformed input, 2: its products, 3: the gather's offsets, 4: its masks):
   grown, never shrunk, reused by every Winograd convolution the thread runs */
/* d[e] = x[off[e]] (times 0 where the element lies outside the image): a panel's blocks, one channel */
static void dn_wino_gather(float* restrict d, const float* restrict x, const int64_t* restrict off,
                           const float* restrict mask, int64_t n) {
    #pragma omp simd
    for (int64_t e = 0; e < n; ++e) d[e] = x[off[e]] * mask[e];
}

static float* dn_wino_workspace(int slot, int64_t n) {
    static _Thread_local float* buf[5] = {0, 0, 0, 0, 0};
    static _Thread_local int64_t cap[5] = {0, 0, 0, 0, 0};
    if (cap[slot] < n) {
        free(buf[slot]);
        buf[slot] = (float*)aligned_alloc(64, (size_t)((n * 4 + 63) / 64 * 64));
        cap[slot] = n;
    }
    return buf[slot];
}
#endif
"""

