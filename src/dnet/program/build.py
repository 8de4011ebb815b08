"""Graph -> program: schedule the graph into kernels, then lay out buffers and instructions.

Generic: the target (`kernel.target`: a CPU's tiles and threads, a GPU's grid) shapes the kernels,
and the backend's `WeightPacker` lays out the weights its kernels read packed (the C backend's
panels: `backends/c/packing.py`). This module only places them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from dnet.core import progress
from dnet.core.dtypes import DType
from dnet.core.shapes import shape_symbols
from dnet.graph.ir import Graph
from dnet.graph.ops import Op
from dnet.hardware import Host
from dnet.kernel import gemm as gm
from dnet.kernel.ir import Gemm, Kernel
from dnet.kernel.schedule import Schedule, schedule
from dnet.kernel.target import AnyTarget
from dnet.errors import BackendError
from dnet.program.instructions import (INPUT, OUTPUT, SCRATCH, STATE, TEMP, WEIGHT, Alloc, AllReduce, Buffer, Free,
                                       Launch, Program)


@dataclass
class Compiled:
    """A program with what it needs to run: its kernels and its weights (by buffer id)."""
    program: Program
    kernels: dict[str, Kernel]
    weights: dict[int, np.ndarray] = field(default_factory=dict)
    schedule: Schedule | None = None


class WeightPacker(Protocol):
    """A backend's weight layout: the array a launch argument such as `('packed', const node, nr)`
    (what the scheduler asks for a weight its kernel reads pre-packed) stands for."""

    def pack(self, graph: Graph, arg: tuple, kernel: Kernel) -> tuple[str, DType, np.ndarray]:
        """(buffer name, dtype, array); a name with '@' marks a weight the graph does not hold as it is."""


def build_program(graph: Graph, target: AnyTarget | Host | None = None,
                  packer: WeightPacker | None = None) -> Compiled:
    """The program of `graph` for `target` (a Target, a Host, or None: this CPU); `packer` lays out
    the weights the kernels read packed (a program that needs one and has none is an error)."""
    sched = schedule(graph, target)
    b = _Builder(graph, sched, packer)
    return b.run()


class _Builder:
    def __init__(self, graph: Graph, sched: Schedule, packer: WeightPacker | None = None):
        self.graph, self.sched, self.packer = graph, sched, packer
        self.buffers: list[Buffer] = []
        self.by_arg: dict = {}
        self.weights: dict[int, np.ndarray] = {}
        self.instrs: list = []

    def buffer(self, kind: str, dtype, shape, name: str = "") -> int:
        self.buffers.append(Buffer(len(self.buffers), kind, dtype, tuple(shape), name))
        return len(self.buffers) - 1

    def run(self) -> Compiled:
        g = self.graph
        inputs = {}
        for i in g.inputs:
            node = g.nodes[i]
            kind = STATE if node.op is Op.STATE else INPUT
            self.by_arg[i] = inputs[node.attrs["name"]] = self.buffer(kind, node.dtype, node.shape, node.attrs["name"])
        outputs = set(g.outputs)
        for i in g.outputs:
            node = g.nodes[i]
            if i not in self.by_arg:
                name = g.output_names[g.outputs.index(i)]
                if node.op is Op.CONST:
                    self.by_arg[i] = self._weight(i)
                else:
                    self.by_arg[i] = self.buffer(OUTPUT, node.dtype, node.shape, name)
        last_use = self._last_uses()
        # packing a float model's matmul weights into panels is the slow part here (copies of every weight)
        with progress.task("lay out buffers and weights", total=len(self.sched.steps), unit="launches") as task:
            for pos, step in enumerate(self.sched.steps):
                self._place(pos, step, outputs, last_use)
                task.advance()
        symbols = sorted(set().union(*(shape_symbols(b.shape) for b in self.buffers), *(
            set(k.dims) for k in self.sched.kernels.values())))
        out_list = [(name, self.by_arg[i]) for name, i in zip(g.output_names, g.outputs)]
        program = Program(self.buffers, self.instrs, symbols, inputs, out_list)
        return Compiled(program, dict(self.sched.kernels), self.weights, self.sched)

    def _place(self, pos: int, step, outputs: set[int], last_use: dict[int, int]) -> None:
        """One launch: its output's buffer, its arguments (weights packed on first use), the frees after it."""
        g = self.graph
        kernel = self.sched.kernels[step.kernel]
        if g.nodes[step.root].op is Op.SCATTER:
            self.by_arg[step.root] = self._written_in_place(step.root)
        elif step.root not in outputs:
            node = g.nodes[step.root]
            self.by_arg[step.root] = self.buffer(TEMP, node.dtype, node.shape)
            self.instrs.append(Alloc(self.by_arg[step.root]))
        args, scratch = [], None
        for a in step.args:
            if a == gm.SCRATCH:
                scratch = self._scratch(kernel)
                args.append(scratch)
            else:
                args.append(self._arg(a, kernel))
        self.instrs.append(Launch(step.kernel, tuple(args), kernel.dims))
        root = g.nodes[step.root]
        if root.op is Op.ALL_REDUCE:     # the kernel wrote this member's partial sum; then the group's
            self.instrs.append(AllReduce(self.by_arg[step.root], root.attrs["group"], root.attrs["size"]))
        if scratch is not None:
            self.instrs.append(Free(scratch))
        for nid in sorted(n for n, p in last_use.items() if p == pos and n not in outputs):
            if self.buffers[self.by_arg[nid]].kind == TEMP:
                self.instrs.append(Free(self.by_arg[nid]))

    def _written_in_place(self, nid: int) -> int:
        """A SCATTER writes its destination's buffer, which must be a state (the caller's array)."""
        dest = self.graph.nodes[self.graph.nodes[nid].inputs[0]]
        if dest.op is not Op.STATE:
            raise BackendError(f"scatter %{nid} ({self.graph.nodes[nid].name}) writes in place: its destination "
                               f"must be a state, not a {dest.op}")
        if nid in self.graph.outputs:
            raise BackendError(f"scatter %{nid} is a graph output: read its state instead")
        return self.by_arg[dest.id]

    def _last_uses(self) -> dict[int, int]:
        last: dict[int, int] = {}
        for pos, step in enumerate(self.sched.steps):
            for a in step.args:
                if isinstance(a, int) and a >= 0:
                    last[a] = pos
        return last

    def _arg(self, a, kernel: Kernel) -> int:
        if a in self.by_arg:
            return self.by_arg[a]
        if isinstance(a, tuple):       # ('packed', const node, nr, ...) or ('scales', ...): the backend's layout
            self.by_arg[a] = self._packed(a, kernel)
        else:
            self.by_arg[a] = self._weight(a)
        return self.by_arg[a]

    def _weight(self, nid: int) -> int:
        node = self.graph.nodes[nid]
        array = np.ascontiguousarray(self.graph.weights[node.attrs["name"]], dtype=node.dtype.np)
        buf = self.buffer(WEIGHT, node.dtype, array.shape, node.attrs["name"])
        self.weights[buf] = array
        return buf

    def _packed(self, arg: tuple, kernel: Kernel) -> int:
        if self.packer is None:
            raise BackendError(f"kernel {kernel.name} reads weight '{self.graph.nodes[arg[1]].attrs['name']}' "
                               "packed, and no weight packer was given",
                               hint="pass the backend's packer: build_program(graph, target, packer)")
        name, dtype, array = self.packer.pack(self.graph, arg, kernel)
        buf = self.buffer(WEIGHT, dtype, array.shape, name)
        self.weights[buf] = array
        return buf

    def _scratch(self, kernel: Kernel) -> int:
        gemm = next(s for s in kernel.body if isinstance(s, Gemm))
        elements = gm.scratch_elements(gemm)
        buf = self.buffer(SCRATCH, DType.F32, (elements,))
        self.instrs.append(Alloc(buf))
        return buf
