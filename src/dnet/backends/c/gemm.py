"""The C form of a `Gemm`: packing, a register-blocked micro-kernel, threads, epilogue.

The micro-kernel keeps an mr x nr block of the result in vector registers (GCC/Clang
vector extensions, so one source serves AVX2, AVX-512 and NEON) and streams packed
slivers of a (mr floats per k) and b (nr floats per k) through them. Around it, the
classic loops: b packed once into nr-wide panels (or pre-packed weights); a read in
place or packed per (mc x kc) block into a thread-local buffer; per k block, the b
panels of one L2-sized block (kc x nc) stream past each mr x kc sliver of a, which
stays in L1, and the first sliver's pass prefetches the next b sliver into L2 (weights
come from memory at batch 1). Tasks are (batch, row block, column chunk); with few
rows the columns are split first, so each thread streams only its own part of b. Each
tile gets its epilogue the moment its last k block is written, while it is in L1.

Two kinds of b besides a strided matrix: int8 weights, kept packed as int8 and widened
(times their per-column scales) one L2 block at a time into a thread's workspace; and a
convolution's input, whose im2col matrix is gathered straight into the panels.
"""
from __future__ import annotations

from dnet.core.dtypes import DType
from dnet.kernel.ir import Gemm, GemmTile, Ref

# The tile's defaults (`GemmTile`: read row-major a in place, 4 k steps a trip, 4 tasks a thread) were
# measured on MiniLM at batch 1 and 8 and on 1024^3-2048^3; `dnet tune` may pick others per Gemm.


def ukernel_name(tile: GemmTile) -> str:
    """The suffix of a tile's micro-kernels: its register block, and its unroll where not the default."""
    return f"{tile.mr}x{tile.nr}" + ("" if tile.unroll == 4 else f"_u{tile.unroll}")


def support(tile: GemmTile, unrolls: tuple[int, ...] | None = None) -> str:
    """Packing routines and the micro-kernels for one register block (emitted once per library), with
    micro-kernels for each unroll in `unrolls` (default: the tile's own).

    Besides the full mr-row micro-kernel there are ones for a third and two thirds of mr
    rows, so the last sliver of a block (128 rows = 10 x 12 + 8) does not compute rows
    that are thrown away; `dn_ukernel[_direct]_{mr}x{nr}` picks the smallest that covers.
    """
    mr, nr, lanes = tile.mr, tile.nr, tile.lanes
    sfx = f"{mr}x{nr}"
    kernels = "".join(_dispatch(tile, GemmTile(**{**vars(tile), "unroll": u}))
                      for u in sorted(set(unrolls or (tile.unroll,))))
    return f"""
typedef float dn_vf{sfx} __attribute__((vector_size({lanes * 4})));
typedef float dn_vfu{sfx} __attribute__((vector_size({lanes * 4}), aligned(4)));

/* a thread's own workspace: slot 0 packs a, slot 1 widens int8 b */
static float* dn_workspace_{sfx}(int slot, int64_t n) {{
    static _Thread_local float* buf[2] = {{0, 0}};
    static _Thread_local int64_t cap[2] = {{0, 0}};
    if (cap[slot] < n) {{
        free(buf[slot]);
        buf[slot] = (float*)aligned_alloc(64, (size_t)((n * 4 + 63) / 64 * 64));
        cap[slot] = n;
    }}
    return buf[slot];
}}

/* kc rows of one int8 panel -> f32, each column times its scale (the weight the int8 one stands for) */
static void dn_widen_{sfx}(int64_t kc, const int8_t* restrict q, const float* restrict scale, float* restrict dst) {{
    for (int64_t kk = 0; kk < kc; ++kk)
        for (int64_t jj = 0; jj < {nr}; ++jj) dst[kk * {nr} + jj] = (float)q[kk * {nr} + jj] * scale[jj];
}}

/* b (k x n, strides rs/cs) -> panels of {nr} columns: panel p holds k rows of {nr} floats.
   Panels [p0, p1) are packed row by row, so b is read along its rows (pages, not strides). */
static void dn_pack_b_panels_{sfx}(int64_t k, int64_t n, int64_t p0, int64_t p1, const float* b, int64_t rs,
                                   int64_t cs, float* dst) {{
    for (int64_t kk = 0; kk < k; ++kk) {{
        const float* row = b + kk * rs;
        for (int64_t p = p0; p < p1; ++p) {{
            const int64_t j0 = p * {nr}, nn = n - j0 < {nr} ? n - j0 : {nr};
            float* d = dst + p * {nr} * k + kk * {nr};
            if (cs == 1 && nn == {nr}) {{ memcpy(d, row + j0, {nr} * sizeof(float)); continue; }}
            for (int64_t jj = 0; jj < {nr}; ++jj) d[jj] = jj < nn ? row[(j0 + jj) * cs] : 0.0f;
        }}
    }}
}}

/* a convolution's input x (one image) read as its im2col matrix (row k = (c, y, z), column j = (oh, ow)),
   panels [p0, p1) packed like dn_pack_b_panels; pixels outside the image are 0. Per row k, the columns
   run along output rows: each output row reads one input row, from column q * sw + z * dw - left,
   which is inside the image for q in [qlo, qhi) (so the copy loop has no test per element). */
static void dn_pack_im2col_{sfx}(int64_t k, int64_t n, int64_t p0, int64_t p1, const float* x, int64_t h,
                                 int64_t w, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh, int64_t dw,
                                 int64_t top, int64_t left, int64_t ow, int64_t xc, int64_t xh, int64_t xw,
                                 float* dst) {{
    const int64_t j1 = p1 * {nr} < n ? p1 * {nr} : n, step = sw * xw;
    for (int64_t kk = 0; kk < k; ++kk) {{
        const int64_t c = kk / (kh * kw), y = kk / kw % kh, off = kk % kw * dw - left;
        const int64_t qlo = off >= 0 ? 0 : (-off + sw - 1) / sw;
        int64_t qhi = w - off <= 0 ? 0 : (w - off + sw - 1) / sw;
        qhi = qhi < ow ? qhi : ow;
        int64_t j = p0 * {nr}, r = j / ow, q = j % ow;
        while (j < j1) {{   /* one output row (or the part of it in these panels) */
            const int64_t hh = r * sh + y * dh - top, end = j + (ow - q) < j1 ? j + (ow - q) : j1;
            const float* row = hh >= 0 && hh < h ? x + c * xc + hh * xh + off * xw : 0;
            while (j < end) {{   /* to the end of the row or of the panel */
                const int64_t stop = end - j < {nr} - j % {nr} ? end : j + {nr} - j % {nr}, q1 = q + stop - j;
                float* d = dst + j / {nr} * {nr} * k + kk * {nr} + j % {nr};
                const int64_t a = row ? (qlo > q ? (qlo < q1 ? qlo : q1) : q) : q1;
                const int64_t b = row ? (qhi < q1 ? (qhi > a ? qhi : a) : q1) : q1;
                for (; q < a; ++q) *d++ = 0.0f;
                if (step == 1) for (; q < b; ++q) *d++ = row[q];
                else for (; q < b; ++q) *d++ = row[q * step];
                for (; q < q1; ++q) *d++ = 0.0f;
                j = stop;
            }}
            q = 0;
            ++r;
        }}
        for (; j < p1 * {nr}; ++j) dst[j / {nr} * {nr} * k + kk * {nr} + j % {nr}] = 0.0f;   /* past the last pixel */
    }}
}}

/* rows [0, mc) x depth [0, kc) of a -> slivers of {mr} rows: sliver s holds kc columns of {mr} floats */
static void dn_pack_a_{sfx}(int64_t mc, int64_t kc, const float* a, int64_t rs, int64_t cs, float* dst) {{
    if (cs == 1) {{   /* row-major a: {mr} rows read side by side, each sliver written in order */
        for (int64_t s = 0; s < mc; s += {mr}) {{
            const int64_t mm = mc - s < {mr} ? mc - s : {mr};
            const float* src[{mr}];
            for (int64_t ii = 0; ii < {mr}; ++ii) src[ii] = a + (s + (ii < mm ? ii : 0)) * rs;
            if (s + {mr} < mc)   /* the next sliver's rows, while this one is copied */
                for (int64_t ii = 0; ii < {mr} && s + {mr} + ii < mc; ++ii)
                    for (int64_t kk = 0; kk < kc; kk += 16) __builtin_prefetch(a + (s + {mr} + ii) * rs + kk, 0, 3);
            float* d = dst + s * kc;
            if (mm == {mr})   /* a whole sliver: no test per element */
                for (int64_t kk = 0; kk < kc; ++kk, d += {mr})
                    for (int64_t ii = 0; ii < {mr}; ++ii) d[ii] = src[ii][kk];
            else
                for (int64_t kk = 0; kk < kc; ++kk, d += {mr})
                    for (int64_t ii = 0; ii < {mr}; ++ii) d[ii] = ii < mm ? src[ii][kk] : 0.0f;
        }}
        return;
    }}
    for (int64_t s = 0; s < mc; s += {mr}) {{
        const int64_t mm = mc - s < {mr} ? mc - s : {mr};
        float* d = dst + s * kc;
        for (int64_t ii = 0; ii < {mr}; ++ii) {{
            if (ii < mm) {{
                const float* src = a + (s + ii) * rs;
                for (int64_t kk = 0; kk < kc; ++kk) d[kk * {mr} + ii] = src[kk * cs];
            }} else {{
                for (int64_t kk = 0; kk < kc; ++kk) d[kk * {mr} + ii] = 0.0f;
            }}
        }}
    }}
}}

{transpose_sum(lanes, sfx)}
{kernels}
"""


def _dispatch(tile: GemmTile, unrolled: GemmTile) -> str:
    """The micro-kernels of one unroll for each row count, and the two that pick among them."""
    name = ukernel_name(unrolled)
    counts = sorted({tile.mr} | {tile.mr * i // 3 for i in (1, 2) if tile.mr * i // 3 > 0})
    kernels = "".join(_ukernels(unrolled, rows) for rows in counts)
    rest = "b, c, ldc, add, mr, nr, pf"
    packed = " ".join(f"if (mr <= {n}) {{ dn_ukernel_{name}_r{n}(kc, a, {rest}); return; }}" for n in counts)
    direct = " ".join(f"if (mr <= {n}) {{ dn_ukernel_direct_{name}_r{n}(kc, a, lda, {rest}); return; }}" for n in counts)
    return f"""{kernels}
static inline void dn_ukernel_{name}(int64_t kc, const float* restrict a, const float* restrict b,
                                    float* restrict c, int64_t ldc, int add, int64_t mr, int64_t nr,
                                    const float* pf) {{
    {packed}
}}

static inline void dn_ukernel_direct_{name}(int64_t kc, const float* restrict a, int64_t lda, const float* restrict b,
                                           float* restrict c, int64_t ldc, int add, int64_t mr, int64_t nr,
                                           const float* pf) {{
    {direct}
}}
"""


def _ukernels(tile: GemmTile, count: int) -> str:
    """The packed and the direct micro-kernel computing `count` rows of an mr x nr tile."""
    mr, nr, lanes = tile.mr, tile.nr, tile.lanes
    sfx = f"{mr}x{nr}"
    name = f"{ukernel_name(tile)}_r{count}"
    unroll = f"#pragma GCC unroll {tile.unroll}"
    nv = nr // lanes
    acc = [[f"c{i}_{v}" for v in range(nv)] for i in range(count)]
    decl = "\n".join(f"    dn_vf{sfx} " + ", ".join(f"{a} = {{0}}" for a in row) + ";" for row in acc)
    loads = "\n".join(f"        const dn_vf{sfx} b{v} = *(const dn_vfu{sfx}*)(b + {v * lanes});" for v in range(nv))
    fmas = "\n".join(f"        {{ const float a{i} = a[{i}]; " + " ".join(f"{acc[i][v]} += a{i} * b{v};" for v in range(nv)) + " }"
                     for i in range(count))
    full_store = "\n".join(
        f"        {{ dn_vfu{sfx}* r = (dn_vfu{sfx}*)(c + {i} * ldc + {v * lanes}); *r = add ? *r + {acc[i][v]} : {acc[i][v]}; }}"
        for i in range(count) for v in range(nv))
    tmp_store = "\n".join(f"        *(dn_vfu{sfx}*)(t + {i * nr + v * lanes}) = {acc[i][v]};" for i in range(count) for v in range(nv))
    store = f"""    if (mr == {count} && nr == {nr}) {{
{full_store}
    }} else {{
        float t[{count * nr}];
{tmp_store}
        for (int64_t i = 0; i < mr; ++i)
            for (int64_t j = 0; j < nr; ++j)
                c[i * ldc + j] = add ? c[i * ldc + j] + t[i * {nr} + j] : t[i * {nr} + j];
    }}"""
    # pf runs over the b sliver the next call will read, so it is in L2 before that call asks
    prefetch = "\n".join(f"        __builtin_prefetch(pf + {o}, 0, 2);" for o in range(0, nr, 16))
    rows = "\n".join(f"    const float* restrict a{i} = a + ({i} < mr ? {i} : 0) * lda;" for i in range(count))
    direct_fmas = "\n".join(f"        {{ const float x{i} = a{i}[k]; " + " ".join(f"{acc[i][v]} += x{i} * b{v};" for v in range(nv))
                             + " }" for i in range(count))
    # the tile's rows of c are read (and written) after the k loop: fetched while it runs
    cpf = "\n".join(f"    __builtin_prefetch(c + ({i} < mr ? {i} : 0) * ldc + {o}, 1, 3);" for i in range(count) for o in range(0, nr, 16))
    return f"""
/* c[0:mr, 0:nr] (+)= a_sliver . b_panel over kc, for mr <= {count} (a slivers hold {mr} rows) */
static inline void dn_ukernel_{name}(int64_t kc, const float* restrict a, const float* restrict b,
                                    float* restrict c, int64_t ldc, int add, int64_t mr, int64_t nr,
                                    const float* pf) {{
{decl}
{cpf}
    {unroll}
    for (int64_t k = 0; k < kc; ++k, a += {mr}, b += {nr}, pf += {nr}) {{
{prefetch}
{loads}
{fmas}
    }}
{store}
}}

/* the same, reading a where it lies: mr rows at stride lda, contiguous along k (no packing) */
static inline void dn_ukernel_direct_{name}(int64_t kc, const float* restrict a, int64_t lda, const float* restrict b,
                                           float* restrict c, int64_t ldc, int add, int64_t mr, int64_t nr,
                                           const float* pf) {{
{decl}
{cpf}
{rows}
    {unroll}
    for (int64_t k = 0; k < kc; ++k, b += {nr}, pf += {nr}) {{
{prefetch}
{loads}
{direct_fmas}
    }}
{store}
}}
"""


def render_gemm(r, g: Gemm, pad: str) -> list[str]:
    """The body of a Gemm kernel (`r` is the CRenderer of the kernel): sizes, then two pool loops."""
    if g.a.dtype is not DType.F32:   # int8 or bf16 activations against a packed weight of the same kind
        from dnet.backends.c.igemm import render_low_precision

        return render_low_precision(r, g, pad)
    t = g.tile
    sfx = f"{t.mr}x{t.nr}"
    ix = r.index
    nbatch = "*".join(["1"] + [ix(b) for b in g.batch])
    lines = [
        f"const int64_t g_M = {ix(g.m)}, g_N = {ix(g.n)}, g_K = {ix(g.k)}, g_NB = {nbatch};",
        f"const int64_t g_panels = (g_N + {t.nr - 1}) / {t.nr};",
        "const int64_t g_nt = g_NB > 0 ? dn_threads() : 1;   /* an empty batch: no tasks to share */",
        f"const int64_t g_S = (g_M + {t.mr - 1}) / {t.mr};   /* slivers of mr rows */",
        f"int64_t g_mblocks = (g_S + {t.mc // t.mr - 1}) / {t.mc // t.mr}, g_chunks = 1;   /* row blocks of <= mc rows */",
        "/* fewer row blocks than threads: split the columns first, into chunks of 2 panels or more (a",
        "   thread then streams only its part of b, through its own L2); then rows until `spread` tasks a thread */",
        f"while (g_nt > 1 && g_mblocks * g_NB < g_nt && g_mblocks * g_NB * g_chunks < {t.spread} * g_nt",
        "       && 2 * g_chunks + 2 <= g_panels) g_chunks++;",
        f"if (g_nt > 1 && g_mblocks * g_NB * g_chunks < {t.spread} * g_nt) "
        f"g_mblocks = ({t.spread} * g_nt + g_NB * g_chunks - 1) / (g_NB * g_chunks);",
        "/* a multiple of the threads, so they balance without splitting columns (which packs a again) */",
        "while (g_nt > 1 && (g_mblocks * g_NB) % g_nt && g_mblocks < g_S) g_mblocks++;",
        "if (g_mblocks > g_S || g_mblocks < 1) g_mblocks = g_S > 0 ? g_S : 1;   /* no rows: one empty block */",
        f"const int64_t g_mc = (g_S + g_mblocks - 1) / g_mblocks * {t.mr};   /* the largest block; all within a sliver */",
        "/* split the columns further (each split reads a again) until the threads balance */",
        "while (g_chunks < g_panels && (g_mblocks * g_NB * g_chunks < g_nt",
        f"       || ((g_mblocks * g_NB * g_chunks) % g_nt && g_mblocks * g_NB * g_chunks < {2 * t.spread} * g_nt))) "
        "g_chunks++;",
        "const int64_t g_per_chunk = g_panels > 0 ? (g_panels + g_chunks - 1) / g_chunks : 1;   /* N = 0: no tasks */",
        "g_chunks = (g_panels + g_per_chunk - 1) / g_per_chunk;   /* no empty chunks */",
        "const int64_t g_tasks = g_mblocks * g_chunks;",
        f"const int64_t g_kcb = g_K <= {t.kc * 3 // 2} ? g_K : {t.kc};   /* one k block when K is a little over kc */",
        # panels of b per block kept in L2 (kc x nc floats; the actual k block may be up to 1.5 kc)
        f"const int64_t g_ncp = g_kcb * {t.nr} >= {t.nc * t.kc} || g_kcb == 0 ? 1 : {t.nc * t.kc} / (g_kcb * {t.nr});",
    ]
    r.locals += [("const int64_t", n) for n in ("g_M", "g_N", "g_K", "g_NB", "g_panels", "g_S", "g_mc", "g_mblocks",
                                                "g_chunks", "g_per_chunk", "g_tasks", "g_kcb", "g_ncp")]
    out = [pad + x for x in lines]
    small = _small_m(r, g) if not g.b.packed and g.b.im2col is None else None
    if small is not None:
        out += [pad + f"if (g_M <= {SMALL_M}) {{"] + r.outline(small, "g_NB * ((g_N + 63) / 64)", "1", pad + "    ")
        out += [pad + "} else {"]
        pad += "    "
    if not g.b.packed:
        pack = ["for (int64_t g_flat = g_begin; g_flat < g_end; ++g_flat) {   /* groups of 8 panels */",
                "    const int64_t g_groups = (g_panels + 7) / 8, g_bb = g_flat / g_groups, g_p = g_flat % g_groups * 8;",
                *[f"    {x}" for x in _batch_decl("g_bb", g, r)],
                f"    {_pack_b_call(g, sfx, ix)}"
                f"{g.scratch} + g_bb * g_panels * {t.nr} * g_K);",
                "}"]
        out += r.outline(pack, "g_NB * ((g_panels + 7) / 8)", f"(g_K * {8 * t.nr} >= 16384 || g_K <= 0 ? 1 : 16384 / (g_K * {8 * t.nr}))", pad)
    # a with unit column stride (row-major activations) is read in place, unless its rows lie a
    # multiple of 4 KiB apart (all in one L1 set); otherwise it is packed block by block
    direct = g.a.col_stride == 1 and t.direct_a
    out.append(pad + f"const int g_direct = {'1' if direct else '0'} && ({ix(g.a.row_stride)} * 4) % 4096 != 0;")
    r.locals.append(("const int", "g_direct"))
    packed_call = f"dn_ukernel_{ukernel_name(t)}(g_kc, g_apack + g_ir * g_kc"
    direct_call = (f"dn_ukernel_direct_{ukernel_name(t)}(g_kc, {g.a.buffer} + g_off_a + (g_i0 + g_ir) * {ix(g.a.row_stride)} "
                   f"+ g_pc, {ix(g.a.row_stride)}")
    bpan = g.b.buffer if g.b.packed else f"{g.scratch} + g_bb * g_panels * {t.nr} * g_K"
    int8 = bool(g.b.scale)
    task = [
        "for (int64_t g_flat = g_begin; g_flat < g_end; ++g_flat) {",
        "    const int64_t g_bb = g_flat / g_tasks, g_task = g_flat % g_tasks;",
        *[f"    {x}" for x in _batch_decl("g_bb", g, r)],
        "    const int64_t g_blk = g_task / g_chunks, g_i0 = g_blk * g_S / g_mblocks * %d;" % t.mr,
        "    const int64_t g_i1 = (g_blk + 1) * g_S / g_mblocks * %d, g_mcur = (g_i1 < g_M ? g_i1 : g_M) - g_i0;" % t.mr,
        "    const int64_t g_p0 = g_task % g_chunks * g_per_chunk;",
        "    const int64_t g_p1 = g_p0 + g_per_chunk < g_panels ? g_p0 + g_per_chunk : g_panels;",
        f"    const {'int8_t' if int8 else 'float'}* g_bpan = {bpan};",
        f"    float* g_apack = g_direct ? 0 : dn_workspace_{sfx}(0, g_mc * g_kcb); (void)g_apack;",
        *([f"    float* g_bwide = dn_workspace_{sfx}(1, g_ncp * {t.nr} * g_kcb);"] if int8 else []),
        "    float* g_cblock = out + g_bb * g_M * g_N;",
        "    for (int64_t g_pc = 0; g_pc == 0 || g_pc < g_K; g_pc += g_kcb) {  /* once, with kc = 0, when K = 0 */",
        "        const int64_t g_kc = g_K - g_pc < g_kcb ? g_K - g_pc : g_kcb;",
        *([f"        if (!g_direct) dn_pack_a_{sfx}(g_mcur, g_kc, {g.a.buffer} + g_off_a + g_i0 * {ix(g.a.row_stride)} + "
            f"g_pc * {ix(g.a.col_stride)}, {ix(g.a.row_stride)}, {ix(g.a.col_stride)}, g_apack);"]),
        "        for (int64_t g_jc = g_p0; g_jc < g_p1; g_jc += g_ncp) {",
        "        const int64_t g_jc1 = g_jc + g_ncp < g_p1 ? g_jc + g_ncp : g_p1;",
        # int8 weights: this L2 block widened (and scaled) to f32 once, for every sliver of a
        *([f"        for (int64_t g_p = g_jc; g_p < g_jc1; ++g_p) dn_widen_{sfx}(g_kc, g_bpan + g_p * {t.nr} * g_K "
           f"+ g_pc * {t.nr}, {g.b.scale} + g_p * {t.nr}, g_bwide + (g_p - g_jc) * {t.nr} * g_kc);"] if int8 else []),
        # an mr x kc sliver of a stays in L1 while the b panels of one L2 block stream past it
        f"        for (int64_t g_ir = 0; g_ir < g_mcur; g_ir += {t.mr}) {{",
        f"            const int64_t g_mr = g_mcur - g_ir < {t.mr} ? g_mcur - g_ir : {t.mr};",
        "            for (int64_t g_p = g_jc; g_p < g_jc1; ++g_p) {",
        f"                const int64_t g_j0 = g_p * {t.nr}, g_nr = g_N - g_j0 < {t.nr} ? g_N - g_j0 : {t.nr};",
        "                float* g_c = g_cblock + (g_i0 + g_ir) * g_N + g_j0;",
        *([f"                const float* g_bcur = g_bwide + (g_p - g_jc) * {t.nr} * g_kc, * g_pf = g_bcur;"] if int8 else [
            f"                const float* g_bcur = g_bpan + g_p * {t.nr} * g_K + g_pc * {t.nr};",
            f"                const float* g_pf = g_ir == 0 && g_p + 1 < g_jc1 ? g_bcur + {t.nr} * g_K : g_bcur;"]),
        *_ukernel_calls(direct, direct_call, packed_call, ", g_bcur, g_c, g_N, g_pc > 0, g_mr, g_nr, g_pf);"),
    ]
    epilogue = _epilogue(r, g, "g_c", "(g_i0 + g_ir)", "g_j0")
    if epilogue:
        task.append("                if (g_pc + g_kc >= g_K) {")
        task += [f"                    {x}" for x in epilogue]
        task.append("                }")
    task += ["            }", "        }", "        }", "    }", "}"]
    out += r.outline(task, "g_NB * g_tasks", "1", pad)
    return out + ([pad[:-4] + "}"] if small is not None else [])


SMALL_M = 4   # rows of a at most for which a Gemm skips packing: a decode step's attention (a few query rows)


def _small_m(r, g: Gemm) -> list[str]:
    """A few rows of a against an unpacked b, read where it lies, 64 columns a task: packing b for
    so few rows would cost more than the product. Dot products when b's rows are contiguous along k
    (q @ k^T over a KV cache), row updates when they are contiguous along n (p @ v); each vectorised
    where the host has vectors and the operands lie along them (`_dot_rows`, `_update_rows`)."""
    ix = r.index
    a_at = f"{g.a.buffer}[g_off_a + g_i * {ix(g.a.row_stride)} + g_k * {ix(g.a.col_stride)}]"
    b_at = f"{g.b.buffer}[g_off_b + g_k * {ix(g.b.row_stride)} + (g_j0 + g_jj) * {ix(g.b.col_stride)}]"
    vectors = g.tile.lanes > 1
    if g.b.col_stride == 1:
        plain = ["for (int64_t g_jj = 0; g_jj < g_nr; ++g_jj) g_c[g_i * g_N + g_jj] = 0;",
                 "for (int64_t g_k = 0; g_k < g_K; ++g_k) {",
                 f"    const float g_av = {a_at};",
                 "    #pragma omp simd",
                 f"    for (int64_t g_jj = 0; g_jj < g_nr; ++g_jj) g_c[g_i * g_N + g_jj] += g_av * {b_at};",
                 "}"]
        fast = _update_rows(r, g) if vectors else None
    else:
        plain = ["for (int64_t g_jj = 0; g_jj < g_nr; ++g_jj) {",
                 "    float g_acc = 0;",
                 "    #pragma omp simd reduction(+:g_acc)",
                 f"    for (int64_t g_k = 0; g_k < g_K; ++g_k) g_acc += {a_at} * {b_at};",
                 "    g_c[g_i * g_N + g_jj] = g_acc;",
                 "}"]
        fast = _dot_rows(r, g) if vectors and g.b.row_stride == 1 and g.a.col_stride == 1 else None
    last = ix(g.batch[-1]) if g.batch else "1"
    rows = ["for (int64_t g_i = 0; g_i < g_M; ++g_i) {", *[f"    {x}" for x in plain], "}"]
    if fast is not None:   # None: the fast path covers every case
        condition, lines = fast
        rows = lines if condition is None else \
            [f"if ({condition}) {{", *[f"    {x}" for x in lines], "} else {", *[f"    {x}" for x in rows], "}"]
    return ["for (int64_t g_flat = g_begin; g_flat < g_end; ++g_flat) {",
            # tasks run chunk by chunk across the last batch axis (a KV cache's heads): the heads of one
            # run of positions lie side by side, so they are read together, not in a pass per head
            f"    const int64_t g_chunks64 = (g_N + 63) / 64, g_last = {last};",
            "    const int64_t g_run = g_flat % (g_chunks64 * g_last), g_bb = g_flat / (g_chunks64 * g_last) * g_last + g_run % g_last;",
            "    const int64_t g_j0 = g_run / g_last * 64, g_nr = g_N - g_j0 < 64 ? g_N - g_j0 : 64, g_mr = g_M;",
            *[f"    {x}" for x in _batch_decl("g_bb", g, r)],
            "    float* g_c = out + g_bb * g_M * g_N + g_j0;",
            *[f"    {x}" for x in rows],
            *[f"    {x}" for x in _epilogue(r, g, "g_c", "0", "g_j0")],
            "}"]


def _update_rows(r, g: Gemm) -> tuple[str, list[str]]:
    """(condition, code): a whole 64-column chunk of c as row updates held in registers, 4 vectors a row
    a pass, each b row loaded once for every row of a (the plain loop reloads and stores c for each k)."""
    ix, lanes, t = r.index, g.tile.lanes, g.tile
    vf, vfu, nv = f"dn_vf{t.mr}x{t.nr}", f"dn_vfu{t.mr}x{t.nr}", 4
    width = nv * lanes
    lines = [f"for (int64_t g_c0 = 0; g_c0 < 64; g_c0 += {width}) {{"]
    for m in range(1, SMALL_M + 1):
        acc = [[f"g_s{i}_{v}" for v in range(nv)] for i in range(m)]
        a = [f"{g.a.buffer}[g_off_a + {i} * {ix(g.a.row_stride)} + g_k * {ix(g.a.col_stride)}]" for i in range(m)]
        lines += [f"    {'if' if m == 1 else 'else if'} (g_M == {m}) {{",
                  *[f"        {vf} " + ", ".join(f"{x} = {{0}}" for x in row) + ";" for row in acc],
                  "        for (int64_t g_k = 0; g_k < g_K; ++g_k) {",
                  f"            const float* g_b = {g.b.buffer} + g_off_b + g_k * {ix(g.b.row_stride)} + g_j0 + g_c0;",
                  *[f"            const {vf} g_b{v} = *(const {vfu}*)(g_b + {v * lanes});" for v in range(nv)],
                  *[f"            {{ const float g_a = {a[i]}; " + " ".join(f"{acc[i][v]} += g_a * g_b{v};" for v in range(nv))
                    + " }" for i in range(m)],
                  "        }",
                  *[f"        *({vfu}*)(g_c + {i} * g_N + g_c0 + {v * lanes}) = {acc[i][v]};" for i in range(m) for v in range(nv)],
                  "    }"]
    lines.append("}")
    return "g_nr == 64", lines


def _dot_rows(r, g: Gemm) -> tuple[None, list[str]]:
    """(None: no condition, code): dot products a vector of k at a time, `lanes` columns of c at once: each column's
    partial sums stay a vector, and one transposing sum (`dn_transpose_sum`) turns `lanes` of them into
    `lanes` results (a horizontal sum per result costs about as much as its products); k past the last
    whole vector is added one by one."""
    ix, lanes, t = r.index, g.tile.lanes, g.tile
    sfx = f"{t.mr}x{t.nr}"
    vf, vfu = f"dn_vf{sfx}", f"dn_vfu{sfx}"
    k = ix(g.k)
    return None, [
        f"const int64_t g_kv = {k} / {lanes} * {lanes};   /* k in whole vectors */",
        f"for (int64_t g_jb = 0; g_jb < g_nr; g_jb += {lanes}) {{",
        f"    const int64_t g_nb = g_nr - g_jb < {lanes} ? g_nr - g_jb : {lanes};",
        "    for (int64_t g_i = 0; g_i < g_M; ++g_i) {",
        f"        const float* g_a = {g.a.buffer} + g_off_a + g_i * {ix(g.a.row_stride)};",
        f"        {vf} g_t[{lanes}];",
        f"        for (int64_t g_jj = 0; g_jj < {lanes}; ++g_jj) {{   /* past the last column: column 0 again, unused */",
        f"            const float* g_b = {g.b.buffer} + g_off_b + (g_j0 + g_jb + (g_jj < g_nb ? g_jj : 0)) * {ix(g.b.col_stride)};",
        f"            {vf} g_s = {{0}};",
        f"            for (int64_t g_k = 0; g_k < g_kv; g_k += {lanes}) g_s += *(const {vfu}*)(g_a + g_k) * *(const {vfu}*)(g_b + g_k);",
        "            g_t[g_jj] = g_s;",
        "        }",
        f"        float g_o[{lanes}];",
        f"        *({vfu}*)g_o = dn_transpose_sum_{sfx}(g_t);",
        "        for (int64_t g_jj = 0; g_jj < g_nb; ++g_jj) {",
        f"            const float* g_b = {g.b.buffer} + g_off_b + (g_j0 + g_jb + g_jj) * {ix(g.b.col_stride)};",
        f"            for (int64_t g_k = g_kv; g_k < {k}; ++g_k) g_o[g_jj] += g_a[g_k] * g_b[g_k];",
        "            g_c[g_i * g_N + g_jb + g_jj] = g_o[g_jj];",
        "        }",
        "    }",
        "}"]


def transpose_sum(lanes: int, sfx: str) -> str:
    """C: the sums of `lanes` vectors, as one vector (lane j: the sum of vector j's lanes). Each level pairs
    the vectors and adds the halves of each one's items, so the items double and their widths halve:
    lanes - 1 additions and twice as many shuffles for `lanes` sums."""
    if lanes <= 1:
        return ""
    lines, names, width = [], [f"t[{j}]" for j in range(lanes)], lanes
    level = 0
    while width > 1:
        items, half = lanes // width, width // 2
        lo = [item * width + x for item in range(items) for x in range(half)]
        hi = [item * width + half + x for item in range(items) for x in range(half)]
        lo, hi = lo + [lanes + i for i in lo], hi + [lanes + i for i in hi]
        out = []
        for p in range(0, len(names), 2):
            x, y, name = names[p], names[p + 1], f"u{level}_{p // 2}"
            lines.append(f"    const dn_vf{sfx} {name} = __builtin_shufflevector({x}, {y}, {', '.join(map(str, lo))})"
                         f" + __builtin_shufflevector({x}, {y}, {', '.join(map(str, hi))});")
            out.append(name)
        names, width, level = out, half, level + 1
    body = "\n".join(lines)
    return f"""
static inline dn_vf{sfx} dn_transpose_sum_{sfx}(const dn_vf{sfx}* t) {{
{body}
    return {names[0]};
}}
"""


def _pack_b_call(g: Gemm, sfx: str, ix) -> str:
    """The call packing panels [g_p, g_p + 8) of b (all but the destination argument)."""
    panels = "g_K, g_N, g_p, g_p + 8 < g_panels ? g_p + 8 : g_panels"
    c = g.b.im2col
    if c is None:
        return f"dn_pack_b_panels_{sfx}({panels}, {g.b.buffer} + g_off_b, {ix(g.b.row_stride)}, {ix(g.b.col_stride)}, "
    geometry = ", ".join(ix(v) for v in (c.height, c.width, *c.kernel, *c.stride, *c.dilation, *c.pad, c.out_width,
                                          *c.strides))
    return f"dn_pack_im2col_{sfx}({panels}, {g.b.buffer} + g_off_b, {geometry}, "


def _ukernel_calls(direct: bool, direct_call: str, packed_call: str, rest: str) -> list[str]:
    pad = "                "
    if not direct:
        return [pad + packed_call + rest]
    return [f"{pad}if (g_direct) {direct_call}{rest}", f"{pad}else {packed_call}{rest}"]


def _batch_decl(var: str, g: Gemm, r) -> list[str]:
    """Decompose the flat batch index into the batch variables and operand offsets."""
    out = []
    rest = var
    names = g.vars[:-2]
    for k in reversed(range(len(names))):
        out.append(f"const int64_t {names[k]} = ({rest}) % {r.index(g.batch[k])};")
        rest = f"({rest}) / {r.index(g.batch[k])}"
    off_a = " + ".join([r.index(g.a.offset)] + [f"{n} * {r.index(s)}" for n, s in zip(names, g.a.batch_strides)])
    off_b = " + ".join([r.index(g.b.offset)] + [f"{n} * {r.index(s)}" for n, s in zip(names, g.b.batch_strides)])
    out.append(f"const int64_t g_off_a = {off_a}; (void)g_off_a;")
    out.append(f"const int64_t g_off_b = {off_b}; (void)g_off_b;")
    return out


def _epilogue(r, g: Gemm, tile: str, row0: str, col0: str) -> list[str]:
    """Apply the epilogue to the tile just written (empty when the epilogue is the identity)."""
    if isinstance(g.epilogue, Ref) and g.epilogue.name == "acc" and not g.epilogue_lets:
        return []
    i, j = g.vars[-2], g.vars[-1]
    body = [f"const int64_t {i} = {row0} + g_ii;"]
    inner = [f"const int64_t {j} = {col0} + g_jj;", f"const float acc = {tile}[g_ii * g_N + g_jj];"]
    inner += [x for s in g.epilogue_lets for x in r.stmt(s, "")]
    inner.append(f"{tile}[g_ii * g_N + g_jj] = {r.expr(g.epilogue)};")
    return (["for (int64_t g_ii = 0; g_ii < g_mr; ++g_ii) {"] + ["    " + x for x in body]
            + ["    #pragma omp simd", "    for (int64_t g_jj = 0; g_jj < g_nr; ++g_jj) {"]
            + ["        " + x for x in inner] + ["    }", "}"])
