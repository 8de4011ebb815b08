"""Where a compiled model's time goes, kernel by kernel: `dnet profile`.

The module runs launch by launch (`CModule.profile`), `repeats` times; each kernel's time is the
median over repeats of its launches' sum. A kernel's work comes from the graph: its flops are those
of the graph nodes it computes (its root and the producers fused into it, per the schedule), its
bytes those of the buffers its launches read and write (weights in their stored size). Rates and
the share of the node's probed peaks (f32 matmul FLOP/s, memory bandwidth) follow from those.
Hardware counters (cycles, instructions, cache misses, ...) are read around each launch where the
OS gives them (`dnet.core.perf_counters`); elsewhere the profile says why and reports times alone.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from dnet.core.perf_counters import Counters, CountersUnavailable, open_counters
from dnet.core.shapes import evaluate_shape
from dnet.graph.analysis import flops_cost
from dnet.graph.ops import Op
from dnet.program.instructions import Launch


@dataclass
class KernelProfile:
    kernel: str
    ops: str                    # the graph ops it computes, root last ("rms_norm" composites appear as parts)
    calls: int                  # launches per run
    seconds: float              # per run: the median over repeats of its launches' sum
    flops: float                # per run
    bytes: float                # per run: buffers read and written
    counters: dict[str, float] = field(default_factory=dict)   # per run, medians

    @property
    def gflops(self) -> float:
        return self.flops / self.seconds / 1e9 if self.seconds else 0.0

    @property
    def gbytes(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds else 0.0


@dataclass
class Profile:
    kernels: list[KernelProfile]        # slowest first
    seconds: float                      # per run: the kernels' total
    repeats: int
    counters_note: str = ""             # why there are no counters, when there are none
    trace: list[dict] = field(default_factory=list)   # one run's launches as Chrome trace events

    def to_json(self) -> dict:
        return {"seconds": self.seconds, "repeats": self.repeats, "counters_note": self.counters_note,
                "kernels": [{**vars(k), "gflops": k.gflops, "gbytes_per_s": k.gbytes} for k in self.kernels]}


def profile(runner: Any, inputs: Mapping[str, np.ndarray], repeats: int = 10, counters: bool = True) -> Profile:
    """Profile a C runner (`dnet.compile(..., target="c")`'s) on `inputs`."""
    module = runner.module
    env = module.bind(inputs).env
    opened, note = _counters(counters)
    names = ["seconds", *(opened.events if opened else [])]
    clock = _clock(opened)
    module.profile(inputs, clock)                # a warm-up run: first touches of code and weights
    per_run: list[dict[str, np.ndarray]] = []
    calls: dict[str, int] = defaultdict(int)
    trace: list[dict] = []
    try:
        for r in range(repeats):
            sums: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(names)))
            start = clock()
            for launch, delta in module.profile(inputs, clock):
                sums[launch.kernel] += delta
                if r == 0:
                    calls[launch.kernel] += 1
            if r == repeats - 1:
                trace = _trace(module, inputs, start)
            per_run.append(sums)
    finally:
        if opened is not None:
            opened.close()
    work = _work(runner, env)
    kernels = []
    for name in calls:
        medians = np.median(np.stack([run[name] for run in per_run]), axis=0)
        flops, nbytes, ops = work.get(name, (0.0, 0.0, ""))
        kernels.append(KernelProfile(name, ops, calls[name], float(medians[0]), flops, nbytes,
                                     {e: float(v) for e, v in zip(names[1:], medians[1:])}))
    kernels.sort(key=lambda k: -k.seconds)
    return Profile(kernels, sum(k.seconds for k in kernels), repeats, note, trace)


def _counters(wanted: bool) -> tuple[Counters | None, str]:
    if not wanted:
        return None, "counters not asked for"
    try:
        return open_counters(), ""
    except CountersUnavailable as err:
        return None, str(err)


def _clock(counters: Counters | None):
    """A clock whose readings are vectors (seconds, then each counter), so `after - before` is every delta."""
    if counters is None:
        return lambda: np.array([time.perf_counter()])
    events = counters.events
    return lambda: np.array([time.perf_counter(), *(counters.read()[e] for e in events)])


def _trace(module: Any, inputs: Mapping[str, np.ndarray], origin: np.ndarray) -> list[dict]:
    """One run, launch by launch, as Chrome trace "complete" events (microseconds)."""
    events, t = [], 0.0
    for launch, seconds in module.profile(inputs, time.perf_counter):
        events.append({"name": launch.kernel, "ph": "X", "pid": 1, "tid": 1, "ts": round(t * 1e6, 3),
                       "dur": round(seconds * 1e6, 3), "cat": "kernel"})
        t += seconds
    return events


def _work(runner: Any, env: Mapping[str, int]) -> dict[str, tuple[float, float, str]]:
    """Per kernel, per run: flops (of the graph nodes it computes), bytes (of its launches' buffers), ops."""
    program = runner.module.program
    nbytes: dict[str, float] = defaultdict(float)
    for ins in program.instrs:
        if isinstance(ins, Launch):
            nbytes[ins.kernel] += sum(_buffer_bytes(program.buffers[b], env) for b in ins.args)
    compiled = getattr(runner, "compiled", None)
    if compiled is None or compiled.schedule is None:      # a loaded artefact: no graph to count flops on
        return {k: (0.0, v, "") for k, v in nbytes.items()}
    graph, materialized = compiled.schedule.graph, compiled.schedule.materialized
    cost = flops_cost(graph, dict(env))
    out = {}
    for name, kernel in compiled.kernels.items():
        root = kernel.meta.get("root")
        nodes = _fused(graph, root, materialized) if root is not None else []
        flops = sum(float(cost(graph.nodes[n])) for n in nodes if not _dequantize(graph, n)) \
            * _launches(program, name)
        ops = "+".join(dict.fromkeys(str(graph.nodes[n].op) for n in nodes))
        out[name] = (flops, nbytes.get(name, 0.0), ops)
    return out


def _dequantize(graph: Any, n: int) -> bool:
    """A cast of a weight: done in registers inside the matmul that reads it, not arithmetic of its own."""
    node = graph.nodes[n]
    return node.op is Op.CAST and all(graph.nodes[i].op is Op.CONST for i in node.inputs)


def _launches(program: Any, kernel: str) -> int:
    return sum(1 for ins in program.instrs if isinstance(ins, Launch) and ins.kernel == kernel) or 1


def _fused(graph: Any, root: int, materialized: set[int]) -> list[int]:
    """The root and the producers computed inside its kernel (not materialized, not sources), inputs first."""
    seen, order = set(), []

    def visit(n: int) -> None:
        if n in seen:
            return
        seen.add(n)
        node = graph.nodes[n]
        if node.inputs and (n == root or n not in materialized):
            for i in node.inputs:
                visit(i)
            order.append(n)

    visit(root)
    return order


def _buffer_bytes(buffer: Any, env: Mapping[str, int]) -> float:
    # the storage's element size: a block-quantized weight's buffer is shaped in bytes (uint8)
    return float(np.prod(evaluate_shape(buffer.shape, env), dtype=np.float64)) * buffer.dtype.np.itemsize
