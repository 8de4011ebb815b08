"""OpenCL C from the kernel IR: the C backend's C-style renderer, with OpenCL's spellings and a grid.

What differs from C, and nothing else, is here: the op table (OpenCL's built-in math), buffer
parameters in `__global` memory, integer literals, and how the loop nest meets the hardware.
A kernel's leading perfectly nested loops become the grid: one work-item per output element of
an element-wise nest, one per row where a row's reductions sit between the loops (a softmax or
a layer norm: each work-item runs its row's reductions and its element loop in order). Loops
below the grid run inside the work-item. A `Gemm` is a local-memory tiled kernel of its own
(`dnet.backends.opencl.gemm`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from dnet.backends.c.renderer import CRenderer, STORAGE, c_name, store
from dnet.core.dtypes import DType
from dnet.graph.ops import Op
from dnet.kernel.ir import Gemm, Index, IndexLet, Kernel, Let, Loop, QMatmul, Stmt, Unary

# one table from op to OpenCL C: float ops (computed in f32) and integer ops
UNARY_F = {Op.NEG: "(-{})", Op.EXP: "exp({})", Op.LOG: "log({})", Op.SQRT: "sqrt({})",
           Op.RECIP: "(1.0f / {})", Op.TANH: "tanh({})", Op.ERF: "erf({})", Op.SIN: "sin({})",
           Op.COS: "cos({})", Op.ABS: "fabs({})", Op.FLOOR: "floor({})"}
UNARY_I = {Op.NEG: "(-{})", Op.ABS: "({0} < 0 ? -{0} : {0})", Op.NOT: "(!{})"}
BINARY_F = {Op.ADD: "({} + {})", Op.SUB: "({} - {})", Op.MUL: "({} * {})", Op.DIV: "({} / {})",
            Op.POW: "pow({}, {})", Op.MAX: "dn_maxf({}, {})", Op.MIN: "dn_minf({}, {})", Op.MOD: "dn_modf({}, {})"}
BINARY_I = {Op.ADD: "({} + {})", Op.SUB: "({} - {})", Op.MUL: "({} * {})", Op.DIV: "dn_floordiv({}, {})",
            Op.POW: "dn_ipow({}, {})", Op.MAX: "({0} > {1} ? {0} : {1})", Op.MIN: "({0} < {1} ? {0} : {1})",
            Op.MOD: "dn_mod({}, {})", Op.AND: "({} && {})", Op.OR: "({} || {})"}
_COMPARE = {Op.EQ: "==", Op.NE: "!=", Op.LT: "<", Op.LE: "<="}
_CHEAP = (Let, IndexLet)      # statements every work-item of a grid may repeat


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


# Chosen per device type at run time (measured on PoCL, 128x384 @ 384x1536: 4x4 items of 8x8 results
# 21 GFLOP/s, 8x8 of 8x8 13, 16x16 of 4x4 3: a CPU driver runs a group's items as loops, and
# small groups with much work each suit it). A GPU wants many items per group (a warp is 32).
CPU_GEMM = GemmShape(threads=4, work=8)
GPU_GEMM = GemmShape(threads=16, work=4)


@dataclass(frozen=True)
class RenderedKernel:
    name: str
    source: str
    launch: Launch


class OpenCLRenderer(CRenderer):
    """The C renderer with OpenCL C's spellings; `render_opencl` maps the loop nest onto a grid."""

    def __init__(self, kernel: Kernel, gemm_shape: GemmShape = GPU_GEMM):
        super().__init__(kernel)
        self.gemm_shape = gemm_shape

    # -- the dialect: literals, op table, parameters ------------------------------------
    def index(self, x) -> str:
        if isinstance(x, int):
            return f"{x}L" if abs(x) > 2**31 - 1 else str(x)
        return super().index(x)

    def _unary(self, e: Unary) -> str:
        x = self.expr(e.x)
        if e.op is Op.NOT:
            return f"(!{x})"
        if e.op is Op.NEG and e.dtype is DType.BOOL:
            return x
        table = UNARY_F if e.dtype.is_float else UNARY_I
        return self._round(table[e.op].format(x), e.dtype)

    def _binary(self, e) -> str:
        a, b = self.expr(e.a), self.expr(e.b)
        if e.op in _COMPARE:
            return f"({a} {_COMPARE[e.op]} {b})"
        if e.op in (Op.AND, Op.OR) or e.dtype is DType.BOOL:
            return super()._binary(e)
        table = BINARY_F if e.dtype.is_float else BINARY_I
        return self._round(table[e.op].format(a, b), e.dtype)

    def _param_type(self, p) -> str:
        return f"__global {'' if p.output else 'const '}{STORAGE[p.dtype]}* restrict"

    def loop(self, s: Loop, pad: str) -> list[str]:
        """Loops below the grid run in order inside one work-item."""
        out = [f"{pad}for (int64_t {s.var} = 0; {s.var} < {self.index(s.extent)}; ++{s.var}) {{"]
        out += self.stmts(s.body, pad + "    ")
        out.append(f"{pad}}}")
        return out

    def reduce(self, s, pad: str) -> list[str]:
        # the C form, less its OpenMP SIMD hints (a work-item's loop is scalar; the grid is the parallelism)
        return [line for line in super().reduce(s, pad) if not line.lstrip().startswith("#pragma")]

    def stmt(self, s: Stmt, pad: str) -> list[str]:
        if isinstance(s, (Gemm, QMatmul)):
            raise TypeError(f"a {type(s).__name__} is a kernel of its own, not a statement")   # see render_opencl
        return super().stmt(s, pad)

    # -- whole kernels ------------------------------------------------------------------
    def header(self, attributes: str = "") -> list[str]:
        """The kernel's signature and first lines. Every buffer comes with an element offset (`p0_at`):
        the runtime binds intermediates as places in one arena buffer, as the memory plan lays them."""
        params = [f"{self._param_type(p)} {p.name}, const int64_t {p.name}_at" for p in self.kernel.params]
        params += [f"const int64_t {c_name(d)}" for d in self.kernel.dims]
        return ([f"__kernel {attributes}void {self.kernel.name}({', '.join(params)}) {{"]
                + [f"    {p.name} += {p.name}_at;" for p in self.kernel.params])

    def render_opencl(self) -> RenderedKernel:
        body = self.kernel.body
        if len(body) == 1 and isinstance(body[0], Gemm):
            from dnet.backends.opencl.gemm import render_gemm_kernel

            return render_gemm_kernel(self, body[0])
        if any(isinstance(s, QMatmul) for s in body):
            from dnet.backends.opencl.qmatmul import render_qmatmul_kernel

            return render_qmatmul_kernel(self, next(s for s in body if isinstance(s, QMatmul)))
        loops, levels = grid_of(body)
        extents = tuple(l.extent for l in loops)
        lines = self.header() + ["    const int64_t g_id = (int64_t)get_global_id(0);"]
        total = " * ".join(self.index(e) for e in extents) or "1"
        lines.append(f"    if (g_id >= {total}) return;")
        stride = "1"
        for loop in reversed(loops):   # the innermost loop varies fastest between neighbouring work-items
            lines.append(f"    const int64_t {loop.var} = (g_id / ({stride})) % ({self.index(loop.extent)});")
            stride = f"{stride} * {self.index(loop.extent)}"
        for level in levels:
            lines += self.stmts(level, "    ")
        lines.append("}")
        return RenderedKernel(self.kernel.name, "\n".join(lines), Grid(extents))


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


__all__ = ["OpenCLRenderer", "RenderedKernel", "GemmShape", "CPU_GEMM", "GPU_GEMM", "Grid", "Tiles", "render_kernel", "grid_of", "store"]
