"""The LLVM backend: graph -> program -> LLVM IR -> machine code in this process -> LLVMModule.

Registered as target "llvm". The program is the one every compiled backend shares
(`program.build`, weights packed into the C backend's panels by its `PanelPacker`), so a worker on a
machine with no C compiler runs exactly what a C worker runs, compiled by LLVM through llvmlite
for the host CPU (`backends/llvm/jit.py`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from dnet.backends.c.packing import PanelPacker
from dnet.backends.llvm.device import LLVMLoader, with_pool_symbols
from dnet.backends.llvm.library import render_module
from dnet.backends.llvm.runtime import LLVMModule
from dnet.graph.ir import Graph
from dnet.hardware import Host, detect
from dnet.kernel.target import CpuTarget
from dnet.program.build import Compiled as CompiledProgram, build_program
from dnet.program.collective import Collective
from dnet.program.inputs import GatherChecks
from dnet.program.instructions import Program


class LLVMRunner:
    """What `dnet.compile(..., target='llvm')` runs: an LLVMModule, plus the IR it was built from."""

    def __init__(self, module: LLVMModule, compiled: CompiledProgram, source: str, gathered: GatherChecks):
        self.module = module
        self.compiled = compiled
        self.source = source
        self.gathered = gathered

    @property
    def program(self) -> Program:
        return self.module.program

    def run(self, inputs: Mapping[str, np.ndarray], collective: Collective | None = None) -> dict[str, np.ndarray]:
        self.gathered.check(inputs)   # the kernels clamp an index; the reference raises
        return self.module.run(inputs, collective=collective)


class LLVMBackend:
    name = "llvm"

    def prepare(self, graph: Graph, threads: int | None = None, host: Host | None = None,
                cache_dir: str | Path | None = None) -> LLVMRunner:
        """`threads`: for parallel loops (default: the cores this process may use); `cache_dir`: where
        machine code is cached (default: the C backend's, $DNET_CACHE_DIR or ~/.cache/dnet)."""
        state = with_pool_symbols()
        # the C backend's panels: the LLVM micro-kernel reads the same layout
        compiled = build_program(graph, CpuTarget(host or detect(), threads), PanelPacker())
        source = render_module(compiled.kernels, compiled.program, state.native_half)
        machine_code = LLVMLoader(cache_dir).compile(source)
        module = LLVMModule(compiled.program, machine_code, compiled.weights, threads)
        return LLVMRunner(module, compiled, source, GatherChecks.of_graph(graph))
