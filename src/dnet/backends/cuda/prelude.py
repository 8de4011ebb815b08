"""The CUDA C text every generated module starts with: integer type names, limits, halves, helpers.

NVRTC compiles without the system's headers, so the names the C-style renderer writes (int64_t,
uint8_t, INT64_MAX, INFINITY, NAN) are defined here. The module is compiled with
`-default-device`, so these `static inline` helpers are device functions without annotations
and the reference helpers' text is the same as C's and OpenCL's. Halves are stored as 16 bits and
converted by bit arithmetic (no cuda_fp16.h), with the same rounding as the C and OpenCL preludes.
"""
from dnet.backends.cuda.renderer import CUDARenderer

PRELUDE = r"""
typedef long long int64_t;
typedef int int32_t;
typedef signed char int8_t;
typedef unsigned long long uint64_t;
typedef unsigned int uint32_t;
typedef unsigned short uint16_t;
typedef unsigned char uint8_t;
typedef unsigned char uchar;           /* the spellings of the OpenCL backend's operand layouts */
typedef unsigned short ushort;
#define INT64_MAX 9223372036854775807LL
#define INT64_MIN (-INT64_MAX - 1LL)
#define INFINITY __int_as_float(0x7f800000)
#define NAN __int_as_float(0x7fffffff)

/* -- half types: stored as 16 bits, computed as float ------------------------------ */
static inline float dn_bf16_to_f32(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }
static inline uint16_t dn_f32_to_bf16(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);   /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                              /* round to nearest even */
    return (uint16_t)(u >> 16);
}
static inline float dn_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (e == 0x1f) u = sign | 0x7f800000u | (man << 13);
    else if (e) u = sign | ((e + 112) << 23) | (man << 13);
    else if (!man) u = sign;
    else u = __float_as_uint((float)man * 5.9604644775390625e-8f) | sign;          /* subnormal */
    return __uint_as_float(u);
}
static inline uint16_t dn_f32_to_f16(float f) {
    uint32_t u = __float_as_uint(f);
    uint32_t sign = (u >> 16) & 0x8000, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00);
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);
    if (a < 0x38800000u) return (uint16_t)(sign | (uint32_t)rintf(__uint_as_float(a) * 16777216.0f));
    uint32_t r = a - 0x38000000u;                /* rebias the exponent, round to nearest even */
    r += 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}
""" + CUDARenderer.reference_helpers()
