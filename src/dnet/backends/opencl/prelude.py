"""The OpenCL C text every generated program starts with: C's integer type names, halves, helpers.

The kernels are rendered by the same C-style renderer as the C backend's, so the names that
renderer writes (int64_t, uint8_t, dn_maxf, INT64_MAX, ...) are defined here in OpenCL C.
Halves are stored as 16-bit integers and converted by bit arithmetic, so no device extension
(cl_khr_fp16) is needed. Math uses OpenCL's built-ins (exp, tanh, erf), accurate to a few ulp.
"""
from dnet.backends.opencl.renderer import OpenCLRenderer

PRELUDE = r"""
typedef long int64_t;
typedef int int32_t;
typedef char int8_t;
typedef ulong uint64_t;
typedef uint uint32_t;
typedef ushort uint16_t;
typedef uchar uint8_t;
#define INT64_MAX LONG_MAX
#define INT64_MIN LONG_MIN

/* -- half types: stored as 16 bits, computed as float ------------------------------ */
static inline float dn_bf16_to_f32(uint16_t h) { return as_float((uint)h << 16); }
static inline uint16_t dn_f32_to_bf16(float f) {
    uint u = as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float dn_f16_to_f32(uint16_t h) {
    uint sign = (uint)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (e == 0x1f) u = sign | 0x7f800000u | (man << 13);
    else if (e) u = sign | ((e + 112) << 23) | (man << 13);
    else if (!man) u = sign;
    else u = as_uint((float)man * 5.9604644775390625e-8f) | sign;
    return as_float(u);
}
static inline uint16_t dn_f32_to_f16(float f) {
    uint u = as_uint(f);
    uint sign = (u >> 16) & 0x8000, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00);
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);
    if (a < 0x38800000u) return (uint16_t)(sign | (uint)rint(as_float(a) * 16777216.0f));   /* subnormal: 2^-24 steps */
    uint r = a - 0x38000000u;                    /* rebias the exponent, round to nearest even */
    r += 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}
""" + OpenCLRenderer.reference_helpers()
