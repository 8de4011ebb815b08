"""GGUF block formats in CUDA C: one element decoded (`dn_dq_<format>`), and a `QMatmul` kernel.

A weight in a block dtype stays in its blocks on the device (never expanded). The element
decoders are the OpenCL backend's text (`backends/opencl/quant.FORMATS`, gguf's reference
arithmetic in plain C) with OpenCL's `__global` address space dropped; the two helpers they call
are written here for CUDA. A `QMatmul` (x @ w.T against such a weight) is one thread per result,
walking its weight row element by element, then the epilogue and one store.
"""
from __future__ import annotations

from typing import Iterable

from dnet.backends.opencl.quant import FORMATS
from dnet.backends.opencl.renderer import Grid, RenderedKernel
from dnet.core.dtypes import DType
from dnet.kernel.ir import QMatmul

from dnet.backends.cuda.renderer import CUDARenderer

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
    """out[i, j] = epilogue(sum_k a[i, k] * w[j, k]): one thread per (i, j), j fastest."""
    i, j = q.vars
    ix = r.index
    x_row = f"{q.a.buffer} + {ix(q.a.offset)} + {i} * {ix(q.a.row_stride)}"
    lines = r.header() + [f"    const int64_t g_id = {r.grid_index('global', 0)};",
                          f"    if (g_id >= {ix(q.m)} * {q.n}) return;",
                          f"    const int64_t {i} = g_id / {q.n}, {j} = g_id % {q.n};",
                          f"    const float* g_x = {x_row};",
                          "    float acc = 0.0f;",
                          f"    for (int64_t g_k = 0; g_k < {q.k}; ++g_k)",
                          f"        acc += g_x[g_k] * dn_dq_{q.weight_dtype.value}({q.weight}, {j} * {q.k}LL + g_k);"]
    lines += r.stmts(q.epilogue_lets, "    ")
    value = r.store_value(r.expr(q.epilogue), q.epilogue.dtype, r.buffer_dtype(q.out))
    lines += [f"    {q.out}[{i} * {q.n} + {j}] = {value};", "}"]
    return RenderedKernel(r.kernel.name, "\n".join(lines), Grid((q.m, q.n)))
