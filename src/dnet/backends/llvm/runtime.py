"""Running a program from its JIT-compiled LLVM module: the generic executor with a ctypes launcher.

Binding, arena plans, segments, transfers and state are `program.executor.ProgramExecutor`'s, over
host memory (`HostAllocator`, as the C backend); what is LLVM's own is the launcher, which calls the
module's `dnet_segment_<k>` and `dnet_launch_<i>` at their JIT addresses (ctypes releases the GIL
for the call), and the process's thread pool (`backends/llvm/pool.py`).
"""
from __future__ import annotations

import ctypes
import time
from typing import Any, Mapping

import numpy as np

from dnet.backends.llvm.jit import Compiled
from dnet.backends.llvm.pool import pool
from dnet.hardware import detect
from dnet.program.device import HostAllocator
from dnet.program.collective import Collective
from dnet.program.executor import ProgramExecutor, Transfer
from dnet.program.instructions import Launch, Program, segments

_ENTRY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


class LLVMLauncher:
    """A compiled module's segment and launch entry points."""

    def __init__(self, compiled: Compiled, program: Program):
        self.compiled = compiled
        self._segments = {i: _ENTRY(compiled.address(f"dnet_segment_{i}"))
                          for i in range(0, len(segments(program)), 2)}
        self._launches: dict[int, object] = {}
        self._count = sum(isinstance(ins, Launch) for ins in program.instrs)

    def run_segment(self, index: int, table: np.ndarray, dims: np.ndarray) -> None:
        self._segments[index](table.ctypes.data, dims.ctypes.data)

    def run_launch(self, index: int, table: np.ndarray, dims: np.ndarray) -> None:
        if index not in self._launches:
            self._launches[index] = _ENTRY(self.compiled.address(f"dnet_launch_{index}"))
        self._launches[index](table.ctypes.data, dims.ctypes.data)


class LLVMModule(ProgramExecutor):
    """A JIT-compiled module plus the program it runs and the weights it reads."""

    def __init__(self, program: Program, compiled: Compiled, weights: Mapping[int, np.ndarray],
                 threads: int | None = None):
        super().__init__(program, weights, HostAllocator(), LLVMLauncher(compiled, program))
        self.compiled = compiled
        self.set_threads(threads or detect().cores)

    def set_threads(self, n: int) -> None:
        """Threads for this module's parallel loops. The pool is the process's, shared by every LLVM
        module, so each module sets its own count on it before it runs."""
        self._threads = max(1, int(n))
        pool().set_threads(self._threads)

    @property
    def threads(self) -> int:
        return self._threads

    def _use_threads(self) -> None:
        if pool().threads != self._threads:
            pool().set_threads(self._threads)

    def run(self, inputs: Mapping[str, Any], transfer: Transfer | None = None,
            collective: Collective | None = None) -> dict[str, np.ndarray]:
        self._use_threads()
        return super().run(inputs, transfer, collective)

    def profile(self, inputs: Mapping[str, Any], clock=time.perf_counter) -> list[tuple[Launch, float]]:
        self._use_threads()
        return super().profile(inputs, clock)
