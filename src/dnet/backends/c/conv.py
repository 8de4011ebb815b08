"""The C form of a convolution `Gemm` (its b an `Im2col` view of the input): direct, no im2col pass.

The scheduler makes an f32 convolution a Gemm, out[image, group] (O x OH*OW) = w (O x C*KH*KW) times
the im2col matrix of x (`kernel/gemm.py`); the LLVM and OpenCL backends gather that matrix into
panels. Here the matrix is never gathered. Each task copies a band of output rows' worth of the
input, once, into a padded *phase image* in the thread's own workspace:

    image[c][phase (py, px)][r][q] = x[c][r * sh + py - top][q * sw + px - left]   (0 outside x)

for the phases (py, px) = ((y * dh) % sh, (z * dw) % sw) the kernel's taps use (one for a stride of 1,
and for a 1x1 kernel of any stride). Tap (y, z) of output pixel (oh, ow) is then element
(oh + y * dh // sh, ow + z * dw // sw) of its phase plane, and the output pixels are numbered
j = oh * WQ + ow, WQ the plane's width: for every tap, consecutive j read consecutive floats. The
micro-kernel keeps an MR x NR block of the output (MR output channels, NR values of j) in vector
registers and, per input channel and tap, loads NR floats of the image and broadcasts MR weights:
the Gemm's micro-kernel with b read straight from the image, at a fixed offset per tap. Columns with
ow >= OW (the plane's padding, (KW - 1) * dw // sw of every WQ) are computed and dropped when the
tile is stored with the Gemm's epilogue (bias, ReLU, a residual add). The copy is one pass over the
input (im2col's is KH * KW / (sh * sw) of them), and the weights are read where they lie, OIHW.

A depthwise convolution (one output channel per group) is the same code with one row and a wider
tile (NRW values of j, several accumulators to hide the FMA latency), a task per (image, channel, band).

Paths, chosen when the node's compiler builds the library (its `-march=native` macros), same results
within f32 rounding of the sums:

  avx512     16-lane vectors, MR = 12, NR = 32, NRW = 128 (24 accumulators of 32 registers)
  avx2        8-lane vectors, MR = 6,  NR = 16, NRW = 64  (12 of 16)
  portable    4-lane generic vectors, MR = 4, NR = 8, NRW = 16 (any GCC/Clang target)

`-DDN_CONV_NO_AVX512` forces the AVX2 path, `-DDN_CONV_PORTABLE` the portable one;
`dnet_conv_path()` in the library names the path it was built with.
"""
from __future__ import annotations

import dataclasses
import re

from dnet.backends.c.gemm import _batch_decl
from dnet.kernel.ir import Gemm, Load

DIRECT = True   # False: the im2col Gemm of `backends/c/gemm.py` instead (kept to compare: benchmarks/conv.py --im2col)
# path name, preprocessor condition, lanes, MR (rows), NR and NRW in vectors
PATHS = [
    ("avx512", "defined(__AVX512F__) && !defined(DN_CONV_NO_AVX512) && !defined(DN_CONV_PORTABLE)", 16, 12, 2, 8),
    ("avx2", "defined(__AVX2__) && defined(__FMA__) && !defined(DN_CONV_PORTABLE)", 8, 6, 2, 8),
    ("portable", "", 4, 4, 2, 4),
]
TASKS_PER_THREAD = 4   # bands x row groups a thread gets at least, where the output allows
PACK_MIN_PIXELS = 128   # output pixels an image needs for its weights to be packed (see render_conv)
IMAGE_FLOATS = 1 << 17   # a band's phase image at most (512 KiB), where the output has rows enough


def common() -> str:
    """Path macros, vector types, the workspace and `dnet_conv_path` (once per library)."""
    branches = []
    for i, (name, cond, lanes, mr, nv, nvw) in enumerate(PATHS):
        head = f"#if {cond}" if i == 0 else (f"#elif {cond}" if cond else "#else")
        branches.append(f"""{head}
#define DN_CONV_PATH "{name}"
#define DN_CONV_LANES {lanes}
#define DN_CONV_MR {mr}
#define DN_CONV_NR {nv * lanes}
#define DN_CONV_NRW {nvw * lanes}
#define DN_CONV_EVEN {", ".join(str(2 * i) for i in range(lanes))}""")
    return f"""
#ifndef DN_CONV_COMMON
#define DN_CONV_COMMON 1
/* ======== direct convolutions (dnet.backends.c.conv) ======== */
{chr(10).join(branches)}
#endif
typedef float dn_cvf __attribute__((vector_size(DN_CONV_LANES * 4)));
typedef float dn_cvfu __attribute__((vector_size(DN_CONV_LANES * 4), aligned(4)));

const char* dnet_conv_path(void) {{ return DN_CONV_PATH; }}

/* a thread's workspaces (slot 0: the phase image, 1: packed weights): grown, never shrunk, reused by
   every convolution and pool the thread runs */
static float* dn_conv_workspace(int slot, int64_t n) {{
    static _Thread_local float* buf[2] = {{0, 0}};
    static _Thread_local int64_t cap[2] = {{0, 0}};
    if (cap[slot] < n) {{
        free(buf[slot]);
        buf[slot] = (float*)aligned_alloc(64, (size_t)((n * 4 + 63) / 64 * 64));
        cap[slot] = n;
    }}
    return buf[slot];
}}

/* rows [i0, i1) of w (rows at stride lda, k contiguous) -> slivers of DN_CONV_MR rows: sliver s holds
   k values of DN_CONV_MR floats (rows past i1 are 0), so the micro-kernel reads one stream */
static void dn_conv_pack(const float* restrict w, int64_t lda, int64_t i0, int64_t i1, int64_t k, float* restrict d) {{
    for (int64_t s = i0; s < i1; s += DN_CONV_MR, d += DN_CONV_MR * k) {{
        const float* src[DN_CONV_MR];   /* the sliver's rows, read side by side: d is written in order */
        const int64_t rows = i1 - s < DN_CONV_MR ? i1 - s : DN_CONV_MR;
        for (int64_t ii = 0; ii < DN_CONV_MR; ++ii) src[ii] = w + (s + (ii < rows ? ii : 0)) * lda;
        for (int64_t kk = 0; kk < k; ++kk)
            for (int64_t ii = 0; ii < DN_CONV_MR; ++ii) d[kk * DN_CONV_MR + ii] = ii < rows ? src[ii][kk] : 0.0f;
    }}
}}

/* one row of a phase plane: d[q] = x row at column q * sw + px - left (src: the row, xw: its stride),
   `fill` outside [0, w) (0 for convolutions and average pools, -inf for max pools) */
static inline void dn_conv_row(float* restrict d, const float* restrict src, int64_t wq, int64_t w, int64_t sw,
                               int64_t px, int64_t left, int64_t xw, float fill) {{
    const int64_t off = px - left;
    int64_t lo = off >= 0 ? 0 : (-off + sw - 1) / sw, hi = w - off <= 0 ? 0 : (w - off + sw - 1) / sw;
    lo = lo < wq ? lo : wq;
    hi = hi < wq ? (hi > lo ? hi : lo) : wq;
    int64_t q = 0;
    for (; q < lo; ++q) d[q] = fill;
    if (sw == 1 && xw == 1) {{ memcpy(d + lo, src + lo + off, (size_t)(hi - lo) * sizeof(float)); q = hi; }}
    else for (; q < hi; ++q) d[q] = src[(q * sw + off) * xw];
    for (; q < wq; ++q) d[q] = fill;
}}

/* dn_conv_row for a stride of 2 over a contiguous row: every other float by two vector loads and a shuffle
   (an element-by-element loop was a tenth of a 3x3/2 max pool's time). Pools only: the convolutions' copy
   is a small part of their time, and the branch measured slower there (1x1/2, 64 channels at 56 x 56) */
static inline void dn_conv_row_even(float* restrict d, const float* restrict src, int64_t wq, int64_t w, int64_t px,
                                    int64_t left, float fill) {{
    const int64_t off = px - left;
    int64_t lo = off >= 0 ? 0 : (-off + 1) / 2, hi = w - off <= 0 ? 0 : (w - off + 1) / 2;
    lo = lo < wq ? lo : wq;
    hi = hi < wq ? (hi > lo ? hi : lo) : wq;
    int64_t q = 0;
    for (; q < lo; ++q) d[q] = fill;
    for (; q < hi && 2 * (q + DN_CONV_LANES) + off <= w; q += DN_CONV_LANES) {{
        const dn_cvf a = *(const dn_cvfu*)(src + 2 * q + off), b = *(const dn_cvfu*)(src + 2 * q + off + DN_CONV_LANES);
        *(dn_cvfu*)(d + q) = __builtin_shufflevector(a, b, DN_CONV_EVEN);
    }}
    for (; q < hi; ++q) d[q] = src[2 * q + off];
    for (; q < wq; ++q) d[q] = fill;
}}
#endif
"""


def _ukernel(lanes: int, mr: int, rows: int, nv: int, taps: int, packed: bool) -> str:
    """t[0:rows, 0:nv*lanes] = sum over c < C and tap q of w[row, c * taps + q] * x[c * cs + tap[q] + j], w
    packed (`dn_conv_pack`: mr rows side by side per k) or read in place (rows at stride lda)."""
    name = f"dn_conv_t{taps}{'p' if packed else 'd'}_r{rows}x{nv}"
    width = nv * lanes
    acc = [[f"c{i}_{v}" for v in range(nv)] for i in range(rows)]
    decl = "\n".join("    dn_cvf " + ", ".join(f"{a} = {{0}}" for a in row) + ";" for row in acc)
    if packed:
        ptrs, step = "", f"a += {taps * mr};"
        weight = [f"a[q * {mr} + {i}]" for i in range(rows)]
    else:
        ptrs = "\n".join(f"    const float* restrict w{i} = a + ({i} < mr ? {i} : 0) * lda;" for i in range(rows))
        step = " ".join(f"w{i} += {taps};" for i in range(rows))
        weight = [f"w{i}[q]" for i in range(rows)]
    loads = "\n".join(f"            const dn_cvf b{v} = *(const dn_cvfu*)(p + {v * lanes});" for v in range(nv))
    fmas = "\n".join(f"            {{ const float a{i} = {weight[i]}; " + " ".join(f"{acc[i][v]} += a{i} * b{v};"
                                                                         for v in range(nv)) + " }"
                     for i in range(rows))
    store = "\n".join(f"    *(dn_cvfu*)(t + {i * width + v * lanes}) = {acc[i][v]};" for i in range(rows) for v in range(nv))
    unroll = taps if taps <= 16 else 4
    return f"""
static inline void {name}(int64_t C, const float* restrict a, int64_t lda, int64_t mr, const float* restrict x,
                          int64_t cs, const int64_t* restrict tap, float* restrict t) {{
{decl}
{ptrs}
    for (int64_t c = 0; c < C; ++c, x += cs) {{
        #pragma GCC unroll {unroll}
        for (int64_t q = 0; q < {taps}; ++q) {{
            const float* restrict p = x + tap[q];
{loads}
{fmas}
        }}
        {step}
    }}
{store}
}}"""


def _support(taps: int, packed: bool) -> str:
    """The micro-kernels of every path for kernels of `taps` taps with packed (or in-place) weights, and
    their dispatcher (once per library)."""
    mode = "p" if packed else "d"
    branches = []
    for i, (_, cond, lanes, mr, nv, nvw) in enumerate(PATHS):
        head = f"#if {cond}" if i == 0 else (f"#elif {cond}" if cond else "#else")
        counts = sorted({mr} | {mr * k // 3 for k in (1, 2) if mr * k // 3 > 0})
        kernels = "".join(_ukernel(lanes, mr, n, nv, taps, packed) for n in counts)
        wide = _ukernel(lanes, 1, 1, nvw, taps, False)
        kernels += f"\n#ifndef DN_CONV_WIDE_{taps}\n#define DN_CONV_WIDE_{taps} 1{wide}\n#endif"
        calls = " ".join(f"if (mr <= {n}) {{ dn_conv_t{taps}{mode}_r{n}x{nv}(C, a, lda, mr, x, cs, tap, t); return; }}"
                         for n in counts)
        branches.append(f"""{head}{kernels}
/* mr rows (at most DN_CONV_MR) of a tile DN_CONV_NR wide, or one row DN_CONV_NRW wide (in place) */
static inline void dn_conv_t{taps}{mode}(int wide, int64_t C, const float* restrict a, int64_t lda, int64_t mr,
                                   const float* restrict x, int64_t cs, const int64_t* restrict tap, float* restrict t) {{
    if (wide) {{ dn_conv_t{taps}d_r1x{nvw}(C, a, lda, mr, x, cs, tap, t); return; }}
    {calls}
}}""")
    return f"""
#ifndef DN_CONV_TAPS_{taps}{mode}
#define DN_CONV_TAPS_{taps}{mode} 1
{chr(10).join(branches)}
#endif
#endif"""


def phases(g: Gemm) -> list[tuple[int, int]]:
    """The phases (row, column) of the input that the kernel's taps read, in image order."""
    c = g.b.im2col
    (kh, kw), (sh, sw), (dh, dw) = c.kernel, c.stride, c.dilation
    rows = sorted({y * dh % sh for y in range(kh)})
    cols = sorted({z * dw % sw for z in range(kw)})
    return [(py, px) for py in rows for px in cols]


def render_conv(r, g: Gemm, pad: str) -> list[str]:
    """The body of a convolution kernel (`r`: the kernel's CRenderer). Support code goes to r.helpers."""
    c = g.b.im2col
    if c.winograd:   # its filters transformed at load time (kernel/winograd.py): backends/c/winograd.py
        from dnet.backends.c.winograd import render_winograd

        return render_winograd(r, g, pad)
    ix = r.index
    (kh, kw), (sh, sw), (dh, dw) = c.kernel, c.stride, c.dilation
    taps = kh * kw
    ph = phases(g)
    pid = {p: i for i, p in enumerate(ph)}
    top, left = (ix(p) for p in c.pad)
    xc, xh, xw = (ix(s) for s in c.strides)
    ey, ex = (kh - 1) * dh // sh, (kw - 1) * dw // sw    # plane rows and columns beyond the output's
    # packing a sliver's weights pays where its tiles are many; a small image (7 x 7: two tiles) reads
    # them in place (measured: 512 channels at 7 x 7, 117 GFLOP/s in place, 92 packed, on one core)
    packed = not isinstance(g.n, int) or g.n >= PACK_MIN_PIXELS
    mode = "p" if packed else "d"
    for text in (common(), _support(taps, packed)):
        if text not in r.helpers:
            r.helpers.append(text)
    nbatch = "*".join(["1"] + [ix(b) for b in g.batch])
    lines = [
        f"const int64_t g_M = {ix(g.m)}, g_N = {ix(g.n)}, g_K = {ix(g.k)}, g_NB = {nbatch};",
        f"const int64_t g_H = {ix(c.height)}, g_W = {ix(c.width)}, g_OW = {ix(c.out_width)};",
        "const int64_t g_OH = g_OW > 0 ? g_N / g_OW : 0, g_C = g_K / %d;   /* output rows, input channels */" % taps,
        f"const int64_t g_WQ = g_OW + {ex};   /* a phase plane's width: output columns + the taps' reach */",
        "const int wide = g_M == 1;   /* one output channel (depthwise): one row, a wider tile */",
        "const int64_t g_NT = wide ? DN_CONV_NRW : DN_CONV_NR, g_S = (g_M + DN_CONV_MR - 1) / DN_CONV_MR;",
        "const int64_t g_nt = dn_threads();",
        f"/* tasks: bands of output rows (each at least 2 tiles) and groups of row slivers, until {TASKS_PER_THREAD} a "
        "thread. A band more reads (and packs) every weight once more, a group more copies the image once more:",
        "   split where that costs less */",
        "int64_t g_bands = 1, g_groups = 1;",
        f"const int64_t g_wcost = g_M * g_K, g_icost = g_C * {len(ph)} * (g_OH + {ey}) * g_WQ;",
        f"while (g_nt > 1 && g_NB * g_bands * g_groups < {TASKS_PER_THREAD} * g_nt) {{",
        "    const int more_bands = g_bands < g_OH && g_OH / (g_bands + 1) * g_WQ >= 2 * g_NT, more_groups = g_groups < g_S;",
        "    if (more_bands && (!more_groups || g_wcost <= g_icost)) g_bands++;",
        "    else if (more_groups) g_groups++;",
        "    else break;",
        "}",
        f"/* and a band's image within {IMAGE_FLOATS * 4 // 1024} KiB (the thread's L2 holds it while every row sliver reads it) */",
        f"while (g_bands < g_OH && g_C * {len(ph)} * ((g_OH + g_bands - 1) / g_bands + {ey}) * g_WQ > {IMAGE_FLOATS}) "
        "g_bands++;",
        "/* a multiple of the threads where the row slivers allow, so none waits for the last task */",
        "while (g_nt > 1 && (g_NB * g_bands * g_groups) % g_nt && g_groups < g_S) g_groups++;",
        "const int64_t g_tasks = g_bands * g_groups;",
    ]
    r.locals += [("const int64_t", n) for n in ("g_M", "g_N", "g_K", "g_NB", "g_H", "g_W", "g_OW", "g_OH", "g_C",
                                                "g_WQ", "g_NT", "g_S", "g_nt", "g_bands", "g_groups", "g_tasks",
                                                "g_wcost", "g_icost")]
    r.locals.append(("const int", "wide"))
    fill = []
    for (py, px), i in pid.items():
        fill += [f"        {{   /* phase ({py}, {px}) */",
                 f"            float* g_dst = g_img + (g_ch * {len(ph)} + {i}) * g_plane;",
                 "            for (int64_t g_r = 0; g_r < g_HB; ++g_r) {",
                 f"                const int64_t g_R = (g_r0 + g_r) * {sh} + {py} - {top};",
                 "                if (g_R < 0 || g_R >= g_H) { memset(g_dst + g_r * g_WQ, 0, (size_t)g_WQ * sizeof(float)); continue; }",
                 f"                dn_conv_row(g_dst + g_r * g_WQ, {g.b.buffer} + g_off_b + g_ch * {xc} + g_R * {xh}, g_WQ, "
                 f"g_W, {sw}, {px}, {left}, {xw}, 0.0f);",
                 "            }",
                 "        }"]
    tap = ", ".join(f"{pid[(y * dh % sh, z * dw % sw)]} * g_plane + {y * dh // sh} * g_WQ + {z * dw // sw}"
                    for y in range(kh) for z in range(kw))
    task = [
        "for (int64_t g_flat = g_begin; g_flat < g_end; ++g_flat) {",
        "    const int64_t g_bb = g_flat / g_tasks, g_band = g_flat % g_tasks / g_groups, g_grp = g_flat % g_groups;",
        *[f"    {x}" for x in _batch_decl("g_bb", g, r)],
        "    const int64_t g_r0 = g_band * g_OH / g_bands, g_rows = (g_band + 1) * g_OH / g_bands - g_r0;",
        f"    const int64_t g_HB = g_rows + {ey}, g_plane = g_HB * g_WQ;   /* the band's phase planes */",
        "    const int64_t g_i0 = g_grp * g_S / g_groups * DN_CONV_MR, g_i1e = (g_grp + 1) * g_S / g_groups * DN_CONV_MR;",
        "    const int64_t g_i1 = g_i1e < g_M ? g_i1e : g_M;",
        f"    float* g_img = dn_conv_workspace(0, g_C * {len(ph)} * g_plane + g_WQ + g_NT);",
        "    const float* g_w = " + f"{g.a.buffer} + g_off_a;   /* this group's weights, O x K */",
        f"    float* g_apk = wide || !{int(packed)} ? 0 : dn_conv_workspace(1, DN_CONV_MR * g_K);",
        "    for (int64_t g_ch = 0; g_ch < g_C; ++g_ch) {",
        *fill,
        "    }",
        f"    memset(g_img + g_C * {len(ph)} * g_plane, 0, (size_t)(g_WQ + g_NT) * sizeof(float));   /* read by dropped columns */",
        f"    const int64_t g_tap[{taps}] = {{{tap}}};",
        "    float* g_cblock = out + g_bb * g_M * g_N;",
        "    float g_t[DN_CONV_MR * DN_CONV_NR > DN_CONV_NRW ? DN_CONV_MR * DN_CONV_NR : DN_CONV_NRW]"
        " __attribute__((aligned(64)));",
        "    for (int64_t g_ir = g_i0; g_ir < g_i1; g_ir += DN_CONV_MR) {",
        "        const int64_t g_mr = g_i1 - g_ir < DN_CONV_MR ? g_i1 - g_ir : DN_CONV_MR;",
        "        /* this sliver's weights side by side, packed while its tiles are computed (in L2 meanwhile) */",
        *([f"        if (!wide) dn_conv_pack(g_w, {ix(g.a.row_stride)}, g_ir, g_ir + g_mr, g_K, g_apk);"] if packed else []),
        "        for (int64_t g_j0 = 0; g_j0 < g_rows * g_WQ; g_j0 += g_NT) {",
        *[f"            {x}" for x in _prefetch(r, g)],
        f"            dn_conv_t{taps}{mode}(wide, g_C, wide || !{int(packed)} ? g_w + g_ir * {ix(g.a.row_stride)} : g_apk, "
        f"{ix(g.a.row_stride)}, "
        f"g_mr, g_img + g_j0, {len(ph)} * g_plane, g_tap, g_t);",
        *[f"            {x}" for x in _store(r, g)],
        "        }",
        "    }",
        "}",
    ]
    return [pad + x for x in lines] + r.outline(task, "g_NB * g_tasks", "1", pad)


def _pixel_loads(r, g: Gemm) -> list[str]:
    """The epilogue's loads that change with the output pixel (a residual), as C lvalues, where their index
    names only the Gemm's own variables (one naming a let of the epilogue is not known before it runs)."""
    j = g.vars[-1]
    found: list[str] = []

    def walk(node) -> None:
        if isinstance(node, Load):
            index = r.index(node.index)
            names = set(re.findall(r"[A-Za-z_]\w*", index))
            text = f"{node.buffer}[{index}]"
            if j in names and names <= set(g.vars) and text not in found:
                found.append(text)
        if dataclasses.is_dataclass(node):
            for f in dataclasses.fields(node):
                walk(getattr(node, f.name))
        elif isinstance(node, (tuple, list)):
            for x in node:
                walk(x)

    walk(g.epilogue)
    walk(g.epilogue_lets)
    return found


def _prefetch(r, g: Gemm) -> list[str]:
    """Where the epilogue reads a value per output pixel (a residual): the tile's lines of it and of the
    output, asked for before its FMAs run. Each of a sliver's rows advances 128 bytes a tile, too slowly
    for the hardware's stream prefetch, and those loads missed: the resnet-like CNN's 1x1/2 downsamples
    with their residual add, one core, batch 8, 2.26-2.52 -> 1.85-2.12 ms (64 and 128 input channels)."""
    i, j = g.vars[-2], g.vars[-1]
    loads = _pixel_loads(r, g)
    if not loads:   # bias and ReLU only: measured no better with the output's lines prefetched
        return []
    body = []
    for text in loads:
        body += [f"        __builtin_prefetch(&{text}, 0, 3); __builtin_prefetch(&{text} + 16, 0, 3); "
                 f"__builtin_prefetch(&{text} + 31, 0, 3);"]
    return ["if (!wide) {",
            "    const int64_t g_prow = g_j0 / g_WQ, g_pcol = g_j0 % g_WQ;",
            "    const int64_t g_ppix = (g_r0 + g_prow) * g_OW + (g_pcol < g_OW ? g_pcol : g_OW - 1);",
            "    for (int64_t g_pi = 0; g_pi < g_mr; ++g_pi) {",
            f"        const int64_t {i} = g_ir + g_pi, {j} = g_ppix; (void){i}; (void){j};",
            "        float* g_po = g_cblock + (g_ir + g_pi) * g_N + g_ppix;",
            "        __builtin_prefetch(g_po, 1, 3); __builtin_prefetch(g_po + 16, 1, 3); __builtin_prefetch(g_po + 31, 1, 3);",
            *body,
            "    }",
            "}"]


def _store(r, g: Gemm) -> list[str]:
    """The tile g_t (g_mr rows, g_NT columns of j = band row * WQ + ow) into the output, through the
    Gemm's epilogue: each run of columns within one output row, columns ow >= OW dropped."""
    i, j = g.vars[-2], g.vars[-1]
    inner = [f"const int64_t {j} = g_pix + g_q;", "const float acc = g_src[g_q];"]
    inner += [x for s in g.epilogue_lets for x in r.stmt(s, "")]
    inner.append(f"g_dst[g_q] = {r.expr(g.epilogue)};")
    return ["for (int64_t g_jj = 0; g_jj < g_NT && g_j0 + g_jj < g_rows * g_WQ; ) {",
            "    const int64_t g_row = (g_j0 + g_jj) / g_WQ, g_col = (g_j0 + g_jj) % g_WQ;",
            "    const int64_t g_run = g_WQ - g_col < g_NT - g_jj ? g_WQ - g_col : g_NT - g_jj;",
            "    const int64_t g_valid = g_col >= g_OW ? 0 : (g_OW - g_col < g_run ? g_OW - g_col : g_run);",
            "    const int64_t g_pix = (g_r0 + g_row) * g_OW + g_col;",
            "    for (int64_t g_ii = 0; g_ii < g_mr; ++g_ii) {",
            f"        const int64_t {i} = g_ir + g_ii;",
            "        const float* g_src = g_t + g_ii * g_NT + g_jj;",
            "        float* g_dst = g_cblock + (g_ir + g_ii) * g_N + g_pix;",
            "        #pragma omp simd",
            "        for (int64_t g_q = 0; g_q < g_valid; ++g_q) {",
            *[f"            {x}" for x in inner],
            "        }",
            "    }",
            "    g_jj += g_run;",
            "}"]
