"""The C backend as a device (`program.device.Device`): host memory, the C dialect, a compile-cache loader.

`CLoader.load(source, program)` compiles the rendered translation unit with the system compiler
(through the on-disk compile cache) and returns the `CLauncher` of its segment and launch entry
points. `C_DEVICE` is what `backends.registry.device("c")` gives: it claims every dtype of the
graph IR, GGUF block formats included, and declares no op unsupported.
"""
from __future__ import annotations

from pathlib import Path

from dnet.backends.c.cache import CompileCache
from dnet.backends.c.compiler import find_compiler
from dnet.backends.c.renderer import CRenderer
from dnet.backends.c.runtime import CLauncher
from dnet.core.dtypes import DType
from dnet.errors import DnetError
from dnet.hardware import Host, detect
from dnet.program.device import Device, HostAllocator
from dnet.program.instructions import Program


class CLoader:
    """Rendered C -> a shared library (compiled on a cache miss) -> its entry points."""

    def __init__(self, cache_dir: str | Path | None = None, host: Host | None = None):
        self.cache = CompileCache(Path(cache_dir) if cache_dir is not None else None)
        self.host = host or detect()

    def library(self, source: str) -> Path:
        """The path of the library built from `source` (the cache's, compiled only on a miss)."""
        return self.cache.get_or_build(source, find_compiler(), self.host.fingerprint())

    def load(self, source: str, program: Program) -> CLauncher:
        return CLauncher(self.library(source), program)


def unavailable() -> str | None:
    """Why target "c" cannot run here (no working C compiler), or None."""
    try:
        find_compiler()
    except DnetError as err:
        return str(err)
    return None


C_DEVICE = Device(
    name="c",
    allocator=HostAllocator,
    renderers={"c": CRenderer},
    loader=CLoader(),
    dtypes=frozenset(DType),
    unsupported={},
    available=unavailable,
)
