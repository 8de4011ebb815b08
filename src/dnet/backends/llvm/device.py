"""The LLVM backend as a device (`program.device.Device`): host memory, the llvm dialect, a JIT loader.

`LLVMLoader.load(source, program)` compiles the rendered module in this process (optimised for the
host CPU, through the machine-code cache) and returns the `LLVMLauncher` of its segment and launch
entry points. `LLVM_DEVICE` is what `backends.registry.device("llvm")` gives: it claims every dtype
of the graph IR, GGUF block formats included, and declares no op unsupported.
"""
from __future__ import annotations

from pathlib import Path

from dnet.backends.llvm.cache import ObjectCache
from dnet.backends.llvm.jit import Compiled, jit, unavailable
from dnet.backends.llvm.pool import pool
from dnet.backends.llvm.renderer import LLVMRenderer
from dnet.backends.llvm.runtime import LLVMLauncher
from dnet.core import progress
from dnet.core.dtypes import DType
from dnet.program.device import Device, HostAllocator
from dnet.program.instructions import Program


def with_pool_symbols():
    """The JIT state, with the thread pool's functions known to it (kernels call `dn_parallel`)."""
    state = jit()
    threads = pool()
    state.llvm.add_symbol("dn_parallel", threads.parallel)
    state.llvm.add_symbol("dn_threads", threads.threads_fn)
    return state


class LLVMLoader:
    """Rendered LLVM IR -> machine code in this process (from the cache when compiled before)."""

    def __init__(self, cache_dir: str | Path | None = None):
        self.cache = ObjectCache(Path(cache_dir) if cache_dir is not None else None)

    def compile(self, source: str) -> Compiled:
        with_pool_symbols()
        with progress.task("compile LLVM module", total=None):
            return Compiled(source, "dnet_program", self.cache)

    def load(self, source: str, program: Program) -> LLVMLauncher:
        return LLVMLauncher(self.compile(source), program)


LLVM_DEVICE = Device(
    name="llvm",
    allocator=HostAllocator,
    renderers={"llvm": LLVMRenderer},
    loader=LLVMLoader(),
    dtypes=frozenset(DType),
    unsupported={},
    available=unavailable,
)
