"""Running a program on an OpenCL device: its allocator and launcher for the generic executor.

`program.executor.ProgramExecutor` binds inputs, plans the arena, places buffers and runs the
segments; OpenCL supplies where buffers live and how launches run:

- `OpenCLAllocator`: a handle is (device buffer, byte offset). Weights are uploaded once, when
  the executor is made, and stay on the device; a call's inputs and states are copied in, and
  outputs and states copied back after the run. Intermediates are places in one device buffer,
  the arena, laid out by the program's memory plan. A kernel gets each buffer as (buffer,
  element offset), so the plan's offsets need no sub-buffer alignment.
- `OpenCLLauncher`: one kernel object per launch (its arguments are its own), the global and
  local sizes of each launch from the symbols' values, all enqueued on one in-order queue.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from dnet.backends.opencl.platform import Device
from dnet.backends.opencl.prelude import PRELUDE
from dnet.backends.opencl.quant import quant_support
from dnet.backends.opencl.renderer import Grid, RenderedKernel, Tiles
from dnet.core.shapes import substitute
from dnet.errors import BackendError
from dnet.kernel.ir import Kernel
from dnet.program.executor import ProgramExecutor
from dnet.program.instructions import Launch, Program, segments

Handle = tuple      # (pyopencl Buffer, byte offset)


class OpenCLAllocator:
    """Device buffers; the table of a run is a list of handles."""

    def __init__(self, device: Device):
        self.device = device
        self._arena = None
        self._arena_bytes = 0

    def table(self, size: int) -> list:
        return [None] * size

    def copy_table(self, table: list) -> list:
        return list(table)

    def put(self, table: list, buffer: int, handle: Handle) -> None:
        table[buffer] = handle

    def get(self, table: list, buffer: int) -> Handle:
        return table[buffer]

    def arena(self, nbytes: int) -> Handle:
        if self._arena is None or self._arena_bytes < nbytes:
            self._arena_bytes = max(nbytes, 64)
            cl = self.device.cl
            self._arena = cl.Buffer(self.device.context, cl.mem_flags.READ_WRITE, self._arena_bytes)
        return (self._arena, 0)

    def at(self, arena: Handle, offset: int) -> Handle:
        return (arena[0], arena[1] + offset)

    def to_device(self, array: np.ndarray, writable: bool) -> Handle:
        cl = self.device.cl
        flags = cl.mem_flags.READ_WRITE if writable else cl.mem_flags.READ_ONLY
        if array.nbytes == 0:
            return (cl.Buffer(self.device.context, flags, 1), 0)
        return (cl.Buffer(self.device.context, flags | cl.mem_flags.COPY_HOST_PTR, hostbuf=array), 0)

    def to_host(self, handle: Handle, array: np.ndarray) -> None:
        if array.size:
            self.device.cl.enqueue_copy(self.device.queue, array, handle[0], src_offset=handle[1])

    def view(self, handle: Handle, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        array = np.empty(shape, dtype)
        self.to_host(handle, array)
        return array

    def received(self, handle: Handle, array: np.ndarray) -> None:
        if array.size:
            self.device.cl.enqueue_copy(self.device.queue, handle[0], np.ascontiguousarray(array),
                                        dst_offset=handle[1])


class OpenCLLauncher:
    """A program built for the device: runs its segments and single launches."""

    def __init__(self, device: Device, program: Program, kernels: Mapping[str, Kernel],
                 rendered: Mapping[str, RenderedKernel], cl_program: Any):
        self.device, self.program = device, program
        self.kernels, self.rendered = kernels, rendered
        self.launches = [ins for ins in program.instrs if isinstance(ins, Launch)]
        self._objects = [device.cl.Kernel(cl_program, ins.kernel) for ins in self.launches]
        position = {id(ins): k for k, ins in enumerate(self.launches)}
        self._segments = {i: [position[id(ins)] for ins in seg]
                          for i, seg in enumerate(segments(program)) if i % 2 == 0}

    def run_segment(self, index: int, table: list, dims: np.ndarray) -> None:
        env = dict(zip(self.program.symbols, (int(d) for d in dims)))
        for k in self._segments[index]:
            self._launch(k, table, env)

    def run_launch(self, index: int, table: list, dims: np.ndarray) -> None:
        self._launch(index, table, dict(zip(self.program.symbols, (int(d) for d in dims))))
        self.device.queue.finish()     # a launch timed alone ends when the device is done with it

    def _launch(self, k: int, table: list, env: Mapping[str, int]) -> None:
        ins = self.launches[k]
        global_size, local_size = launch_sizes(self.rendered[ins.kernel].launch, env, self.device)
        if global_size is None:
            return                                   # an empty dimension: nothing to compute
        args: list = []
        for param, buf in zip(self.kernels[ins.kernel].params, ins.args):
            memory, offset = table[buf]
            size = 1 if param.dtype.is_block else param.dtype.itemsize     # block dtypes are stored as bytes
            args += [memory, np.int64(offset // size)]
        args += [np.int64(env[d]) for d in ins.dims]
        kernel = self._objects[k]
        kernel.set_args(*args)
        self.device.cl.enqueue_nd_range_kernel(self.device.queue, kernel, global_size, local_size)


class OpenCLModule(ProgramExecutor):
    """A program on an OpenCL device: `run(inputs)` with numpy arrays gives numpy outputs."""

    def __init__(self, program: Program, kernels: Mapping[str, Kernel], rendered: Mapping[str, RenderedKernel],
                 weights: Mapping[int, np.ndarray], device: Device):
        self.device = device
        blocks = [p.dtype for k in kernels.values() for p in k.params]
        self.source = "\n\n".join([PRELUDE, quant_support(blocks), *(r.source for r in rendered.values())]) + "\n"
        launcher = OpenCLLauncher(device, program, kernels, rendered, build(device, self.source))
        super().__init__(program, weights, OpenCLAllocator(device), launcher)


def build(device: Device, source: str) -> Any:
    """The OpenCL program built for the device; a build failure is a BackendError with the compiler's log.
    pyopencl keeps built binaries in its own on-disk cache, keyed by source and device."""
    cl = device.cl
    try:
        return cl.Program(device.context, source).build()
    except cl.RuntimeError as err:
        log = str(err).strip().splitlines()
        raise BackendError("the OpenCL compiler refused dnet's kernels: " + " | ".join(log[-6:]),
                           hint=f"device {device.name}") from None


def launch_sizes(launch: Grid | Tiles, env: Mapping[str, int], device: Device) -> tuple:
    """(global size, local size) of a launch for these symbol values; (None, None) when it is empty."""
    if isinstance(launch, Grid):
        total = int(np.prod([int(substitute(e, env)) for e in launch.extents], dtype=np.int64))
        if total <= 0:
            return None, None
        target = device.target
        groups, group = target.grid(total)      # kernel.target's GPU hook: whole SIMD widths per group
        if groups < target.compute_units:       # few rows (a layer norm's): a group for every compute unit
            simd = max(1, target.simd_width)
            per_unit = -(-total // target.compute_units)
            group = max(simd, -(-per_unit // simd) * simd)
            groups = -(-total // group)
        return (groups * group,), (group,)
    assert isinstance(launch, Tiles)
    m, n = int(substitute(launch.m, env)), int(substitute(launch.n, env))
    count = int(np.prod([int(substitute(b, env)) for b in launch.batch], dtype=np.int64))
    if m <= 0 or n <= 0 or count <= 0:
        return None, None
    t, block = launch.tile, launch.block
    return (-(-n // block) * t, -(-m // block) * t, count), (t, t, 1)
