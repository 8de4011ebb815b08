"""GGUF block formats in OpenCL C: one element dequantized (`dn_dq_<format>`), and a `QMatmul` kernel.

A weight in a block dtype stays in its blocks on the device (never expanded): an element is
decoded where it is read, with the same arithmetic as gguf's reference dequantizers (see
`backends/c/quant.py`, whose layouts these follow). A `QMatmul` (x @ w.T against such a weight)
is one work-item per result: it walks its weight row block by block, decoding each block's
scale (and minimum) once and its elements as 16-wide vectors times x's, then applies the
epilogue (a residual add, SiLU times the up projection) and stores.
"""
from __future__ import annotations

from typing import Iterable

from dnet.backends.opencl.renderer import Grid, OpenCLRenderer, RenderedKernel
from dnet.core.dtypes import DType
from dnet.kernel.ir import QMatmul

COMMON = r"""
static inline float dn_q_f16(__global const uchar* p) { return dn_f16_to_f32((ushort)p[0] | ((ushort)p[1] << 8)); }
/* K-quant scales: 8 sub-blocks' 6-bit scale and min packed in 12 bytes (gguf's Q4_K.get_scale_min) */
static inline void dn_q_scale_min_k4(__global const uchar* s, int j, int* sc, int* mn) {
    if (j < 4) { *sc = s[j] & 63; *mn = s[j + 4] & 63; }
    else { *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4); *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4); }
}
/* a block's 16 lanes summed pairwise */
static inline float dn_sum16(float16 v) {
    const float8 a = v.lo + v.hi;
    const float4 b = a.lo + a.hi;
    const float2 c = b.lo + b.hi;
    return c.x + c.y;
}
"""

# Per format: dn_dq_<name>(base, i), element i of a tensor stored as whole blocks.
FORMATS = {
    DType.Q8_0: r"""
static inline float dn_dq_q8_0(__global const uchar* base, long i) {     /* f16 d, 32 x int8 q; w = d q */
    __global const uchar* b = base + (i / 32) * 34;
    return dn_q_f16(b) * (float)(char)b[2 + i % 32];
}""",
    DType.Q4_0: r"""
static inline float dn_dq_q4_0(__global const uchar* base, long i) {     /* f16 d, 16 bytes of nibbles; w = d (q - 8) */
    __global const uchar* b = base + (i / 32) * 18;
    const int e = (int)(i % 32), q = e < 16 ? b[2 + e] & 15 : b[2 + e - 16] >> 4;
    return dn_q_f16(b) * (float)(q - 8);
}""",
    DType.Q4_1: r"""
static inline float dn_dq_q4_1(__global const uchar* base, long i) {     /* f16 d, f16 m, nibbles; w = d q + m */
    __global const uchar* b = base + (i / 32) * 20;
    const int e = (int)(i % 32), q = e < 16 ? b[4 + e] & 15 : b[4 + e - 16] >> 4;
    return dn_q_f16(b) * (float)q + dn_q_f16(b + 2);
}""",
    DType.Q4_K: r"""
static inline float dn_dq_q4_k(__global const uchar* base, long i) {
    __global const uchar* b = base + (i / 256) * 144;
    const int e = (int)(i % 256), j = e / 32;
    int sc, mn;
    dn_q_scale_min_k4(b + 4, j, &sc, &mn);
    const int q = (b[16 + 32 * (j / 2) + e % 32] >> (4 * (j % 2))) & 15;
    return dn_q_f16(b) * (float)sc * (float)q - dn_q_f16(b + 2) * (float)mn;
}""",
    DType.Q5_K: r"""
static inline float dn_dq_q5_k(__global const uchar* base, long i) {
    __global const uchar* b = base + (i / 256) * 176;
    const int e = (int)(i % 256), j = e / 32;
    int sc, mn;
    dn_q_scale_min_k4(b + 4, j, &sc, &mn);
    const int q = ((b[48 + 32 * (j / 2) + e % 32] >> (4 * (j % 2))) & 15) | (((b[16 + e % 32] >> j) & 1) << 4);
    return dn_q_f16(b) * (float)sc * (float)q - dn_q_f16(b + 2) * (float)mn;
}""",
    DType.Q6_K: r"""
static inline float dn_dq_q6_k(__global const uchar* base, long i) {
    __global const uchar* b = base + (i / 256) * 210;
    const int e = (int)(i % 256), h = e / 128, r = e % 128;
    const int lo = (b[64 * h + r % 64] >> (4 * (r / 64))) & 15, hi = (b[128 + 32 * h + r % 32] >> (2 * (r / 32))) & 3;
    return dn_q_f16(b + 208) * (float)(char)b[192 + e / 16] * (float)((lo | (hi << 4)) - 32);
}""",
}

# dot(x[0:k], row) per format: each block's (or sub-block's) scales decoded once, its values 16 at a time
DOTS = {
    DType.Q8_0: r"""
static inline float dn_qdot_q8_0(__global const float* x, __global const uchar* row, long k) {
    float acc = 0.0f;
    for (long b = 0; b < k / 32; ++b) {
        __global const uchar* p = row + b * 34;
        const float16 q0 = convert_float16(as_char16(vload16(0, p + 2))), q1 = convert_float16(as_char16(vload16(1, p + 2)));
        const float16 s = q0 * vload16(0, x + b * 32) + q1 * vload16(1, x + b * 32);
        acc += dn_sum16(s) * dn_q_f16(p);
    }
    return acc;
}""",
    DType.Q4_0: r"""
static inline float dn_qdot_q4_0(__global const float* x, __global const uchar* row, long k) {
    float acc = 0.0f;
    for (long b = 0; b < k / 32; ++b) {
        __global const uchar* p = row + b * 18;
        const uchar16 v = vload16(0, p + 2);
        const float16 lo = convert_float16(v & (uchar)15) - 8.0f, hi = convert_float16(v >> (uchar)4) - 8.0f;
        const float16 s = lo * vload16(0, x + b * 32) + hi * vload16(1, x + b * 32);
        acc += dn_sum16(s) * dn_q_f16(p);
    }
    return acc;
}""",
    DType.Q4_1: r"""
static inline float dn_qdot_q4_1(__global const float* x, __global const uchar* row, long k) {
    float acc = 0.0f;
    for (long b = 0; b < k / 32; ++b) {                  /* sum d q x + m x = d (q . x) + m (sum x) */
        __global const uchar* p = row + b * 20;
        const uchar16 v = vload16(0, p + 4);
        const float16 x0 = vload16(0, x + b * 32), x1 = vload16(1, x + b * 32);
        const float16 s = convert_float16(v & (uchar)15) * x0 + convert_float16(v >> (uchar)4) * x1;
        acc += dn_sum16(s) * dn_q_f16(p) + dn_sum16(x0 + x1) * dn_q_f16(p + 2);
    }
    return acc;
}""",
    DType.Q4_K: r"""
static inline float dn_qdot_q4_k(__global const float* x, __global const uchar* row, long k) {
    float acc = 0.0f;
    for (long b = 0; b < k / 256; ++b) {                 /* per sub-block j: (d sc_j) (q . x) - (dmin m_j) (sum x) */
        __global const uchar* p = row + b * 144;
        __global const float* xb = x + b * 256;
        const float d = dn_q_f16(p), dmin = dn_q_f16(p + 2);
        for (int pair = 0; pair < 4; ++pair) {          /* sub-blocks 2 pair (low nibbles) and 2 pair + 1 (high) */
            const uchar16 v0 = vload16(0, p + 16 + 32 * pair), v1 = vload16(1, p + 16 + 32 * pair);
            for (int nib = 0; nib < 2; ++nib) {
                const int j = 2 * pair + nib;
                const uchar sh = (uchar)(4 * nib);
                const float16 x0 = vload16(0, xb + 32 * j), x1 = vload16(1, xb + 32 * j);
                const float16 q = convert_float16((v0 >> sh) & (uchar)15) * x0 + convert_float16((v1 >> sh) & (uchar)15) * x1;
                int sc, mn;
                dn_q_scale_min_k4(p + 4, j, &sc, &mn);
                acc += d * (float)sc * dn_sum16(q) - dmin * (float)mn * dn_sum16(x0 + x1);
            }
        }
    }
    return acc;
}""",
    DType.Q5_K: r"""
static inline float dn_qdot_q5_k(__global const float* x, __global const uchar* row, long k) {
    float acc = 0.0f;
    for (long b = 0; b < k / 256; ++b) {                 /* as Q4_K, the fifth bit of sub-block j's element e: bit j of qh[e] */
        __global const uchar* p = row + b * 176;
        __global const float* xb = x + b * 256;
        const float d = dn_q_f16(p), dmin = dn_q_f16(p + 2);
        const uchar16 h0 = vload16(0, p + 16), h1 = vload16(1, p + 16);
        for (int j = 0; j < 8; ++j) {
            const uchar sh = (uchar)(4 * (j % 2)), bit = (uchar)j;
            const uchar16 v0 = vload16(0, p + 48 + 32 * (j / 2)), v1 = vload16(1, p + 48 + 32 * (j / 2));
            const uchar16 q0 = ((v0 >> sh) & (uchar)15) | (((h0 >> bit) & (uchar)1) << (uchar)4);
            const uchar16 q1 = ((v1 >> sh) & (uchar)15) | (((h1 >> bit) & (uchar)1) << (uchar)4);
            const float16 x0 = vload16(0, xb + 32 * j), x1 = vload16(1, xb + 32 * j);
            int sc, mn;
            dn_q_scale_min_k4(p + 4, j, &sc, &mn);
            acc += d * (float)sc * dn_sum16(convert_float16(q0) * x0 + convert_float16(q1) * x1)
                   - dmin * (float)mn * dn_sum16(x0 + x1);
        }
    }
    return acc;
}""",
    DType.Q6_K: r"""
static inline float dn_qdot_q6_k(__global const float* x, __global const uchar* row, long k) {
    float acc = 0.0f;
    for (long b = 0; b < k / 256; ++b) {                 /* 16 runs of 16 elements, one int8 scale each */
        __global const uchar* p = row + b * 210;
        __global const float* xb = x + b * 256;
        const float d = dn_q_f16(p + 208);
        for (int g = 0; g < 16; ++g) {
            const int e = 16 * g, h = e / 128, r = e % 128;
            const uchar16 lo = (vload16(0, p + 64 * h + r % 64) >> (uchar)(4 * (r / 64))) & (uchar)15;
            const uchar16 hi = (vload16(0, p + 128 + 32 * h + r % 32) >> (uchar)(2 * (r / 32))) & (uchar)3;
            const float16 q = convert_float16(lo | (hi << (uchar)4)) - 32.0f;
            acc += d * (float)(char)p[192 + g] * dn_sum16(q * vload16(0, xb + e));
        }
    }
    return acc;
}""",
}

def quant_support(dtypes: Iterable[DType]) -> str:
    """OpenCL C for the block dtypes among `dtypes` (after the prelude): dn_dq_<name>, and dn_qdot_<name>."""
    wanted = sorted({d for d in dtypes if d.is_block}, key=lambda d: d.value)
    if not wanted:
        return ""
    return "\n".join([COMMON, *(FORMATS[d] for d in wanted), *(DOTS[d] for d in wanted if d in DOTS)])


def render_qmatmul_kernel(r: OpenCLRenderer, q: QMatmul) -> RenderedKernel:
    """out[i, j] = epilogue(sum_k a[i, k] * w[j, k]): one work-item per (i, j), j fastest."""
    i, j = q.vars
    ix = r.index
    row_bytes = q.k // q.weight_dtype.block * q.weight_dtype.block_bytes
    x_row = f"{q.a.buffer} + {ix(q.a.offset)} + {i} * {ix(q.a.row_stride)}"
    if q.weight_dtype in DOTS:
        dot = f"dn_qdot_{q.weight_dtype.value}({x_row}, {q.weight} + {j} * {row_bytes}L, {q.k})"
        acc = [f"    const float acc = {dot};"]
    else:
        acc = ["    float acc = 0.0f;",
               f"    for (long g_k = 0; g_k < {q.k}; ++g_k)",
               f"        acc += ({x_row})[g_k] * dn_dq_{q.weight_dtype.value}({q.weight}, {j} * {q.k}L + g_k);"]
    lines = r.header() + [f"    const int64_t g_id = (int64_t){r.grid_index('global', 0)};",
                          f"    if (g_id >= {ix(q.m)} * {q.n}) return;",
                          f"    const int64_t {i} = g_id / {q.n}, {j} = g_id % {q.n};", *acc]
    lines += r.stmts(q.epilogue_lets, "    ")
    value = r.store_value(r.expr(q.epilogue), q.epilogue.dtype, r.buffer_dtype(q.out))
    lines += [f"    {q.out}[{i} * {q.n} + {j}] = {value};", "}"]
    return RenderedKernel(r.kernel.name, "\n".join(lines), Grid((q.m, q.n)))
