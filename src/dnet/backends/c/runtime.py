"""Running a program from its compiled C library: the generic executor with a ctypes launcher.

Binding, arena plans, segments, transfers and state are `program.executor.ProgramExecutor`'s; what
is C's own is the launcher (the library's `dnet_segment_<k>` and `dnet_launch_<i>` entry points,
called with a table of host addresses) and the thread pool's size.
"""
from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Mapping

import numpy as np

from dnet.errors import BackendError
from dnet.hardware import detect
from dnet.program.device import HostAllocator
from dnet.program.executor import ProgramExecutor, Transfer
from dnet.program.instructions import Launch, Program, segments


__all__ = ["CLauncher", "CModule", "Transfer"]


class CLauncher:
    """A loaded shared library: its segment and launch entry points, called through ctypes."""

    def __init__(self, library: Path, program: Program):
        self.library = Path(library)
        try:
            self.lib = ctypes.CDLL(str(self.library))
        except OSError as err:
            raise BackendError(f"cannot load compiled library {self.library}: {err}") from err
        self._segments = {}
        for i in range(0, len(segments(program)), 2):
            self._segments[i] = self._entry(f"dnet_segment_{i}")
        self._launches: dict[int, object] = {}
        self._count = sum(isinstance(ins, Launch) for ins in program.instrs)
        self.lib.dnet_set_threads.argtypes = [ctypes.c_int]

    def _entry(self, name: str):
        fn = getattr(self.lib, name)
        fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p], None
        return fn

    def run_segment(self, index: int, table: np.ndarray, dims: np.ndarray) -> None:
        self._segments[index](table.ctypes.data, dims.ctypes.data)

    def run_launch(self, index: int, table: np.ndarray, dims: np.ndarray) -> None:
        if index not in self._launches:
            self._launches[index] = self._entry(f"dnet_launch_{index}")
        self._launches[index](table.ctypes.data, dims.ctypes.data)


class CModule(ProgramExecutor):
    """A loaded library plus the program it runs and the weights it reads."""

    def __init__(self, program: Program, library: Path, weights: Mapping[int, np.ndarray],
                 threads: int | None = None):
        launcher = CLauncher(library, program)
        super().__init__(program, weights, HostAllocator(), launcher)
        self.library = launcher.library
        self.lib = launcher.lib
        self.set_threads(threads or detect().cores)

    def set_threads(self, n: int) -> None:
        self.lib.dnet_set_threads(int(n))

    @property
    def threads(self) -> int:
        return int(self.lib.dnet_get_threads())
