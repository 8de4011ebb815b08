"""GGUF block formats in CUDA C: one element decoded (`dn_dq_<format>`), and a `QMatmul` kernel.

A weight in a block dtype stays in its blocks on the device (never expanded). The element
decoders are the OpenCL backend's text (`backends/opencl/quant.FORMATS`, gguf's reference
arithmetic in plain C) with OpenCL's `__global` address space dropped; the two helpers they call
are written here for CUDA. A `QMatmul` (x @ w.T against such a weight) is a thread block per result:
its THREADS threads walk the weight row together, neighbours on neighbouring elements (so a warp's loads
of a block's bytes and of x coalesce), each summing its share; the shares are added in shared memory
(a tree, a barrier a level) and one thread applies the epilogue and stores. A decode step's matmuls
have a few hundred to a few thousand results: one thread each would leave most of a GPU idle.
"""
from __future__ import annotations

from typing import Iterable

from dnet.backends.opencl.quant import FORMATS
from dnet.backends.opencl.renderer import RenderedKernel
from dnet.core.dtypes import DType
from dnet.kernel.ir import QMatmul

from dnet.backends.cuda.renderer import Blocks, CUDARenderer

THREADS = 64      # threads per QMatmul result (two warps): a power of two, for the tree sum

COMMON = r"""
static inline float dn_q_f16(const uchar* p) { return dn_f16_to_f32((ushort)p[0] | ((ushort)p[1] << 8)); }
/* K-quant scales: 8 sub-blocks' 6-bit scale and min packed in 12 bytes (gguf's Q4_K.get_scale_min) */
static inline void dn_q_scale_min_k4(const uchar* s, int j, int* sc, int* mn) {
    if (j < 4) { *sc = s[j] & 63; *mn = s[j + 4] & 63; }
    else { *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4); *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4); }
}
"""


def quant_support(dtypes: Iterable[DType]) -> str:
    """CUDA C for the block dtypes among `dtypes` (after the prelude): dn_dq_<name> per format."""
    wanted = sorted({d for d in dtypes if d.is_block}, key=lambda d: d.value)
    if not wanted:
        return ""
    return "\n".join([COMMON, *(FORMATS[d].replace("__global ", "") for d in wanted)])


def render_qmatmul_kernel(r: CUDARenderer, q: QMatmul) -> RenderedKernel:
    """out[i, j] = epilogue(sum_k a[i, k] * w[j, k]): a thread block per (i, j), j fastest."""
    i, j = q.vars
    ix = r.index
    x_row = f"{q.a.buffer} + {ix(q.a.offset)} + {i} * {ix(q.a.row_stride)}"
    lines = r.header(f"__launch_bounds__({THREADS}) ") + [
        "    const int64_t g_id = (int64_t)blockIdx.x;      /* the launch has exactly one block per result */",
        "    const int g_t = (int)threadIdx.x;",
        f"    const int64_t {i} = g_id / {q.n}, {j} = g_id % {q.n};",
        f"    const float* g_x = {x_row};",
        "    float g_part = 0.0f;",
        f"    for (int64_t g_k = g_t; g_k < {q.k}; g_k += {THREADS})",
        f"        g_part += g_x[g_k] * dn_dq_{q.weight_dtype.value}({q.weight}, {j} * {q.k}LL + g_k);",
        f"    __shared__ float g_sum[{THREADS}];",
        "    g_sum[g_t] = g_part;",
        "    __syncthreads();",
        f"    for (int g_s = {THREADS // 2}; g_s > 0; g_s >>= 1) {{",
        "        if (g_t < g_s) g_sum[g_t] += g_sum[g_t + g_s];",
        "        __syncthreads();",
        "    }",
        "    if (g_t != 0) return;",
        "    const float acc = g_sum[0];"]
    lines += r.stmts(q.epilogue_lets, "    ")
    value = r.store_value(r.expr(q.epilogue), q.epilogue.dtype, r.buffer_dtype(q.out))
    lines += [f"    {q.out}[{i} * {q.n} + {j}] = {value};", "}"]
    return RenderedKernel(r.kernel.name, "\n".join(lines), Blocks((q.m, q.n), THREADS))
