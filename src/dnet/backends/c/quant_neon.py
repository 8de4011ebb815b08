"""The AArch64 integer kernels of the GGUF block formats (`backends/c/quant.py`), where DN_Q_NEON is defined.

The machinery is quant.py's (activations quantized per 32-block, weights unpacked to u8 with a scale d and
an offset o per group, GEMV for few rows, panels of 32 columns for many); these are the ISA's parts:

- `dn_q_dot` (int8 activations): sum u * q per group with `sdot` where the CPU has it (the prelude's
  `dn_arm_dotprod`), else `smull`/`smull2` into int16, pairs added into int32 (`saddlp`, `addp`). sdot is
  signed x signed, as is smull: u of the 4-, 5- and 6-bit formats is at most 63 and reads the same signed,
  and Q8_0's u = q + 128 gets its top bit flipped back to q, with no offset (`DN_Q_SIGNED8`, as on AVX2
  without VNNI).
- `dn_q_dot16` (int16 activations): u widened to int16 (Q8_0: q), `smlal`/`smlal2` into int32.
- `dn_q_panel_rows`: the panel tile, rows x 8 columns at a time (two vectors of 4 sums per row), one `sdot`
  per 4 columns x 4 values of k (without dotprod: `smull` x 2, `saddlp` x 2, `addp`: the same 4 sums, so
  the two paths' results are equal, bit for bit); int16 panels:
  `smull`/`smull2` on 4 columns x 2 values of k and one `addp`.

Each sdot-using function exists twice, rendered from one template: for `armv8.2-a+dotprod`
(DN_ARM_DOT_TARGET) and without; the choice is made once per call, at the top of the chain, so that every
inlined step of a chain has its caller's target.
"""
from __future__ import annotations

# one int8 step: s (int32x4) += the products of w and x (int8x16) summed by 4 bytes (sdot's lanes). Without
# dotprod the same 4 sums (smull's int16 products, pairs added twice): every lane holds the same integer on
# both paths, so their float results are the same, bit for bit, and a panel's 4 columns come out in order
_STEP = {
    "sdot": "vdotq_s32({s}, {w}, {x})",
    "smull": ("vaddq_s32({s}, vpaddq_s32(vpaddlq_s16(vmull_s8(vget_low_s8({w}), vget_low_s8({x}))), "
              "vpaddlq_s16(vmull_high_s8({w}, {x}))))"),
}
_ATTR = {"sdot": "DN_ARM_DOT_TARGET", "smull": ""}


def _dot(v: str) -> str:
    return f"""
/* sum over groups g of fac[g] * sum(u * q) over the group's G (32 or 16) elements; k a multiple of G */
static {_ATTR[v]} float dn_q_dot_{v}(const uint8_t* u, const float* fac, const int8_t* q, int64_t k, int G,
                                  int offset128) {{
    const int8x16_t flip = vdupq_n_s8(offset128 ? (int8_t)-128 : 0);   /* Q8_0's u = q + 128 back to q */
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    for (int64_t i = 0; i < k; i += G) {{
        int32x4_t s = vdupq_n_s32(0);
        for (int e = 0; e < G; e += 16) {{
            const int8x16_t w = veorq_s8(vreinterpretq_s8_u8(vld1q_u8(u + i + e)), flip), x = vld1q_s8(q + i + e);
            s = {_STEP[v].format(s="s", w="w", x="x")};
        }}
        /* two chains, alternate groups: the multiply-add's latency is not the limit */
        if ((i / G) & 1) acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(s), fac[i / G]);
        else acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(s), fac[i / G]);
    }}
    return vaddvq_f32(vaddq_f32(acc0, acc1));
}}
"""


def _tile(v: str) -> str:
    step = _STEP[v]
    return f"""
/* R rows x the 8 columns 8h..8h+7 of a panel (32 columns): two vectors of 4 sums a row */
static inline __attribute__((always_inline)) {_ATTR[v]} void dn_q_tile_quarter_{v}(
        const int R, const int G, const int wide, const int h, const uint8_t* panel, const float* pd, const float* po,
        const dn_qx* qx, int64_t i0, float* y, int64_t ldy, int cols, int offset128) {{
    const int64_t k = qx->k, nb = k / 32;
    const int per = wide ? 2 : 4;           /* elements of k a panel step holds */
    const float* dx = qx->d + i0 * nb;
    const float* sx = G == 32 ? qx->s32 + i0 * nb : qx->s16 + i0 * 2 * nb;
    const int64_t lds = G == 32 ? nb : 2 * nb;
    const int8x16_t flip = vdupq_n_s8(offset128 && !wide ? (int8_t)-128 : 0);   /* Q8_0's u back to q */
    float32x4_t acc[4][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = vdupq_n_f32(0.0f);
    for (int64_t g = 0; g < k / G; ++g) {{
        int32x4_t s[4][2];
        for (int r = 0; r < R; ++r) s[r][0] = s[r][1] = vdupq_n_s32(0);
        const uint8_t* p = panel + g * (G / per) * 4 * DN_QP_N + 32 * h;
        for (int t = 0; t < G / per; ++t) {{
            const uint8_t* pt = p + t * 4 * DN_QP_N;
            if (wide) {{   /* 4 columns x 2 int16 of k a vector: products in int32, pairs added (addp) */
                int16x8_t w0, w1;
                memcpy(&w0, pt, 16);
                memcpy(&w1, pt + 16, 16);
                for (int r = 0; r < R; ++r) {{
                    const int16x8_t x = vreinterpretq_s16_s32(vdupq_n_s32(dn_q_x4(1, qx, i0 + r, g * G + 2 * t)));
                    s[r][0] = vaddq_s32(s[r][0], vpaddq_s32(vmull_s16(vget_low_s16(w0), vget_low_s16(x)),
                                                            vmull_high_s16(w0, x)));
                    s[r][1] = vaddq_s32(s[r][1], vpaddq_s32(vmull_s16(vget_low_s16(w1), vget_low_s16(x)),
                                                            vmull_high_s16(w1, x)));
                }}
                continue;
            }}
            const int8x16_t w0 = veorq_s8(vld1q_s8((const int8_t*)pt), flip);
            const int8x16_t w1 = veorq_s8(vld1q_s8((const int8_t*)(pt + 16)), flip);
            for (int r = 0; r < R; ++r) {{
                const int8x16_t x = vreinterpretq_s8_s32(vdupq_n_s32(dn_q_x4(0, qx, i0 + r, g * G + 4 * t)));
                s[r][0] = {step.format(s="s[r][0]", w="w0", x="x")};
                s[r][1] = {step.format(s="s[r][1]", w="w1", x="x")};
            }}
        }}
        const float32x4_t d0 = vld1q_f32(pd + g * DN_QP_N + 8 * h), d1 = vld1q_f32(pd + g * DN_QP_N + 8 * h + 4);
        const float32x4_t o0 = vld1q_f32(po + g * DN_QP_N + 8 * h), o1 = vld1q_f32(po + g * DN_QP_N + 8 * h + 4);
        for (int r = 0; r < R; ++r) {{
            const float fx = dx[r * nb + g * G / 32], sr = sx[r * lds + g];
            acc[r][0] = vfmaq_f32(acc[r][0], vcvtq_f32_s32(s[r][0]), vmulq_n_f32(d0, fx));
            acc[r][1] = vfmaq_f32(acc[r][1], vcvtq_f32_s32(s[r][1]), vmulq_n_f32(d1, fx));
            if (offset128 && !wide) continue;   /* the signed dot product has no offset */
            acc[r][0] = vfmaq_n_f32(acc[r][0], o0, sr);
            acc[r][1] = vfmaq_n_f32(acc[r][1], o1, sr);
        }}
    }}
    const int c0 = cols - 8 * h;
    for (int r = 0; r < R; ++r) {{
        if (c0 >= 8) {{
            vst1q_f32(y + r * ldy + 8 * h, acc[r][0]);
            vst1q_f32(y + r * ldy + 8 * h + 4, acc[r][1]);
        }} else if (c0 > 0) {{
            float tmp[8];
            vst1q_f32(tmp, acc[r][0]);
            vst1q_f32(tmp + 4, acc[r][1]);
            memcpy(y + r * ldy + 8 * h, tmp, (size_t)c0 * sizeof(float));
        }}
    }}
}}

/* every row of x against one packed panel, R rows at a time (constants, so each tile is specialised) */
static inline __attribute__((always_inline)) {_ATTR[v]} void dn_q_rows_of_{v}(
        const int G, const int wide, const uint8_t* panel, const float* pd, const float* po, const dn_qx* qx,
        float* y, int64_t ldy, int cols, int offset128) {{
    int64_t i = 0;
    for (; i < qx->m; i += DN_QP_ROWS) {{
        float* yi = y + i * ldy;
        for (int h = 0; h < 4 && 8 * h < cols; ++h) {{
            switch (qx->m - i < DN_QP_ROWS ? qx->m - i : DN_QP_ROWS) {{
            case 4: dn_q_tile_quarter_{v}(4, G, wide, h, panel, pd, po, qx, i, yi, ldy, cols, offset128); break;
            case 3: dn_q_tile_quarter_{v}(3, G, wide, h, panel, pd, po, qx, i, yi, ldy, cols, offset128); break;
            case 2: dn_q_tile_quarter_{v}(2, G, wide, h, panel, pd, po, qx, i, yi, ldy, cols, offset128); break;
            default: dn_q_tile_quarter_{v}(1, G, wide, h, panel, pd, po, qx, i, yi, ldy, cols, offset128); break;
            }}
        }}
    }}
}}

static {_ATTR[v]} void dn_q_panel_rows_{v}(const int G, const uint8_t* panel, const float* pd, const float* po,
                                        const dn_qx* qx, float* y, int64_t ldy, int cols, int offset128) {{
    if (G == 32 && qx->wide) dn_q_rows_of_{v}(32, 1, panel, pd, po, qx, y, ldy, cols, offset128);
    else if (G == 32) dn_q_rows_of_{v}(32, 0, panel, pd, po, qx, y, ldy, cols, offset128);
    else if (qx->wide) dn_q_rows_of_{v}(16, 1, panel, pd, po, qx, y, ldy, cols, offset128);
    else dn_q_rows_of_{v}(16, 0, panel, pd, po, qx, y, ldy, cols, offset128);
}}
"""


DOTS = f"""
#if defined(DN_Q_NEON)
#if defined(DN_ARM_DOT)
{_dot("sdot")}
#endif
{_dot("smull")}
static float dn_q_dot(const uint8_t* u, const float* fac, const int8_t* q, int64_t k, int G, int offset128) {{
#if defined(DN_ARM_DOT)
    if (dn_arm_dotprod()) return dn_q_dot_sdot(u, fac, q, k, G, offset128);
#endif
    return dn_q_dot_smull(u, fac, q, k, G, offset128);
}}

/* dn_q_dot with int16 activations: u widened (Q8_0, sgn: u - 128 = q), smlal into int32 (a group's 8
   products a lane are at most 8 * 255 * 32767, within int32) */
static float dn_q_dot16(const uint8_t* u, const float* fac, const int16_t* q, int64_t k, int G, int sgn) {{
    const int16x8_t shift = vdupq_n_s16(sgn ? 128 : 0);
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    for (int64_t i = 0; i < k; i += G) {{
        int32x4_t s = vdupq_n_s32(0);
        for (int e = 0; e < G; e += 16) {{
            const uint8x16_t b = vld1q_u8(u + i + e);
            const int16x8_t w0 = vsubq_s16(vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(b))), shift);
            const int16x8_t w1 = vsubq_s16(vreinterpretq_s16_u16(vmovl_high_u8(b)), shift);
            const int16x8_t x0 = vld1q_s16(q + i + e), x1 = vld1q_s16(q + i + e + 8);
            s = vmlal_s16(s, vget_low_s16(w0), vget_low_s16(x0));
            s = vmlal_high_s16(s, w0, x0);
            s = vmlal_s16(s, vget_low_s16(w1), vget_low_s16(x1));
            s = vmlal_high_s16(s, w1, x1);
        }}
        if ((i / G) & 1) acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(s), fac[i / G]);
        else acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(s), fac[i / G]);
    }}
    return vaddvq_f32(vaddq_f32(acc0, acc1));
}}
#endif
"""

TILES = f"""
#if defined(DN_Q_NEON)
#define DN_QP_ROWS 4
#if defined(DN_ARM_DOT)
{_tile("sdot")}
#endif
{_tile("smull")}
static void dn_q_panel_rows(const int G, const uint8_t* panel, const float* pd, const float* po, const dn_qx* qx,
                            float* y, int64_t ldy, int cols, int offset128) {{
#if defined(DN_ARM_DOT)
    if (dn_arm_dotprod()) {{ dn_q_panel_rows_sdot(G, panel, pd, po, qx, y, ldy, cols, offset128); return; }}
#endif
    dn_q_panel_rows_smull(G, panel, pd, po, qx, y, ldy, cols, offset128);
}}
#endif
"""
