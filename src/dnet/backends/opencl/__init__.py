"""The OpenCL backend: fused loop-nest kernels rendered to OpenCL C, run through pyopencl on any device."""
from dnet.backends.opencl.backend import OpenCLBackend, OpenCLRunner
from dnet.backends.opencl.platform import open_device, unavailable

__all__ = ["OpenCLBackend", "OpenCLRunner", "open_device", "unavailable"]
