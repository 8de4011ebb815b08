"""The LLVM backend: fused loop-nest kernels rendered to LLVM IR, JIT-compiled in process by llvmlite."""
from dnet.backends.llvm.backend import LLVMBackend, LLVMRunner
from dnet.backends.llvm.jit import unavailable

__all__ = ["LLVMBackend", "LLVMRunner", "unavailable"]
