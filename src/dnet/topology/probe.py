"""Microbenchmarks of the local node: matmul rate per dtype through the node's own
backend, memory bandwidth, free memory, cores, vector width, caches; and links to peers.

Each figure is the median of several timed runs, with its spread ((max - min) / median)
kept beside it. Results are cached on disk per hardware fingerprint, so a second
`dnet probe` on the same machine and backend returns at once. A cached probe expires (a
week; an hour if it was noisy), one whose f32 matmul rate no core could be that slow at is
measured again and, if still that slow, kept ten minutes only (dnet.topology.plausible),
and `forget` drops the cache when the feedback loop finds the plans made from it far off.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from dnet import hardware
from dnet.core import progress
from dnet.core.dtypes import DType
from dnet.core.files import write_text_atomic
from dnet.core.tuning import TuneCache
from dnet.core.types import TensorType
from dnet.graph.builder import GraphBuilder
from dnet.graph.ir import Graph
from dnet.graph.ops import ELEMENTWISE, LOGICAL, Op, OpClass
from dnet.topology.model import Device
from dnet.topology.plausible import NOISY_SPREAD, implausible

log = logging.getLogger("dnet.probe")
MAX_AGE_S = 7 * 86400          # machines change (a BIOS, a governor, a neighbour): measure again after a week
NOISY_MAX_AGE_S = 3600         # ... after an hour where a figure varied a lot between runs
SUSPECT_MAX_AGE_S = 600        # ... after ten minutes where a figure is implausible (a busy machine)
FAR_OFF = 4.0                  # measured / modelled stage times past this (either way): the probe is suspect

# The seam to the backends: given (n, dtype), return a callable that runs one n x n x n
# matmul on the backend. The default goes through the backend registry, so any backend
# that registers itself (numpy now, c next) is probed the same way.
MatmulKernel = Callable[[int, DType], Callable[[], object]]


def backend_matmul(backend: str = "numpy") -> MatmulKernel:
    """A MatmulKernel that runs a one-op graph through the named backend."""
    from dnet.backends import registry

    def make(n: int, dtype: DType) -> Callable[[], object]:
        b = GraphBuilder()
        x = b.input("a", TensorType((n, n), dtype))
        y = b.input("b", TensorType((n, n), dtype))
        b.output("c", b.matmul(x, y))
        runner = registry.get(backend).prepare(b.finish())
        rng = np.random.default_rng(0)
        feeds = {"a": rng.standard_normal((n, n)).astype(dtype.np), "b": rng.standard_normal((n, n)).astype(dtype.np)}
        return lambda: runner.run(feeds)

    return make


@dataclass
class Measurement:
    median: float
    spread: float   # (max - min) / median over the runs
    runs: int


@dataclass
class ProbeReport:
    """What `dnet probe` measured: the device, and each figure's median and spread."""

    device: Device
    measurements: dict[str, Measurement] = field(default_factory=dict)
    fingerprint: str = ""
    cached: bool = False
    measured_at: float = 0.0                                  # time.time() when measured
    suspect: list[str] = field(default_factory=list)          # why it is not believed (kept briefly)

    def noisy(self) -> bool:
        return any(m.spread > NOISY_SPREAD for m in self.measurements.values())

    def age_limit(self) -> float:
        if self.suspect:
            return SUSPECT_MAX_AGE_S
        return NOISY_MAX_AGE_S if self.noisy() else MAX_AGE_S

    def to_json(self) -> dict:
        return {"device": asdict(self.device), "fingerprint": self.fingerprint, "measured_at": self.measured_at,
                "suspect": self.suspect, "measurements": {k: asdict(m) for k, m in self.measurements.items()}}

    @staticmethod
    def from_json(obj: dict) -> "ProbeReport":
        return ProbeReport(Device(**obj["device"]), {k: Measurement(**m) for k, m in obj["measurements"].items()},
                           obj["fingerprint"], measured_at=float(obj.get("measured_at", 0.0)),  # none: expired
                           suspect=list(obj.get("suspect", [])))


_CLOCK: contextvars.ContextVar[Callable[[], float]] = contextvars.ContextVar("clock", default=time.perf_counter)


@contextlib.contextmanager
def timed_by(clock: Callable[[], float]) -> Iterator[None]:
    """Inside, probes read `clock` (seconds) instead of the wall clock."""
    token = _CLOCK.set(clock)
    try:
        yield
    finally:
        _CLOCK.reset(token)


def cpu_clock():
    """Probes timed by this process's CPU time: on one BLAS thread, what other processes sharing
    the machine change least."""
    return timed_by(time.process_time)


def time_runs(fn: Callable[[], object], runs: int, warmup: int = 1,
              after_each: Callable[[], None] = lambda: None) -> Measurement:
    """Median seconds of `runs` calls of fn, after `warmup` untimed ones; `after_each()` is called after
    every call, outside the timed span (progress reporting must not be measured)."""
    clock = _CLOCK.get()
    for _ in range(warmup):
        fn()
        after_each()
    times = []
    for _ in range(runs):
        t0 = clock()
        fn()
        times.append(clock() - t0)
        after_each()
    med = statistics.median(times)
    return Measurement(med, (max(times) - min(times)) / med if med > 0 else 0.0, runs)


def _rate(work: float, m: Measurement) -> Measurement:
    """A time measurement turned into a rate (work per second); the spread carries over."""
    return Measurement(work / m.median, m.spread, m.runs)


# -- host facts (read in dnet.hardware, the one place) ---------------------------------------------
def core_count() -> int:
    return hardware.cores()


def available_memory() -> float:
    """Bytes the OS says a new process can use (MemAvailable), else total physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def vector_width(flags: set[str] | None = None) -> int:
    """Widest SIMD register in bits: 512 (AVX-512), 256 (AVX/AVX2), 128 (SSE2/NEON), else 0."""
    return hardware.vector_bits(hardware.cpu_flags() if flags is None else flags)


def cache_sizes() -> dict[str, float]:
    """Data/unified cache sizes per level ("l1", "l2", "l3" -> bytes)."""
    return {level: float(size) for level, size in hardware.cache_sizes().items()}


def fingerprint(backend: str) -> str:
    """Identifies hardware and software whose measurements are interchangeable."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    key = [platform.machine(), hardware.cpu_model(), core_count(), total, backend, np.__version__,
           sorted(hardware.cpu_flags())]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


# -- benchmarks ----------------------------------------------------------------------------------
_MATMUL_SIZES = {DType.F32: 512, DType.F16: 128, DType.BF16: 64}   # numpy has no fast f16/bf16 path


def probe_matmul(kernel: MatmulKernel, dtype: DType, n: int, runs: int) -> Measurement:
    """FLOP/s of an n x n x n matmul of `dtype`."""
    return _rate(2.0 * n**3, time_runs(kernel(n, dtype), runs))


def probe_memory_bandwidth(nbytes: int, runs: int) -> Measurement:
    """Bytes/s of a large copy (each byte read once and written once)."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    return _rate(2.0 * src.nbytes, time_runs(lambda: np.copyto(dst, src), runs))


def _one_op(op: Op, elements: int) -> tuple[Graph, dict[str, np.ndarray]]:
    """A graph of one element-wise or reduce op over `elements` values, and inputs for it."""
    b = GraphBuilder()
    logical = op in LOGICAL
    shape = (elements // 512, 512)
    dtype = DType.BOOL if logical else DType.F32
    arity = 3 if op is Op.WHERE else max(op.arity, 1)
    names = [f"x{i}" for i in range(arity)]
    types = [DType.BOOL if (logical or (op is Op.WHERE and i == 0)) else dtype for i in range(arity)]
    xs = [b.input(n, TensorType(shape, t)) for n, t in zip(names, types)]
    attrs = {"dtype": DType.F16} if op is Op.CAST else {}
    if op.cls is OpClass.REDUCE:
        attrs = {"axis": 1, "keepdim": False} if op is Op.ARGMAX else {"axes": (1,), "keepdim": False}
    b.output("y", b.node(op, xs, **attrs))
    rng = np.random.default_rng(0)
    feeds = {n: (rng.random(shape) > 0.5 if t is DType.BOOL else rng.uniform(0.5, 1.5, shape).astype(np.float32))
             for n, t in zip(names, types)}
    return b.finish(), feeds


RATED_OPS = [op for op in Op if op.cls in (*ELEMENTWISE, OpClass.REDUCE)]


def probe_op_rates(backend: str, elements: int, runs: int,
                   measured: Callable[[], None] = lambda: None) -> dict[str, Measurement]:
    """Elements per second of each element-wise and reduce op through the backend, on arrays of
    `elements` values (a one-op graph's time, less that of a one-op graph on 8 values: the fixed
    cost of a call and of an op is charged apart, as `op_overhead`). `measured()` is called after each op."""
    from dnet.backends import registry

    def timed(op: Op, n: int) -> Measurement:
        graph, feeds = _one_op(op, n)
        runner = registry.get(backend).prepare(graph)
        return time_runs(lambda: runner.run(feeds), runs)

    base = timed(Op.ADD, 512).median
    out = {}
    for op in RATED_OPS:
        m = timed(op, elements)
        # the fixed costs come off, but never more than half: noise must not make an op look free
        out[op.name.lower()] = Measurement(elements / max(m.median - base, m.median / 2), m.spread, runs)
        measured()
    return out


def fit_rate(flops: list[float], rates: list[Measurement]) -> float:
    """The rate of the slope through two sizes' times (time = fixed cost + flops / rate): what a large
    op runs at once the fixed costs of a call are paid. The large size's own rate where noise breaks it."""
    (f1, f2), (t1, t2) = flops, [f / m.median for f, m in zip(flops, rates)]
    if t2 > t1 and f2 > f1 and t1 - f1 * (t2 - t1) / (f2 - f1) >= 0:
        return (f2 - f1) / (t2 - t1)
    return f2 / t2


def probe_op_overhead(backend: str, runs: int, ops: int = 64) -> Measurement:
    """Seconds each op costs whatever its size: a chain of `ops` tiny adds through the backend,
    less a chain of one, divided by ops - 1 (the call's own fixed cost cancels)."""
    from dnet.backends import registry

    def chain(n: int) -> Callable[[], object]:
        b = GraphBuilder()
        x = y = b.input("x", TensorType((8,), DType.F32))
        for _ in range(n):
            y = b.elementwise(Op.ADD, y, x)
        b.output("y", y)
        runner = registry.get(backend).prepare(b.finish())
        feed = {"x": np.ones(8, np.float32)}
        return lambda: runner.run(feed)

    long, short = time_runs(chain(ops), runs), time_runs(chain(1), runs)
    per_op = max(long.median - short.median, 0.0) / (ops - 1)
    return Measurement(per_op, long.spread, runs)


def run_probe(backend: str = "numpy", kernel: MatmulKernel | None = None, quick: bool = False,
              dtypes: tuple[DType, ...] = (DType.F32, DType.F16, DType.BF16), backend_ops: bool = True
              ) -> ProbeReport:
    """Measure this node now (no cache). `quick` uses fewer, smaller runs (well under a second).
    `backend_ops`: also time a chain of tiny ops through the backend for its cost per op."""
    kernel = kernel or backend_matmul(backend)
    runs = 5 if quick else 9
    report = ProbeReport(Device(kind=backend, cores=core_count(), memory=available_memory(),
                                cache=cache_sizes(), vector_width=vector_width()),
                         fingerprint=fingerprint(backend))
    with progress.task("probe this node", total=measurement_count(dtypes, backend_ops), unit="measurements") as task:
        for dtype in dtypes:
            n = _MATMUL_SIZES.get(dtype, 256) // (2 if quick else 1)
            m = probe_matmul(kernel, dtype, n, runs)
            report.measurements[f"matmul.{dtype.value}"] = m
            report.device.compute[dtype.value] = m.median
            task.advance()
            if dtype is DType.F32:  # the slope through two sizes: the rate without fixed costs
                small = probe_matmul(kernel, dtype, n // 4, runs)
                report.measurements[f"matmul.{dtype.value}.small"] = small
                report.device.compute[dtype.value] = fit_rate([(n // 4) ** 3 * 2.0, n**3 * 2.0], [small, m])
                task.advance()
        if backend_ops:
            overhead = probe_op_overhead(backend, runs)
            report.measurements["op_overhead"] = overhead
            report.device.op_overhead = overhead.median
            task.advance()
        bw = probe_memory_bandwidth((16 if quick else 64) << 20, runs)
        report.measurements["memory_bandwidth"] = bw
        report.device.memory_bandwidth = bw.median
        task.advance()
        if backend_ops:
            for name, m in probe_op_rates(backend, 1 << 18, runs, task.advance).items():
                report.measurements[name] = m
                report.device.op_rates[name] = m.median
    return report


def measurement_count(dtypes: tuple[DType, ...], backend_ops: bool) -> int:
    """How many figures `run_probe` measures: its progress total, equal to the report's measurements."""
    matmuls = len(dtypes) + (DType.F32 in dtypes)
    return matmuls + 1 + (1 + len(RATED_OPS) if backend_ops else 0)


# -- the cache -----------------------------------------------------------------------------------
def cache_dir() -> Path:
    root = os.environ.get("DNET_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "dnet")
    return Path(root) / "probe"


def _path(backend: str, quick: bool) -> Path:
    return cache_dir() / f"{fingerprint(backend)}{'-quick' if quick else ''}.json"


def probe(backend: str = "numpy", quick: bool = False, refresh: bool = False,
          kernel: MatmulKernel | None = None) -> ProbeReport:
    """The node's probe report, from the cache when this hardware and backend were probed before, not
    too long ago. A fresh probe whose f32 matmul rate is implausible is measured once more; if it still
    is, it is returned with `suspect` set and cached for SUSPECT_MAX_AGE_S only (a machine busy for long
    is what the plans will meet; re-measuring on every call would only add to the load)."""
    path = _path(backend, quick)
    if not refresh and path.exists():
        try:
            report = ProbeReport.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            report = None  # a corrupt entry is measured again and overwritten
        if report is not None and 0 <= time.time() - report.measured_at <= report.age_limit():
            report.cached = True
            report.device.memory = available_memory()  # free memory changes; the rest does not
            return with_tuned_rates(report, backend)
    report = _believable_probe(backend, kernel, quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(report.to_json(), indent=1))  # a reader never sees half a file
    return with_tuned_rates(report, backend)


def with_tuned_rates(report: ProbeReport, backend: str) -> ProbeReport:
    """The report with the matmul rate `dnet tune` measured on this host's own tuned kernels (at the
    sizes its models run) as the device's rate for matmul ops, where the tuning cache has any for this
    backend and core count: the cost model then prices a model's matmuls at what they reach here, not
    at the square probe's rate. Read on every call (not stored in the probe cache), so a later tune counts."""
    rate = TuneCache(hardware.detect().fingerprint()).matmul_rate(backend, report.device.cores)
    if rate:
        report.device.op_rates[Op.MATMUL.name.lower()] = rate
    return report


def _believable_probe(backend: str, kernel: MatmulKernel | None, quick: bool) -> ProbeReport:
    for attempt in range(2):   # a busy moment passes: one more try before giving up on it
        report = run_probe(backend, kernel, quick)
        f32 = report.measurements.get(f"matmul.{DType.F32.value}")
        report.suspect = implausible(report.device, f32.median if f32 else None)
        if not report.suspect:
            break
        log.warning("probe %s: %s", "retrying" if attempt == 0 else f"kept {SUSPECT_MAX_AGE_S // 60} minutes only",
                    "; ".join(report.suspect))
    report.measured_at = time.time()
    return report


def forget(backend: str = "numpy") -> None:
    """Drop this machine's cached probes for `backend` (quick and full): the next probe measures."""
    for quick in (False, True):
        _path(backend, quick).unlink(missing_ok=True)


def forget_if_far_off(factors, backend: str = "numpy") -> bool:
    """The feedback loop's measured/modelled factors per node (nan: not measured); when every measured
    node is more than FAR_OFF off the same way, the probe the model came from is wrong, not the plan: it
    is forgotten, so the next plan measures afresh. Returns whether it was."""
    measured = [float(f) for f in factors if f == f]
    far = measured and (all(f > FAR_OFF for f in measured) or all(f < 1 / FAR_OFF for f in measured))
    if far:
        log.warning("stage times are %s the model's: this machine's %s probe is forgotten and will be measured "
                    "again", ", ".join(f"{f:.1f}x" for f in measured), backend)
        forget(backend)
    return bool(far)


def probe_device(backend: str = "numpy", quick: bool = False) -> Device:
    return probe(backend, quick).device
