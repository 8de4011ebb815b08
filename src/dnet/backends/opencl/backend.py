"""The OpenCL backend: graph -> program -> OpenCL C -> a program built for the device -> OpenCLModule.

Registered as target "opencl". Scheduling and the program are the ones every compiled backend
shares (`dnet.program.build`); only the rendering and the runtime are OpenCL's.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from dnet.backends.opencl.platform import open_device
from dnet.backends.opencl.platform import Device
from dnet.backends.opencl.renderer import CPU_GEMM, GPU_GEMM, GemmShape, OpenCLRenderer, RenderedKernel
from dnet.backends.opencl.runtime import OpenCLModule
from dnet.core import progress
from dnet.graph.ir import Graph
from dnet.backends.c.packing import PanelPacker
from dnet.program.build import Compiled, build_program
from dnet.program.inputs import GatherChecks
from dnet.program.instructions import Program



class OpenCLRunner:
    """What `dnet.compile(..., target='opencl')` runs: an OpenCLModule, plus what it was built from."""

    def __init__(self, module: OpenCLModule, compiled: Compiled, gathered: GatherChecks):
        self.module = module
        self.compiled = compiled
        self.gathered = gathered

    @property
    def program(self) -> Program:
        return self.module.program

    @property
    def source(self) -> str:
        return self.module.source

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.gathered.check(inputs)   # the kernels clamp an index; the reference raises
        return self.module.run(inputs)


class OpenCLBackend:
    name = "opencl"

    def prepare(self, graph: Graph) -> OpenCLRunner:
        device = open_device()
        shape = gemm_shape(device)
        # the scheduler's target is the device; the tiled matmul reads the C backend's weight panels
        compiled = build_program(graph, device.target, PanelPacker())
        with progress.task("render OpenCL kernels", total=len(compiled.kernels), unit="kernels") as task:
            kernels: dict[str, RenderedKernel] = {}
            for name, kernel in compiled.kernels.items():
                kernels[name] = OpenCLRenderer(kernel, shape).render_opencl()
                task.advance()
        with progress.task(f"build OpenCL program for {device.name}", total=None):
            module = OpenCLModule(compiled.program, compiled.kernels, kernels, compiled.weights, device)
        return OpenCLRunner(module, compiled, GatherChecks.of_graph(graph))


def gemm_shape(device: Device) -> GemmShape:
    """The matmul work-group for this device: small groups on a CPU driver, large ones elsewhere,
    halved until the device takes a group that size."""
    shape = CPU_GEMM if device.is_cpu else GPU_GEMM
    threads = shape.threads
    while threads > 1 and threads * threads > device.max_work_group:
        threads //= 2
    return GemmShape(threads, shape.work)
