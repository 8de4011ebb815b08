"""Finding an OpenCL device at run time: pyopencl, an installed platform (an ICD), a device on it.

Nothing here is assumed: a machine without pyopencl, without any OpenCL driver (Debian's
`pocl-opencl-icd` gives one on any CPU), or whose platforms list no device, is told so in one
line that names what to install. `unavailable()` gives that line without raising (tests skip
with it); `open_device()` raises it as a `BackendError`.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dnet.errors import BackendError

if TYPE_CHECKING:
    from dnet.kernel.target import GpuTarget

INSTALL_HINT = "pip install 'dnet[opencl]' and an OpenCL driver (on Debian: apt-get install pocl-opencl-icd)"


@dataclass(frozen=True)
class Device:
    """One OpenCL device with its context and an in-order queue: what the backend runs on."""
    cl: Any                  # the pyopencl module
    context: Any
    queue: Any
    device: Any

    @property
    def name(self) -> str:
        return f"{self.device.platform.name.strip()}: {self.device.name.strip()}"

    @property
    def max_work_group(self) -> int:
        return int(self.device.max_work_group_size)

    @property
    def is_cpu(self) -> bool:
        return bool(self.device.type & self.cl.device_type.CPU)

    @property
    def local_memory(self) -> int:
        return int(self.device.local_mem_size)

    @functools.cached_property
    def target(self) -> "GpuTarget":
        """The device's facts as the scheduler's GPU target (`kernel.target.GpuTarget`): work-group and
        local-memory limits, the items that run in lock step (a warp of 32 on a GPU; on a CPU driver,
        which vectorises a group's items, the float vector width), compute units."""
        from dnet.kernel.target import GpuTarget

        d = self.device
        simd = max(1, int(d.preferred_vector_width_float)) if self.is_cpu else 32
        return GpuTarget(self.name, self.max_work_group, self.local_memory, simd, int(d.max_compute_units))

    def fingerprint(self) -> str:
        """What a compiled program depends on: platform, device and driver versions."""
        d = self.device
        return "|".join(str(x).strip() for x in (d.platform.name, d.platform.version, d.name, d.driver_version))


def _choose(cl: Any, devices: list) -> Any:
    """A GPU or accelerator before a CPU; `DNET_OPENCL_DEVICE` (a substring of the name) picks one."""
    wanted = os.environ.get("DNET_OPENCL_DEVICE", "").lower()
    if wanted:
        named = [d for d in devices if wanted in f"{d.platform.name} {d.name}".lower()]
        if not named:
            found = ", ".join(f"{d.platform.name.strip()}: {d.name.strip()}" for d in devices)
            raise BackendError(f"no OpenCL device matches DNET_OPENCL_DEVICE={wanted!r}", hint=f"found: {found}")
        return named[0]
    return sorted(devices, key=lambda d: bool(d.type & cl.device_type.CPU))[0]


@functools.lru_cache(maxsize=1)
def open_device() -> Device:
    """The process's OpenCL device (one context and queue, shared by every compiled program)."""
    try:
        import pyopencl as cl
    except ImportError:
        raise BackendError("target 'opencl' needs pyopencl, which is not installed", hint=INSTALL_HINT) from None
    try:
        platforms = cl.get_platforms()
    except cl.Error as err:     # the ICD loader found no driver (CL_PLATFORM_NOT_FOUND_KHR)
        # str(err) is pyopencl's one line ("clGetPlatformIDs failed: PLATFORM_NOT_FOUND_KHR"); its
        # `what` is a record object, not a method
        raise BackendError(f"no OpenCL platform on this machine ({err})",
                           hint=INSTALL_HINT) from None
    devices = [d for p in platforms for d in _devices(cl, p)]
    if not devices:
        raise BackendError("the OpenCL platforms here list no device: "
                           + ", ".join(p.name.strip() for p in platforms), hint=INSTALL_HINT)
    device = _choose(cl, devices)
    context = cl.Context([device])
    return Device(cl, context, cl.CommandQueue(context), device)


def _devices(cl: Any, platform: Any) -> list:
    try:
        return list(platform.get_devices())
    except cl.Error:     # a platform with no device raises CL_DEVICE_NOT_FOUND
        return []


def unavailable() -> str | None:
    """Why target 'opencl' cannot run here, or None when it can."""
    try:
        open_device()
    except BackendError as err:
        return str(err)
    return None
