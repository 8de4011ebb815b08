"""The CUDA backend as a device (`program.device.Device`), for the registry and the coverage test.

Its allocator holds device memory on the GPU `open_device` picks; its dialect is `CUDARenderer`.
The program is compiled and loaded by `CUDAModule` itself (NVRTC, then cuModuleLoadData). It
claims every dtype of the graph IR, GGUF block formats included. `available()` says why a machine
cannot run it (no cuda-bindings or NVRTC, no NVIDIA driver, no GPU).
"""
from __future__ import annotations

from dnet.core.dtypes import DType
from dnet.program.device import Device


def _allocator():
    from dnet.backends.cuda.platform import open_device
    from dnet.backends.cuda.runtime import CUDAAllocator

    return CUDAAllocator(open_device())


def _unavailable() -> str | None:
    from dnet.backends.cuda.platform import unavailable

    return unavailable()


def _renderers() -> dict:
    from dnet.backends.cuda.renderer import CUDARenderer

    return {"cuda": CUDARenderer}


CUDA_DEVICE = Device(
    name="cuda",
    allocator=_allocator,
    renderers=_renderers(),
    loader=None,
    dtypes=frozenset(DType),
    unsupported={},
    available=_unavailable,
)
