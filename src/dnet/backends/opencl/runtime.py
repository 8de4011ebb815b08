"""Running a program on an OpenCL device: weights uploaded once, an arena on the device, launches.

Weights become device buffers when the module is made and stay there. A call copies its inputs
(and states) to the device, runs every launch in order on one in-order queue, and copies the
outputs (and states, written in place on the device) back. Intermediates live in one device
buffer laid out by the program's memory plan (`dnet.program.memory`); a kernel gets each buffer
as (buffer, element offset), so the plan's offsets need no sub-buffer alignment.
"""
from __future__ import annotations

import threading
from typing import Mapping

import numpy as np

from dnet.backends.opencl.platform import Device
from dnet.backends.opencl.prelude import PRELUDE
from dnet.backends.opencl.renderer import Grid, RenderedKernel, Tiles
from dnet.core.shapes import bind_shape, evaluate_shape, shape_str, substitute
from dnet.errors import BackendError, ShapeError
from dnet.program.inputs import input_array
from dnet.program.instructions import INPUT, OUTPUT, STATE, WEIGHT, Launch, Program, Recv, Send
from dnet.program.memory import ArenaPlan, bucket, grows_with_symbols, plan_arena

GRID_GROUP = 64     # work-items per group of a grid kernel (a GPU's warp or wavefront multiple)


class OpenCLModule:
    """A built OpenCL program plus the dnet program it runs and the weights it reads (on the device)."""

    def __init__(self, program: Program, kernels: Mapping[str, RenderedKernel],
                 weights: Mapping[int, np.ndarray], device: Device):
        if any(isinstance(ins, (Send, Recv)) for ins in program.instrs):
            raise BackendError("target 'opencl' runs whole programs: this one sends or receives tensors")
        self.program, self.kernels, self.device = program, dict(kernels), device
        cl = device.cl
        self.source = PRELUDE + "\n\n".join(k.source for k in self.kernels.values()) + "\n"
        self.cl_program = build(device, self.source)
        self.launches = [ins for ins in program.instrs if isinstance(ins, Launch)]
        # one kernel object per launch: its arguments are set once per call, never shared between launches
        self._kernel_objects = [cl.Kernel(self.cl_program, ins.kernel) for ins in self.launches]
        self.weights = {int(b): _device_buffer(device, np.ascontiguousarray(a), cl.mem_flags.READ_ONLY)
                        for b, a in weights.items()}
        self._host_weights = {int(b): a for b, a in weights.items()}
        self._plans: dict[tuple, ArenaPlan] = {}
        self._grows = grows_with_symbols(program)
        self._arena = None
        self._arena_bytes = 0
        self._lock = threading.Lock()

    # -- binding ---------------------------------------------------------------------
    def bind(self, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, int], dict[str, np.ndarray]]:
        """Symbol values and the arrays to copy in, after the checks every backend makes."""
        env: dict[str, int] = {}
        arrays: dict[str, np.ndarray] = {}
        names = list(self.program.inputs)
        for name, buf in self.program.inputs.items():
            if name not in inputs:
                raise ShapeError(f"missing input '{name}'", hint="inputs are " + ", ".join(names))
            b = self.program.buffers[buf]
            if b.kind == STATE:
                array = inputs[name]
                if not isinstance(array, np.ndarray) or array.dtype != b.dtype.np \
                        or not array.flags.c_contiguous or not array.flags.writeable:
                    raise ShapeError(f"state '{name}' must be a writeable C-contiguous {b.dtype} numpy array")
            else:
                array = np.ascontiguousarray(input_array(name, inputs[name], b.dtype), dtype=b.dtype.np)
            if not bind_shape(b.shape, array.shape, env):
                raise ShapeError(f"input '{name}' has shape {array.shape}, expected {shape_str(b.shape)}"
                                 + (f" with {env}" if env else ""))
            arrays[name] = array
        extra = set(inputs) - set(names)
        if extra:
            raise ShapeError(f"unknown input(s) {sorted(extra)}", hint="inputs are " + ", ".join(names))
        missing = [s for s in self.program.symbols if s not in env]
        if missing:
            raise ShapeError(f"symbols {missing} are not fixed by the input shapes")
        return env, arrays

    def plan(self, env: Mapping[str, int]) -> ArenaPlan:
        """The arena plan for these symbol values (one per power-of-two bucket where sizes only grow)."""
        env = bucket(env) if self._grows else dict(env)
        key = tuple(env[s] for s in self.program.symbols)
        if key not in self._plans:
            self._plans[key] = plan_arena(self.program, env)
        return self._plans[key]

    # -- running ---------------------------------------------------------------------
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:      # one arena per module: calls from several threads take turns
            return self._run(inputs)

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cl, queue = self.device.cl, self.device.queue
        env, arrays = self.bind(inputs)
        plan = self.plan(env)
        if self._arena is None or self._arena_bytes < plan.size:
            self._arena_bytes = max(plan.size, 64)
            self._arena = cl.Buffer(self.device.context, cl.mem_flags.READ_WRITE, self._arena_bytes)
        places: dict[int, tuple] = {b: (buf, 0) for b, buf in self.weights.items()}
        for buf, offset in plan.offsets.items():
            places[buf] = (self._arena, offset // self.program.buffers[buf].dtype.itemsize)
        for name, buf in self.program.inputs.items():
            places[buf] = (_device_buffer(self.device, arrays[name], cl.mem_flags.READ_WRITE), 0)
        shapes: dict[int, tuple] = {}
        for b in self.program.buffers:
            if b.kind == OUTPUT:
                shapes[b.id] = evaluate_shape(b.shape, env)
                size = int(np.prod(shapes[b.id], dtype=np.int64)) * b.dtype.itemsize
                places[b.id] = (cl.Buffer(self.device.context, cl.mem_flags.READ_WRITE, max(size, 1)), 0)
        for ins, kernel in zip(self.launches, self._kernel_objects):
            self._launch(ins, kernel, places, env)
        for name, buf in self.program.inputs.items():   # states were written in place on the device
            if self.program.buffers[buf].kind == STATE and arrays[name].size:
                cl.enqueue_copy(queue, arrays[name], places[buf][0], is_blocking=False)
        results: dict[int, np.ndarray] = {}
        for buf, shape in shapes.items():
            results[buf] = np.empty(shape, self.program.buffers[buf].dtype.np)
            if results[buf].size:
                cl.enqueue_copy(queue, results[buf], places[buf][0], is_blocking=False)
        queue.finish()
        return {name: self._result(buf, results, arrays) for name, buf in self.program.outputs}

    def _launch(self, ins: Launch, kernel, places: dict, env: Mapping[str, int]) -> None:
        rendered = self.kernels[ins.kernel]
        global_size, local_size = _sizes(rendered.launch, env, self.device)
        if global_size is None:
            return                                   # an empty dimension: nothing to compute
        args: list = []
        for buf in ins.args:
            memory, offset = places[buf]
            args += [memory, np.int64(offset)]
        args += [np.int64(env[d]) for d in ins.dims]
        kernel.set_args(*args)
        self.device.cl.enqueue_nd_range_kernel(self.device.queue, kernel, global_size, local_size)

    def _result(self, buf: int, results: dict, arrays: dict) -> np.ndarray:
        b = self.program.buffers[buf]
        if b.kind == OUTPUT:
            return results[buf]
        if b.kind in (INPUT, STATE):
            return arrays[b.name].copy()
        if b.kind == WEIGHT:
            return np.array(self._host_weights[buf], copy=True)
        raise BackendError(f"output buffer %{buf} is a {b.kind}")


def build(device: Device, source: str):
    """The OpenCL program built for the device; a build failure is a BackendError with the compiler's log.
    pyopencl keeps built binaries in its own on-disk cache, keyed by source and device."""
    cl = device.cl
    try:
        return cl.Program(device.context, source).build()
    except cl.RuntimeError as err:
        log = str(err).strip().splitlines()
        raise BackendError("the OpenCL compiler refused dnet's kernels: " + " | ".join(log[-6:]),
                           hint=f"device {device.name}") from None


def _sizes(launch, env: Mapping[str, int], device: Device) -> tuple:
    """(global size, local size) of a launch for these symbol values; (None, None) when it is empty."""
    if isinstance(launch, Grid):
        total = int(np.prod([int(substitute(e, env)) for e in launch.extents], dtype=np.int64))
        if total <= 0:
            return None, None
        group = min(GRID_GROUP, device.max_work_group)
        return (-(-total // group) * group,), (group,)
    assert isinstance(launch, Tiles)
    m, n = int(substitute(launch.m, env)), int(substitute(launch.n, env))
    count = int(np.prod([int(substitute(b, env)) for b in launch.batch], dtype=np.int64))
    if m <= 0 or n <= 0 or count <= 0:
        return None, None
    t = launch.tile
    return (-(-n // t) * t, -(-m // t) * t, count), (t, t, 1)


def _device_buffer(device: Device, array: np.ndarray, flags):
    cl = device.cl
    if array.nbytes == 0:
        return cl.Buffer(device.context, flags, 1)
    return cl.Buffer(device.context, flags | cl.mem_flags.COPY_HOST_PTR, hostbuf=array)
