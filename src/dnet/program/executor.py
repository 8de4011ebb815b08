"""Generic program execution: what every compiled backend does around its kernels.

One run of a program: bind the inputs (`program.binding`), take the arena plan for the symbols'
values (made once per power-of-two bucket when every intermediate grows with the symbols, as a
decode step's context does), place inputs, states, weights, outputs and arena buffers in the
buffer table, run the segments in order with the transfers between them, bring outputs and
states back, and return the outputs by name. A backend supplies only an `Allocator` and a
`Launcher` (`program.device`); this class is the same for C, LLVM, OpenCL and CUDA.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping

import numpy as np

from dnet.core.shapes import evaluate_shape
from dnet.errors import BackendError
from dnet.program.binding import Bound, InputBinder
from dnet.program.device import Allocator, HostAllocator, Launcher
from dnet.program.collective import Collective, missing_collective
from dnet.program.instructions import INPUT, OUTPUT, STATE, WEIGHT, AllReduce, Launch, Program, Recv, segments
from dnet.program.memory import ArenaPlan, bucket, grows_with_symbols, plan_arena

Transfer = Callable[[object, np.ndarray], None]   # (Send | Recv, the buffer as an array)


class ProgramExecutor:
    """A program loaded on a device: call `run(inputs)` with numpy arrays, get numpy outputs.

    Calls from several threads take turns (one arena per executor).
    """

    def __init__(self, program: Program, weights: Mapping[int, np.ndarray], allocator: Allocator,
                 launcher: Launcher):
        self.program = program
        self.allocator = allocator
        self.launcher = launcher
        self.weights = {int(k): np.ascontiguousarray(v) for k, v in weights.items()}
        self.segments = segments(program)
        self.binder = InputBinder.of_program(program)
        self._launches = [ins for ins in program.instrs if isinstance(ins, Launch)]
        self._plans: dict[tuple, ArenaPlan] = {}
        self._grows: bool | None = None
        self._lock = threading.Lock()
        self._table = allocator.table(len(program.buffers))
        for buf, array in self.weights.items():
            allocator.put(self._table, buf, allocator.to_device(array, writable=False))
        self._outputs = [b for b in program.buffers if b.kind == OUTPUT]
        self._states = [(name, buf) for name, buf in program.inputs.items() if program.buffers[buf].kind == STATE]
        self._state_ids = {buf for _, buf in self._states}
        # host memory: handles are addresses and kernels write the arrays themselves (the fast path)
        self._host = isinstance(allocator, HostAllocator)

    # -- binding and planning ----------------------------------------------------------
    def bind(self, inputs: Mapping[str, Any]) -> Bound:
        """The inputs checked and the symbols bound (`program.binding.InputBinder`)."""
        return self.binder.bind(inputs)

    def plan(self, env: Mapping[str, int]) -> ArenaPlan:
        """The arena plan for these symbol values, made once per bucket of them."""
        if self._grows is None:
            self._grows = grows_with_symbols(self.program)
        if self._grows:
            env = bucket(env)
        key = tuple(env[s] for s in self.program.symbols)
        if key not in self._plans:
            self._plans[key] = plan_arena(self.program, env)
        return self._plans[key]

    # -- running -----------------------------------------------------------------------
    def run(self, inputs: Mapping[str, Any], transfer: Transfer | None = None,
            collective: Collective | None = None) -> dict[str, np.ndarray]:
        """Outputs by name; `transfer` moves a Send/Recv's buffer, `collective` sums an AllReduce's."""
        with self._lock:
            return self._execute(inputs, transfer, None, collective)

    def profile(self, inputs: Mapping[str, Any], clock=time.perf_counter) -> list[tuple[Launch, float]]:
        """Run once, launch by launch, timing each: [(launch, seconds)] in program order.

        With one thread, `clock=time.thread_time` counts CPU time only, which a loaded machine
        disturbs far less than wall time.
        """
        times: list[tuple[Launch, float]] = []
        with self._lock:
            self._execute(inputs, None, (times, clock))
        return times

    def launch_table(self, inputs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, int], dict]:
        """(buffer table, dims, symbol values, outputs) of one run on `inputs`, every buffer placed and
        nothing run: what a tuner runs single launches on (`launcher.run_launch(i, table, dims)`).
        Host memory only; keep `outputs` (the arrays the table points at) while the table is used,
        and run nothing else on this executor meanwhile (the arena is shared)."""
        if not self._host:
            raise BackendError("launch_table: only a program in host memory runs launches on a bare table")
        bound = self.bind(inputs)
        plan = self.plan(bound.env)
        table = self.allocator.copy_table(self._table)
        outputs = {b.id: np.empty(evaluate_shape(b.shape, bound.env), b.dtype.np) for b in self._outputs}
        self._place_host(table, self.allocator.arena(plan.size), plan, bound.arrays, outputs)
        dims = np.array([bound.env[s] for s in self.program.symbols] or [0], np.int64)
        return table, dims, dict(bound.env), {"outputs": outputs, "inputs": bound.arrays}

    def _execute(self, inputs, transfer, timing, collective=None) -> dict[str, np.ndarray]:
        alloc = self.allocator
        bound = self.bind(inputs)
        env, arrays = bound.env, bound.arrays
        plan = self.plan(env)
        table = alloc.copy_table(self._table)
        arena = alloc.arena(plan.size)
        outputs = {b.id: np.empty(evaluate_shape(b.shape, env), b.dtype.np) for b in self._outputs}
        if self._host:
            self._place_host(table, arena, plan, arrays, outputs)
        else:
            handles = self._place(table, arena, plan, arrays, outputs)
        dims = np.array([env[s] for s in self.program.symbols] or [0], np.int64)
        if timing is not None:
            self._run_launches(table, dims, *timing)
        else:
            self._run_segments(table, dims, env, transfer, collective)
        if not self._host:
            for b in self._outputs:
                alloc.to_host(handles[b.id], outputs[b.id])
            for name, buf in self._states:
                alloc.to_host(handles[buf], arrays[name])
        return {name: self._result(buf, outputs, arrays) for name, buf in self.program.outputs}

    def _place(self, table, arena, plan: ArenaPlan, arrays: dict, outputs: dict) -> dict[int, Any]:
        """Every buffer of the run into the table, through the allocator; returns the handles to bring back."""
        alloc = self.allocator
        for buf, offset in plan.offsets.items():
            alloc.put(table, buf, alloc.at(arena, offset))
        handles: dict[int, Any] = {}
        for name, buf in self.program.inputs.items():
            handles[buf] = alloc.to_device(arrays[name], buf in self._state_ids)
            alloc.put(table, buf, handles[buf])
        for buf, array in outputs.items():
            handles[buf] = alloc.to_device(array, writable=True)
            alloc.put(table, buf, handles[buf])
        return handles

    def _place_host(self, table: np.ndarray, arena: int, plan: ArenaPlan, arrays: dict, outputs: dict) -> None:
        """`_place` for host memory (`HostAllocator`): a handle is the array's address and nothing comes
        back, so the table is filled directly (a decode step binds dozens of states every token)."""
        for buf, offset in plan.offsets.items():
            table[buf] = arena + offset
        for name, buf in self.program.inputs.items():
            table[buf] = arrays[name].ctypes.data
        for buf, array in outputs.items():
            table[buf] = array.ctypes.data

    def _run_segments(self, table, dims: np.ndarray, env: Mapping[str, int], transfer, collective) -> None:
        for i, seg in enumerate(self.segments):
            if i % 2 == 0:
                self.launcher.run_segment(i, table, dims)
                continue
            ins = seg[0]
            if isinstance(ins, AllReduce):
                if ins.size == 1:
                    continue
                if collective is None:
                    raise missing_collective(ins.group, ins.size)
            elif transfer is None:
                raise BackendError(f"program has a {type(seg[0]).__name__.lower()} but no transport was given")
            b = self.program.buffers[ins.buffer]
            handle = self.allocator.get(table, ins.buffer)
            array = self.allocator.view(handle, evaluate_shape(b.shape, env), b.dtype.np)
            if isinstance(ins, AllReduce):
                collective(ins.group, array)
                self.allocator.received(handle, array)
                continue
            transfer(ins, array)
            if isinstance(ins, Recv):
                self.allocator.received(handle, array)

    def _run_launches(self, table, dims: np.ndarray, times: list, clock) -> None:
        for i, ins in enumerate(self._launches):
            start = clock()
            self.launcher.run_launch(i, table, dims)
            times.append((ins, clock() - start))

    def _result(self, buf: int, outputs: dict, arrays: dict) -> np.ndarray:
        b = self.program.buffers[buf]
        if b.kind == OUTPUT:
            return outputs[buf]
        if b.kind in (INPUT, STATE):
            return arrays[b.name].copy()
        if b.kind == WEIGHT:
            return self.weights[buf].copy()
        raise BackendError(f"output buffer %{buf} is a {b.kind}")
