"""The LLVM backend as a device (`program.device.Device`), for the registry and the coverage test.

Its kernels read host memory (`HostAllocator`, as C's); its dialect is `LLVMRenderer`; the module
is JIT-compiled and loaded by the backend itself (no separate loader yet). It claims every dtype
of the graph IR, GGUF block formats included, and declares the gaps in `UNSUPPORTED`.
"""
from __future__ import annotations

from dnet.core.dtypes import DType
from dnet.graph.ops import Op
from dnet.program.device import Device, HostAllocator

_K_QUANTS = (DType.Q4_K, DType.Q5_K, DType.Q6_K)
# what the op x backend coverage test found missing when this device was first registered
UNSUPPORTED = {
    **{(op, d): "K-quant blocks are not decoded in LLVM IR yet (q8_0, q4_0 and q4_1 are)"
       for d in _K_QUANTS for op in (Op.CAST, Op.MATMUL, Op.GATHER)},
    (Op.MOD, DType.BOOL): "bool mod gives a's truth value where the reference gives 0 (the LLVM table's entry)",
}


def _unavailable() -> str | None:
    from dnet.backends.llvm.jit import unavailable

    return unavailable()


def _renderers() -> dict:
    from dnet.backends.llvm.renderer import LLVMRenderer

    return {"llvm": LLVMRenderer}


LLVM_DEVICE = Device(
    name="llvm",
    allocator=HostAllocator,
    renderers=_renderers(),
    loader=None,
    dtypes=frozenset(DType),
    unsupported=UNSUPPORTED,
    available=_unavailable,
)
