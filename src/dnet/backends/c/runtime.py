"""Running a program from its compiled library: bind symbols, plan the arena, call segments."""
from __future__ import annotations

import ctypes
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from dnet.core.shapes import Dim, bind_shape, evaluate_shape, shape_str
from dnet.errors import BackendError, ShapeError
from dnet.hardware import detect
from dnet.program.instructions import INPUT, OUTPUT, STATE, WEIGHT, Launch, Program, segments
from dnet.program.memory import ALIGN, ArenaPlan, bucket, grows_with_symbols, plan_arena
from dnet.program.inputs import input_array

Transfer = Callable[[object, np.ndarray], None]   # (Send | Recv, the buffer as an array)


class CModule:
    """A loaded library plus the program it runs and the weights it reads."""

    def __init__(self, program: Program, library: Path, weights: Mapping[int, np.ndarray],
                 threads: int | None = None):
        self.program = program
        self.library = Path(library)
        try:
            self.lib = ctypes.CDLL(str(self.library))
        except OSError as err:
            raise BackendError(f"cannot load compiled library {self.library}: {err}") from err
        self.weights = {int(k): np.ascontiguousarray(v) for k, v in weights.items()}
        self.segments = segments(program)
        self._entries = {}
        for i in range(0, len(self.segments), 2):
            fn = getattr(self.lib, f"dnet_segment_{i}")
            fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p], None
            self._entries[i] = fn
        self.lib.dnet_set_threads.argtypes = [ctypes.c_int]
        self.set_threads(threads or detect().cores)
        self._plans: dict[tuple, ArenaPlan] = {}
        self._grows: bool | None = None
        self._bound: dict[tuple, dict | bool] = {}
        # inputs with a dim that is an expression of symbols: checked against the whole binding every call
        self._compound = {b.id: any(isinstance(d, Dim) and not _is_symbol(d) for d in b.shape) for b in program.buffers}
        self._lock = threading.Lock()
        self._arena = np.empty(0, np.uint8)
        self._table = np.zeros(len(program.buffers), np.uint64)
        for buf, array in self.weights.items():
            self._table[buf] = array.ctypes.data

    def set_threads(self, n: int) -> None:
        self.lib.dnet_set_threads(int(n))

    @property
    def threads(self) -> int:
        return int(self.lib.dnet_get_threads())

    # -- running ---------------------------------------------------------------------
    def bind(self, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, int], dict[str, np.ndarray]]:
        env: dict[str, int] = {}
        arrays = {}
        names = list(self.program.inputs)
        for name, buf in self.program.inputs.items():
            if name not in inputs:
                raise ShapeError(f"missing input '{name}'", hint="inputs are " + ", ".join(names))
            b = self.program.buffers[buf]
            array = _state_array(name, inputs[name], b) if b.kind == STATE else \
                np.ascontiguousarray(input_array(name, inputs[name], b.dtype), dtype=b.dtype.np)
            if not self._bind_shape(buf, array.shape, env):
                raise ShapeError(f"input '{name}' has shape {array.shape}, expected {shape_str(b.shape)}"
                                 + (f" with {env}" if env else ""))
            arrays[name] = array
        extra = set(inputs) - set(names)
        if extra:
            raise ShapeError(f"unknown input(s) {sorted(extra)}", hint="inputs are " + ", ".join(names))
        missing = [s for s in self.program.symbols if s not in env]
        if missing:
            raise ShapeError(f"symbols {missing} are not fixed by the input shapes")
        return env, arrays

    def _bind_shape(self, buf: int, shape: tuple, env: dict[str, int]) -> bool:
        """bind_shape, remembering what each input's shape binds: a decode step binds the same shapes to
        dozens of states every token."""
        key = (buf, shape)
        alone = self._bound.get(key)
        if alone is None:
            if len(self._bound) > 4096:      # many prompt lengths seen: start over rather than grow
                self._bound.clear()
            alone = {}
            alone = alone if bind_shape(self.program.buffers[buf].shape, shape, alone) else False
            self._bound[key] = alone
        if alone is False or any(env.setdefault(k, v) != v for k, v in alone.items()):
            return False
        return bind_shape(self.program.buffers[buf].shape, shape, env) if self._compound[buf] else True

    def plan(self, env: Mapping[str, int]) -> ArenaPlan:
        if self._grows is None:
            self._grows = grows_with_symbols(self.program)
        if self._grows:
            env = bucket(env)
        key = tuple(env[s] for s in self.program.symbols)
        if key not in self._plans:
            self._plans[key] = plan_arena(self.program, env)
        return self._plans[key]

    def run(self, inputs: Mapping[str, np.ndarray], transfer: Transfer | None = None) -> dict[str, np.ndarray]:
        return self._execute(inputs, transfer, None)

    def profile(self, inputs: Mapping[str, np.ndarray], clock=time.perf_counter) -> list[tuple[Launch, float]]:
        """Run once, launch by launch, timing each: [(launch, seconds)] in program order.

        With one thread, `clock=time.thread_time` counts CPU time only, which a loaded machine
        disturbs far less than wall time.
        """
        times: list[tuple[Launch, float]] = []
        self._clock = clock
        self._execute(inputs, None, times)
        return times

    def _execute(self, inputs, transfer, times) -> dict[str, np.ndarray]:
        with self._lock:   # one arena per module: calls from several threads take turns
            return self._execute_locked(inputs, transfer, times)

    def _execute_locked(self, inputs, transfer, times) -> dict[str, np.ndarray]:
        env, arrays = self.bind(inputs)
        plan = self.plan(env)
        if self._arena.nbytes < plan.size + ALIGN:
            self._arena = np.empty(plan.size + ALIGN, np.uint8)
        base = self._arena.ctypes.data
        base += -base % ALIGN
        table = self._table.copy()
        for buf, offset in plan.offsets.items():
            table[buf] = base + offset
        for name, buf in self.program.inputs.items():
            table[buf] = arrays[name].ctypes.data
        outputs: dict[int, np.ndarray] = {}
        for b in self.program.buffers:
            if b.kind == OUTPUT:
                outputs[b.id] = np.empty(evaluate_shape(b.shape, env), b.dtype.np)
                table[b.id] = outputs[b.id].ctypes.data
        dims = np.array([env[s] for s in self.program.symbols] or [0], np.int64)
        if times is not None:
            self._run_launches(table, dims, times)
            return {name: self._result(buf, outputs, arrays) for name, buf in self.program.outputs}
        for i, seg in enumerate(self.segments):
            if i % 2 == 0:
                self._entries[i](table.ctypes.data, dims.ctypes.data)
            elif transfer is None:
                raise BackendError(f"program has a {type(seg[0]).__name__.lower()} but no transport was given")
            else:
                transfer(seg[0], self._view(seg[0].buffer, int(table[seg[0].buffer]), env))
        return {name: self._result(buf, outputs, arrays) for name, buf in self.program.outputs}

    def _run_launches(self, table: np.ndarray, dims: np.ndarray, times: list) -> None:
        launches = [ins for ins in self.program.instrs if isinstance(ins, Launch)]
        for i, ins in enumerate(launches):
            fn = getattr(self.lib, f"dnet_launch_{i}")
            fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p], None
            start = self._clock()
            fn(table.ctypes.data, dims.ctypes.data)
            times.append((ins, self._clock() - start))

    def _view(self, buf: int, address: int, env) -> np.ndarray:
        b = self.program.buffers[buf]
        shape = evaluate_shape(b.shape, env)
        size = int(np.prod(shape)) * b.dtype.itemsize
        raw = (ctypes.c_char * size).from_address(address)
        return np.frombuffer(raw, dtype=b.dtype.np).reshape(shape)

    def _result(self, buf: int, outputs: dict, arrays: dict) -> np.ndarray:
        b = self.program.buffers[buf]
        if b.kind == OUTPUT:
            return outputs[buf]
        if b.kind in (INPUT, STATE):
            return arrays[b.name].copy()
        if b.kind == WEIGHT:
            return self.weights[buf].copy()
        raise BackendError(f"output buffer %{buf} is a {b.kind}")





def _is_symbol(d: Dim) -> bool:
    return len(d.terms) == 1 and d.terms[0][1] == 1 and len(d.terms[0][0]) == 1 and isinstance(d.terms[0][0][0], str)


def _state_array(name: str, array, buffer) -> np.ndarray:
    """A state is written in place, so it is bound as it is: never a converted copy."""
    if not isinstance(array, np.ndarray) or array.dtype != buffer.dtype.np or not array.flags.c_contiguous \
            or not array.flags.writeable:
        raise ShapeError(f"state '{name}' must be a writeable C-contiguous {buffer.dtype} numpy array")
    return array
