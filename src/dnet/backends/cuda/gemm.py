"""A `Gemm` in CUDA C: a shared-memory tiled, register-blocked kernel.

A thread block of t x t threads computes a (t*w) x (t*w) block of the result; each thread keeps
w x w results in registers (rows ti, ti + t, ...; columns tj*w .. tj*w + w - 1). Along k the
block walks DEPTH-wide steps: its threads together copy a's (t*w) x DEPTH block and b's
DEPTH x (t*w) block into shared memory, `__syncthreads()`, each accumulates its results from
shared memory, and synchronise again before the next step overwrites the blocks. Rows, columns
and k past the matrix load zeros, so any m, n and k work; the bounds test comes after the last
barrier, which every thread of a block must reach. blockIdx.z runs the batch.

The operands are read as the OpenCL backend reads them (`backends/opencl/gemm.py`: strided,
packed panels, int8 panels with scales, im2col, the int8-dynamic and bf16 layouts of
`program/panels.py`): those element expressions are plain C, so both GPU dialects share them.
The epilogue (bias, GELU, a residual add) is applied to each result before its one store.
"""
from __future__ import annotations

from dnet.backends.opencl.gemm import DEPTH, _batch_decl, _element_a, _element_b
from dnet.backends.opencl.renderer import RenderedKernel, Tiles
from dnet.kernel.ir import Gemm

from dnet.backends.cuda.renderer import CUDARenderer


def render_gemm_kernel(r: CUDARenderer, g: Gemm) -> RenderedKernel:
    ts, work, ix = r.gemm_shape.threads, r.gemm_shape.work, r.index   # ts x ts threads, work x work results each
    block, threads = ts * work, ts * ts      # the block of the result one thread block computes
    loads = block * DEPTH // threads         # elements of each operand's block a thread loads per k step
    i, j = g.vars[-2], g.vars[-1]
    lines = r.header(f"__launch_bounds__({threads}) ") + [
        f"    const int64_t g_M = {ix(g.m)}, g_N = {ix(g.n)}, g_K = {ix(g.k)};",
        "    const int g_ti = (int)threadIdx.y, g_tj = (int)threadIdx.x;",
        f"    const int g_tid = g_ti * {ts} + g_tj;",
        f"    const int64_t g_row0 = (int64_t)blockIdx.y * {block}, g_col0 = (int64_t)blockIdx.x * {block};",
        "    const int64_t g_bb = (int64_t)blockIdx.z;"]
    lines += ["    " + x for x in _batch_decl(r, g)]
    lines += [f"    __shared__ float g_a[{DEPTH}][{block}];",
              f"    __shared__ float g_b[{DEPTH}][{block}];",
              f"    float g_acc[{work}][{work}];   /* fully unrolled below, so it lives in registers */",
              "    #pragma unroll",
              f"    for (int g_r = 0; g_r < {work}; ++g_r)",
              "        #pragma unroll",
              f"        for (int g_c = 0; g_c < {work}; ++g_c) g_acc[g_r][g_c] = 0.0f;",
              f"    const int g_steps = (int)((g_K + {DEPTH - 1}) / {DEPTH});",
              "    for (int g_step = 0; g_step < g_steps; ++g_step) {",
              f"        const int64_t g_k0 = (int64_t)g_step * {DEPTH};",
              f"        for (int g_l = 0; g_l < {loads}; ++g_l) {{   /* a's block: {block} rows x {DEPTH} */",
              f"            const int g_f = g_tid + g_l * {threads}, g_kk = g_f % {DEPTH}, g_rr = g_f / {DEPTH};",
              "            const int64_t g_i = g_row0 + g_rr, g_k = g_k0 + g_kk;",
              f"            g_a[g_kk][g_rr] = g_i < g_M && g_k < g_K ? {_element_a(r, g.a, 'g_i', 'g_k')} : 0.0f;",
              "        }",
              f"        for (int g_l = 0; g_l < {loads}; ++g_l) {{   /* b's block: {DEPTH} x {block} columns */",
              f"            const int g_f = g_tid + g_l * {threads}, g_cc = g_f % {block}, g_kk = g_f / {block};",
              "            const int64_t g_j = g_col0 + g_cc, g_k = g_k0 + g_kk;",
              f"            g_b[g_kk][g_cc] = g_k < g_K && g_j < g_N ? {_element_b(r, g, 'g_k', 'g_j', block)} : 0.0f;",
              "        }",
              "        __syncthreads();",
              "        #pragma unroll",
              f"        for (int g_kk = 0; g_kk < {DEPTH}; ++g_kk) {{",
              "            #pragma unroll",
              f"            for (int g_r = 0; g_r < {work}; ++g_r) {{",
              f"                const float g_av = g_a[g_kk][g_ti + g_r * {ts}];",
              "                #pragma unroll",
              f"                for (int g_c = 0; g_c < {work}; ++g_c) g_acc[g_r][g_c] += g_av * g_b[g_kk][g_tj * {work} + g_c];",
              "            }",
              "        }",
              "        __syncthreads();",
              "    }",
              "    #pragma unroll",
              f"    for (int g_r = 0; g_r < {work}; ++g_r) {{",
              f"        const int64_t {i} = g_row0 + g_ti + g_r * {ts};",
              "        #pragma unroll",
              f"        for (int g_c = 0; g_c < {work}; ++g_c) {{",
              f"            const int64_t {j} = g_col0 + g_tj * {work} + g_c;",
              f"            if ({i} >= g_M || {j} >= g_N) continue;",
              "            const float acc = g_acc[g_r][g_c];"]
    lines += r.stmts(g.epilogue_lets, "            ")
    value = r.store_value(r.expr(g.epilogue), g.epilogue.dtype, r.buffer_dtype(g.out))
    lines += [f"            {g.out}[(g_bb * g_M + {i}) * g_N + {j}] = {value};", "        }", "    }", "}"]
    return RenderedKernel(r.kernel.name, "\n".join(lines), Tiles(g.batch, g.m, g.n, ts, block))
