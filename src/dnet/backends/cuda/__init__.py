"""The CUDA backend: fused loop-nest kernels rendered to CUDA C, compiled by NVRTC, run through the driver API."""
from dnet.backends.cuda.backend import CUDABackend, CUDARunner, render_program
from dnet.backends.cuda.platform import open_device, unavailable

__all__ = ["CUDABackend", "CUDARunner", "open_device", "render_program", "unavailable"]
