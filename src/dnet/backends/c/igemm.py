"""The C form of a low-precision `Gemm`: int8 activations x int8 weights, or bf16 x bf16, f32 results.

Two Gemms that `kernel/gemm.py` makes from what `graph.passes.dynamic_quant` and `graph.passes.bf16`
leave in the graph:

- int8: a (m, k) int8 row-major, each row with its step s and zero offset z (activations quantized per
  token), against a constant int8 weight with one f32 scale per column: sum_k a * b is exact in int32
  (up to k = 65536: `kernel.gemm.MAX_INT8_K`), plus z * sum_k b, then times s * scale[j]. The weight is
  packed at load time (`program/panels.py`) in panels of nr columns, 4 values of k per column side by
  side, as b + 128 (unsigned bytes): one 4-byte word of a row of a, broadcast, meets nr columns in
  nr / 16 (or nr / 8) vectors.
- bf16: a (m, k) bf16 row-major against a constant bf16 weight, pairs of k side by side; the products
  of two bf16 values are exact in f32 and summed in f32.

Paths, chosen when the node's own compiler builds the library (its `-march=native` says what the CPU
has), each with the same results within f32 rounding of the sums (int8: exactly the same integers):

  int8   AVX512-VNNI  `vpdpbusd` on 512-bit vectors; unsigned x signed, so the weight is stored as b + 128
                      (its top bit flipped, at packing) and 128 * sum_k a is taken back out per row
         AVX-VNNI     the same on 256-bit vectors (`vpdpbusd` VEX, or EVEX with AVX512-VL)
         AVX2         `vpmaddubsw` on |a| and b with a's sign (`vpsignb`): pairs of products are at most
                      2 * 128 * 127 and never saturate int16, then `vpmaddwd` by 1 into int32
         NEON dotprod `sdot` (AArch64 FEAT_DotProd): signed x signed, so b's top bit is flipped back (one `eor`
                      per vector of b) and nothing is taken out; chosen at run time (AT_HWCAP / sysctl) where the
                      compiler does not itself target dotprod
         NEON         AArch64 without dotprod: `smull` / `smull2` into int16 (products at most 128 * 128), `sadalp`
                      into int32
         portable     int32 loops (the compiler vectorises what it can)
  bf16   AVX512-BF16  `vdpbf16ps`: two products of bf16 pairs added to an f32 lane per instruction
         portable     bf16 widened to f32 (a shift), f32 loops
  AMX    `tdpbsud` / `tdpbf16ps` on tiles of 16 rows x 64 bytes, where the compiler targets AMX and Linux
         grants the process its tile data (else the AVX-512 path): blocks of 32 rows x 32 columns in 2 x 2
         tiles, a kernel-level choice at run time (`render_low_precision`), so the whole task loop differs

`-DDN_QUANT_PORTABLE` forces the portable int8 path, `-DDN_QUANT_NO_VNNI` the AVX2 one and
`-DDN_QUANT_NO_AVX512` the 256-bit one (the macros of `backends/c/quant.py`, so one flag forces every
integer kernel), `-DDN_QUANT_NO_DOTPROD` AArch64's NEON one; `-DDN_BF16_PORTABLE` the portable bf16 path;
`-DDN_NO_AMX` keeps AMX out, and `$DNET_NO_AMX=1` (read at a library's first Gemm) makes a library with AMX run
its AVX-512 path, as a refusal by Linux would.
`dnet_igemm_path()` and `dnet_bgemm_path()` in the library name the paths it computes with.

Loops: tasks are (block of 8 slivers of mr rows, chunk of panels), enough for 4 per thread; within a
task each panel of b (k x nr, in L1 or L2) meets every sliver of the block's rows of a, read in place.
There is no k blocking: an mr x nr tile of int32 (or f32) sums stays in registers over the whole of k,
then gets its scales and the Gemm's epilogue at once.
AMX tasks are (block of 64 rows, chunk of panels): the tiles are configured once per run of tasks (again
only for a ragged last block of rows), each block of <= 32 rows meets every panel of the chunk, and its
four tiles of sums stay in the tile registers over the whole of k.
"""
from __future__ import annotations

from dnet.core.dtypes import DType
from dnet.kernel.ir import Gemm, GemmTile

SLIVERS = 8   # slivers of mr rows per task: 96 rows of 12, a block of a that stays in L2

COMMON = r"""
/* ======== int8 and bf16 Gemms (dnet.backends.c.igemm) ======== */
#if !defined(DN_QUANT_PORTABLE) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) \
    && !defined(DN_QUANT_NO_VNNI) && !defined(DN_QUANT_NO_AVX512)
#define DN_I8_AVX512 1
#define DN_I8_OFFSET 1
#elif !defined(DN_QUANT_PORTABLE) && defined(__AVX2__)
#define DN_I8_AVX2 1
#if !defined(DN_QUANT_NO_VNNI) && defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define DN_I8_DPBUSD(acc, u, x) _mm256_dpbusd_epi32(acc, u, x)
#define DN_I8_OFFSET 1
#elif !defined(DN_QUANT_NO_VNNI) && defined(__AVXVNNI__)
#define DN_I8_DPBUSD(acc, u, x) _mm256_dpbusd_avx_epi32(acc, u, x)
#define DN_I8_OFFSET 1
#endif
#elif !defined(DN_QUANT_PORTABLE) && defined(__aarch64__) && defined(__ARM_NEON)
#define DN_I8_NEON 1
#endif
/* a packed weight byte (b + 128) as the tile sums it: unsigned with VNNI (the offset taken out after), else b */
#if defined(DN_I8_OFFSET)
#define DN_I8_B(u) ((int32_t)(uint8_t)(u))
#else
#define DN_I8_B(u) ((int32_t)(int8_t)((uint8_t)(u) ^ 0x80))
#endif
#if !defined(DN_BF16_PORTABLE) && defined(__AVX512F__) && defined(__AVX512BF16__)
#define DN_BF16_AVX512 1
#endif
#if defined(DN_I8_AVX512) || defined(DN_I8_AVX2) || defined(DN_BF16_AVX512)
#include <immintrin.h>
#endif

/* AArch64: sdot where the CPU has it (the prelude's dn_arm_dotprod), else NEON's widening multiplies. sdot is
   signed x signed: the panel's b + 128 gets its top bit flipped back to b, and the sums are sum_k a * b with no
   offset to take out, as on the portable path. */

/* One row of an int8 Gemm's results: c[j] = (t[j] - shift + z * sums[j]) * s * sb[j], t the tile's int32 sums,
   shift = 128 * sum_k a where the tile summed (b + 128) * a, sums b's column sums. Where z is an integer (as
   graph.passes.dynamic_quant makes it) the bracket is summed exactly in int64 and rounded once: in f32, t and
   z * sums (each past 2^24 at k ~ 1000 on rows whose values crowd one end of their range) lost units that
   the near-cancelling sum then kept. */
static inline void dn_i8_scale_row(const int32_t* restrict t, int32_t shift, const int32_t* restrict sums, float s,
                                   float z, const float* restrict sb, float* restrict c, int64_t nr) {
    if (z > -2147483648.0f && z < 2147483648.0f && (float)(int64_t)z == z) {
        const int64_t zi = (int64_t)z;
        #pragma omp simd
        for (int64_t j = 0; j < nr; ++j) c[j] = (float)((int64_t)(t[j] - shift) + zi * sums[j]) * (s * sb[j]);
    } else {
        #pragma omp simd
        for (int64_t j = 0; j < nr; ++j) c[j] = ((float)(t[j] - shift) + z * (float)sums[j]) * (s * sb[j]);
    }
}

/* AMX (Sapphire Rapids and later): tiles of 16 rows x 64 bytes, `tdpbsud` / `tdpbf16ps` on whole tiles. Built
   where the compiler targets AMX (and -DDN_NO_AMX is not given); used where Linux also grants this process the
   tile data (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), asked once), else the AVX-512 path runs. */
#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(DN_I8_AVX512) && !defined(DN_NO_AMX)
#define DN_AMX_INT8 1
#endif
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(DN_BF16_AVX512) && !defined(DN_NO_AMX)
#define DN_AMX_BF16 1
#endif
#if defined(DN_AMX_INT8) || defined(DN_AMX_BF16)
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>
static int dn_amx_ready(void) {
    static int state = -1;   /* the permission is the process's: a second asker gets the same answer */
    int s = __atomic_load_n(&state, __ATOMIC_ACQUIRE);
    if (s < 0) {
        /* $DNET_NO_AMX: the vector path on an AMX host, without rebuilding (tests, comparisons) */
        const char* off = getenv("DNET_NO_AMX");
        s = !(off && *off && *off != '0')
            && syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
        __atomic_store_n(&state, s, __ATOMIC_RELEASE);
    }
    return s;
}

typedef struct { uint8_t palette, start_row, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; } dn_amx_cfg;

/* A block of r <= 32 rows x 32 columns: tiles 0-3 the sums (rows 0-15 x columns 0-15, 0-15 x 16-31, 16-31 x 0-15,
   16-31 x 16-31; 16 int32 or f32 lanes a row), 4 and 5 the two halves of the rows of a (64 bytes of k), 6 and 7 b:
   16 rows (groups of k) x 64 bytes (16 columns) read from a panel of 32 columns (128 bytes a row). The second
   half's tiles are configured only when r > 16 (a tile of 0 rows is unconfigured). Loaded once per task run,
   again only when the row count changes (the last block of a ragged m). */
static void dn_amx_config(int64_t r) {
    dn_amx_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    const uint8_t r0 = (uint8_t)(r < 16 ? r : 16), r1 = (uint8_t)(r > 16 ? r - 16 : 0);
    const uint8_t rows[8] = {r0, r0, r1, r1, r0, r1, 16, 16};
    for (int t = 0; t < 8; ++t)
        if (rows[t]) { cfg.colsb[t] = 64; cfg.rows[t] = rows[t]; }
    _tile_loadconfig(&cfg);
}
#endif

#if defined(DN_AMX_INT8)
/* t (r x 32 int32, rows 32 apart) = sum_k a * (b + 128): 64 values of k a step, 2 x 2 tiles (4 products per 4 tile
   loads). The last K % 64 values, where a whole tile would read past a row of a or past the panel, go through
   zero-padded copies (b's padding within its last group is 128, met by zeros of a). */
static void dn_amx_i8_block(int64_t K, const int8_t* a, int64_t lda, const int8_t* b, int32_t* t, int64_t r) {
    const int64_t full = K / 64, tail = K % 64, groups = (tail + 3) / 4;
    const int two = r > 16;
    int8_t at[32 * 64] __attribute__((aligned(64))), bt[16 * 128] __attribute__((aligned(64)));
    if (tail) {
        memset(at, 0, sizeof at);
        memset(bt, 0, sizeof bt);
        for (int64_t i = 0; i < r; ++i) memcpy(at + i * 64, a + i * lda + full * 64, (size_t)tail);
        memcpy(bt, b + full * 16 * 128, (size_t)(groups * 128));
    }
    _tile_zero(0);
    _tile_zero(1);
    if (two) {
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t s = 0; s < full; ++s) {
            _tile_loadd(4, a + s * 64, lda);
            _tile_loadd(5, a + 16 * lda + s * 64, lda);
            _tile_loadd(6, b + s * 16 * 128, 128);
            _tile_loadd(7, b + s * 16 * 128 + 64, 128);
            _tile_dpbsud(0, 4, 6);
            _tile_dpbsud(1, 4, 7);
            _tile_dpbsud(2, 5, 6);
            _tile_dpbsud(3, 5, 7);
        }
        if (tail) {
            _tile_loadd(4, at, 64);
            _tile_loadd(5, at + 16 * 64, 64);
            _tile_loadd(6, bt, 128);
            _tile_loadd(7, bt + 64, 128);
            _tile_dpbsud(0, 4, 6);
            _tile_dpbsud(1, 4, 7);
            _tile_dpbsud(2, 5, 6);
            _tile_dpbsud(3, 5, 7);
        }
        _tile_stored(2, t + 16 * 32, 128);
        _tile_stored(3, t + 16 * 32 + 16, 128);
    } else {
        for (int64_t s = 0; s < full; ++s) {
            _tile_loadd(4, a + s * 64, lda);
            _tile_loadd(6, b + s * 16 * 128, 128);
            _tile_loadd(7, b + s * 16 * 128 + 64, 128);
            _tile_dpbsud(0, 4, 6);
            _tile_dpbsud(1, 4, 7);
        }
        if (tail) {
            _tile_loadd(4, at, 64);
            _tile_loadd(6, bt, 128);
            _tile_loadd(7, bt + 64, 128);
            _tile_dpbsud(0, 4, 6);
            _tile_dpbsud(1, 4, 7);
        }
    }
    _tile_stored(0, t, 128);
    _tile_stored(1, t + 16, 128);
}

/* sum_k a[i, k] of r rows: the tiles summed (b + 128) * a, so 128 times it comes back out (in int32, exactly) */
static inline void dn_i8_rowsums(const int8_t* restrict a, int64_t lda, int64_t K, int64_t r, int32_t* restrict out) {
    for (int64_t i = 0; i < r; ++i) {
        int32_t s = 0;
        #pragma omp simd reduction(+:s)
        for (int64_t k = 0; k < K; ++k) s += a[i * lda + k];
        out[i] = s;
    }
}

/* c[0:r, 0:nr] = (sum_k a * b + z[i] * colsum(b)) * s[i] * sb[j], as dn_igemm_* scales its tile */
static inline void dn_amx_i8_finish(const int32_t* restrict t, const int32_t* restrict rowsum, const int8_t* sums_at,
                                    const float* restrict rows, const float* restrict sb, float* restrict c,
                                    int64_t ldc, int64_t r, int64_t nr) {
    int32_t sums[32];
    memcpy(sums, sums_at, sizeof sums);
    for (int64_t i = 0; i < r; ++i)
        dn_i8_scale_row(t + i * 32, 128 * rowsum[i], sums, rows[2 * i], rows[2 * i + 1], sb, c + i * ldc, nr);
}
#endif

#if defined(DN_AMX_BF16)
/* c (r x 32 f32, rows ldc apart) = sum_k a * b over bf16 pairs: 32 values of k a step, 2 x 2 tiles; the last K % 32
   values through zero-padded copies (a row of a has K values; the panel's last pair is zero-padded) */
static void dn_amx_bf16_block(int64_t K, const uint16_t* a, int64_t lda, const uint16_t* b, float* c, int64_t ldc,
                              int64_t r) {
    const int64_t full = K / 32, tail = K % 32, pairs = (tail + 1) / 2;
    const int two = r > 16;
    uint16_t at[32 * 32] __attribute__((aligned(64))), bt[16 * 64] __attribute__((aligned(64)));
    if (tail) {
        memset(at, 0, sizeof at);
        memset(bt, 0, sizeof bt);
        for (int64_t i = 0; i < r; ++i) memcpy(at + i * 32, a + i * lda + full * 32, (size_t)(tail * 2));
        memcpy(bt, b + full * 16 * 64, (size_t)(pairs * 128));
    }
    const int64_t sa = lda * 2, sc = ldc * 4;
    _tile_zero(0);
    _tile_zero(1);
    if (two) {
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t s = 0; s < full; ++s) {
            _tile_loadd(4, a + s * 32, sa);
            _tile_loadd(5, a + 16 * lda + s * 32, sa);
            _tile_loadd(6, b + s * 16 * 64, 128);
            _tile_loadd(7, b + s * 16 * 64 + 32, 128);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        if (tail) {
            _tile_loadd(4, at, 64);
            _tile_loadd(5, at + 16 * 32, 64);
            _tile_loadd(6, bt, 128);
            _tile_loadd(7, bt + 32, 128);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(2, c + 16 * ldc, sc);
        _tile_stored(3, c + 16 * ldc + 16, sc);
    } else {
        for (int64_t s = 0; s < full; ++s) {
            _tile_loadd(4, a + s * 32, sa);
            _tile_loadd(6, b + s * 16 * 64, 128);
            _tile_loadd(7, b + s * 16 * 64 + 32, 128);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
        }
        if (tail) {
            _tile_loadd(4, at, 64);
            _tile_loadd(6, bt, 128);
            _tile_loadd(7, bt + 32, 128);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
        }
    }
    _tile_stored(0, c, sc);
    _tile_stored(1, c + 16, sc);
}
#endif

/* the paths this library computes with, for tests and benchmarks */
const char* dnet_igemm_path(void) {
#if defined(DN_AMX_INT8)
    if (dn_amx_ready()) return "amx-int8";
#endif
#if defined(DN_I8_AVX512)
    return "avx512-vnni";
#elif defined(DN_I8_AVX2) && defined(DN_I8_DPBUSD)
    return "avx-vnni";
#elif defined(DN_I8_AVX2)
    return "avx2";
#elif defined(DN_I8_NEON) && defined(DN_ARM_DOT)
    return dn_arm_dotprod() ? "neon-dotprod" : "neon";
#elif defined(DN_I8_NEON)
    return "neon";
#else
    return "portable";
#endif
}

const char* dnet_bgemm_path(void) {
#if defined(DN_AMX_BF16)
    if (dn_amx_ready()) return "amx-bf16";
#endif
#if defined(DN_BF16_AVX512)
    return "avx512-bf16";
#else
    return "portable";
#endif
}
"""


def support(tile: GemmTile) -> str:
    """The int8 and bf16 micro-kernels for one tile shape (emitted once per library, after COMMON)."""
    return _int8(tile.mr, tile.nr) + _bf16(tile.mr, tile.nr)


AMX_NR = 32     # an AMX block is 2 x 2 tiles of 16 rows x 16 columns: panels of 32 columns
AMX_ROWS = 32   # rows of a block
AMX_BLOCK = 64  # rows of a task (its blocks share the task's panels of b)


def _rows(mr: int, elem: str) -> str:
    """Pointers to the sliver's rows of a; rows past mr read row 0 (computed, never stored)."""
    return "\n".join(f"    const {elem}* restrict a{i} = a + ({i} < mr ? {i} : 0) * lda;" for i in range(mr))


def _int8(mr: int, nr: int) -> str:
    sfx = f"{mr}x{nr}"
    branches = []
    if nr % 16 == 0:
        branches.append(("defined(DN_I8_AVX512)", _int8_vector(mr, nr, 16, "__m512i", "_mm512")))
    if nr % 8 == 0:
        branches.append(("defined(DN_I8_AVX2)", _int8_vector(mr, nr, 8, "__m256i", "_mm256")))
    neon = ""
    if nr % 4 == 0:
        branches.append(("defined(DN_I8_NEON)", _int8_neon_dispatch(sfx)))
        neon = _int8_neon(mr, nr)
    body = ""
    for n, (cond, text) in enumerate(branches):
        body += f"#{'if' if n == 0 else 'elif'} {cond}\n{text}\n"
    body += ("#else\n" if branches else "") + _int8_portable(mr, nr) + ("\n#endif" if branches else "")
    return f"""{neon}
/* t[i, j] = sum_k a[i, k] * b[k, j] in int32 (+ 128 * sum_k a[i, k] where DN_I8_OFFSET), rows i < {mr},
   over k4 whole groups of 4 values of k; b is one packed panel */
static inline void dn_i8_tile_{sfx}(int64_t k4, const int8_t* restrict a, int64_t lda,
                                    const int8_t* restrict b, int32_t* restrict t, int64_t mr) {{
{body}
}}

/* c[0:mr, 0:nr] = (sum_k (a + z[i]) * b) * s[i] * sb[j], where row i's step and zero offset are
   rows[2 i] and rows[2 i + 1]: sum_k a * b plus z[i] times b's column sums (kept after the panel) */
static inline void dn_igemm_{sfx}(int64_t K, const int8_t* restrict a, int64_t lda, const int8_t* restrict b,
                                 const float* restrict rows, const float* restrict sb, float* restrict c,
                                 int64_t ldc, int64_t mr, int64_t nr) {{
    int32_t t[{mr * nr}] __attribute__((aligned(64))), sums[{nr}];
    const int64_t k4 = K / 4, kt = K % 4;
    dn_i8_tile_{sfx}(k4, a, lda, b, t, mr);
    if (kt) {{   /* the last kt < 4 values of k, here: in the tile loop its code spilled every accumulator */
        const int8_t* restrict last = b + k4 * {nr * 4};
        for (int64_t i = 0; i < mr; ++i)
            for (int64_t z = 0; z < kt; ++z) {{
                const int32_t x = a[i * lda + k4 * 4 + z];
                for (int64_t j = 0; j < {nr}; ++j) t[i * {nr} + j] += x * DN_I8_B(last[j * 4 + z]);
            }}
    }}
    memcpy(sums, b + (k4 + (kt != 0)) * {nr * 4}, sizeof sums);
    for (int64_t i = 0; i < mr; ++i) {{
        int32_t shift = 0;
#if defined(DN_I8_OFFSET)   /* the tile summed (b + 128) * a: take 128 * sum_k a back out */
        int32_t row = 0;
        for (int64_t k = 0; k < K; ++k) row += a[i * lda + k];
        shift = 128 * row;
#endif
        dn_i8_scale_row(t + i * {nr}, shift, sums, rows[2 * i], rows[2 * i + 1], sb, c + i * ldc, nr);
    }}
}}
"""


def _int8_vector(mr: int, nr: int, lanes: int, vtype: str, pre: str) -> str:
    """One int8 tile on vectors of `lanes` int32: mr x (nr / lanes) accumulators."""
    nv = nr // lanes
    acc = [[f"c{i}_{v}" for v in range(nv)] for i in range(mr)]
    zero = "_mm512_setzero_si512()" if pre == "_mm512" else "_mm256_setzero_si256()"
    decl = "\n".join(f"    {vtype} {', '.join(f'{a} = {zero}' for a in row)};" for row in acc)
    vbytes = lanes * 4

    def step(word: str) -> str:
        loads = "; ".join(f"const {vtype} b{v} = {pre}_loadu_si{lanes * 32}((const void*)(b + {v * vbytes}))"
                          for v in range(nv)) + ";"
        rows = []
        for i in range(mr):
            w = word.format(i=i)
            if pre == "_mm512":
                dots = " ".join(f"{acc[i][v]} = _mm512_dpbusd_epi32({acc[i][v]}, b{v}, x);" for v in range(nv))
                rows.append(f"{{ {w} const __m512i x = _mm512_set1_epi32(w); {dots} }}")
            else:
                vnni = " ".join(f"{acc[i][v]} = DN_I8_DPBUSD({acc[i][v]}, b{v}, x);" for v in range(nv))
                sign = " ".join(f"{acc[i][v]} = _mm256_add_epi32({acc[i][v]}, _mm256_madd_epi16("
                                f"_mm256_maddubs_epi16(ax, _mm256_sign_epi8(s{v}, x)), ones));" for v in range(nv))
                rows.append(f"{{ {w} const __m256i x = _mm256_set1_epi32(w);\n#if defined(DN_I8_DPBUSD)\n {vnni}"
                            f"\n#else\n const __m256i ax = _mm256_sign_epi8(x, x); {sign}\n#endif\n}}")
        # without VNNI, b's stored b + 128 back to signed (its top bit flipped), once per vector of b
        flips = "" if pre == "_mm512" else "\n#if !defined(DN_I8_DPBUSD)\n        " + " ".join(
            f"const __m256i s{v} = _mm256_xor_si256(b{v}, flip);" for v in range(nv)) + "\n#endif\n"
        return "        " + loads + flips + "\n" + "\n".join("        " + r for r in rows)

    full = step("int32_t w; memcpy(&w, a{i} + kk * 4, 4);")
    store = "\n".join(f"    {pre}_storeu_si{lanes * 32}((void*)(t + {i * nr + v * lanes}), {acc[i][v]});"
                      for i in range(mr) for v in range(nv))
    ones = ("    const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8((char)0x80); (void)ones; "
            "(void)flip;\n" if pre == "_mm256" else "")
    return f"""{_rows(mr, "int8_t")}
{ones}{decl}
    for (int64_t kk = 0; kk < k4; ++kk, b += {nr * 4}) {{
{full}
    }}
{store}"""


def _int8_neon_dispatch(sfx: str) -> str:
    """The AArch64 tile: sdot where the CPU has it (asked once, `dn_arm_dotprod`), else widening multiplies."""
    return f"""#if defined(DN_ARM_DOT)
    if (dn_arm_dotprod()) {{ dn_i8_sdot_{sfx}(k4, a, lda, b, t, mr); return; }}
#endif
    dn_i8_smull_{sfx}(k4, a, lda, b, t, mr);"""


def _int8_neon(mr: int, nr: int) -> str:
    """The two AArch64 int8 tiles, each over k4 groups of 4 values of k of a panel holding b + 128 (turned back
    to signed b: one `eor` per vector of b, shared by the rows).

    sdot: mr x (nr / 4) accumulators of 4 int32 (12 x 2 for the 12 x 8 tile of a 32-register host); a row's
    4-byte word broadcast meets 4 columns x 4 values of k per `sdot`, as `vpdpbusd` does on x86.
    Without dotprod: a row at a time, `smull` / `smull2` on 2 columns x 4 values of k (int16 products, at most
    128 * 128) and `sadalp` adding pairs of them into int32 lanes that hold column halves (k 0-1 and 2-3),
    folded by one `addp` per 4 columns at the end. A row's 2 * nr / 4 sums stay in registers; b is re-read
    per row from L1."""
    sfx, nv = f"{mr}x{nr}", nr // 4
    acc = [[f"c{i}_{v}" for v in range(nv)] for i in range(mr)]
    decl = "\n".join(f"    int32x4_t {', '.join(f'{x} = vdupq_n_s32(0)' for x in row)};" for row in acc)
    loads = " ".join(f"const int8x16_t b{v} = veorq_s8(vld1q_s8(b + {16 * v}), flip);" for v in range(nv))
    rows = "\n".join(
        f"        {{ int32_t w; memcpy(&w, a{i} + kk * 4, 4); const int8x16_t x = vreinterpretq_s8_s32(vdupq_n_s32(w));"
        + "".join(f" {acc[i][v]} = vdotq_s32({acc[i][v]}, b{v}, x);" for v in range(nv)) + " }"
        for i in range(mr))
    store = "\n".join(f"    vst1q_s32(t + {i * nr + 4 * v}, {acc[i][v]});" for i in range(mr) for v in range(nv))
    halves = ", ".join(f"lo{v} = vdupq_n_s32(0), hi{v} = vdupq_n_s32(0)" for v in range(nv))
    widen = "\n".join(
        f"            {{ const int8x16_t s = veorq_s8(vld1q_s8(p + {16 * v}), flip);"
        f" lo{v} = vpadalq_s16(lo{v}, vmull_s8(vget_low_s8(s), vget_low_s8(x)));"
        f" hi{v} = vpadalq_s16(hi{v}, vmull_high_s8(s, x)); }}" for v in range(nv))
    fold = " ".join(f"vst1q_s32(row + {4 * v}, vpaddq_s32(lo{v}, hi{v}));" for v in range(nv))
    return f"""
#if defined(DN_I8_NEON) && defined(DN_ARM_DOT)
static DN_ARM_DOT_TARGET void dn_i8_sdot_{sfx}(int64_t k4, const int8_t* restrict a, int64_t lda,
                                              const int8_t* restrict b, int32_t* restrict t, int64_t mr) {{
{_rows(mr, "int8_t")}
    const int8x16_t flip = vdupq_n_s8((int8_t)-128);
{decl}
    for (int64_t kk = 0; kk < k4; ++kk, b += {nr * 4}) {{
        {loads}
{rows}
    }}
{store}
}}
#endif
#if defined(DN_I8_NEON)
static void dn_i8_smull_{sfx}(int64_t k4, const int8_t* restrict a, int64_t lda, const int8_t* restrict b,
                              int32_t* restrict t, int64_t mr) {{
    const int8x16_t flip = vdupq_n_s8((int8_t)-128);
    for (int64_t i = 0; i < mr; ++i) {{
        const int8_t* restrict ai = a + i * lda;
        const int8_t* restrict p = b;
        int32x4_t {halves};
        for (int64_t kk = 0; kk < k4; ++kk, p += {nr * 4}) {{
            int32_t w;
            memcpy(&w, ai + kk * 4, 4);
            const int8x16_t x = vreinterpretq_s8_s32(vdupq_n_s32(w));
{widen}
        }}
        int32_t* restrict row = t + i * {nr};
        {fold}
    }}
}}
#endif
"""


def _int8_portable(mr: int, nr: int) -> str:
    return f"""    for (int64_t i = 0; i < {mr * nr}; ++i) t[i] = 0;
    for (int64_t kk = 0; kk < k4; ++kk, b += {nr * 4}) {{
        for (int64_t i = 0; i < mr; ++i) {{
            const int8_t* w = a + i * lda + kk * 4;
            int32_t* restrict row = t + i * {nr};
            for (int64_t j = 0; j < {nr}; ++j)
                row[j] += w[0] * DN_I8_B(b[j * 4]) + w[1] * DN_I8_B(b[j * 4 + 1]) + w[2] * DN_I8_B(b[j * 4 + 2])
                          + w[3] * DN_I8_B(b[j * 4 + 3]);
        }}
    }}"""


def _bf16(mr: int, nr: int) -> str:
    sfx = f"{mr}x{nr}"
    vector = ""
    if nr % 16 == 0:
        nv = nr // 16
        acc = [[f"c{i}_{v}" for v in range(nv)] for i in range(mr)]
        decl = "\n".join(f"    __m512 {', '.join(f'{a} = _mm512_setzero_ps()' for a in row)};" for row in acc)

        def step(word: str) -> str:
            loads = "; ".join(f"const __m512bh b{v} = (__m512bh)_mm512_loadu_si512((const void*)(b + {v * 32}))"
                              for v in range(nv)) + ";"
            rows = [f"{{ {word.format(i=i)} const __m512bh x = (__m512bh)_mm512_set1_epi32((int32_t)w); "
                    + " ".join(f"{acc[i][v]} = _mm512_dpbf16_ps({acc[i][v]}, x, b{v});" for v in range(nv)) + " }"
                    for i in range(mr)]
            return "        " + loads + "\n" + "\n".join("        " + r for r in rows)

        store = "\n".join(f"    _mm512_storeu_ps(t + {i * nr + v * 16}, {acc[i][v]});"
                          for i in range(mr) for v in range(nv))
        vector = f"""#if defined(DN_BF16_AVX512)
{_rows(mr, "uint16_t")}
{decl}
    for (int64_t kk = 0; kk < k2; ++kk, b += {nr * 2}) {{
{step("uint32_t w; memcpy(&w, a{i} + kk * 2, 4);")}
    }}
    if (kt) {{
{step("uint32_t w = 0; memcpy(&w, a{i} + k2 * 2, 2);")}
    }}
{store}
#else
"""
    portable = f"""    for (int64_t i = 0; i < {mr * nr}; ++i) t[i] = 0.0f;
    for (int64_t kk = 0; kk < k2 + kt; ++kk, b += {nr * 2}) {{
        for (int64_t i = 0; i < mr; ++i) {{
            const float x0 = dn_bf16_to_f32(a[i * lda + kk * 2]);
            const float x1 = kk < k2 ? dn_bf16_to_f32(a[i * lda + kk * 2 + 1]) : 0.0f;
            float* restrict row = t + i * {nr};
            for (int64_t j = 0; j < {nr}; ++j)
                row[j] += x0 * dn_bf16_to_f32(b[j * 2]) + x1 * dn_bf16_to_f32(b[j * 2 + 1]);
        }}
    }}"""
    return f"""
/* t[i, j] = sum_k a[i, k] * b[k, j] in f32 over bf16 values, rows i < {mr}: k2 whole pairs, then kt (< 2) */
static inline void dn_bf16_tile_{sfx}(int64_t k2, int64_t kt, const uint16_t* restrict a, int64_t lda,
                                      const uint16_t* restrict b, float* restrict t, int64_t mr) {{
{vector}{portable}
{"#endif" if vector else ""}
}}

static inline void dn_bgemm_{sfx}(int64_t K, const uint16_t* restrict a, int64_t lda, const uint16_t* restrict b,
                                 float* restrict c, int64_t ldc, int64_t mr, int64_t nr) {{
    float t[{mr * nr}] __attribute__((aligned(64)));
    dn_bf16_tile_{sfx}(K / 2, K % 2, a, lda, b, t, mr);
    for (int64_t i = 0; i < mr; ++i)
        for (int64_t j = 0; j < nr; ++j) c[i * ldc + j] = t[i * {nr} + j];
}}
"""


def render_low_precision(r, g: Gemm, pad: str) -> list[str]:
    """The body of a low-precision Gemm kernel (`r` is the kernel's CRenderer): sizes, one pool loop."""
    from dnet.backends.c.gemm import _epilogue

    t, ix = g.tile, r.index
    sfx = f"{t.mr}x{t.nr}"
    int8 = g.a.dtype is DType.I8
    group = 4 if int8 else 2
    extra = 4 * t.nr if int8 else 0          # an int8 panel's column sums (bytes)
    lines = [
        f"const int64_t g_M = {ix(g.m)}, g_N = {ix(g.n)}, g_K = {ix(g.k)};",
        f"const int64_t g_panels = (g_N + {t.nr - 1}) / {t.nr};",
        f"const int64_t g_pstride = (g_K + {group - 1}) / {group} * {t.nr * group} + {extra};",
        "const int64_t g_nt = dn_threads();",
        f"const int64_t g_mblocks = ((g_M + {t.mr - 1}) / {t.mr} + {SLIVERS - 1}) / {SLIVERS};",
        "int64_t g_chunks = 1;   /* split the columns until there are 4 tasks a thread */",
        "while (g_chunks < g_panels && g_mblocks * g_chunks < 4 * g_nt) g_chunks++;",
        "const int64_t g_per_chunk = g_panels > 0 ? (g_panels + g_chunks - 1) / g_chunks : 1;",
        "const int64_t g_nchunks = (g_panels + g_per_chunk - 1) / g_per_chunk;",
    ]
    r.locals += [("const int64_t", n) for n in ("g_M", "g_N", "g_K", "g_panels", "g_pstride", "g_mblocks",
                                                "g_per_chunk", "g_nchunks")]
    rows = SLIVERS * t.mr
    lda = ix(g.a.row_stride)
    a_at = f"{g.a.buffer} + {ix(g.a.offset)} + g_ir * {lda}"
    b_at = f"{g.b.buffer} + g_p * g_pstride"
    call = (f"dn_igemm_{sfx}(g_K, {a_at}, {lda}, {b_at}, {g.a.scale} + 2 * g_ir, {g.b.scale} + g_j0, g_c, g_N, g_mr, g_nr);"
            if int8 else f"dn_bgemm_{sfx}(g_K, {a_at}, {lda}, {b_at}, g_c, g_N, g_mr, g_nr);")
    task = [
        "for (int64_t g_flat = g_begin; g_flat < g_end; ++g_flat) {",
        "    const int64_t g_blk = g_flat / g_nchunks, g_p0 = g_flat % g_nchunks * g_per_chunk;",
        "    const int64_t g_p1 = g_p0 + g_per_chunk < g_panels ? g_p0 + g_per_chunk : g_panels;",
        f"    const int64_t g_i0 = g_blk * {rows}, g_i1 = g_i0 + {rows} < g_M ? g_i0 + {rows} : g_M;",
        "    for (int64_t g_p = g_p0; g_p < g_p1; ++g_p) {",
        f"        const int64_t g_j0 = g_p * {t.nr}, g_nr = g_N - g_j0 < {t.nr} ? g_N - g_j0 : {t.nr};",
        f"        for (int64_t g_ir = g_i0; g_ir < g_i1; g_ir += {t.mr}) {{",
        f"            const int64_t g_mr = g_i1 - g_ir < {t.mr} ? g_i1 - g_ir : {t.mr};",
        "            float* g_c = out + g_ir * g_N + g_j0;",
        f"            {call}",
        *[f"            {x}" for x in _epilogue(r, g, "g_c", "g_ir", "g_j0")],
        "        }",
        "    }",
        "}",
    ]
    body = [pad + x for x in lines]
    if t.nr != AMX_NR:
        return body + r.outline(task, "g_mblocks * g_nchunks", "1", pad)
    # AMX where the library has it and Linux grants the tiles (asked at the first call), else the vector path
    macro = "DN_AMX_INT8" if int8 else "DN_AMX_BF16"
    body += _amx_sizes(r)
    vector = r.outline(task, "g_mblocks * g_nchunks", "1", pad + "    ")
    amx = r.outline(_amx_task(g, int8, a_at, lda, b_at, _epilogue(r, g, "g_c", "g_ir", "g_j0")),
                    "g_ablocks * g_anchunks", "1", pad + "    ")
    r.helpers[-1] = f"#if defined({macro})\n{r.helpers[-1]}\n#endif"
    return body + [f"#if defined({macro})", f"{pad}if (dn_amx_ready()) {{", *amx, f"{pad}}} else", "#endif",
                   f"{pad}{{", *vector, f"{pad}}}"]


def _amx_sizes(r) -> list[str]:
    """The AMX tasks: blocks of AMX_BLOCK rows x chunks of panels, split until 4 tasks a thread."""
    lines = [
        f"const int64_t g_ablocks = (g_M + {AMX_BLOCK - 1}) / {AMX_BLOCK};",
        "int64_t g_achunks = 1;",
        "while (g_achunks < g_panels && g_ablocks * g_achunks < 4 * g_nt) g_achunks++;",
        "const int64_t g_aper = g_panels > 0 ? (g_panels + g_achunks - 1) / g_achunks : 1;",
        "const int64_t g_anchunks = (g_panels + g_aper - 1) / g_aper;",
    ]
    r.locals += [("const int64_t", n) for n in ("g_ablocks", "g_aper", "g_anchunks")]
    return lines


def _amx_task(g: Gemm, int8: bool, a_at: str, lda: str, b_at: str, epilogue: list[str]) -> list[str]:
    """One run of AMX tasks: the tiles configured once (again for a ragged last block), released at the end.
    A block of <= 32 rows meets each panel of the task's chunk; int8 rows' sums are taken once per block."""
    if int8:
        prep = [f"int32_t g_rs[{AMX_ROWS}];", f"dn_i8_rowsums({a_at}, {lda}, g_K, g_mr, g_rs);"]
        call = [f"dn_amx_i8_block(g_K, {a_at}, {lda}, {b_at}, g_t, g_mr);",
                f"dn_amx_i8_finish(g_t, g_rs, (const int8_t*){b_at} + (g_K + 3) / 4 * {AMX_NR * 4}, "
                f"{g.a.scale} + 2 * g_ir, {g.b.scale} + g_j0, g_c, g_N, g_mr, g_nr);"]
        scratch = f"int32_t g_t[{AMX_ROWS * AMX_NR}] __attribute__((aligned(64)));"
    else:   # whole panels straight into c; a ragged last panel through a scratch tile
        prep = []
        call = [f"if (g_nr == {AMX_NR}) dn_amx_bf16_block(g_K, {a_at}, {lda}, {b_at}, g_c, g_N, g_mr);",
                "else {",
                f"    dn_amx_bf16_block(g_K, {a_at}, {lda}, {b_at}, g_t, {AMX_NR}, g_mr);",
                "    for (int64_t i = 0; i < g_mr; ++i)",
                f"        for (int64_t j = 0; j < g_nr; ++j) g_c[i * g_N + j] = g_t[i * {AMX_NR} + j];",
                "}"]
        scratch = f"float g_t[{AMX_ROWS * AMX_NR}] __attribute__((aligned(64)));"
    return [
        scratch,
        "int64_t g_cfg = 0;   /* the rows the tiles are configured for (0: not yet) */",
        "for (int64_t g_flat = g_begin; g_flat < g_end; ++g_flat) {",
        "    const int64_t g_blk = g_flat / g_anchunks, g_p0 = g_flat % g_anchunks * g_aper;",
        "    const int64_t g_p1 = g_p0 + g_aper < g_panels ? g_p0 + g_aper : g_panels;",
        f"    const int64_t g_i0 = g_blk * {AMX_BLOCK}, g_i1 = g_i0 + {AMX_BLOCK} < g_M ? g_i0 + {AMX_BLOCK} : g_M;",
        f"    for (int64_t g_ir = g_i0; g_ir < g_i1; g_ir += {AMX_ROWS}) {{",
        f"        const int64_t g_mr = g_i1 - g_ir < {AMX_ROWS} ? g_i1 - g_ir : {AMX_ROWS};",
        "        if (g_mr != g_cfg) { dn_amx_config(g_mr); g_cfg = g_mr; }",
        *["        " + x for x in prep],
        "        for (int64_t g_p = g_p0; g_p < g_p1; ++g_p) {",
        f"            const int64_t g_j0 = g_p * {AMX_NR}, g_nr = g_N - g_j0 < {AMX_NR} ? g_N - g_j0 : {AMX_NR};",
        "            float* g_c = out + g_ir * g_N + g_j0;",
        *["            " + x for x in call],
        *["            " + x for x in epilogue],
        "        }",
        "    }",
        "}",
        "if (g_cfg) _tile_release();",
    ]
