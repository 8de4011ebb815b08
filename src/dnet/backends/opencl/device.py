"""The OpenCL backend as a device (`program.device.Device`), for the registry and the coverage test.

Its allocator holds device buffers (one per loaded program, on the device `open_device` picks);
its dialect is `OpenCLRenderer`. The program is built and loaded by `OpenCLModule` itself (no
separate loader yet). It claims every dtype of the graph IR, GGUF block formats included.
"""
from __future__ import annotations

from dnet.core.dtypes import DType
from dnet.program.device import Device


def _allocator():
    from dnet.backends.opencl.platform import open_device
    from dnet.backends.opencl.runtime import OpenCLAllocator

    return OpenCLAllocator(open_device())


def _unavailable() -> str | None:
    from dnet.backends.opencl.platform import unavailable

    return unavailable()


def _renderers() -> dict:
    from dnet.backends.opencl.renderer import OpenCLRenderer

    return {"opencl": OpenCLRenderer}


OPENCL_DEVICE = Device(
    name="opencl",
    allocator=_allocator,
    renderers=_renderers(),
    loader=None,
    dtypes=frozenset(DType),
    unsupported={},
    available=_unavailable,
)
