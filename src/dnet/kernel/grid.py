"""A GPU target's kernel pass: a kernel's leading parallel loops become grid loops (`GpuLoop`, level "global").

A loop-nest kernel's outer loops are its independent work (`Loop.parallel` marks them for CPU
threads). On a GPU each point of them is one work-item: `map_to_grid` turns up to three leading
perfectly nested loops (only cheap lets between them) into "global" grid loops, innermost on axis
0 so neighbouring work-items touch neighbouring elements; the renderer guards each against the
grid's round-up, and `launch_grid` gives the launch's global and work-group sizes for a binding of
the symbols. Kernels whose work is a template (`Gemm`, `QMatmul`) are left alone: a GPU dialect
renders those as kernels of their own (OpenCL's tiled matmul).

The result goes through `verify.checked` like every kernel pass.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping

from dnet.core.shapes import substitute
from dnet.kernel.ir import Gemm, GpuLoop, IndexLet, Kernel, Let, Loop, QMatmul
from dnet.kernel.target import GpuTarget
from dnet.kernel.verify import checked

MAX_AXES = 3
_CHEAP = (Let, IndexLet)     # what every work-item may repeat: a few index or value computations


def map_to_grid(kernel: Kernel, target: GpuTarget) -> Kernel:
    """`kernel` with its leading parallel loops as "global" grid loops (unchanged where it has none)."""
    if any(isinstance(s, (Gemm, QMatmul)) for s in kernel.body):
        return kernel
    body = _map(kernel.body, _grid_depth(kernel.body))
    return checked("map_to_grid", replace(kernel, body=body))


def _grid_depth(body: tuple) -> int:
    """How many leading loops form the grid: perfectly nested (cheap lets allowed between), at most 3."""
    depth, current = 0, body
    while depth < MAX_AXES and current and isinstance(current[-1], Loop) \
            and all(isinstance(s, _CHEAP) for s in current[:-1]):
        depth += 1
        current = current[-1].body
    return depth


def _map(body: tuple, depth: int) -> tuple:
    if depth == 0:
        return body
    loop = body[-1]
    inner = _map(loop.body, depth - 1)
    return body[:-1] + (GpuLoop(loop.var, loop.extent, "global", depth - 1, inner),)


def launch_grid(kernel: Kernel, env: Mapping[str, int], target: GpuTarget) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(global size, work-group size) per axis of `kernel`'s grid for symbol values `env`: axis 0 gets the
    work-group's items (a whole number of SIMD widths), the others one; the global size rounds up to whole
    groups. A kernel with no grid is one work-item."""
    extents: dict[int, int] = {}
    current = kernel.body
    while current and isinstance(current[-1], GpuLoop) and current[-1].level == "global":
        loop = current[-1]
        extents[loop.axis] = max(1, int(substitute(loop.extent, env)))
        current = loop.body
    if not extents:
        return (1,), (1,)
    axes = range(max(extents) + 1)
    local = tuple(target.work_group(extents[a]) if a == 0 else 1 for a in axes)
    global_size = tuple(-(-extents[a] // local[a]) * local[a] for a in axes)
    return global_size, local
