"""Per-target scheduling hooks: what the scheduler and the kernel passes may ask of the hardware.

A `Target` is the one object kernel scheduling reads hardware facts from (never a backend): its
`kind` ("cpu" or "gpu"), a `fingerprint` for caches, and the choices that depend on it.

- `CpuTarget` (a `hardware.Host`): the GEMM's register and cache tiles (`kernel.gemm.choose_tile`),
  the threads its parallel loops run on, and which grouped convolutions become Gemms. Parallel loops
  are `Loop(parallel=n)` nests that the C dialect runs on its thread pool.
- `GpuTarget` (facts a GPU backend reads from its driver: work-group limits, local memory, SIMD
  width, compute units): the work-group size of a grid, the grid itself, and the side of the
  square tiles a matmul keeps in local memory. `kernel.grid.map_to_grid` uses it to turn a kernel's
  parallel loops into `GpuLoop`s; kernels may use `LocalAlloc` and `Barrier` (`kernel.verify`
  checks where barriers may go).

`as_target(x)` accepts a Host (what callers passed before targets existed) or a Target.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Union

from dnet.hardware import Host, detect

if TYPE_CHECKING:
    from dnet.kernel.ir import GemmTile


class Target(Protocol):
    kind: str                  # "cpu" or "gpu"

    def fingerprint(self) -> str: ...

    def gemm_tile(self) -> "GemmTile": ...


@dataclass(frozen=True)
class CpuTarget:
    """A CPU: tiles from its vector width, registers and caches; parallel loops on `threads` threads."""
    host: Host
    threads: int | None = None      # None: every core this process may run on, read when it runs
    # output channels per group a grouped convolution needs to become a Gemm (`kernel.gemm.is_fast_conv`):
    # 8 where the Gemm gathers im2col panels (LLVM); 1 for the C backend's direct convolutions
    conv_group_rows: int = 8
    # which 3x3 stride-1 convolutions are Winograd Gemms (`kernel.winograd.choose`: "auto", "off", "2", "4");
    # "off" where the backend has no Winograd kernel (only the C backend renders one)
    conv_winograd: str = "off"
    kind = "cpu"

    def fingerprint(self) -> str:
        return self.host.fingerprint()

    def gemm_tile(self) -> "GemmTile":
        from dnet.kernel.gemm import choose_tile

        return choose_tile(self.host)

    def thread_count(self) -> int:
        return self.threads or self.host.cores


@dataclass(frozen=True)
class GpuTarget:
    """A GPU (or any OpenCL/CUDA device): the limits a grid must respect.

    `max_work_group`: work-items per work-group at most; `local_memory`: bytes a work-group may
    share; `simd_width`: work-items that run in lock step (a warp, a wavefront; a CPU OpenCL
    driver: 1 or its vector width); `compute_units`: how many work-groups run at once.
    """
    name: str
    max_work_group: int = 256
    local_memory: int = 32 * 1024
    simd_width: int = 32
    compute_units: int = 1
    kind = "gpu"

    def fingerprint(self) -> str:
        return f"gpu|{self.name}|{self.max_work_group}|{self.local_memory}|{self.simd_width}"

    def gemm_tile(self) -> "GemmTile":
        """A Gemm statement still carries a CPU tile (its packed operands use `nr`); a GPU dialect
        renders the Gemm with `matmul_tile()` instead."""
        from dnet.kernel.gemm import choose_tile

        return choose_tile(detect())

    def work_group(self, items: int) -> int:
        """Work-items per group for a grid of `items`: a whole number of SIMD widths, at most
        `max_work_group`, and no larger than the items rounded up to one SIMD width."""
        simd = max(1, self.simd_width)
        wanted = min(self.max_work_group, max(simd, 256 // simd * simd))
        return max(1, min(wanted, -(-max(1, items) // simd) * simd, self.max_work_group))

    def grid(self, items: int) -> tuple[int, int]:
        """(work-groups, work-items per group) covering `items` (the last group partly idle)."""
        local = self.work_group(items)
        return -(-max(1, items) // local), local

    def matmul_tile(self, itemsize: int = 4) -> int:
        """The side t of the square tiles a local-memory matmul keeps: a power of two with one t x t
        work-group (t*t <= max_work_group) and two t x t tiles of `itemsize` in half the local memory."""
        t = 1
        while (2 * t) ** 2 <= self.max_work_group and 2 * (2 * t) ** 2 * itemsize <= self.local_memory // 2:
            t *= 2
        return t


AnyTarget = Union[CpuTarget, GpuTarget]


def as_target(x: "Host | AnyTarget | None") -> AnyTarget:
    """A Target from a Host (a CPU), a Target, or None (this process's CPU)."""
    if x is None:
        return CpuTarget(detect())
    if isinstance(x, Host):
        return CpuTarget(x)
    return x
