"""Vectorised max and average pools: the C form of a kernel that carries a `PoolGeometry`.

The scheduler lowers a pool to a loop nest (its definition, what the other backends render) and
records its geometry (`kernel/pool.py`). Here each task takes one (image, channel) and a band of
output rows, copies that band of the input once into padded phase planes (`backends/c/conv.py`:
-inf around a max pool, 0 around an average one), and then every output row is the element-wise
max (or sum) of one contiguous row of a plane per window tap: loops the compiler vectorises with
plain vector loads, where the loop nest gathered strided, bounds-checked elements one by one. The
window's elements are combined in the loop nest's order (rows, then columns), and an average divides
by the same count, so the results are the loop nest's bit for bit.
"""
from __future__ import annotations

from dnet.backends.c.conv import TASKS_PER_THREAD, common
from dnet.graph.ops import Op
from dnet.kernel.pool import PoolGeometry

MIN_WORK = 16384   # window elements a chunk of tasks handles at least


def render_pool(r, p: PoolGeometry, pad: str) -> list[str]:
    """The body of a pool kernel (`r`: its CRenderer); the shared helpers go to r.helpers."""
    ix = r.index
    (kh, kw), (sh, sw) = p.kernel, p.stride
    top, left = (ix(v) for v in p.pad)
    is_max = p.op is Op.MAXPOOL2D
    fill = "-INFINITY" if is_max else "0.0f"
    rows = sorted({y % sh for y in range(kh)})
    cols = sorted({z % sw for z in range(kw)})
    phases = [(py, px) for py in rows for px in cols]
    pid = {ph: i for i, ph in enumerate(phases)}
    ey, ex = (kh - 1) // sh, (kw - 1) // sw
    if common() not in r.helpers:
        r.helpers.append(common())
    n, c, oh, ow = (ix(d) for d in p.out_shape)
    s0, s1, s2, s3 = (ix(s) for s in p.strides)
    lines = [
        f"const int64_t g_N = {n}, g_C = {c}, g_OH = {oh}, g_OW = {ow}, g_H = {ix(p.height)}, g_W = {ix(p.width)};",
        f"const int64_t g_WQ = g_OW + {ex}, g_nt = dn_threads();",
        "int64_t g_bands = 1;   /* bands of output rows, where there are few (image, channel) pairs */",
        f"while (g_nt > 1 && g_N * g_C * g_bands < {TASKS_PER_THREAD} * g_nt && g_bands < g_OH) g_bands++;",
    ]
    r.locals += [("const int64_t", v) for v in ("g_N", "g_C", "g_OH", "g_OW", "g_H", "g_W", "g_WQ", "g_nt")]
    r.locals.append(("int64_t", "g_bands"))
    # a row of stride 2 and contiguous columns: the vectorised copy; any other: the general one
    even = sw == 2 and s3 == "1"
    copy = f"dn_conv_row_even(g_dst, {p.buffer} + g_off + g_R * {s2}, g_WQ, g_W, @PX@, {left}, {fill});" if even else \
        f"dn_conv_row(g_dst, {p.buffer} + g_off + g_R * {s2}, g_WQ, g_W, {sw}, @PX@, {left}, {s3}, {fill});"
    # plane rows in the input's row order, every column phase of an input row one after another: the input
    # is read once, front to back (phase by phase it was read once a column phase, skipping rows: a 3x3/2 max
    # pool over 64 x 112^2, one core, batch 8 5.5-6.1 -> 3.6-4.7 ms, batch 1 0.41-0.42 -> 0.37)
    fill_planes = ["    for (int64_t g_r = 0; g_r < g_HB; ++g_r) {"]
    for py in rows:
        fill_planes += [f"        {{ const int64_t g_R = (g_r0 + g_r) * {sh} + {py} - {top};"]
        for px in cols:
            fill_planes += [
                f"          {{ float* g_dst = g_img + {pid[(py, px)]} * g_plane + g_r * g_WQ;   /* phase ({py}, {px}) */",
                f"            if (g_R < 0 || g_R >= g_H) for (int64_t g_q = 0; g_q < g_WQ; ++g_q) g_dst[g_q] = {fill};",
                "            else " + copy.replace("@PX@", str(px)) + " }"]
        fill_planes += ["        }"]
    fill_planes += ["    }"]
    # every tap of a run of output columns combined in registers, then one store (a pass over the output row
    # per tap loaded and stored it kh * kw times); with dn_conv_row_even, the resnet-like CNN's pool on one
    # core went 0.48-0.61 -> 0.41-0.43 ms at batch 1
    pointers = [f"        const float* restrict g_s{t} = g_img + {pid[(y % sh, z % sw)]} * g_plane + ({y // sh} + g_rr) * g_WQ"
                f" + {z // sw};" for t, (y, z) in enumerate((y, z) for y in range(kh) for z in range(kw))]
    combine = [f"g_a = g_s{t}[g_q] > g_a ? g_s{t}[g_q] : g_a;" if is_max else f"g_a += g_s{t}[g_q];"
               for t in range(kh * kw)]
    body = [f"float g_a = {fill};", *combine, "g_o[g_q] = g_a;"]
    # runs of one vector; the last run ends at the row's end, overlapping the one before (its columns are
    # computed twice, out of place): no scalar remainder, which cost more than the vectors (56 columns: 3 + 8)
    taps = [*pointers,
            "        for (int64_t g_q0 = 0; g_q0 < g_OW; g_q0 += DN_CONV_LANES) {",
            "            if (g_OW >= DN_CONV_LANES) {",
            "                const int64_t g_b = g_q0 + DN_CONV_LANES <= g_OW ? g_q0 : g_OW - DN_CONV_LANES;",
            "                #pragma omp simd",
            "                for (int64_t g_q = g_b; g_q < g_b + DN_CONV_LANES; ++g_q) {",
            *[f"                    {x}" for x in body],
            "                }",
            "            } else for (int64_t g_q = 0; g_q < g_OW; ++g_q) {",
            *[f"                {x}" for x in body],
            "            }",
            "        }"]
    task = [
        "for (int64_t g_flat = g_begin; g_flat < g_end; ++g_flat) {",
        "    const int64_t g_nc = g_flat / g_bands, g_band = g_flat % g_bands;",
        f"    const int64_t g_off = {ix(p.offset)} + g_nc / g_C * {s0} + g_nc % g_C * {s1};",
        "    const int64_t g_r0 = g_band * g_OH / g_bands, g_rows = (g_band + 1) * g_OH / g_bands - g_r0;",
        f"    const int64_t g_HB = g_rows + {ey}, g_plane = g_HB * g_WQ;",
        f"    float* g_img = dn_conv_workspace(0, {len(phases)} * g_plane + g_WQ);",
        *fill_planes,
        "    for (int64_t g_rr = 0; g_rr < g_rows; ++g_rr) {",
        "        float* restrict g_o = out + (g_nc * g_OH + g_r0 + g_rr) * g_OW;",
        *taps,
        *_average(p, "        ", top, left),
        "    }",
        "}",
    ]
    grain = f"(g_OH * g_OW * {kh * kw} >= {MIN_WORK} * g_bands ? 1 : {MIN_WORK} * g_bands / (g_OH * g_OW * {kh * kw} + 1))"
    return [pad + x for x in lines] + r.outline(task, "g_N * g_C * g_bands", grain, pad)


def _average(p: PoolGeometry, pad: str, top: str, left: str) -> list[str]:
    """An average pool's division: by the whole window, or by the part of it inside the input."""
    if p.op is Op.MAXPOOL2D:
        return []
    (kh, kw), (sh, sw) = p.kernel, p.stride
    if p.count_include_pad:
        return [f"{pad}for (int64_t g_q = 0; g_q < g_OW; ++g_q) g_o[g_q] = g_o[g_q] / {float(kh * kw)!r}f;"]
    return [f"{pad}{{ const int64_t g_y0 = (g_r0 + g_rr) * {sh} - {top}, g_y1 = g_y0 + {kh};",
            f"{pad}  const int64_t g_hy = (g_y1 < g_H ? g_y1 : g_H) - (g_y0 > 0 ? g_y0 : 0);",
            f"{pad}  for (int64_t g_q = 0; g_q < g_OW; ++g_q) {{",
            f"{pad}      const int64_t g_x0 = g_q * {sw} - {left}, g_x1 = g_x0 + {kw};",
            f"{pad}      const int64_t g_wz = (g_x1 < g_W ? g_x1 : g_W) - (g_x0 > 0 ? g_x0 : 0);",
            f"{pad}      g_o[g_q] = g_o[g_q] / (float)(g_hy * g_wz);",
            f"{pad}  }} }}"]
