"""CUDA C from the kernel IR: the CUDA dialect of `kernel.render.CStyleRenderer`.

What is CUDA's own is here: the op table (CUDA's single-precision math: expf, tanhf, erff, ...),
`extern "C" __global__` kernels (unmangled names for cuModuleGetFunction), `__restrict__`
pointers, `__shared__` memory, `__syncthreads()`, and the grid spelled with blockIdx/threadIdx.
Kernels receive device pointers with their buffer's offset already added, so no offset
parameters are needed (OpenCL's buffers, unlike CUDA's pointers, cannot be offset on the host).

The grid is the OpenCL backend's (`backends/opencl/renderer.grid_of`): a kernel's leading
perfectly nested loops become threads, flattened to one dimension, innermost fastest; a loop
joins the grid only while everything before it at its level is a cheap `let`, so a softmax or
a layer norm is one thread per row. A `Gemm` is a shared-memory tiled kernel of its own
(`backends/cuda/gemm.py`), a `QMatmul` a thread block per result (`backends/cuda/quant.py`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

from dnet.backends.opencl.renderer import GPU_GEMM, GemmShape, Grid, RenderedKernel, grid_of
from dnet.core.dtypes import DType
from dnet.graph.ops import Op
from dnet.kernel.ir import Gemm, Kernel, QMatmul
from dnet.kernel.render import CStyleRenderer

_AXES = "xyz"


@dataclass(frozen=True)
class Blocks:
    """A thread block of `threads` threads per point of `extents` (flattened): work shared by a block, as a
    `QMatmul`'s dot product. (The other launches are the OpenCL backend's `Grid` and `Tiles`.)"""
    extents: tuple
    threads: int

# CUDA's built-in indices per grid level ("global" is the thread's index in the whole grid)
_GRID_INDEX = {"global": "((int64_t)blockIdx.{0} * blockDim.{0} + threadIdx.{0})",
               "local": "threadIdx.{0}", "group": "blockIdx.{0}"}


class CUDARenderer(CStyleRenderer):
    backend = "cuda"
    dialect = "cuda"
    unary_float: ClassVar[Mapping[Op, str]] = {
        Op.NEG: "(-{})", Op.EXP: "expf({})", Op.LOG: "logf({})", Op.SQRT: "sqrtf({})", Op.RECIP: "(1.0f / {})",
        Op.TANH: "tanhf({})", Op.ERF: "erff({})", Op.SIN: "sinf({})", Op.COS: "cosf({})", Op.ABS: "fabsf({})",
        Op.FLOOR: "floorf({})"}
    kernel_prefix = 'extern "C" __global__ void'
    restrict = "__restrict__"
    local_prefix = "__shared__"
    barrier_code = "__syncthreads();"

    def __init__(self, kernel: Kernel, gemm_shape: GemmShape = GPU_GEMM):
        super().__init__(kernel)
        self.gemm_shape = gemm_shape

    def grid_index(self, level: str, axis: int) -> str:
        return _GRID_INDEX[level].format(_AXES[axis])

    def load(self, buffer: str, index: str, dtype: DType) -> str:
        if dtype.is_block:                  # one element decoded where it is read (backends/cuda/quant.py)
            return f"dn_dq_{dtype.value}({buffer}, {index})"
        return super().load(buffer, index, dtype)

    def qmatmul(self, s: QMatmul, pad: str) -> list[str]:
        raise self.missing("QMatmul inside a loop nest")      # always a kernel of its own: see render_cuda

    def gemm(self, s: Gemm, pad: str) -> list[str]:
        raise self.missing("Gemm inside a loop nest")

    def header(self, attributes: str = "") -> list[str]:
        """The kernel's signature line (`attributes`: e.g. `__launch_bounds__(256)`)."""
        params = [f"{self.param_type(p)} {p.name}" for p in self.kernel.params]
        params += [f"const int64_t {self.dim_name(d)}" for d in self.kernel.dims]
        return [f'extern "C" __global__ void {attributes}{self.kernel.name}({", ".join(params)}) {{']

    def render_cuda(self) -> RenderedKernel:
        body = self.kernel.body
        if len(body) == 1 and isinstance(body[0], Gemm):
            from dnet.backends.cuda.gemm import render_gemm_kernel

            return render_gemm_kernel(self, body[0])
        if len(body) == 1 and isinstance(body[0], QMatmul):
            from dnet.backends.cuda.quant import render_qmatmul_kernel

            return render_qmatmul_kernel(self, body[0])
        loops, levels = grid_of(body)
        extents = tuple(l.extent for l in loops)
        total = " * ".join(self.index(e) for e in extents) or "1"
        lines = self.header() + [f"    const int64_t g_id = {self.grid_index('global', 0)};",
                                 f"    if (g_id >= {total}) return;   /* the grid is rounded up to whole blocks */"]
        stride = "1"
        for loop in reversed(loops):   # the innermost loop varies fastest between neighbouring threads
            lines.append(f"    const int64_t {loop.var} = (g_id / ({stride})) % ({self.index(loop.extent)});")
            stride = f"{stride} * {self.index(loop.extent)}"
        for level in levels:
            lines += self.stmts(level, "    ")
        lines.append("}")
        return RenderedKernel(self.kernel.name, "\n".join(lines), Grid(extents))

    def render(self) -> str:
        return self.render_cuda().source


def render_kernel(kernel: Kernel, gemm_shape: GemmShape = GPU_GEMM) -> RenderedKernel:
    return CUDARenderer(kernel, gemm_shape).render_cuda()
