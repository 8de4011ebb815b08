"""Finding a CUDA device at run time: cuda-bindings, NVRTC, NVIDIA's driver, a GPU.

Nothing here is assumed. A machine without cuda-bindings or NVRTC (the `cuda` extra), without
NVIDIA's driver (libcuda), or whose driver sees no GPU, is told so in one line that also names
the targets this machine can run (as its hint). `unavailable()` gives the line without raising (tests skip
with it, and a worker refuses `--backend cuda` with it at start); `open_device()` raises it as a
`BackendError`.

The device is the first GPU (`DNET_CUDA_DEVICE=N` picks another) through its primary context,
with one stream that every copy and launch of this process goes on, in order.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dnet.errors import BackendError

if TYPE_CHECKING:
    from dnet.kernel.target import GpuTarget


@dataclass(frozen=True)
class CudaDevice:
    """One GPU: its primary context, a stream, and the facts the scheduler and NVRTC need."""
    driver: Any               # the cuda.bindings.driver module
    device: Any               # CUdevice
    context: Any              # CUcontext (the device's primary context)
    stream: Any               # CUstream
    name: str
    capability: tuple[int, int]
    max_threads: int          # per block
    shared_memory: int        # bytes per block
    multiprocessors: int
    warp: int

    def activate(self) -> None:
        """Make the context current on the calling thread (a worker compiles and runs on its own threads)."""
        check(self.driver, self.driver.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")

    @functools.cached_property
    def target(self) -> "GpuTarget":
        from dnet.kernel.target import GpuTarget

        return GpuTarget(self.name, self.max_threads, self.shared_memory, self.warp, self.multiprocessors)

    @property
    def arch(self) -> str:
        """What NVRTC compiles for: a cubin of this GPU's architecture where NVRTC knows it, else PTX
        of the newest architecture it knows below it (the driver compiles that for the GPU)."""
        from dnet.backends.cuda.nvrtc import supported_architectures

        sm = self.capability[0] * 10 + self.capability[1]
        known = supported_architectures()
        if sm in known:
            return f"sm_{sm}"
        older = [a for a in known if a < sm]
        if not older:
            raise BackendError(f"NVRTC {known} cannot compile for {self.name} (sm_{sm})",
                               hint="a newer nvidia-cuda-nvrtc wheel")
        return f"compute_{older[-1]}"

    def fingerprint(self) -> str:
        return f"cuda|{self.name}|sm_{self.capability[0]}{self.capability[1]}"


def check(driver: Any, result: Any, what: str) -> tuple:
    """A driver call's values after its CUresult, or a one-line BackendError naming the call and the error."""
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    if err != driver.CUresult.CUDA_SUCCESS:
        _, name = driver.cuGetErrorName(err)
        label = name.decode() if isinstance(name, bytes) else str(err)
        raise BackendError(f"CUDA driver: {what} failed: {label}")
    return values


def _other_targets() -> str:
    """The targets this machine can run, for the hint of a missing CUDA device."""
    from dnet.backends import registry

    usable = []
    for name in registry.names():
        if name == "cuda":
            continue
        try:
            reason = registry.device(name).available() if name != registry.REFERENCE else None
        except Exception:       # noqa: BLE001 - a backend that cannot even say is not usable
            continue
        if reason is None:
            usable.append(name)
    return "targets that run on this machine: " + ", ".join(usable)


@functools.lru_cache(maxsize=1)
def open_device() -> CudaDevice:
    """The process's CUDA device (one primary context and stream, shared by every compiled program)."""
    from dnet.backends.cuda.nvrtc import nvrtc

    try:
        nvrtc()
    except BackendError as err:
        raise BackendError(f"target 'cuda' cannot run here: {err.message}", hint=_other_targets()) from None
    from cuda.bindings import driver

    try:
        result = driver.cuInit(0)
    except Exception as err:    # noqa: BLE001 - cuda-pathfinder's error when libcuda.so is absent
        raise BackendError("target 'cuda' cannot run here: no NVIDIA driver (libcuda not found: "
                           f"{type(err).__name__})", hint=_other_targets()) from None
    try:
        check(driver, result, "cuInit")
        count, = check(driver, driver.cuDeviceGetCount(), "cuDeviceGetCount")
    except BackendError as err:
        raise BackendError(f"target 'cuda' cannot run here: {err.message}", hint=_other_targets()) from None
    if count == 0:
        raise BackendError("target 'cuda' cannot run here: the NVIDIA driver sees no GPU", hint=_other_targets())
    index = int(os.environ.get("DNET_CUDA_DEVICE", "0"))
    if not 0 <= index < count:
        raise BackendError(f"DNET_CUDA_DEVICE={index}, but this machine has {count} CUDA device(s)")
    device, = check(driver, driver.cuDeviceGet(index), "cuDeviceGet")
    context, = check(driver, driver.cuDevicePrimaryCtxRetain(device), "cuDevicePrimaryCtxRetain")
    check(driver, driver.cuCtxSetCurrent(context), "cuCtxSetCurrent")
    stream, = check(driver, driver.cuStreamCreate(0), "cuStreamCreate")
    name, = check(driver, driver.cuDeviceGetName(256, device), "cuDeviceGetName")

    def attribute(a: str) -> int:
        value, = check(driver, driver.cuDeviceGetAttribute(getattr(driver.CUdevice_attribute, a), device),
                       "cuDeviceGetAttribute")
        return int(value)

    return CudaDevice(driver, device, context, stream, name.split(b"\0")[0].decode(errors="replace"),
                      (attribute("CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR"),
                       attribute("CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR")),
                      attribute("CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK"),
                      attribute("CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK"),
                      attribute("CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT"),
                      attribute("CU_DEVICE_ATTRIBUTE_WARP_SIZE"))


def unavailable() -> str | None:
    """Why target 'cuda' cannot run here, or None when it can."""
    try:
        open_device()
    except BackendError as err:
        return err.message      # without the hint: a caller listing the targets adds its own
    return None
