"""What a device is: an allocator, its renderer(s) and a program loader.

A backend that compiles kernels (C today; LLVM, OpenCL and CUDA next) is assembled from three
parts, and the generic program execution (`program.executor.ProgramExecutor`) drives them:

- an `Allocator`: where the device's buffers live. It turns host arrays into the handles its
  kernels read (a host device: the array's address, no copy; a GPU: an upload), gives the arena
  that every intermediate of a run is placed in (`program.memory.plan_arena`), and brings outputs
  and states back to the host after a run.
- one or more renderers (`kernel.render.Renderer` subclasses, one op -> code table per dialect)
  that turn kernel IR into the device's source text.
- a `ProgramLoader`: compiles (or loads from a cache) the rendered source of one program and
  returns a `Launcher`, which runs the program's segments (`program.instructions.segments`: the
  launches between two transfers, run as one call) and single launches (for profiling).

`HostAllocator` is the allocator of every device whose kernels read host memory (C, LLVM).
A `Device` bundles the three under a name with the dtypes it claims and the ops it declares
unsupported; `backends.registry.register_device` registers one beside its backend (the
`prepare(graph, **options) -> Runner` behind `dnet.compile(..., target=name)`), and
`backends.registry.device(name)` finds it.

How a new backend plugs in (an OpenCL one, say):
1. subclass `kernel.render.CStyleRenderer` (or `Renderer`) for its dialect: the op tables and the
   few spellings that differ (kernel signature, grid indices, barriers, local memory);
2. write an `Allocator` for its memory (device buffers; `upload`/`download` around a run);
3. write a `ProgramLoader` whose `load(source, program)` builds the source and returns a `Launcher`;
4. build the program with `program.build.build_program(graph, target, packer)`, where `target` is
   its `kernel.target` (tiles and threads for a CPU; grid and work-groups for a GPU) and `packer`
   its weight layout (or None), and run it with `ProgramExecutor(program, weights, allocator,
   launcher)`: input binding, arena plans, segments, transfers and state come for free;
5. register the backend (`registry.register`) and its Device (`registry.register_device`): the op x
   backend coverage test (tests/backends/test_op_coverage.py) then runs every op of the graph IR at
   every dtype the device claims against the numpy reference; an op it cannot run fails the test
   unless `Device.unsupported` says why (the reason is printed).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from dnet.core.dtypes import DType
from dnet.graph.ops import Op
from dnet.program.instructions import Program
from dnet.program.memory import ALIGN


class Allocator(Protocol):
    """Where a device's buffers live, and how host arrays get there and back."""

    def table(self, size: int) -> Any:
        """An empty table of `size` buffer handles: what a launch reads its buffers from."""

    def copy_table(self, table: Any) -> Any:
        """A copy of `table`, filled in per run (weights stay put between runs)."""

    def put(self, table: Any, buffer: int, handle: Any) -> None:
        """Buffer `buffer` of the program is `handle`."""

    def get(self, table: Any, buffer: int) -> Any:
        """The handle of buffer `buffer` in `table`."""

    def arena(self, nbytes: int) -> Any:
        """A handle to `nbytes` (or more) of device memory aligned to ALIGN, reused between runs."""

    def at(self, arena: Any, offset: int) -> Any:
        """The handle of the buffer placed `offset` bytes into `arena`."""

    def to_device(self, array: np.ndarray, writable: bool) -> Any:
        """A handle on `array`'s data for kernels to read (and write, when `writable`: a state or an output)."""

    def to_host(self, handle: Any, array: np.ndarray) -> None:
        """After a run: the device's bytes of `handle` into `array` (where they are not the same memory)."""

    def view(self, handle: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The buffer as a host array, for a transfer (send reads it, receive fills it)."""

    def received(self, handle: Any, array: np.ndarray) -> None:
        """A receive filled `array` (from `view`): make the device's copy of `handle` the same."""


class Launcher(Protocol):
    """A loaded program: runs its segments (launches between transfers) and its single launches."""

    def run_segment(self, index: int, table: Any, dims: np.ndarray) -> None:
        """Run segment `index` (an even index of `segments(program)`) on the buffers of `table`."""

    def run_launch(self, index: int, table: Any, dims: np.ndarray) -> None:
        """Run the program's `index`-th Launch alone (profiling times launches one by one)."""


class ProgramLoader(Protocol):
    """Turns a program's rendered source into a Launcher (compiling, or loading from a cache)."""

    def load(self, source: str, program: Program) -> Launcher: ...


@dataclass(frozen=True)
class Device:
    """A device: its allocator, the renderer of each dialect it compiles, its program loader, and what
    it claims to run.

    `allocator()` makes the allocator of one loaded program (each owns its arena); `renderers` maps a
    dialect name ("c", "opencl", ...) to a `kernel.render.Renderer` subclass; `loader` turns rendered
    source into a Launcher. `dtypes` are the dtypes it runs (block formats included); `unsupported`
    maps an op, or an (op, dtype) pair, to why it does not run it: the op x backend coverage test
    runs every other op at every claimed dtype against the numpy reference, and prints these reasons.
    `available()` says at run time why this machine cannot use it (no compiler, no driver), or None.
    """
    name: str
    allocator: Callable[[], Allocator]
    renderers: Mapping[str, type]
    loader: ProgramLoader | None
    dtypes: frozenset[DType]
    unsupported: Mapping[Op | tuple[Op, DType], str] = field(default_factory=dict)
    available: Callable[[], str | None] = field(default=lambda: None)

    def reason_unsupported(self, op: Op, dtype: DType) -> str | None:
        """Why this device does not run `op` at `dtype`, if it says so."""
        return self.unsupported.get((op, dtype)) or self.unsupported.get(op)


class HostAllocator:
    """Buffers in host memory: a handle is an address, a table an array of uint64 addresses.

    Inputs, weights, states and outputs are the caller's numpy arrays themselves (no copy);
    the arena is one numpy byte array, grown when a run needs more.
    """

    def __init__(self) -> None:
        self._arena = np.empty(0, np.uint8)

    def table(self, size: int) -> np.ndarray:
        return np.zeros(size, np.uint64)

    def copy_table(self, table: np.ndarray) -> np.ndarray:
        return table.copy()

    def put(self, table: np.ndarray, buffer: int, handle: int) -> None:
        table[buffer] = handle

    def get(self, table: np.ndarray, buffer: int) -> int:
        return int(table[buffer])

    def arena(self, nbytes: int) -> int:
        if self._arena.nbytes < nbytes + ALIGN:
            self._arena = np.empty(nbytes + ALIGN, np.uint8)
        base = self._arena.ctypes.data
        return base + (-base % ALIGN)

    def at(self, arena: int, offset: int) -> int:
        return arena + offset

    def to_device(self, array: np.ndarray, writable: bool) -> int:
        return array.ctypes.data

    def to_host(self, handle: int, array: np.ndarray) -> None:
        pass                                  # the kernels wrote the array itself

    def view(self, handle: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        raw = (ctypes.c_char * size).from_address(int(handle))
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def received(self, handle: int, array: np.ndarray) -> None:
        pass                                  # the view is the buffer itself
