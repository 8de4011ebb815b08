"""OpenCL C from the kernel IR: the OpenCL dialect of `kernel.render.CStyleRenderer`, and its grid.

What is OpenCL's own is here: the op table (OpenCL's built-in math), buffers in `__global`
memory, 64-bit literals, the grid, local memory and barriers. A kernel's leading perfectly
nested loops become the grid (flattened to one dimension): one work-item per output element of
an element-wise nest, one per row where a row's reductions sit between the loops (a softmax or
a layer norm: each work-item runs its row's reductions and its element loop in order). Loops
below the grid run inside the work-item. A `Gemm` is a local-memory tiled kernel of its own
(`backends/opencl/gemm.py`); a `QMatmul` one work-item per result (`backends/opencl/quant.py`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping, Union

from dnet.core.dtypes import DType
from dnet.graph.ops import Op
from dnet.kernel.ir import Gemm, Index, IndexLet, Kernel, Let, Loop, QMatmul
from dnet.kernel.render import CStyleRenderer

_CHEAP = (Let, IndexLet)      # statements every work-item of a grid may repeat
_GRID_INDEX = {"global": "get_global_id", "local": "get_local_id", "group": "get_group_id"}


@dataclass(frozen=True)
class Grid:
    """One work-item per point of `extents` (flattened to one dimension)."""
    extents: tuple[Index, ...]


@dataclass(frozen=True)
class Tiles:
    """A tiled matmul: work-groups of tile x tile items, each group a block x block part of the
    (m, n) result, one grid layer per batch item."""
    batch: tuple[Index, ...]
    m: Index
    n: Index
    tile: int
    block: int


Launch = Union[Grid, Tiles]


@dataclass(frozen=True)
class GemmShape:
    """A tiled matmul's work-group: threads x threads work-items, each computing work x work results."""
    threads: int
    work: int


# Chosen per device type at run time (measured on PoCL, 128x384 @ 384x1536, scalar accumulators: 4x4
# items of 8x8 results 21 GFLOP/s, 8x8 of 8x8 13, 16x16 of 4x4 3: a CPU driver runs a group's items as
# loops, and small groups with much work each suit it; 4x4 of 8x8 with vector accumulators 45, of 16x16
# perhaps more but the shared machine would not say). A GPU wants many items per group (a warp is 32).
CPU_GEMM = GemmShape(threads=4, work=8)
GPU_GEMM = GemmShape(threads=16, work=4)


@dataclass(frozen=True)
class RenderedKernel:
    name: str
    source: str
    launch: Launch


class OpenCLRenderer(CStyleRenderer):
    backend = "opencl"
    dialect = "opencl"
    unary_float: ClassVar[Mapping[Op, str]] = {
        Op.NEG: "(-{})", Op.EXP: "exp({})", Op.LOG: "log({})", Op.SQRT: "sqrt({})", Op.RECIP: "(1.0f / {})",
        Op.TANH: "tanh({})", Op.ERF: "erf({})", Op.SIN: "sin({})", Op.COS: "cos({})", Op.ABS: "fabs({})",
        Op.FLOOR: "floor({})"}
    binary_float: ClassVar[Mapping[Op, str]] = {
        **CStyleRenderer.binary_float, Op.POW: "pow({}, {})"}
    kernel_prefix = "__kernel void"
    buffer_prefix = "__global"
    local_prefix = "__local"
    barrier_code = "barrier(CLK_LOCAL_MEM_FENCE);"
    float_fmod = "fmod"

    def __init__(self, kernel: Kernel, gemm_shape: GemmShape = GPU_GEMM):
        super().__init__(kernel)
        self.gemm_shape = gemm_shape

    # -- the dialect's spellings ---------------------------------------------------------
    def int_literal(self, x: int) -> str:
        return f"{x}L" if abs(x) > 2**31 - 1 else str(x)       # long is 64 bits in OpenCL C

    def grid_index(self, level: str, axis: int) -> str:
        return f"{_GRID_INDEX[level]}({axis})"

    def load(self, buffer: str, index: str, dtype: DType) -> str:
        if dtype.is_block:                  # one element dequantized (backends/opencl/quant.py)
            return f"dn_dq_{dtype.value}({buffer}, {index})"
        return super().load(buffer, index, dtype)

    def qmatmul(self, s: QMatmul, pad: str) -> list[str]:
        raise self.missing("QMatmul inside a loop nest")      # always a kernel of its own: see render_opencl

    def gemm(self, s: Gemm, pad: str) -> list[str]:
        raise self.missing("Gemm inside a loop nest")

    # -- whole kernels ------------------------------------------------------------------
    def header(self, attributes: str = "") -> list[str]:
        """The kernel's signature and first lines. Every buffer comes with an element offset (`p0_at`):
        the runtime binds intermediates as places in one arena buffer, as the memory plan lays them."""
        params = [f"{self.param_type(p)} {p.name}, const long {p.name}_at" for p in self.kernel.params]
        params += [f"const long {self.dim_name(d)}" for d in self.kernel.dims]
        return ([f"__kernel {attributes}void {self.kernel.name}({', '.join(params)}) {{"]
                + [f"    {p.name} += {p.name}_at;" for p in self.kernel.params])

    def render_opencl(self) -> RenderedKernel:
        body = self.kernel.body
        if len(body) == 1 and isinstance(body[0], Gemm):
            from dnet.backends.opencl.gemm import render_gemm_kernel

            return render_gemm_kernel(self, body[0])
        if len(body) == 1 and isinstance(body[0], QMatmul):
            from dnet.backends.opencl.quant import render_qmatmul_kernel

            return render_qmatmul_kernel(self, body[0])
        loops, levels = grid_of(body)
        extents = tuple(l.extent for l in loops)
        total = " * ".join(self.index(e) for e in extents) or "1"
        lines = self.header() + [f"    const int64_t g_id = (int64_t){self.grid_index('global', 0)};",
                                 f"    if (g_id >= {total}) return;   /* the grid is rounded up to whole groups */"]
        stride = "1"
        for loop in reversed(loops):   # the innermost loop varies fastest between neighbouring work-items
            lines.append(f"    const int64_t {loop.var} = (g_id / ({stride})) % ({self.index(loop.extent)});")
            stride = f"{stride} * {self.index(loop.extent)}"
        for level in levels:
            lines += self.stmts(level, "    ")
        lines.append("}")
        return RenderedKernel(self.kernel.name, "\n".join(lines), Grid(extents))

    def render(self) -> str:
        return self.render_opencl().source


def grid_of(body: tuple) -> tuple[list[Loop], list[tuple]]:
    """The loops mapped to work-items, and the statements each work-item runs, level by level.

    A loop joins the grid while everything before it at its level is a cheap let: a reduction
    there would be repeated by every work-item of the loops below it, so the grid stops above.
    """
    loops: list[Loop] = []
    levels: list[tuple] = []
    current = body
    while current and isinstance(current[-1], Loop) and all(isinstance(s, _CHEAP) for s in current[:-1]):
        levels.append(current[:-1])
        loops.append(current[-1])
        current = current[-1].body
    levels.append(current)
    return loops, levels


def render_kernel(kernel: Kernel, gemm_shape: GemmShape = GPU_GEMM) -> RenderedKernel:
    return OpenCLRenderer(kernel, gemm_shape).render_opencl()
