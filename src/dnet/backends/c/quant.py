"""C kernels on GGUF block formats (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K), computing on the stored blocks.

`quant_support(dtypes)` is C text appended after the PRELUDE. For each block dtype it defines

    float dn_dq_<name>(const uint8_t* base, int64_t i)          one element, exactly gguf's value
    void dn_qmatmul_<name>(m, n, k, x, ldx, w, y, ldy)          y = x @ W.T, W (n, k) in blocks, x as int8
    void dn_qmatmul16_<name>(m, n, k, x, ldx, w, y, ldy)        the same with x as int16

How a matmul runs (integer paths: x86 AVX-512 VNNI, AVX-VNNI or AVX2; AArch64 sdot or NEON, `quant_neon.py`):

1. The rows of x are quantized per 32-element block with one f32 scale, plus the block's sum:
   to int8 (steps of max|x| / 127, as llama.cpp's Q8_1) or, for dn_qmatmul16, to int16 (steps of
   max|x| / 32767: 258 times finer). `dn_qx_quantize`, shared by every format; `wide` is the precision.
2. Every weight format is unpacked to one form: unsigned 8-bit values u, and per group of
   32 (16 for Q6_K) a scale d and an offset o, so that w = d * u + o. Then
       sum w * x = d * dx * sum(u * qx) + o * (dx * sum(qx))
   and sum(u * qx) is an integer dot product: int8, `vpdpbusd` (or `vpmaddubsw` on AVX2; AArch64 `sdot`,
   or `smull` without dotprod); int16, u widened to int16, `vpdpwssd` (or `vpmaddwd` on AVX2; AArch64
   `smlal`). Signed formats take an offset for int8: Q8_0's u is q + 128 with o = -128 d; with int16, and
   where the int8 product is signed x signed (AVX2 without VNNI, AArch64: `DN_Q_SIGNED8`), Q8_0's q is
   used signed, o = 0.
3. Few rows (decode, m < DN_QPANEL_ROWS): each thread unpacks one weight row at a time
   into L1 and takes its dot products with the m rows of x (a GEMV streaming the weights
   once); on AVX-512 Q8_0, Q4_0 and Q4_1 are read straight from their blocks (int16 Q4_0 / Q4_1
   four blocks a vector, against x laid out to match once per call). Many rows (prefill): each
   thread unpacks 32 weight rows into a panel laid out 4 bytes of k x 32 columns (int16: 2 values
   of k x 32 columns), so that one vector load holds 16 columns, and a register tile of rows x 32
   columns runs over it with broadcast activations: each unpacked weight is used by every row.

`-DDN_QUANT_PORTABLE` forces the portable path (dequantize to f32, f32 dot products, for both entry
points), `-DDN_QUANT_NO_VNNI` the AVX2 path, `-DDN_QUANT_NO_AVX512` the 256-bit path (AVX-VNNI where
the host has it), `-DDN_QUANT_NO_DOTPROD` AArch64's NEON path: tests build each path the host supports
(the AArch64 ones under qemu-user: tests/backends/c/test_quant_kernels_aarch64.py).
"""
from __future__ import annotations

from typing import Iterable

from dnet.backends.c.quant_neon import DOTS as NEON_DOTS, TILES as NEON_TILES
from dnet.core.dtypes import DType

_COMMON = r"""
/* ======== GGUF block formats: shared machinery (dnet.backends.c.quant) ======== */
#if !defined(DN_QUANT_PORTABLE) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) \
    && !defined(DN_QUANT_NO_VNNI) && !defined(DN_QUANT_NO_AVX512)
#define DN_Q_AVX512 1
#define DN_Q_INT 1
#include <immintrin.h>
#elif !defined(DN_QUANT_PORTABLE) && defined(__AVX2__)
#define DN_Q_AVX2 1
#define DN_Q_INT 1
#include <immintrin.h>
#if !defined(DN_QUANT_NO_VNNI) && defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define DN_Q_DPBUSD(acc, u, x) _mm256_dpbusd_epi32(acc, u, x)
#define DN_Q_DPWSSD(acc, w, x) _mm256_dpwssd_epi32(acc, w, x)
#elif !defined(DN_QUANT_NO_VNNI) && defined(__AVXVNNI__)
#define DN_Q_DPBUSD(acc, u, x) _mm256_dpbusd_avx_epi32(acc, u, x)
#define DN_Q_DPWSSD(acc, w, x) _mm256_dpwssd_avx_epi32(acc, w, x)
#else                  /* int16 pairs multiplied and added: vpmaddwd, one add */
#define DN_Q_DPWSSD(acc, w, x) _mm256_add_epi32(acc, _mm256_madd_epi16(w, x))
#endif
#elif !defined(DN_QUANT_PORTABLE) && defined(__aarch64__) && defined(__ARM_NEON)
#define DN_Q_NEON 1            /* backends/c/quant_neon.py; arm_neon.h and dn_arm_dotprod come with the prelude */
#define DN_Q_INT 1
#endif
#if (defined(DN_Q_AVX2) && !defined(DN_Q_DPBUSD)) || defined(DN_Q_NEON)
#define DN_Q_SIGNED8 1         /* the int8 dot product is signed x signed: Q8_0's q taken signed, no offset */
#endif

/* the path this translation unit computes with, for tests and benchmarks */
static const char* dn_quant_path(void) {
#if defined(DN_Q_AVX512)
    return "avx512-vnni";
#elif defined(DN_Q_AVX2) && defined(DN_Q_DPBUSD)
    return "avx-vnni";
#elif defined(DN_Q_AVX2)
    return "avx2";
#elif defined(DN_Q_NEON) && defined(DN_ARM_DOT)
    return dn_arm_dotprod() ? "neon-dotprod" : "neon";
#elif defined(DN_Q_NEON)
    return "neon";
#else
    return "portable";
#endif
}

static inline float dn_q_f16(const uint8_t* p) { uint16_t h; memcpy(&h, p, 2); return dn_f16_to_f32(h); }

/* A value the compiler may not fuse into a multiply-add: dn_dq_* round each step as numpy does. */
static inline float dn_q_exact(float v) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__("" : "+x"(v));
#elif defined(__aarch64__)
    __asm__("" : "+w"(v));
#else
    volatile float t = v; v = t;
#endif
    return v;
}

/* K-quant scales: 8 sub-blocks' 6-bit scale and min packed in 12 bytes (gguf's Q4_K.get_scale_min) */
static inline void dn_q_scale_min_k4(const uint8_t* s, int j, int* sc, int* mn) {
    if (j < 4) { *sc = s[j] & 63; *mn = s[j + 4] & 63; }
    else { *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4); *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4); }
}

/* 16 bytes of nibbles -> 32 values, the low nibbles first: one vector each way (GCC/Clang vector types; plain
 * loops here were vectorised across blocks, byte by byte) */
typedef uint8_t dn_q_v16 __attribute__((vector_size(16)));
static inline void dn_q_nibbles(const uint8_t* restrict qs, uint8_t* restrict u) {
    dn_q_v16 v, lo, hi;
    memcpy(&v, qs, 16);
    lo = v & 15; hi = v >> 4;
    memcpy(u, &lo, 16);
    memcpy(u + 16, &hi, 16);
}

static void* dn_q_alloc(size_t bytes) {           /* 64-byte aligned scratch, padded for vector over-reads */
    void* p = 0;
    return posix_memalign(&p, 64, (bytes + 127) & ~(size_t)63) == 0 ? p : 0;
}

/* One weight format: unpack(row, k, u, d, o) writes a row's k values as u8 (w = d*u + o per group). */
typedef void (*dn_q_unpack_fn)(const uint8_t* restrict row, int64_t k, uint8_t* restrict u, float* restrict d,
                               float* restrict o);
typedef void (*dn_q_dqrow_fn)(const uint8_t* row, int64_t k, float* out);
typedef struct {
    dn_q_unpack_fn unpack;
    dn_q_dqrow_fn dqrow;
    int64_t block, block_bytes;   /* elements and bytes per stored block */
    int group;                    /* elements per scale: 32, or 16 (Q6_K) */
    int offset128;                /* u = q + 128 for a signed 8-bit q (Q8_0): AVX2 uses sign tricks instead */
} dn_qformat;

/* -- activations: per 32-block, int8 (like llama.cpp's Q8_1) or int16 ----------------------------------------
 * q (m x k int8) or q16 (m x k int16, when wide), d (m x k/32 scales), s32 (m x k/32: d * sum of the block's
 * q) and s16 (m x k/16: the same per half block, for Q6_K whose scales change every 16 elements).
 * wide: the precision, 0 int8 (steps of max|x| / 127), 1 int16 (steps of max|x| / 32767). */
typedef struct { int8_t* q; int16_t* q16; float* d; float* s32; float* s16; int64_t m, k; int wide; void* mem; } dn_qx;

typedef struct { const float* x; int64_t ldx; dn_qx* qx; } dn_qx_job;

static void dn_qx_quantize_rows(void* ctx, int64_t begin, int64_t end) {
    const dn_qx_job* job = (const dn_qx_job*)ctx;
    const int64_t k = job->qx->k, nb = k / 32;
    for (int64_t i = begin; i < end; ++i) {
        const float* x = job->x + i * job->ldx;
        const int wide = job->qx->wide;
        const float top = wide ? 32767.0f : 127.0f;      /* the largest step count */
        int8_t* q = wide ? 0 : job->qx->q + i * k;
        int16_t* q16 = wide ? job->qx->q16 + i * k : 0;
#if defined(DN_Q_AVX512) || defined(DN_Q_AVX2)
        for (int64_t b = 0; b < nb; ++b) {      /* 4 vectors of 8: rounding to nearest even, as nearbyintf */
            const float* xb = x + b * 32;
            const __m256 sign = _mm256_set1_ps(-0.0f);
            __m256 v[4], amax = _mm256_setzero_ps();
            for (int j = 0; j < 4; ++j) { v[j] = _mm256_loadu_ps(xb + 8 * j); amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[j])); }
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            const float a = _mm_cvtss_f32(m4), d = a / top, id = a > 0.0f ? top / a : 0.0f;
            __m256i qi[4];
            for (int j = 0; j < 4; ++j) qi[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], _mm256_set1_ps(id)));
            /* int32 -> int16 (-> int8) with the lanes put back in order (the packs work within 128-bit lanes) */
            const __m256i w01 = _mm256_packs_epi32(qi[0], qi[1]), w23 = _mm256_packs_epi32(qi[2], qi[3]);
            if (wide) {
                _mm256_storeu_si256((__m256i*)(q16 + b * 32), _mm256_permute4x64_epi64(w01, _MM_SHUFFLE(3, 1, 2, 0)));
                _mm256_storeu_si256((__m256i*)(q16 + b * 32 + 16), _mm256_permute4x64_epi64(w23, _MM_SHUFFLE(3, 1, 2, 0)));
            } else {
                const __m256i b8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
                _mm256_storeu_si256((__m256i*)(q + b * 32), b8);
            }
            const __m256i lo = _mm256_add_epi32(qi[0], qi[1]), hi = _mm256_add_epi32(qi[2], qi[3]);
            const __m256i both = _mm256_hadd_epi32(lo, hi);   /* [lo0+lo1, lo2+lo3, hi0+hi1, hi2+hi3 | same, upper lane] */
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(both), _mm256_extracti128_si256(both, 1));
            s4 = _mm_hadd_epi32(s4, s4);                       /* [lo, hi, lo, hi] */
            const int sum_lo = _mm_cvtsi128_si32(s4), sum_hi = _mm_extract_epi32(s4, 1);
            job->qx->d[i * nb + b] = d;
            job->qx->s32[i * nb + b] = d * (float)(sum_lo + sum_hi);
            job->qx->s16[i * 2 * nb + 2 * b] = d * (float)sum_lo;
            job->qx->s16[i * 2 * nb + 2 * b + 1] = d * (float)sum_hi;
        }
#else
        for (int64_t b = 0; b < nb; ++b) {
            const float* xb = x + b * 32;
            float amax = 0.0f;
            for (int e = 0; e < 32; ++e) amax = fmaxf(amax, fabsf(xb[e]));
            const float d = amax / top, id = amax > 0.0f ? top / amax : 0.0f;
            int sum_lo = 0, sum_hi = 0;
            for (int e = 0; e < 32; ++e) {
                int v = (int)nearbyintf(xb[e] * id);
                if (wide) q16[b * 32 + e] = (int16_t)v; else q[b * 32 + e] = (int8_t)v;
                if (e < 16) sum_lo += v; else sum_hi += v;
            }
            job->qx->d[i * nb + b] = d;
            job->qx->s32[i * nb + b] = d * (float)(sum_lo + sum_hi);
            job->qx->s16[i * 2 * nb + 2 * b] = d * (float)sum_lo;
            job->qx->s16[i * 2 * nb + 2 * b + 1] = d * (float)sum_hi;
        }
#endif
    }
}

/* Quantizes the m rows of x (threaded over rows) to int8, or int16 when wide; 0 when out of memory. */
static int dn_qx_quantize(dn_qx* qx, const float* x, int64_t ldx, int64_t m, int64_t k, int wide) {
    const int64_t nb = k / 32, qbytes = (m * k * (wide ? 2 : 1) + 63) & ~(int64_t)63;
    char* mem = (char*)dn_q_alloc((size_t)qbytes + (size_t)(4 * m * nb) * sizeof(float));
    if (!mem) return 0;
    qx->mem = mem; qx->m = m; qx->k = k; qx->wide = wide;
    qx->q = wide ? 0 : (int8_t*)mem;
    qx->q16 = wide ? (int16_t*)mem : 0;
    qx->d = (float*)(mem + qbytes);
    qx->s32 = qx->d + m * nb;
    qx->s16 = qx->s32 + m * nb;
    dn_qx_job job = {x, ldx, qx};
    dn_parallel(dn_qx_quantize_rows, &job, m, k >= 4096 ? 1 : 4096 / k);
    return 1;
}

/* -- the portable path: dequantize 8 weight rows to f32, f32 dot products -------------------------------- */
typedef struct {
    const dn_qformat* f; int64_t m, n, k; const float* x; int64_t ldx; const uint8_t* w; float* y; int64_t ldy;
} dn_qjob;

#define DN_QP_COLS 8

static void dn_q_portable_cols(void* ctx, int64_t begin, int64_t end) {
    const dn_qjob* job = (const dn_qjob*)ctx;
    const int64_t k = job->k, row_bytes = k / job->f->block * job->f->block_bytes;
    float* wbuf = (float*)dn_q_alloc((size_t)(DN_QP_COLS * k) * sizeof(float));
    if (!wbuf) abort();
    for (int64_t j0 = begin * DN_QP_COLS; j0 < end * DN_QP_COLS && j0 < job->n; j0 += DN_QP_COLS) {
        const int cols = (int)(job->n - j0 < DN_QP_COLS ? job->n - j0 : DN_QP_COLS);
        for (int c = 0; c < cols; ++c) job->f->dqrow(job->w + (j0 + c) * row_bytes, k, wbuf + c * k);
        for (int64_t i = 0; i < job->m; ++i) {
            const float* x = job->x + i * job->ldx;
            for (int c = 0; c < cols; ++c) {
                const float* wr = wbuf + c * k;
                float acc = 0.0f;
                #pragma omp simd reduction(+:acc)
                for (int64_t kk = 0; kk < k; ++kk) acc += x[kk] * wr[kk];
                job->y[i * job->ldy + j0 + c] = acc;
            }
        }
    }
    free(wbuf);
}

static void dn_qmatmul_portable(const dn_qjob* job) {
    const int64_t panels = (job->n + DN_QP_COLS - 1) / DN_QP_COLS;
    dn_parallel(dn_q_portable_cols, (void*)job, panels, 1);
}

#if defined(DN_Q_INT)
/* -- integer kernels, one set per ISA ----------------------------------------------------------------------
 * dot(u, fac, q, k, G): sum over groups g of fac[g] * sum(u * q) over the group's G elements, fac a group's
 * combined scale (weight d times activation d). The panel micro-kernels are below. */
#if defined(DN_Q_AVX512)
static float dn_q_dot(const uint8_t* u, const float* fac, const int8_t* q, int64_t k, int G, int offset128) {
    (void)offset128;
    const __m512i spread = G == 32 ? _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
                                   : _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 128 <= k; i += 128) {     /* two independent chains: the FMA latency is not the limit */
        __m512i p0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_loadu_si512(u + i), _mm512_loadu_si512(q + i));
        __m512i p1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_loadu_si512(u + i + 64),
                                         _mm512_loadu_si512(q + i + 64));
        __m512 f0 = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_loadu_ps(fac + i / G)));
        __m512 f1 = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_loadu_ps(fac + (i + 64) / G)));
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), f0, acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), f1, acc1);
    }
    for (; i + 64 <= k; i += 64) {
        __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_loadu_si512(u + i), _mm512_loadu_si512(q + i));
        __m512 f = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_loadu_ps(fac + i / G)));
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), f, acc0);
    }
    if (i < k) {                          /* a last 32: the upper half of the vector is zero */
        __m512i uu = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(u + i)));
        __m512i qq = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(q + i)));
        __m512i p = _mm512_maskz_dpbusd_epi32(0x00ff, _mm512_setzero_si512(), uu, qq);
        __m512 f = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_loadu_ps(fac + i / G)));
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), f, acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

/* 32 unpacked weights as int16: u, or u - 128 for a format stored signed (sgn: Q8_0, u = q + 128) */
static inline __m512i dn_q_widen(__m256i u, int sgn) {
    return sgn ? _mm512_cvtepi8_epi16(_mm256_xor_si256(u, _mm256_set1_epi8((char)0x80))) : _mm512_cvtepu8_epi16(u);
}

/* dn_q_dot with int16 activations: per 32 elements one vpdpwssd, lanes 0-7 the first 16, 8-15 the last 16 */
static float dn_q_dot16(const uint8_t* u, const float* fac, const int16_t* q, int64_t k, int G, int sgn) {
    const __m512i spread = G == 32 ? _mm512_setzero_si512() : _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= k; i += 64) {        /* two independent chains */
        const __m512i w0 = dn_q_widen(_mm256_loadu_si256((const __m256i*)(u + i)), sgn);
        const __m512i w1 = dn_q_widen(_mm256_loadu_si256((const __m256i*)(u + i + 32)), sgn);
        const __m512i p0 = _mm512_dpwssd_epi32(_mm512_setzero_si512(), w0, _mm512_loadu_si512(q + i));
        const __m512i p1 = _mm512_dpwssd_epi32(_mm512_setzero_si512(), w1, _mm512_loadu_si512(q + i + 32));
        const __m512 f0 = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_loadu_ps(fac + i / G)));
        const __m512 f1 = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_loadu_ps(fac + (i + 32) / G)));
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), f0, acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), f1, acc1);
    }
    if (i < k) {
        const __m512i w = dn_q_widen(_mm256_loadu_si256((const __m256i*)(u + i)), sgn);
        const __m512i p = _mm512_dpwssd_epi32(_mm512_setzero_si512(), w, _mm512_loadu_si512(q + i));
        const __m512 f = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_loadu_ps(fac + i / G)));
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), f, acc0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}
#elif defined(DN_Q_AVX2)
static inline float dn_q_sum8(__m256 s) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* 32 products u * q summed in 8 lanes of 4 */
static inline __m256i dn_q_dot32(__m256i u, __m256i q, int offset128) {
#if defined(DN_Q_DPBUSD)
    (void)offset128;
    return DN_Q_DPBUSD(_mm256_setzero_si256(), u, q);
#else
    const __m256i ones = _mm256_set1_epi16(1);
    if (offset128) {                      /* u up to 255 would saturate vpmaddubsw: |w| times x with w's sign */
        __m256i w = _mm256_xor_si256(u, _mm256_set1_epi8((char)0x80));
        return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(q, w)), ones);
    }
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), ones);
#endif
}

static float dn_q_dot(const uint8_t* u, const float* fac, const int8_t* q, int64_t k, int G, int offset128) {
    const __m256i spread = G == 32 ? _mm256_setzero_si256() : _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= k; i += 64) {
        __m256i p0 = dn_q_dot32(_mm256_loadu_si256((const __m256i*)(u + i)), _mm256_loadu_si256((const __m256i*)(q + i)),
                                offset128);
        __m256i p1 = dn_q_dot32(_mm256_loadu_si256((const __m256i*)(u + i + 32)),
                                _mm256_loadu_si256((const __m256i*)(q + i + 32)), offset128);
        __m256 f0 = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(fac + i / G)), spread);
        __m256 f1 = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(fac + (i + 32) / G)), spread);
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), f0, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), f1, acc1);
    }
    if (i < k) {
        __m256i p = dn_q_dot32(_mm256_loadu_si256((const __m256i*)(u + i)), _mm256_loadu_si256((const __m256i*)(q + i)),
                               offset128);
        __m256 f = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(fac + i / G)), spread);
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), f, acc0);
    }
    return dn_q_sum8(_mm256_add_ps(acc0, acc1));
}

/* 16 unpacked weights as int16: u, or u - 128 for a format stored signed (sgn: Q8_0, u = q + 128) */
static inline __m256i dn_q_widen(__m128i u, int sgn) {
    return sgn ? _mm256_cvtepi8_epi16(_mm_xor_si128(u, _mm_set1_epi8((char)0x80))) : _mm256_cvtepu8_epi16(u);
}

/* dn_q_dot with int16 activations: 16 elements a vector; a group of 32 sums its two in integers, one f32 update */
static inline __attribute__((always_inline)) __m256i dn_q_dot16_half(const uint8_t* u, const int16_t* q, int sgn) {
    return DN_Q_DPWSSD(_mm256_setzero_si256(), dn_q_widen(_mm_loadu_si128((const __m128i*)u), sgn),
                       _mm256_loadu_si256((const __m256i*)q));
}

static float dn_q_dot16(const uint8_t* u, const float* fac, const int16_t* q, int64_t k, int G, int sgn) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    if (G == 32) {
        for (; i + 64 <= k; i += 64) {       /* two independent chains */
            const __m256i p0 = _mm256_add_epi32(dn_q_dot16_half(u + i, q + i, sgn), dn_q_dot16_half(u + i + 16, q + i + 16, sgn));
            const __m256i p1 = _mm256_add_epi32(dn_q_dot16_half(u + i + 32, q + i + 32, sgn), dn_q_dot16_half(u + i + 48, q + i + 48, sgn));
            acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(fac[i / 32]), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(fac[i / 32 + 1]), acc1);
        }
    }
    for (; i < k; i += 32) {
        const __m256i p0 = dn_q_dot16_half(u + i, q + i, sgn), p1 = dn_q_dot16_half(u + i + 16, q + i + 16, sgn);
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(fac[i / G]), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(fac[(i + 16) / G]), acc1);
    }
    return dn_q_sum8(_mm256_add_ps(acc0, acc1));
}
#endif
""" + NEON_DOTS + r"""
/* -- few rows: one weight row unpacked at a time, dotted with every row of x ----------------------------- */
typedef struct {
    const dn_qformat* f; const dn_qx* qx; int64_t n; const uint8_t* w; float* y; int64_t ldy;
    const int16_t* xp;                /* x in quad order (dn_q_quads), for int16 Q4_0 / Q4_1 decode */
} dn_qgemv_job;

#if defined(DN_Q_AVX512)
/* Decode's formats straight from their blocks, no unpacked copy: two blocks per vector, two columns at a time
 * (x's vector is loaded once for both), the scales of eight blocks at once.
 * kind: 8 (Q8_0), 4 (Q4_0), 5 (Q4_1, which stores a min). */
static inline __attribute__((always_inline)) __m512i dn_q_pair(const int kind, const uint8_t* p0, const uint8_t* p1) {
    if (kind == 8) {                       /* 32 int8 each: u = q + 128 */
        const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(p0 + 2))),
                                             _mm256_loadu_si256((const __m256i*)(p1 + 2)), 1);
        return _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80));
    }
    /* 16 bytes of nibbles each, elements 0-15 low, 16-31 high: [q0, q0, q1, q1] masked to low, high, low, high
       nibbles. The high ones stay 16 times their value (no shift): their scale carries the 1/16. */
    const int at = kind == 5 ? 4 : 2;
    const long long L = 0x0f0f0f0f0f0f0f0fLL, H = (long long)0xf0f0f0f0f0f0f0f0ULL;
    const __m512i nibbles = _mm512_set_epi64(H, H, L, L, H, H, L, L);
    const __m256i both = _mm256_loadu2_m128i((const __m128i*)(p1 + at), (const __m128i*)(p0 + at));
    const __m512i z = _mm512_castsi256_si512(both);
    return _mm512_and_si512(_mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(1, 1, 0, 0)), nibbles);
}

static inline __mmask64 dn_q_bytes(int64_t n) { return n >= 64 ? ~(__mmask64)0 : n <= 0 ? 0 : ((__mmask64)1 << n) - 1; }

/* d and o (w = d u + o) of the `count` (<= 8) blocks at p: a few loads (masked: nothing past the last block is
 * read) and permutes that pick the scales out; blocks past count give 0 */
static inline __attribute__((always_inline)) void dn_q_scales8(
        const int kind, const uint8_t* p, int64_t bb, int count, __m256* d, __m256* o) {
    const int64_t bytes = count * bb;
    __m128i halves;
    __m256i pairs = _mm256_setzero_si256();
    if (kind == 5) {                        /* d|m dwords at bytes 0, 20, .. 140 */
        const __m512i a = _mm512_maskz_loadu_epi8(dn_q_bytes(bytes), p);
        const __m512i b = _mm512_maskz_loadu_epi8(dn_q_bytes(bytes - 80), p + 80);
        const __m512i at = _mm512_setr_epi32(0, 5, 10, 15, 16, 21, 26, 31, 0, 0, 0, 0, 0, 0, 0, 0);
        pairs = _mm512_castsi512_si256(_mm512_permutex2var_epi32(a, at, b));
        halves = _mm256_cvtepi32_epi16(pairs);
    } else if (kind == 4) {                 /* d at halfwords 0, 9, .. 63 */
        const __m512i a = _mm512_maskz_loadu_epi8(dn_q_bytes(bytes), p);
        const __m512i b = _mm512_maskz_loadu_epi8(dn_q_bytes(bytes - 64), p + 64);
        const __m512i at = _mm512_setr_epi32(9 << 16 | 0, 27 << 16 | 18, 45 << 16 | 36, 63 << 16 | 54,
                                             0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);   /* halfword indices, two a dword */
        halves = _mm512_castsi512_si128(_mm512_permutex2var_epi16(a, at, b));
    } else {                                /* Q8_0: d at halfwords 0, 17, 34, 51 of the first 128 bytes, then 4, 21,
                                               38, 55 of the next */
        const __m512i a = _mm512_maskz_loadu_epi8(dn_q_bytes(bytes), p);
        const __m512i b = _mm512_maskz_loadu_epi8(dn_q_bytes(bytes - 64), p + 64);
        const __m512i c = _mm512_maskz_loadu_epi8(dn_q_bytes(bytes - 128), p + 128);
        const __m512i e = _mm512_maskz_loadu_epi8(dn_q_bytes(bytes - 192), p + 192);
        const __m512i at = _mm512_setr_epi32(17 << 16 | 0, 51 << 16 | 34, 21 << 16 | 4, 55 << 16 | 38,
                                             0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
        const __m512i first = _mm512_permutex2var_epi16(a, at, b), second = _mm512_permutex2var_epi16(c, at, e);
        halves = _mm512_castsi512_si128(_mm512_mask_mov_epi16(first, 0xf0, second));
    }
    *d = _mm256_cvtph_ps(halves);
    *o = kind == 5 ? _mm256_cvtph_ps(_mm256_cvtepi32_epi16(_mm256_srli_epi32(pairs, 16)))
                   : _mm256_mul_ps(*d, _mm256_set1_ps(kind == 8 ? -128.0f : -8.0f));
}

/* adds `count` (<= 8) blocks from b on, of C columns and one row of x, to acc and off: a constant count of 8
 * unrolls the pairs with constant lane indices */
static inline __attribute__((always_inline)) void dn_q_gemv_group(
        const int kind, const int C, const int count, const uint8_t* w, int64_t row_bytes, int64_t bb,
        const int8_t* x, const float* dxs, const float* sxs, int64_t b, __m512 acc[2], __m256 off[2]) {
    const __mmask8 live = (__mmask8)((1u << count) - 1);
    const __m256 dx = _mm256_maskz_loadu_ps(live, dxs + b), sx = _mm256_maskz_loadu_ps(live, sxs + b);
    __m512 fac[2];     /* per column: lanes 0-7 d * dx of the 8 blocks; 8-15 the same / 16 (high nibbles) */
    for (int c = 0; c < C; ++c) {
        __m256 d, o;
        dn_q_scales8(kind, w + c * row_bytes + b * bb, bb, count, &d, &o);
        const __m256 f = _mm256_mul_ps(d, dx);
        fac[c] = _mm512_insertf32x8(_mm512_castps256_ps512(f), kind == 8 ? f : _mm256_mul_ps(f, _mm256_set1_ps(1.0f / 16)), 1);
        off[c] = _mm256_fmadd_ps(o, sx, off[c]);
    }
    for (int pair = 0; 2 * pair < count; ++pair) {
        const int two = 2 * pair + 1 < count, lo = 2 * pair, hi = kind == 8 ? lo : lo + 8;
        const __mmask16 lanes = two ? 0xffff : 0x00ff;
        const __m512i xv = _mm512_maskz_loadu_epi32(lanes, x + (b + lo) * 32);
        /* which scale each lane takes: block lo's low and high halves, then block lo + 1's */
        const __m512i spread = kind == 8
            ? _mm512_set_epi32(lo + 1, lo + 1, lo + 1, lo + 1, lo + 1, lo + 1, lo + 1, lo + 1, lo, lo, lo, lo, lo, lo, lo, lo)
            : _mm512_set_epi32(hi + 1, hi + 1, hi + 1, hi + 1, lo + 1, lo + 1, lo + 1, lo + 1, hi, hi, hi, hi, lo, lo, lo, lo);
        for (int c = 0; c < C; ++c) {
            const uint8_t* p0 = w + c * row_bytes + (b + lo) * bb;
            const __m512i u = dn_q_pair(kind, p0, two ? p0 + bb : p0);
            const __m512i s = _mm512_maskz_dpbusd_epi32(lanes, _mm512_setzero_si512(), u, xv);
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_permutexvar_ps(spread, fac[c]), acc[c]);
        }
    }
}

/* y[j] for C columns of W (rows at w + c * row_bytes) and one row i of x */
static inline __attribute__((always_inline)) void dn_q_gemv_blocks(
        const int kind, const int C, const uint8_t* w, int64_t row_bytes, int64_t bb, const dn_qx* qx, int64_t i,
        float* out) {
    const int64_t k = qx->k, nb = k / 32;
    const int8_t* x = qx->q + i * k;
    const float *dx = qx->d + i * nb, *sx = qx->s32 + i * nb;
    __m512 acc[2];
    __m256 off[2];
    for (int c = 0; c < C; ++c) { acc[c] = _mm512_setzero_ps(); off[c] = _mm256_setzero_ps(); }
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) dn_q_gemv_group(kind, C, 8, w, row_bytes, bb, x, dx, sx, b, acc, off);
    if (b < nb) dn_q_gemv_group(kind, C, (int)(nb - b), w, row_bytes, bb, x, dx, sx, b, acc, off);
    for (int c = 0; c < C; ++c)
        out[c] = _mm512_reduce_add_ps(_mm512_add_ps(acc[c], _mm512_castps256_ps512(off[c])));
}

#ifndef DN_Q_AHEAD
#define DN_Q_AHEAD 16
#endif
/* columns [begin, end) of y, straight from Q8_0 / Q4_0 / Q4_1 blocks */
static inline __attribute__((always_inline)) void dn_q_gemv_direct(
        const int kind, const dn_qgemv_job* job, int64_t begin, int64_t end) {
    const int64_t bb = job->f->block_bytes, row_bytes = job->qx->k / 32 * bb;
    for (int64_t j = begin; j < end; j += 2) {
        const int two = j + 1 < end;
        /* the weights come from memory once each (decode): ask for the columns DN_Q_AHEAD on now */
        if (DN_Q_AHEAD > 0 && j + DN_Q_AHEAD + 2 <= end)
            for (int64_t at = 0; at < 2 * row_bytes; at += 64) _mm_prefetch((const char*)job->w + (j + DN_Q_AHEAD) * row_bytes + at, _MM_HINT_T0);
        for (int64_t i = 0; i < job->qx->m; ++i) {
            float out[2];
            if (two) dn_q_gemv_blocks(kind, 2, job->w + j * row_bytes, row_bytes, bb, job->qx, i, out);
            else dn_q_gemv_blocks(kind, 1, job->w + j * row_bytes, row_bytes, bb, job->qx, i, out);
            job->y[i * job->ldy + j] = out[0];
            if (two) job->y[i * job->ldy + j + 1] = out[1];
        }
    }
}
static void dn_q_gemv_q8_0(void* ctx, int64_t begin, int64_t end) { dn_q_gemv_direct(8, (const dn_qgemv_job*)ctx, begin, end); }
static void dn_q_gemv_q4_0(void* ctx, int64_t begin, int64_t end) { dn_q_gemv_direct(4, (const dn_qgemv_job*)ctx, begin, end); }
static void dn_q_gemv_q4_1(void* ctx, int64_t begin, int64_t end) { dn_q_gemv_direct(5, (const dn_qgemv_job*)ctx, begin, end); }

/* -- the same with int16 activations, straight from the blocks, two columns and every row of x (at most 2) at
 * a time; one vpdpwssd takes 32 products.
 * Q8_0: a block's 32 q sign-extended to one vector of int16; per block and column one vpdpwssd, one f32 update.
 * Q4_0 / Q4_1: four blocks a vector. A block's 16 bytes of nibbles, read as 8 words, hold 4 elements a word:
 * bits 0-3 element 2i, 4-7 element 2i + 16, 8-11 element 2i + 1, 12-15 element 2i + 17. One word permute puts
 * four blocks' words in the four 128-bit lanes, four shifts and masks make four vectors of them, and x laid out
 * to match (`dn_q_quads`, once per call) gives each block's sum in its own lane after four vpdpwssd: one f32
 * update per four blocks. */

/* x's rows in quad order: per 4 blocks (j = 0..3, zeros past the last) 4 vectors of 32 int16, vector t's word
 * 8 j + i the element of block j the weights' vector t holds there (2i, 2i + 1, 2i + 16, 2i + 17) */
static int16_t* dn_q_quads(const dn_qx* qx) {
    const int64_t nb = qx->k / 32, nq = (nb + 3) / 4;
    int16_t* xp = (int16_t*)dn_q_alloc((size_t)(qx->m * nq * 128) * sizeof(int16_t));
    if (!xp) return 0;
    __m512i pick[4];                         /* vector t, word 8 j + i (j mod 2): word 2 i + (0, 1, 16, 17)[t] of block j */
    for (int t = 0; t < 4; ++t) {
        int16_t at[32];
        for (int w = 0; w < 32; ++w) at[w] = (int16_t)(32 * (w % 16 / 8) + 2 * (w % 8) + (t % 2) + 16 * (t / 2));
        memcpy(&pick[t], at, 64);
    }
    for (int64_t r = 0; r < qx->m; ++r)
        for (int64_t g = 0; g < nq; ++g) {
            __m512i blk[4];
            for (int j = 0; j < 4; ++j)
                blk[j] = 4 * g + j < nb ? _mm512_loadu_si512(qx->q16 + r * qx->k + (4 * g + j) * 32) : _mm512_setzero_si512();
            for (int t = 0; t < 4; ++t) {
                const __m512i ab = _mm512_permutex2var_epi16(blk[0], pick[t], blk[1]);
                const __m512i cd = _mm512_permutex2var_epi16(blk[2], pick[t], blk[3]);
                _mm512_store_si512(xp + (r * nq + g) * 128 + 32 * t, _mm512_mask_mov_epi16(ab, 0xffff0000u, cd));
            }
        }
    return xp;
}

/* the four vectors of words of `count` (<= 4) Q4_0 (kind 4) / Q4_1 (kind 5) blocks at p (zeros past count) */
static inline __attribute__((always_inline)) void dn_q_quad_words(const int kind, const uint8_t* p, int count, __m512i u[4]) {
    const int64_t bb = kind == 5 ? 20 : 18, bytes = count * bb;
    const __m512i a = count == 4 ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(dn_q_bytes(bytes), p);
    const __m512i b = _mm512_maskz_loadu_epi8(dn_q_bytes(bytes - 64), p + 64);
    /* word 8 j + i: word (at + j bb) / 2 + i of the 128 bytes at p */
    const __m512i at = kind == 5
        ? _mm512_set_epi16(39, 38, 37, 36, 35, 34, 33, 32, 29, 28, 27, 26, 25, 24, 23, 22,
                           19, 18, 17, 16, 15, 14, 13, 12, 9, 8, 7, 6, 5, 4, 3, 2)
        : _mm512_set_epi16(35, 34, 33, 32, 31, 30, 29, 28, 26, 25, 24, 23, 22, 21, 20, 19,
                           17, 16, 15, 14, 13, 12, 11, 10, 8, 7, 6, 5, 4, 3, 2, 1);
    const __m512i v = _mm512_permutex2var_epi16(a, at, b), low = _mm512_set1_epi16(15);
    u[0] = _mm512_and_si512(v, low);
    u[1] = _mm512_and_si512(_mm512_srli_epi16(v, 8), low);
    u[2] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
    u[3] = _mm512_srli_epi16(v, 12);
}

/* adds `count` (<= 8) blocks from b on, of C columns and R rows of x, to acc and off */
static inline __attribute__((always_inline)) void dn_q_gemv16_group(
        const int kind, const int C, const int R, const int count, const uint8_t* w, int64_t row_bytes, int64_t bb,
        const dn_qx* qx, const int16_t* xp, int64_t i0, int64_t b, __m512 acc[2][2][2], __m256 off[2][2]) {
    const int64_t k = qx->k, nb = k / 32, nq = (nb + 3) / 4;
    const __mmask8 live = (__mmask8)((1u << count) - 1);
    __m256 fac[2][2];                       /* [column][row]: d * dx of the 8 blocks */
    for (int c = 0; c < C; ++c) {
        __m256 d, o;
        dn_q_scales8(kind, w + c * row_bytes + b * bb, bb, count, &d, &o);
        for (int r = 0; r < R; ++r) {
            fac[c][r] = _mm256_mul_ps(d, _mm256_maskz_loadu_ps(live, qx->d + (i0 + r) * nb + b));
            if (kind != 8) off[c][r] = _mm256_fmadd_ps(o, _mm256_maskz_loadu_ps(live, qx->s32 + (i0 + r) * nb + b), off[c][r]);
        }
    }
    if (kind == 8) {
        float f[2][2][8] __attribute__((aligned(32)));   /* read back broadcast, block by block */
        for (int c = 0; c < C; ++c)
            for (int r = 0; r < R; ++r) _mm256_store_ps(f[c][r], fac[c][r]);
#pragma GCC unroll 8
        for (int e = 0; e < count; ++e) {      /* unrolled: the accumulators stay in registers */
            __m512i xv[2];
            for (int r = 0; r < R; ++r) xv[r] = _mm512_loadu_si512(qx->q16 + (i0 + r) * k + (b + e) * 32);
            for (int c = 0; c < C; ++c) {
                const __m512i u = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(w + c * row_bytes + (b + e) * bb + 2)));
                for (int r = 0; r < R; ++r) {
                    const __m512i s = _mm512_dpwssd_epi32(_mm512_setzero_si512(), u, xv[r]);
                    acc[c][r][e & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(f[c][r][e]), acc[c][r][e & 1]);
                }
            }
        }
        return;
    }
    for (int h = 0; 4 * h < count; ++h) {   /* the quads: blocks b + 4 h .. */
        const int n4 = count - 4 * h < 4 ? count - 4 * h : 4;
        const __m512i lane = h ? _mm512_set_epi32(7, 7, 7, 7, 6, 6, 6, 6, 5, 5, 5, 5, 4, 4, 4, 4)
                               : _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
        __m512i xv[2][4];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < 4; ++t) xv[r][t] = _mm512_load_si512(xp + ((i0 + r) * nq + b / 4 + h) * 128 + 32 * t);
        for (int c = 0; c < C; ++c) {
            __m512i u[4];
            dn_q_quad_words(kind, w + c * row_bytes + (b + 4 * h) * bb, n4, u);
            for (int r = 0; r < R; ++r) {
                const __m512i s0 = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(_mm512_setzero_si512(), u[0], xv[r][0]), u[1], xv[r][1]);
                const __m512i s1 = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(_mm512_setzero_si512(), u[2], xv[r][2]), u[3], xv[r][3]);
                const __m512 f = _mm512_permutexvar_ps(lane, _mm512_castps256_ps512(fac[c][r]));
                acc[c][r][h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), f, acc[c][r][h]);
            }
        }
    }
}

/* y for C columns of W (rows at w + c * row_bytes) and R rows i0 .. of x */
static inline __attribute__((always_inline)) void dn_q_gemv16_blocks(
        const int kind, const int C, const int R, const uint8_t* w, int64_t row_bytes, int64_t bb, const dn_qx* qx,
        const int16_t* xp, int64_t i0, float* y, int64_t ldy) {
    const int64_t nb = qx->k / 32;
    __m512 acc[2][2][2];
    __m256 off[2][2];
    for (int c = 0; c < C; ++c)
        for (int r = 0; r < R; ++r) { acc[c][r][0] = acc[c][r][1] = _mm512_setzero_ps(); off[c][r] = _mm256_setzero_ps(); }
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) dn_q_gemv16_group(kind, C, R, 8, w, row_bytes, bb, qx, xp, i0, b, acc, off);
    if (b < nb) dn_q_gemv16_group(kind, C, R, (int)(nb - b), w, row_bytes, bb, qx, xp, i0, b, acc, off);
    for (int c = 0; c < C; ++c)
        for (int r = 0; r < R; ++r) {
            const __m512 sum = _mm512_add_ps(acc[c][r][0], acc[c][r][1]);
            y[r * ldy + c] = _mm512_reduce_add_ps(_mm512_add_ps(sum, _mm512_castps256_ps512(off[c][r])));
        }
}

/* columns [begin, end) of y with int16 activations (job->xp: x in quad order for Q4_0 / Q4_1) */
static inline __attribute__((always_inline)) void dn_q_gemv16_direct(
        const int kind, const dn_qgemv_job* job, int64_t begin, int64_t end) {
    const int64_t bb = job->f->block_bytes, row_bytes = job->qx->k / 32 * bb, m = job->qx->m;
    for (int64_t j = begin; j < end; j += 2) {
        const int two = j + 1 < end;
        if (DN_Q_AHEAD > 0 && j + DN_Q_AHEAD + 2 <= end)
            for (int64_t at = 0; at < 2 * row_bytes; at += 64) _mm_prefetch((const char*)job->w + (j + DN_Q_AHEAD) * row_bytes + at, _MM_HINT_T0);
        const uint8_t* wj = job->w + j * row_bytes;
        for (int64_t i = 0; i < m; i += 2) {
            float* yi = job->y + i * job->ldy + j;
            if (i + 1 < m) {
                if (two) dn_q_gemv16_blocks(kind, 2, 2, wj, row_bytes, bb, job->qx, job->xp, i, yi, job->ldy);
                else dn_q_gemv16_blocks(kind, 1, 2, wj, row_bytes, bb, job->qx, job->xp, i, yi, job->ldy);
            } else {
                if (two) dn_q_gemv16_blocks(kind, 2, 1, wj, row_bytes, bb, job->qx, job->xp, i, yi, job->ldy);
                else dn_q_gemv16_blocks(kind, 1, 1, wj, row_bytes, bb, job->qx, job->xp, i, yi, job->ldy);
            }
        }
    }
}
static void dn_q_gemv16_q8_0(void* ctx, int64_t begin, int64_t end) { dn_q_gemv16_direct(8, (const dn_qgemv_job*)ctx, begin, end); }
static void dn_q_gemv16_q4_0(void* ctx, int64_t begin, int64_t end) { dn_q_gemv16_direct(4, (const dn_qgemv_job*)ctx, begin, end); }
static void dn_q_gemv16_q4_1(void* ctx, int64_t begin, int64_t end) { dn_q_gemv16_direct(5, (const dn_qgemv_job*)ctx, begin, end); }
#endif

static void dn_q_gemv_cols(void* ctx, int64_t begin, int64_t end) {
    const dn_qgemv_job* job = (const dn_qgemv_job*)ctx;
    const dn_qformat* f = job->f;
    const int64_t k = job->qx->k, G = f->group, ng = k / G, nb = k / 32, per_x = 32 / G;
    const int64_t row_bytes = k / f->block * f->block_bytes;
    uint8_t* u = (uint8_t*)dn_q_alloc((size_t)k + (size_t)(3 * ng + 8) * sizeof(float));
    if (!u) abort();
    float *d = (float*)(u + ((k + 63) & ~(int64_t)63)), *o = d + ng, *fac = o + ng;
    for (int e = 0; e < 8; ++e) fac[ng + e] = 0.0f;    /* vector loads read past the last group */
    for (int64_t j = begin; j < end; ++j) {
        f->unpack(job->w + j * row_bytes, k, u, d, o);
        for (int64_t i = 0; i < job->qx->m; ++i) {
            const float* dx = job->qx->d + i * nb;
            const float* sx = G == 32 ? job->qx->s32 + i * nb : job->qx->s16 + i * 2 * nb;
            float off = 0.0f;
            #pragma omp simd reduction(+:off)
            for (int64_t g = 0; g < ng; ++g) off += o[g] * sx[g];
            if (per_x == 1) for (int64_t g = 0; g < ng; ++g) fac[g] = d[g] * dx[g];
            else for (int64_t g = 0; g < ng; ++g) fac[g] = d[g] * dx[g >> 1];     /* Q6_K: two groups an x block */
            if (job->qx->wide) {
                if (f->offset128) off = 0.0f; /* int16: the weights signed, no offset */
                job->y[i * job->ldy + j] = dn_q_dot16(u, fac, job->qx->q16 + i * k, k, (int)G, f->offset128) + off;
                continue;
            }
#if defined(DN_Q_SIGNED8)
            if (f->offset128) off = 0.0f;     /* the signed dot product has no offset */
#endif
            job->y[i * job->ldy + j] = dn_q_dot(u, fac, job->qx->q + i * k, k, (int)G, f->offset128) + off;
        }
    }
    free(u);
}

/* -- many rows: 32 weight rows unpacked into a panel, a register tile of rows x 32 columns over it --------
 * Panel layout: for each step t of k (4 elements as bytes, or 2 as int16 when wide), 32 columns x 4 bytes;
 * then d and o as [group][32]. Wide panels hold Q8_0's q signed, with o = 0. */
#define DN_QP_N 32

static void dn_q_pack_panel(const dn_qformat* f, const int wide, const uint8_t* w, int64_t j0, int64_t n, int64_t k,
                            uint8_t* panel, float* pd, float* po, uint8_t* u, float* d, float* o) {
    const int64_t ng = k / f->group, row_bytes = k / f->block * f->block_bytes;
    const int sgn = wide && f->offset128;
    for (int c = 0; c < DN_QP_N; ++c) {
        if (j0 + c < n) f->unpack(w + (j0 + c) * row_bytes, k, u, d, o);
        else { memset(u, sgn ? 0x80 : 0, (size_t)k); memset(d, 0, (size_t)ng * sizeof(float)); memset(o, 0, (size_t)ng * sizeof(float)); }
        if (wide) {
            for (int64_t t = 0; t < k / 2; ++t) {
                const int16_t pair[2] = {(int16_t)(sgn ? u[2 * t] - 128 : u[2 * t]), (int16_t)(sgn ? u[2 * t + 1] - 128 : u[2 * t + 1])};
                memcpy(panel + (t * DN_QP_N + c) * 4, pair, 4);
            }
        } else {
            for (int64_t t = 0; t < k / 4; ++t) memcpy(panel + (t * DN_QP_N + c) * 4, u + 4 * t, 4);
        }
        for (int64_t g = 0; g < ng; ++g) { pd[g * DN_QP_N + c] = d[g]; po[g * DN_QP_N + c] = sgn ? 0.0f : o[g]; }
    }
}

/* the 4 bytes of activations a panel step takes for row r: 4 int8, or 2 int16 (wide) */
static inline __attribute__((always_inline)) int32_t dn_q_x4(const int wide, const dn_qx* qx, int64_t r, int64_t at) {
    int32_t x4;
    if (wide) memcpy(&x4, qx->q16 + r * qx->k + at, 4);
    else memcpy(&x4, qx->q + r * qx->k + at, 4);
    return x4;
}

#if defined(DN_Q_AVX512)
#define DN_QP_ROWS 4
/* R rows x 32 columns (two vectors of 16); G the group size, a constant after inlining */
static inline __attribute__((always_inline)) void dn_q_tile(
        const int R, const int G, const int wide, const uint8_t* panel, const float* pd, const float* po, const dn_qx* qx,
        int64_t i0, float* y, int64_t ldy, int cols, int offset128) {
    (void)offset128;
    const int64_t k = qx->k, nb = k / 32;
    const int per = wide ? 2 : 4;           /* elements of k a panel step holds */
    const float* dx = qx->d + i0 * nb;
    const float* sx = G == 32 ? qx->s32 + i0 * nb : qx->s16 + i0 * 2 * nb;
    const int64_t lds = G == 32 ? nb : 2 * nb;
    __m512 acc[4][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t g = 0; g < k / G; ++g) {
        __m512i s[4][2];
        for (int r = 0; r < R; ++r) s[r][0] = s[r][1] = _mm512_setzero_si512();
        const uint8_t* p = panel + g * (G / per) * 4 * DN_QP_N;
        for (int t = 0; t < G / per; ++t) {
            const __m512i w0 = _mm512_load_si512(p + t * 4 * DN_QP_N), w1 = _mm512_load_si512(p + t * 4 * DN_QP_N + 64);
            for (int r = 0; r < R; ++r) {
                const __m512i xb = _mm512_set1_epi32(dn_q_x4(wide, qx, i0 + r, g * G + per * t));
                s[r][0] = wide ? _mm512_dpwssd_epi32(s[r][0], w0, xb) : _mm512_dpbusd_epi32(s[r][0], w0, xb);
                s[r][1] = wide ? _mm512_dpwssd_epi32(s[r][1], w1, xb) : _mm512_dpbusd_epi32(s[r][1], w1, xb);
            }
        }
        const __m512 d0 = _mm512_load_ps(pd + g * DN_QP_N), d1 = _mm512_load_ps(pd + g * DN_QP_N + 16);
        const __m512 o0 = _mm512_load_ps(po + g * DN_QP_N), o1 = _mm512_load_ps(po + g * DN_QP_N + 16);
        for (int r = 0; r < R; ++r) {
            const __m512 fx = _mm512_set1_ps(dx[r * nb + g * G / 32]), sr = _mm512_set1_ps(sx[r * lds + g]);
            acc[r][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r][0]), _mm512_mul_ps(d0, fx), acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r][1]), _mm512_mul_ps(d1, fx), acc[r][1]);
            acc[r][0] = _mm512_fmadd_ps(o0, sr, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(o1, sr, acc[r][1]);
        }
    }
    const __mmask16 m0 = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1);
    const __mmask16 m1 = cols >= 32 ? 0xffff : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
    for (int r = 0; r < R; ++r) {
        _mm512_mask_storeu_ps(y + r * ldy, m0, acc[r][0]);
        _mm512_mask_storeu_ps(y + r * ldy + 16, m1, acc[r][1]);
    }
}
#elif defined(DN_Q_AVX2)
#define DN_QP_ROWS 4
/* R rows x 16 columns (two vectors of 8), the half h of the panel */
static inline __attribute__((always_inline)) void dn_q_tile_half(
        const int R, const int G, const int wide, const int h, const uint8_t* panel, const float* pd, const float* po,
        const dn_qx* qx, int64_t i0, float* y, int64_t ldy, int cols, int offset128) {
    const int64_t k = qx->k, nb = k / 32;
    const int per = wide ? 2 : 4;           /* elements of k a panel step holds */
    const float* dx = qx->d + i0 * nb;
    const float* sx = G == 32 ? qx->s32 + i0 * nb : qx->s16 + i0 * 2 * nb;
    const int64_t lds = G == 32 ? nb : 2 * nb;
#if !defined(DN_Q_DPBUSD)
    const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8((char)0x80);
#else
    (void)offset128;
#endif
    __m256 acc[4][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < k / G; ++g) {
        __m256i s[4][2];
        for (int r = 0; r < R; ++r) s[r][0] = s[r][1] = _mm256_setzero_si256();
        const uint8_t* p = panel + g * (G / per) * 4 * DN_QP_N + 64 * h;
        for (int t = 0; t < G / per; ++t) {
            __m256i w0 = _mm256_load_si256((const __m256i*)(p + t * 4 * DN_QP_N));
            __m256i w1 = _mm256_load_si256((const __m256i*)(p + t * 4 * DN_QP_N + 32));
            if (wide) {                            /* signed 16-bit pairs: no saturation, no sign tricks */
                for (int r = 0; r < R; ++r) {
                    const __m256i xb = _mm256_set1_epi32(dn_q_x4(1, qx, i0 + r, g * G + 2 * t));
                    s[r][0] = DN_Q_DPWSSD(s[r][0], w0, xb);
                    s[r][1] = DN_Q_DPWSSD(s[r][1], w1, xb);
                }
                continue;
            }
#if defined(DN_Q_DPBUSD)
            for (int r = 0; r < R; ++r) {
                const __m256i xb = _mm256_set1_epi32(dn_q_x4(0, qx, i0 + r, g * G + 4 * t));
                s[r][0] = DN_Q_DPBUSD(s[r][0], w0, xb);
                s[r][1] = DN_Q_DPBUSD(s[r][1], w1, xb);
            }
#else
            __m256i sg0 = w0, sg1 = w1;            /* signed weights: |w| times x with w's sign, no saturation */
            if (offset128) {
                sg0 = _mm256_xor_si256(w0, flip); sg1 = _mm256_xor_si256(w1, flip);
                w0 = _mm256_abs_epi8(sg0); w1 = _mm256_abs_epi8(sg1);
            }
            for (int r = 0; r < R; ++r) {
                __m256i xb0 = _mm256_set1_epi32(dn_q_x4(0, qx, i0 + r, g * G + 4 * t)), xb1 = xb0;
                if (offset128) { xb0 = _mm256_sign_epi8(xb0, sg0); xb1 = _mm256_sign_epi8(xb1, sg1); }
                s[r][0] = _mm256_add_epi32(s[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(w0, xb0), ones));
                s[r][1] = _mm256_add_epi32(s[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(w1, xb1), ones));
            }
#endif
        }
        const float* pdg = pd + g * DN_QP_N + 16 * h;
        const float* pog = po + g * DN_QP_N + 16 * h;
        const __m256 d0 = _mm256_load_ps(pdg), d1 = _mm256_load_ps(pdg + 8);
        const __m256 o0 = _mm256_load_ps(pog), o1 = _mm256_load_ps(pog + 8);
        for (int r = 0; r < R; ++r) {
            const __m256 fx = _mm256_set1_ps(dx[r * nb + g * G / 32]), sr = _mm256_set1_ps(sx[r * lds + g]);
            acc[r][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[r][0]), _mm256_mul_ps(d0, fx), acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[r][1]), _mm256_mul_ps(d1, fx), acc[r][1]);
#if !defined(DN_Q_DPBUSD)
            if (offset128 && !wide) continue;  /* the signed dot product has no offset */
#endif
            acc[r][0] = _mm256_fmadd_ps(o0, sr, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(o1, sr, acc[r][1]);
        }
    }
    const int c0 = cols - 16 * h;
    for (int r = 0; r < R; ++r) {
        if (c0 >= 16) {
            _mm256_storeu_ps(y + r * ldy + 16 * h, acc[r][0]);
            _mm256_storeu_ps(y + r * ldy + 16 * h + 8, acc[r][1]);
        } else if (c0 > 0) {
            float tmp[16];
            _mm256_storeu_ps(tmp, acc[r][0]);
            _mm256_storeu_ps(tmp + 8, acc[r][1]);
            memcpy(y + r * ldy + 16 * h, tmp, (size_t)c0 * sizeof(float));
        }
    }
}

static inline __attribute__((always_inline)) void dn_q_tile(
        const int R, const int G, const int wide, const uint8_t* panel, const float* pd, const float* po, const dn_qx* qx,
        int64_t i0, float* y, int64_t ldy, int cols, int offset128) {
    dn_q_tile_half(R, G, wide, 0, panel, pd, po, qx, i0, y, ldy, cols, offset128);
    if (cols > 16) dn_q_tile_half(R, G, wide, 1, panel, pd, po, qx, i0, y, ldy, cols, offset128);
}
#endif
""" + NEON_TILES + r"""
#if !defined(DN_Q_NEON)
/* every row of x against one packed panel, R rows at a time (constants, so each tile is specialised) */
static inline __attribute__((always_inline)) void dn_q_panel_rows_of(
        const int G, const int wide, const uint8_t* panel, const float* pd, const float* po, const dn_qx* qx,
        float* y, int64_t ldy, int cols, int offset128) {
    int64_t i = 0;
    for (; i + DN_QP_ROWS <= qx->m; i += DN_QP_ROWS)
        dn_q_tile(DN_QP_ROWS, G, wide, panel, pd, po, qx, i, y + i * ldy, ldy, cols, offset128);
    switch (qx->m - i) {
    case 3: dn_q_tile(3, G, wide, panel, pd, po, qx, i, y + i * ldy, ldy, cols, offset128); break;
    case 2: dn_q_tile(2, G, wide, panel, pd, po, qx, i, y + i * ldy, ldy, cols, offset128); break;
    case 1: dn_q_tile(1, G, wide, panel, pd, po, qx, i, y + i * ldy, ldy, cols, offset128); break;
    default: break;
    }
}

static void dn_q_panel_rows(const int G, const uint8_t* panel, const float* pd, const float* po, const dn_qx* qx,
                            float* y, int64_t ldy, int cols, int offset128) {
    if (G == 32 && qx->wide) dn_q_panel_rows_of(32, 1, panel, pd, po, qx, y, ldy, cols, offset128);
    else if (G == 32) dn_q_panel_rows_of(32, 0, panel, pd, po, qx, y, ldy, cols, offset128);
    else if (qx->wide) dn_q_panel_rows_of(16, 1, panel, pd, po, qx, y, ldy, cols, offset128);
    else dn_q_panel_rows_of(16, 0, panel, pd, po, qx, y, ldy, cols, offset128);
}
#endif

#if defined(DN_Q_AVX512)
/* 16 x 16 dwords transposed in registers: v[c] holds column c's 16 dwords on entry, v[t] the 16 columns' dword t
 * on exit (4x4 transposes in each 128-bit lane, then the lanes gathered). */
static inline void dn_q_transpose16(__m512i v[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 4; ++i) {
        t[4 * i] = _mm512_unpacklo_epi32(v[4 * i], v[4 * i + 1]);
        t[4 * i + 1] = _mm512_unpackhi_epi32(v[4 * i], v[4 * i + 1]);
        t[4 * i + 2] = _mm512_unpacklo_epi32(v[4 * i + 2], v[4 * i + 3]);
        t[4 * i + 3] = _mm512_unpackhi_epi32(v[4 * i + 2], v[4 * i + 3]);
    }
    for (int i = 0; i < 4; ++i) {
        u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    /* u[4 i + j], lane L: rows 4 i .. 4 i + 3 of column 4 L + j */
    for (int j = 0; j < 4; ++j) {
        const __m512i a0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x88), a1 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xdd);
        const __m512i b0 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x88), b1 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xdd);
        v[j] = _mm512_shuffle_i32x4(a0, b0, 0x88);
        v[8 + j] = _mm512_shuffle_i32x4(a0, b0, 0xdd);
        v[4 + j] = _mm512_shuffle_i32x4(a1, b1, 0x88);
        v[12 + j] = _mm512_shuffle_i32x4(a1, b1, 0xdd);
    }
}

/* the u values of two blocks (natural order, high nibbles shifted down) */
static inline __attribute__((always_inline)) __m512i dn_q_pair_u(const int kind, const uint8_t* p0, const uint8_t* p1) {
    if (kind == 8) return dn_q_pair(8, p0, p1);
    const int at = kind == 5 ? 4 : 2;
    const __m512i z = _mm512_castsi256_si512(_mm256_loadu2_m128i((const __m128i*)(p1 + at), (const __m128i*)(p0 + at)));
    const __m512i twice = _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(1, 1, 0, 0));
    return _mm512_and_si512(_mm512_srlv_epi64(twice, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0)), _mm512_set1_epi8(15));
}

/* The panel of columns j0 .. j0 + 31 straight from Q8_0 / Q4_0 / Q4_1 blocks: 16 columns' two blocks unpacked,
 * transposed in registers, stored as 16 rows of the panel. */
static inline __attribute__((always_inline)) void dn_q_pack_direct(
        const int kind, const int wide, const uint8_t* w, int64_t bb, int64_t j0, int64_t n, int64_t k,
        uint8_t* panel, float* pd, float* po) {
    /* wide: each step of 4 bytes x 16 columns becomes two of 2 int16 x 16 columns (the even and odd dwords of
       the widened columns); Q8_0 signed */
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const int64_t nb = k / 32, row_bytes = nb * bb;
    for (int h = 0; h < 2; ++h) {
        const int64_t c0 = j0 + 16 * h;
        const int cols = n - c0 <= 0 ? 0 : n - c0 < 16 ? (int)(n - c0) : 16;
        for (int64_t b = 0; b < nb; b += 2) {
            const int two = b + 1 < nb;
            __m512i v[16];
            for (int c = 0; c < 16; ++c) {
                const uint8_t* p0 = w + (c0 + c) * row_bytes + b * bb;
                v[c] = c < cols ? dn_q_pair_u(kind, p0, two ? p0 + bb : p0) : _mm512_setzero_si512();
            }
            dn_q_transpose16(v);
            for (int t = 0; t < (two ? 16 : 8); ++t) {
                if (!wide) { _mm512_store_si512(panel + ((b * 8 + t) * DN_QP_N + 16 * h) * 4, v[t]); continue; }
                __m512i lo, hi;
                if (kind == 8) {
                    const __m512i sv = _mm512_xor_si512(v[t], _mm512_set1_epi8((char)0x80));
                    lo = _mm512_cvtepi8_epi16(_mm512_castsi512_si256(sv));
                    hi = _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(sv, 1));
                } else {
                    lo = _mm512_cvtepu8_epi16(_mm512_castsi512_si256(v[t]));
                    hi = _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(v[t], 1));
                }
                _mm512_store_si512(panel + ((b * 16 + 2 * t) * DN_QP_N + 16 * h) * 4, _mm512_permutex2var_epi32(lo, even, hi));
                _mm512_store_si512(panel + ((b * 16 + 2 * t + 1) * DN_QP_N + 16 * h) * 4, _mm512_permutex2var_epi32(lo, odd, hi));
            }
        }
        for (int c = 0; c < 16; ++c) {
            for (int64_t b = 0; b < nb; b += 8) {
                const int count = nb - b < 8 ? (int)(nb - b) : 8;
                float d[8], o[8];
                if (c < cols) {
                    __m256 dv, ov;
                    dn_q_scales8(kind, w + (c0 + c) * row_bytes + b * bb, bb, count, &dv, &ov);
                    _mm256_storeu_ps(d, dv);
                    _mm256_storeu_ps(o, ov);
                } else {
                    memset(d, 0, sizeof d); memset(o, 0, sizeof o);
                }
                for (int g = 0; g < count; ++g) {
                    pd[(b + g) * DN_QP_N + 16 * h + c] = d[g];
                    po[(b + g) * DN_QP_N + 16 * h + c] = wide && kind == 8 ? 0.0f : o[g];
                }
            }
        }
    }
}
#endif

static void dn_q_panels(void* ctx, int64_t begin, int64_t end) {
    const dn_qgemv_job* job = (const dn_qgemv_job*)ctx;
    const dn_qformat* f = job->f;
    const int64_t k = job->qx->k, ng = k / f->group;
    const int wide = job->qx->wide;
    const size_t panel_bytes = (size_t)(k * DN_QP_N * (wide ? 2 : 1)), scale_bytes = (size_t)(ng * DN_QP_N) * sizeof(float);
    const size_t row_bytes = ((size_t)k + 63) & ~(size_t)63;
    uint8_t* mem = (uint8_t*)dn_q_alloc(panel_bytes + 2 * scale_bytes + row_bytes + 2 * (size_t)ng * sizeof(float));
    if (!mem) abort();
    float *pd = (float*)(mem + panel_bytes), *po = (float*)((uint8_t*)pd + scale_bytes);
    uint8_t* u = (uint8_t*)po + scale_bytes;
    float *d = (float*)(u + row_bytes), *o = d + ng;
    for (int64_t p = begin; p < end; ++p) {
        const int64_t j0 = p * DN_QP_N;
        const int cols = (int)(job->n - j0 < DN_QP_N ? job->n - j0 : DN_QP_N);
#if defined(DN_Q_AVX512)
        if (f->block == 32) {
            const int64_t bb = f->block_bytes;
            const int kind = f->offset128 ? 8 : bb == 18 ? 4 : 5;
            if (wide && kind == 8) dn_q_pack_direct(8, 1, job->w, bb, j0, job->n, k, mem, pd, po);
            else if (wide && kind == 4) dn_q_pack_direct(4, 1, job->w, bb, j0, job->n, k, mem, pd, po);
            else if (wide) dn_q_pack_direct(5, 1, job->w, bb, j0, job->n, k, mem, pd, po);
            else if (kind == 8) dn_q_pack_direct(8, 0, job->w, bb, j0, job->n, k, mem, pd, po);
            else if (kind == 4) dn_q_pack_direct(4, 0, job->w, bb, j0, job->n, k, mem, pd, po);
            else dn_q_pack_direct(5, 0, job->w, bb, j0, job->n, k, mem, pd, po);
        } else
#endif
        dn_q_pack_panel(f, wide, job->w, j0, job->n, k, mem, pd, po, u, d, o);
        dn_q_panel_rows(f->group, mem, pd, po, job->qx, job->y + j0, job->ldy, cols, f->offset128);
    }
    free(mem);
}

#ifndef DN_QPANEL_ROWS
#define DN_QPANEL_ROWS 3      /* from this many rows of x, weights are packed into panels */
#endif
#endif /* DN_Q_INT */

/* y = x @ W.T with x quantized to int8 (wide 0) or int16 (wide 1); the portable path computes in f32 either way */
static void dn_qmatmul_run(const dn_qformat* f, int wide, int64_t m, int64_t n, int64_t k, const float* x, int64_t ldx,
                           const uint8_t* w, float* y, int64_t ldy) {
    if (m <= 0 || n <= 0) return;
    dn_qjob job = {f, m, n, k, x, ldx, w, y, ldy};
#if defined(DN_Q_INT)
    dn_qx qx;
    if (!dn_qx_quantize(&qx, x, ldx, m, k, wide)) abort();
    dn_qgemv_job gj = {f, &qx, n, w, y, ldy, 0};
    int16_t* quads = 0;
    if (m < DN_QPANEL_ROWS) {
        /* chunks of at least ~8K weights each, so the pool's overhead stays small */
        const int64_t min_cols = k >= 8192 ? 1 : 8192 / k;
        dn_body gemv = dn_q_gemv_cols;
#if defined(DN_Q_AVX512)
        if (f->block == 32 && !wide) gemv = f->offset128 ? dn_q_gemv_q8_0 : f->block_bytes == 18 ? dn_q_gemv_q4_0 : dn_q_gemv_q4_1;
        if (f->block == 32 && wide) gemv = f->offset128 ? dn_q_gemv16_q8_0 : f->block_bytes == 18 ? dn_q_gemv16_q4_0 : dn_q_gemv16_q4_1;
        if (f->block == 32 && wide && !f->offset128) {
            if (!(quads = dn_q_quads(&qx))) abort();
            gj.xp = quads;
        }
#endif
        dn_parallel(gemv, &gj, n, min_cols);
    } else {
        dn_parallel(dn_q_panels, &gj, (n + DN_QP_N - 1) / DN_QP_N, 1);
    }
    free(qx.mem);
    free(quads);
    (void)job;
#else
    (void)wide;
    dn_qmatmul_portable(&job);
#endif
}

#define DN_QROW_FROM_ELEMENTS(name) \
    static void dn_dqrow_##name(const uint8_t* row, int64_t k, float* out) { \
        for (int64_t i = 0; i < k; ++i) out[i] = dn_dq_##name(row, i); }
"""

# Per format: dn_dq_<name> (exact), dn_unpack_<name> (u, d, o per group), and the entry point.
_FORMATS = {
    DType.Q8_0: r"""
/* Q8_0: f16 d, 32 x int8 q; w = d * q */
static inline float dn_dq_q8_0(const uint8_t* base, int64_t i) {
    const uint8_t* b = base + (i / 32) * 34;
    return dn_q_f16(b) * (float)(int8_t)b[2 + i % 32];
}
static void dn_unpack_q8_0(const uint8_t* restrict row, int64_t k, uint8_t* restrict u, float* restrict d, float* restrict o) {
    for (int64_t b = 0; b < k / 32; ++b) {
        const uint8_t* p = row + b * 34;
        d[b] = dn_q_f16(p); o[b] = -128.0f * d[b];
        for (int e = 0; e < 32; ++e) u[b * 32 + e] = (uint8_t)(p[2 + e] ^ 0x80);    /* q + 128 */
    }
}
""",
    DType.Q4_0: r"""
/* Q4_0: f16 d, 16 bytes: element e < 16 the low nibble of byte e, e >= 16 the high nibble of e - 16; w = d (q - 8) */
static inline float dn_dq_q4_0(const uint8_t* base, int64_t i) {
    const uint8_t* b = base + (i / 32) * 18;
    const int e = (int)(i % 32), q = e < 16 ? b[2 + e] & 15 : b[2 + e - 16] >> 4;
    return dn_q_f16(b) * (float)(q - 8);
}
static void dn_unpack_q4_0(const uint8_t* restrict row, int64_t k, uint8_t* restrict u, float* restrict d, float* restrict o) {
    for (int64_t b = 0; b < k / 32; ++b) {
        const uint8_t* p = row + b * 18;
        d[b] = dn_q_f16(p); o[b] = -8.0f * d[b];
        dn_q_nibbles(p + 2, u + b * 32);
    }
}
""",
    DType.Q4_1: r"""
/* Q4_1: f16 d, f16 m, 16 bytes of nibbles as Q4_0; w = d q + m */
static inline float dn_dq_q4_1(const uint8_t* base, int64_t i) {
    const uint8_t* b = base + (i / 32) * 20;
    const int e = (int)(i % 32), q = e < 16 ? b[4 + e] & 15 : b[4 + e - 16] >> 4;
    return dn_q_exact(dn_q_f16(b) * (float)q) + dn_q_f16(b + 2);
}
static void dn_unpack_q4_1(const uint8_t* restrict row, int64_t k, uint8_t* restrict u, float* restrict d, float* restrict o) {
    for (int64_t b = 0; b < k / 32; ++b) {
        const uint8_t* p = row + b * 20;
        d[b] = dn_q_f16(p); o[b] = dn_q_f16(p + 2);
        dn_q_nibbles(p + 4, u + b * 32);
    }
}
""",
    DType.Q4_K: r"""
/* Q4_K: 256 elements: f16 d, f16 dmin, 12 bytes of scales, 128 bytes of nibbles: sub-block j (32 elements) is
   the low (j even) or high (j odd) nibbles of bytes 32 (j / 2) ..; w = (d sc_j) q - (dmin m_j) */
static inline float dn_dq_q4_k(const uint8_t* base, int64_t i) {
    const uint8_t* b = base + (i / 256) * 144;
    const int e = (int)(i % 256), j = e / 32;
    int sc, mn;
    dn_q_scale_min_k4(b + 4, j, &sc, &mn);
    const int q = (b[16 + 32 * (j / 2) + e % 32] >> (4 * (j % 2))) & 15;
    return dn_q_exact(dn_q_f16(b) * (float)sc * (float)q) - dn_q_exact(dn_q_f16(b + 2) * (float)mn);
}
static void dn_unpack_q4_k(const uint8_t* restrict row, int64_t k, uint8_t* restrict u, float* restrict d, float* restrict o) {
    for (int64_t b = 0; b < k / 256; ++b) {
        const uint8_t* p = row + b * 144;
        const float dd = dn_q_f16(p), dmin = dn_q_f16(p + 2);
        for (int j = 0; j < 8; ++j) {
            int sc, mn;
            dn_q_scale_min_k4(p + 4, j, &sc, &mn);
            d[b * 8 + j] = dd * (float)sc; o[b * 8 + j] = -dmin * (float)mn;
            const uint8_t* qs = p + 16 + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int e = 0; e < 32; ++e) u[b * 256 + j * 32 + e] = (qs[e] >> shift) & 15;
        }
    }
}
""",
    DType.Q5_K: r"""
/* Q5_K: 256 elements: f16 d, f16 dmin, 12 bytes of scales (as Q4_K), 32 bytes qh, 128 bytes of low nibbles (as
   Q4_K); the fifth bit of sub-block j's element e is bit j of qh[e]; w = (d sc_j) q - (dmin m_j) */
static inline float dn_dq_q5_k(const uint8_t* base, int64_t i) {
    const uint8_t* b = base + (i / 256) * 176;
    const int e = (int)(i % 256), j = e / 32;
    int sc, mn;
    dn_q_scale_min_k4(b + 4, j, &sc, &mn);
    const int q = ((b[48 + 32 * (j / 2) + e % 32] >> (4 * (j % 2))) & 15) | (((b[16 + e % 32] >> j) & 1) << 4);
    return dn_q_exact(dn_q_f16(b) * (float)sc * (float)q) - dn_q_exact(dn_q_f16(b + 2) * (float)mn);
}
static void dn_unpack_q5_k(const uint8_t* restrict row, int64_t k, uint8_t* restrict u, float* restrict d, float* restrict o) {
    for (int64_t b = 0; b < k / 256; ++b) {
        const uint8_t* p = row + b * 176;
        const float dd = dn_q_f16(p), dmin = dn_q_f16(p + 2);
        for (int j = 0; j < 8; ++j) {
            int sc, mn;
            dn_q_scale_min_k4(p + 4, j, &sc, &mn);
            d[b * 8 + j] = dd * (float)sc; o[b * 8 + j] = -dmin * (float)mn;
            const uint8_t* qs = p + 48 + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int e = 0; e < 32; ++e)
                u[b * 256 + j * 32 + e] = (uint8_t)(((qs[e] >> shift) & 15) | (((p[16 + e] >> j) & 1) << 4));
        }
    }
}
""",
    DType.Q6_K: r"""
/* Q6_K: 256 elements: 128 bytes ql, 64 bytes qh, 16 int8 scales (one per 16 elements), f16 d at the end. In each
   half (128 elements) h, element r: low 4 bits from ql[64 h + r % 64] (nibble r / 64), high 2 bits from
   qh[32 h + r % 32] (bits 2 (r / 32)); w = (d sc) (q - 32) */
static inline int dn_q6_k_q(const uint8_t* b, int e) {
    const int h = e / 128, r = e % 128;
    const int lo = (b[64 * h + r % 64] >> (4 * (r / 64))) & 15, hi = (b[128 + 32 * h + r % 32] >> (2 * (r / 32))) & 3;
    return lo | (hi << 4);
}
static inline float dn_dq_q6_k(const uint8_t* base, int64_t i) {
    const uint8_t* b = base + (i / 256) * 210;
    const int e = (int)(i % 256);
    return dn_q_f16(b + 208) * (float)(int8_t)b[192 + e / 16] * (float)(dn_q6_k_q(b, e) - 32);
}
static void dn_unpack_q6_k(const uint8_t* restrict row, int64_t k, uint8_t* restrict u, float* restrict d, float* restrict o) {
    for (int64_t b = 0; b < k / 256; ++b) {
        const uint8_t* p = row + b * 210;
        const float dd = dn_q_f16(p + 208);
        for (int j = 0; j < 16; ++j) { d[b * 16 + j] = dd * (float)(int8_t)p[192 + j]; o[b * 16 + j] = -32.0f * d[b * 16 + j]; }
        for (int h = 0; h < 2; ++h)
            for (int l = 0; l < 32; l += 16) {      /* 16 lanes of each of the half's four runs of 32 */
                dn_q_v16 a, c, hb, q;
                memcpy(&a, p + 64 * h + l, 16);
                memcpy(&c, p + 64 * h + l + 32, 16);
                memcpy(&hb, p + 128 + 32 * h + l, 16);
                uint8_t* out = u + b * 256 + 128 * h + l;
                q = (a & 15) | ((hb & 3) << 4);         memcpy(out, &q, 16);
                q = (c & 15) | (((hb >> 2) & 3) << 4);  memcpy(out + 32, &q, 16);
                q = (a >> 4) | (((hb >> 4) & 3) << 4);  memcpy(out + 64, &q, 16);
                q = (c >> 4) | (((hb >> 6) & 3) << 4);  memcpy(out + 96, &q, 16);
            }
    }
}
""",
}

# which formats store a signed 8-bit q as u = q + 128 (see dn_qformat.offset128)
_OFFSET128 = {DType.Q8_0}

_ENTRY = r"""
DN_QROW_FROM_ELEMENTS({name})
static const dn_qformat dn_qformat_{name} = {{dn_unpack_{name}, dn_dqrow_{name}, {block}, {block_bytes}, {group}, {offset128}}};
/* activations as int8 per 32-block */
static void dn_qmatmul_{name}(int64_t m, int64_t n, int64_t k, const float* x, int64_t ldx, const uint8_t* w,
                              float* y, int64_t ldy) {{
    dn_qmatmul_run(&dn_qformat_{name}, 0, m, n, k, x, ldx, w, y, ldy);
}}
/* activations as int16 per 32-block: about 256 times the precision */
static void dn_qmatmul16_{name}(int64_t m, int64_t n, int64_t k, const float* x, int64_t ldx, const uint8_t* w,
                                float* y, int64_t ldy) {{
    dn_qmatmul_run(&dn_qformat_{name}, 1, m, n, k, x, ldx, w, y, ldy);
}}
"""


def quant_support(dtypes: Iterable[DType]) -> str:
    """C for the block dtypes among `dtypes`: dn_dq_<name> and dn_qmatmul_<name> each (after the PRELUDE)."""
    wanted = [d for d in _FORMATS if d in set(dtypes)]
    if not wanted:
        return ""
    parts = [_COMMON]
    for dtype in wanted:
        parts.append(_FORMATS[dtype])
        parts.append(_ENTRY.format(name=dtype.value, block=dtype.block, block_bytes=dtype.block_bytes,
                                   group=16 if dtype is DType.Q6_K else 32, offset128=int(dtype in _OFFSET128)))
    return "".join(parts)
