"""Running a program on a CUDA device: its allocator and launcher for the generic executor.

`program.executor.ProgramExecutor` binds inputs, plans the arena, places buffers and runs the
segments; CUDA supplies where buffers live and how launches run, through the driver API:

- `CUDAAllocator`: a handle is a device address (an int). Weights, uploaded when the executor is
  made (before its first run), stay on the device until the allocator is collected. A run's inputs,
  states and outputs get device buffers that go back to a pool by size when the next run starts
  (so a decode loop does not call cuMemAlloc every token); intermediates are places in one arena
  allocation laid out by the memory plan (`at` is pointer arithmetic: CUDA pointers can be offset).
  Copies go on the device's one stream; `to_host` waits for it.
- `CUDALauncher`: the module loaded from NVRTC's image (`cuModuleLoadData`), one CUfunction per
  kernel, launches with `cuLaunchKernel` on the same stream in program order.
"""
from __future__ import annotations

import weakref
from typing import Any, Mapping

import numpy as np

from dnet.backends.cuda.platform import CudaDevice, check
from dnet.backends.cuda.renderer import Blocks
from dnet.backends.opencl.renderer import Grid, RenderedKernel, Tiles
from dnet.core.shapes import substitute
from dnet.errors import BackendError
from dnet.kernel.ir import Kernel
from dnet.program.instructions import Launch, Program, segments

MIN_BYTES = 256          # cuMemAlloc refuses 0 bytes; small buffers share this floor
MAX_GRID_YZ = 65535      # the driver's limit on gridDim.y and gridDim.z


def _free_all(device: CudaDevice, pointers: list[int]) -> None:
    # the caller's thread may have no current context (a finalizer runs anywhere); errors are ignored, as at exit
    device.driver.cuCtxSetCurrent(device.context)
    for p in pointers:
        device.driver.cuMemFree(device.driver.CUdeviceptr(p))


class CUDAAllocator:
    """Device memory for one loaded program; a table is a list of device addresses."""

    def __init__(self, device: CudaDevice):
        self.device = device
        self._owned: list[int] = []                 # every allocation, freed with the allocator
        self._free: dict[int, list[int]] = {}      # the last run's buffers, by size, for this run
        self._this_run: list[tuple[int, int]] = []
        self._running = False                      # set by the first arena(): uploads before it are weights
        self._arena, self._arena_bytes = 0, 0
        self._finalizer = weakref.finalize(self, _free_all, device, self._owned)

    def _alloc(self, nbytes: int) -> int:
        nbytes = max(nbytes, MIN_BYTES)
        pool = self._free.get(nbytes)
        return pool.pop() if pool else self._new(nbytes)

    def _new(self, nbytes: int) -> int:
        self.device.activate()
        pointer, = check(self.device.driver, self.device.driver.cuMemAlloc(nbytes), f"cuMemAlloc({nbytes})")
        self._owned.append(int(pointer))
        return int(pointer)

    def table(self, size: int) -> list:
        return [0] * size

    def copy_table(self, table: list) -> list:
        return list(table)

    def put(self, table: list, buffer: int, handle: int) -> None:
        table[buffer] = handle

    def get(self, table: list, buffer: int) -> int:
        return table[buffer]

    def arena(self, nbytes: int) -> int:
        # a run starts: the previous run's input and output buffers are free again, and those the previous
        # run did not reuse are given back (so varying shapes keep at most two runs' buffers)
        self._running = True
        stale = [p for pool in self._free.values() for p in pool]
        for p in stale:
            self._owned.remove(p)
        _free_all(self.device, stale)
        self._free = {}
        for size, pointer in self._this_run:
            self._free.setdefault(size, []).append(pointer)
        self._this_run.clear()
        if self._arena_bytes < nbytes:       # grown: the old arena's last use ended with the last to_host
            if self._arena:
                self._owned.remove(self._arena)
                _free_all(self.device, [self._arena])
            self._arena_bytes = max(nbytes, MIN_BYTES)
            self._arena = self._new(self._arena_bytes)
        return self._arena

    def at(self, arena: int, offset: int) -> int:
        return arena + offset

    def to_device(self, array: np.ndarray, writable: bool) -> int:
        size = max(array.nbytes, MIN_BYTES)
        pointer = self._alloc(size)
        if self._running:
            self._this_run.append((size, pointer))
        self._copy_in(pointer, array)
        return pointer

    def _copy_in(self, pointer: int, array: np.ndarray) -> None:
        if array.nbytes:
            d = self.device.driver
            array = np.ascontiguousarray(array)
            # from pageable memory the call returns once `array` is staged, so it may go at once; the
            # stream keeps the copy before the launches that read it
            check(d, d.cuMemcpyHtoDAsync(d.CUdeviceptr(pointer), array.ctypes.data, array.nbytes, self.device.stream),
                  "cuMemcpyHtoDAsync")

    def to_host(self, handle: int, array: np.ndarray) -> None:
        if array.nbytes:
            d = self.device.driver
            check(d, d.cuMemcpyDtoHAsync(array.ctypes.data, d.CUdeviceptr(handle), array.nbytes, self.device.stream),
                  "cuMemcpyDtoHAsync")
            check(d, d.cuStreamSynchronize(self.device.stream), "cuStreamSynchronize")

    def view(self, handle: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        array = np.empty(shape, dtype)
        self.to_host(handle, array)
        return array

    def received(self, handle: int, array: np.ndarray) -> None:
        self._copy_in(handle, array)


class CUDALauncher:
    """A program's module on the device: runs its segments and single launches."""

    def __init__(self, device: CudaDevice, program: Program, kernels: Mapping[str, Kernel],
                 rendered: Mapping[str, RenderedKernel], image: bytes):
        self.device, self.program = device, program
        self.kernels, self.rendered = kernels, rendered
        d = device.driver
        device.activate()
        self.module, = check(d, d.cuModuleLoadData(image), "cuModuleLoadData")
        self.launches = [ins for ins in program.instrs if isinstance(ins, Launch)]
        functions = {name: check(d, d.cuModuleGetFunction(self.module, name.encode()), "cuModuleGetFunction")[0]
                     for name in {ins.kernel for ins in self.launches}}
        self._functions = [functions[ins.kernel] for ins in self.launches]
        position = {id(ins): k for k, ins in enumerate(self.launches)}
        self._segments = {i: [position[id(ins)] for ins in seg]
                          for i, seg in enumerate(segments(program)) if i % 2 == 0}

    def run_segment(self, index: int, table: list, dims: np.ndarray) -> None:
        self.device.activate()
        env = dict(zip(self.program.symbols, (int(d) for d in dims)))
        for k in self._segments[index]:
            self._launch(k, table, env)

    def run_launch(self, index: int, table: list, dims: np.ndarray) -> None:
        self.device.activate()
        self._launch(index, table, dict(zip(self.program.symbols, (int(d) for d in dims))))
        d = self.device.driver
        check(d, d.cuStreamSynchronize(self.device.stream), "cuStreamSynchronize")   # timed alone: until done

    def _launch(self, k: int, table: list, env: Mapping[str, int]) -> None:
        ins = self.launches[k]
        sizes = launch_sizes(self.rendered[ins.kernel].launch, env, self.device)
        if sizes is None:
            return                                   # an empty dimension: nothing to compute
        grid, block = sizes
        # every parameter is 8 bytes (a pointer or an int64): one array of values and one of their addresses
        values = np.array([table[buf] for buf in ins.args] + [env[d] for d in ins.dims], np.int64).view(np.uint64)
        pointers = values.ctypes.data + 8 * np.arange(len(values), dtype=np.uint64)
        d = self.device.driver
        check(d, d.cuLaunchKernel(self._functions[k], *grid, *block, 0, self.device.stream,
                                  pointers.ctypes.data, 0), f"cuLaunchKernel({ins.kernel})")


def launch_sizes(launch: Grid | Tiles | Blocks, env: Mapping[str, int], device: CudaDevice) -> tuple | None:
    """((grid x, y, z), (block x, y, z)) of a launch for these symbol values; None when it is empty."""
    if isinstance(launch, Blocks):
        total = int(np.prod([int(substitute(e, env)) for e in launch.extents], dtype=np.int64))
        return None if total <= 0 else ((total, 1, 1), (launch.threads, 1, 1))
    if isinstance(launch, Grid):
        total = int(np.prod([int(substitute(e, env)) for e in launch.extents], dtype=np.int64))
        if total <= 0:
            return None
        target = device.target
        blocks, threads = target.grid(total)     # kernel.target's GPU hook: whole warps per block
        if blocks < target.compute_units:        # few rows (a layer norm's): a block for every multiprocessor
            per_unit = -(-total // target.compute_units)
            threads = max(target.simd_width, -(-per_unit // target.simd_width) * target.simd_width)
            blocks = -(-total // threads)
        return (blocks, 1, 1), (threads, 1, 1)
    m, n = int(substitute(launch.m, env)), int(substitute(launch.n, env))
    count = int(np.prod([int(substitute(b, env)) for b in launch.batch], dtype=np.int64))
    if m <= 0 or n <= 0 or count <= 0:
        return None
    rows = -(-m // launch.block)
    if rows > MAX_GRID_YZ or count > MAX_GRID_YZ:
        raise BackendError(f"a matmul of {m} rows x {count} batch items exceeds CUDA's grid "
                           f"({MAX_GRID_YZ} blocks along y and z)")
    return (-(-n // launch.block), rows, count), (launch.tile, launch.tile, 1)
