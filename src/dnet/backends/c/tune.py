"""Kernel autotuning on this node, the timing half (`dnet tune`): a compiled C program's f32 Gemms
timed in their variants, on the program's own buffers, the winners kept per host.

`kernel.tune.search` says which tiles to try; here each step's variants of every Gemm kernel are
rendered into one small library (`library.render_variants`: the kernels renamed, each with an entry
running its launch), compiled once (through the compile cache), and run on the buffer table of one
run of the model (`ProgramExecutor.launch_table`, filled by running the model once first, so every
operand holds real activations). Before it is timed, each variant's result is checked against the
incumbent's on the same inputs: a tile must change the speed, never the result. A time is the least
over rounds in which every variant runs once in turn, so a burst of load on a shared machine hits
them all alike, and the search confirms each winner against its start tile before keeping it. The records go to `core.tuning.TuneCache`, keyed by `kernel.tune.tuning_key`, and
`CBackend.prepare` applies them to every later compile of a kernel with that key.
"""
from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from dnet.backends.c.device import CLoader
from dnet.backends.c.library import render_variants
from dnet.core import progress
from dnet.core.shapes import evaluate_shape
from dnet.core.tuning import TuneCache
from dnet.errors import BackendError, DnetError
from dnet.hardware import detect
from dnet.kernel.ir import GemmTile, Kernel
from dnet.kernel.printer import index_str
from dnet.kernel.tune import gemm_of, search, tile_record, tuning_key, with_tile
from dnet.program.instructions import Launch, Program

BACKEND = "c"
ROUNDS = 7            # timings per variant and step; the least is kept
MIN_SAMPLE = 0.004    # seconds one timing lasts at least (a fast kernel is run several times in a row)


@dataclass
class TunedKernel:
    kernel: str
    shape: str                      # "m=... n=... k=..." as the kernel IR prints it
    launches: int                   # per run of the model
    start: GemmTile
    best: GemmTile
    default_seconds: float          # one launch, the analytic tile
    seconds: float                  # one launch, the tuned tile
    trials: int
    complete: bool
    key: str = ""                   # its record's key in the tuning cache


@dataclass
class TuneReport:
    kernels: list[TunedKernel]
    seconds: float                  # wall time the tuning took
    budget: float
    cache: Path
    records: dict[str, dict] = field(default_factory=dict)   # what was written, by key

    def keep_analytic(self) -> None:
        """Rewrite this tuning's records with the analytic tiles: what a caller does when the tuned tiles,
        winners one kernel at a time, do not make the whole model faster (a kernel timed alone, again and
        again, finds its operands in caches that the model's other kernels would have evicted)."""
        fixed = {k.key: {**self.records[k.key], "tile": tile_record(k.start), "seconds": k.default_seconds,
                         "kept_analytic": True} for k in self.kernels if k.key in self.records}
        TuneCache.at(self.cache).update(fixed)
        self.records = fixed


def tune(runner: Any, inputs: Mapping[str, np.ndarray], budget: float = 120.0, passes: int = 2,
         cache_dir: str | Path | None = None, clock: Callable[[], float] = time.monotonic) -> TuneReport:
    """Tune the f32 Gemms of a C runner (`dnet.compile(..., target="c")`'s) on `inputs` within
    `budget` seconds, and record the winners in this host's tuning cache."""
    began = clock()
    if budget < 0 or passes < 1:
        raise DnetError(f"a tuning budget must be >= 0 seconds and passes >= 1 (got {budget}, {passes})")
    compiled = getattr(runner, "compiled", None)
    if compiled is None:
        raise DnetError("dnet tune needs a model compiled here, not a loaded artefact")
    module = runner.module
    program: Program = compiled.program
    launches = [ins for ins in program.instrs if isinstance(ins, Launch)]
    first: dict[str, int] = {}
    for i, ins in enumerate(launches):
        first.setdefault(ins.kernel, i)
    kernels = {name: k for name, k in compiled.kernels.items() if name in first and gemm_of(k) is not None}
    cache = TuneCache(detect().fingerprint(), cache_dir)
    if not kernels:
        return TuneReport([], clock() - began, budget, cache.path)
    table, dims, env, keep = module.launch_table(inputs)
    for i in range(len(launches)):          # one run, so every operand holds what the model computes
        module.launcher.run_launch(i, table, dims)
    timer = _Timer(kernels, {n: launches[first[n]] for n in kernels}, program, table, dims, env,
                   CLoader(cache_dir), module.threads)
    with progress.task("tune kernels", total=None, unit="steps"):
        results = search({n: gemm_of(k).tile for n, k in kernels.items()}, timer, max(0.0, budget - (clock() - began)),
                         passes, clock=clock)
    del keep
    threads = module.threads
    report, records = [], {}
    for name, r in sorted(results.items(), key=lambda item: -item[1].default_seconds * _count(launches, item[0])):
        gemm = gemm_of(kernels[name])
        count = _count(launches, name)
        report.append(TunedKernel(name, f"m={index_str(gemm.m)} n={index_str(gemm.n)} k={index_str(gemm.k)}",
                                  count, r.start, r.best, r.default_seconds, r.seconds, len(r.trials), r.complete))
        report[-1].key = tuning_key(kernels[name], threads, BACKEND)
        records[report[-1].key] = {
            "tile": tile_record(r.best), "seconds": r.seconds, "default_seconds": r.default_seconds,
            "dims": dict(env), "threads": threads, "backend": BACKEND, "shape": report[-1].shape,
            "flops": _flops(gemm, env), "tuned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    cache.update(records)
    return TuneReport(report, clock() - began, budget, cache.path, records)


def _count(launches: list[Launch], kernel: str) -> int:
    return sum(1 for ins in launches if ins.kernel == kernel)


def _flops(gemm, env: Mapping[str, int]) -> float:
    """2 m n k per batch element, at the symbol values tuned for."""
    m, n, k = (int(evaluate_shape((d,), env)[0]) for d in (gemm.m, gemm.n, gemm.k))
    batch = int(np.prod(evaluate_shape(tuple(gemm.batch), env), dtype=np.int64)) if gemm.batch else 1
    return 2.0 * batch * m * n * k


class _Timer:
    """`kernel.tune.Measure` for C: compile a step's variants together, check and time them."""

    def __init__(self, kernels: dict[str, Kernel], launches: dict[str, Launch], program: Program,
                 table: np.ndarray, dims: np.ndarray, env: Mapping[str, int], loader: CLoader, threads: int):
        self.kernels, self.launches, self.program = kernels, launches, program
        self.table, self.dims, self.env = table, dims, env
        self.loader, self.threads = loader, threads
        self.libraries: list[ctypes.CDLL] = []   # kept loaded: unloading a library whose pool threads live is unsafe

    def __call__(self, tries: dict[str, list[GemmTile]]) -> dict[str, list[float]]:
        variants, entries, names = {}, {}, {}
        for name, tiles in tries.items():
            names[name] = []
            for j, tile in enumerate(tiles):
                vname = f"{name}_t{j}"
                variants[vname] = with_tile(self.kernels[name], tile, vname)
                entries[f"try_{vname}"] = replace(self.launches[name], kernel=vname)
                names[name].append(f"dnet_try_{vname}")
        lib = ctypes.CDLL(str(self.loader.library(render_variants(variants, entries, self.program))))
        self.libraries.append(lib)
        lib.dnet_set_threads.argtypes = [ctypes.c_int]
        lib.dnet_set_threads(int(self.threads))
        table, dims = self.table.ctypes.data, self.dims.ctypes.data
        fns = {name: [self._entry(lib, e) for e in entries_] for name, entries_ in names.items()}
        for name, calls in fns.items():
            self._check(name, calls, table, dims)
        return {name: self._time(calls, table, dims) for name, calls in fns.items()}

    @staticmethod
    def _entry(lib: ctypes.CDLL, name: str):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p], None
        return fn

    def _check(self, name: str, calls: list, table: int, dims: int) -> None:
        """Every variant computes what the incumbent (calls[0]) does, within f32 rounding of a
        different summation order."""
        out = self._output(name)
        calls[0](table, dims)
        want = out.copy()
        scale = float(np.nanmax(np.abs(want))) if want.size and np.isfinite(want).any() else 1.0
        for j, call in enumerate(calls[1:], 1):
            call(table, dims)
            if not np.allclose(out, want, rtol=1e-4, atol=1e-5 * max(scale, 1.0), equal_nan=True):
                raise BackendError(f"tuning {name}: variant {j} computes a different result "
                                   f"(max difference {float(np.nanmax(np.abs(out - want))):.3g})")

    def _output(self, name: str) -> np.ndarray:
        kernel, launch = self.kernels[name], self.launches[name]
        buf = next(b for p, b in zip(kernel.params, launch.args) if p.output)
        b = self.program.buffers[buf]
        shape = evaluate_shape(b.shape, self.env)
        size = int(np.prod(shape, dtype=np.int64)) * b.dtype.np.itemsize
        raw = (ctypes.c_char * size).from_address(int(self.table[buf]))
        return np.frombuffer(raw, dtype=b.dtype.np).reshape(shape)

    @staticmethod
    def _time(calls: list, table: int, dims: int) -> list[float]:
        """Seconds per call of each variant: the least over ROUNDS rounds, variants in turn each round
        (load from other processes only ever adds time, so the least is the kernel's own)."""
        start = time.perf_counter()
        calls[0](table, dims)
        once = max(time.perf_counter() - start, 1e-7)
        repeat = max(1, int(MIN_SAMPLE / once))
        samples: list[list[float]] = [[] for _ in calls]
        for r in range(ROUNDS):
            order = list(range(len(calls)))
            order = order[r % len(order):] + order[:r % len(order)]   # no variant always runs first
            for j in order:
                start = time.perf_counter()
                for _ in range(repeat):
                    calls[j](table, dims)
                samples[j].append((time.perf_counter() - start) / repeat)
        return [min(s) for s in samples]
