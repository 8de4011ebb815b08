"""The CUDA backend: graph -> program -> CUDA C -> NVRTC -> a module on the GPU -> CUDAModule.

Registered as target "cuda". Scheduling and the program are the ones every compiled backend
shares (`dnet.program.build`); only the rendering and the runtime are CUDA's. `render_program`
is the half that needs no GPU (the tests compile its source with NVRTC on any machine).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from dnet.backends.c.packing import PanelPacker
from dnet.backends.cuda.nvrtc import ImageCache
from dnet.backends.cuda.platform import CudaDevice, open_device
from dnet.backends.cuda.prelude import PRELUDE
from dnet.backends.cuda.quant import quant_support
from dnet.backends.cuda.renderer import CUDARenderer
from dnet.backends.cuda.runtime import CUDAAllocator, CUDALauncher
from dnet.backends.opencl.renderer import GPU_GEMM, RenderedKernel
from dnet.core import progress
from dnet.graph.ir import Graph
from dnet.kernel.target import GpuTarget
from dnet.program.build import Compiled, build_program
from dnet.program.executor import ProgramExecutor
from dnet.program.inputs import check_gather_indices, gathered_inputs
from dnet.program.instructions import Program


@dataclass(frozen=True)
class RenderedProgram:
    """A graph's program and its CUDA C: one source text, one kernel per launch name."""
    compiled: Compiled
    kernels: Mapping[str, RenderedKernel]
    source: str


def render_program(graph: Graph, target: GpuTarget) -> RenderedProgram:
    """The program for a GPU with `target`'s facts, rendered to one CUDA C source (no GPU needed)."""
    # the tiled matmul reads the C backend's weight panels, as OpenCL's does
    compiled = build_program(graph, target, PanelPacker())
    kernels: dict[str, RenderedKernel] = {}
    with progress.task("render CUDA kernels", total=len(compiled.kernels), unit="kernels") as task:
        for name, kernel in compiled.kernels.items():
            kernels[name] = CUDARenderer(kernel, GPU_GEMM).render_cuda()
            task.advance()
    blocks = [p.dtype for k in compiled.kernels.values() for p in k.params]
    source = "\n\n".join([PRELUDE, quant_support(blocks), *(r.source for r in kernels.values())]) + "\n"
    return RenderedProgram(compiled, kernels, source)


class CUDAModule(ProgramExecutor):
    """A program on a CUDA device: `run(inputs)` with numpy arrays gives numpy outputs."""

    def __init__(self, rendered: RenderedProgram, device: CudaDevice, cache: ImageCache | None = None):
        self.device = device
        self.source = rendered.source
        with progress.task(f"compile CUDA kernels for {device.name} ({device.arch})", total=None):
            image = (cache or ImageCache()).get_or_compile(rendered.source, device.arch)
        compiled = rendered.compiled
        launcher = CUDALauncher(device, compiled.program, compiled.kernels, rendered.kernels, image)
        super().__init__(compiled.program, compiled.weights, CUDAAllocator(device), launcher)


class CUDARunner:
    """What `dnet.compile(..., target='cuda')` runs: a CUDAModule, plus what it was built from."""

    def __init__(self, module: CUDAModule, compiled: Compiled, gathered: dict[str, int]):
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
        for name, size in self.gathered.items():   # the kernels clamp an index; the reference raises
            if name in inputs:
                check_gather_indices(np.asarray(inputs[name]), size)
        return self.module.run(inputs)


class CUDABackend:
    name = "cuda"

    def prepare(self, graph: Graph) -> CUDARunner:
        device = open_device()          # first: a machine without a GPU is told so before any work
        rendered = render_program(graph, device.target)
        return CUDARunner(CUDAModule(rendered, device), rendered.compiled, gathered_inputs(graph))
