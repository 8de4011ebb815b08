"""The C backend: fused loop-nest kernels rendered to C, compiled by the system compiler."""
from dnet.backends.c.backend import CBackend, CRunner, load_compiled, save_compiled
from dnet.backends.c.cache import CompileCache
from dnet.backends.c.runtime import CModule

__all__ = ["CBackend", "CRunner", "load_compiled", "save_compiled", "CompileCache", "CModule"]
