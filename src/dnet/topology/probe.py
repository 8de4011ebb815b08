"""Microbenchmarks of the local node: matmul rate per dtype through the node's own
backend, memory bandwidth, free memory, cores, vector width, caches; and links to peers.

Each figure is the median of several timed runs, with its spread ((max - min) / median)
kept beside it. Results are cached on disk per hardware fingerprint, so a second
`dnet probe` on the same machine and backend returns at once.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.topology.model import Device

# The seam to the backends: given (n, dtype), return a callable that runs one n x n x n
# matmul on the backend. The default goes through the backend registry, so any backend
# that registers itself (numpy now, c next) is probed the same way.
MatmulKernel = Callable[[int, DType], Callable[[], object]]


def backend_matmul(backend: str = "numpy") -> MatmulKernel:
    """A MatmulKernel that runs a one-op graph through the named backend."""
    from dnet.backends import registry
    from dnet.graph.builder import GraphBuilder

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

    def to_json(self) -> dict:
        return {"device": asdict(self.device), "fingerprint": self.fingerprint,
                "measurements": {k: asdict(m) for k, m in self.measurements.items()}}

    @staticmethod
    def from_json(obj: dict) -> "ProbeReport":
        return ProbeReport(Device(**obj["device"]), {k: Measurement(**m) for k, m in obj["measurements"].items()},
                           obj["fingerprint"])


def time_runs(fn: Callable[[], object], runs: int, warmup: int = 1) -> Measurement:
    """Median seconds of `runs` calls of fn, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return Measurement(med, (max(times) - min(times)) / med if med > 0 else 0.0, runs)


def _rate(work: float, m: Measurement) -> Measurement:
    """A time measurement turned into a rate (work per second); the spread carries over."""
    return Measurement(work / m.median, m.spread, m.runs)


# -- host facts ----------------------------------------------------------------------------------
def core_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def vector_width(flags: set[str] | None = None) -> int:
    """Widest SIMD register in bits: 512 (AVX-512), 256 (AVX/AVX2), 128 (SSE2/NEON), else 0."""
    flags = _cpu_flags() if flags is None else flags
    if "avx512f" in flags:
        return 512
    if "avx2" in flags or "avx" in flags:
        return 256
    if flags & {"sse2", "asimd", "neon"} or platform.machine() in ("arm64", "aarch64"):
        return 128
    return 0


def cache_sizes() -> dict[str, float]:
    """Data/unified cache sizes per level from sysfs ("l1", "l2", "l3" -> bytes)."""
    out: dict[str, float] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            size = (index / "size").read_text().strip()
            level = (index / "level").read_text().strip()
        except OSError:
            continue
        factor = {"K": 1024, "M": 1024**2}.get(size[-1], 1)
        out[f"l{level}"] = float(size.rstrip("KM")) * factor
    return out


def fingerprint(backend: str) -> str:
    """Identifies hardware and software whose measurements are interchangeable."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    key = [platform.machine(), model, core_count(), total, backend, np.__version__, sorted(_cpu_flags())]
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


def probe_elementwise(runs: int) -> Measurement:
    """FLOP/s of a cache-resident element-wise add: the compute side of the roofline for element-wise ops."""
    a = np.ones(1 << 15, dtype=np.float32)
    b = np.ones_like(a)
    out = np.empty_like(a)
    reps = 64

    def body() -> None:
        for _ in range(reps):
            np.add(a, b, out=out)

    return _rate(float(a.size * reps), time_runs(body, runs))


def probe_reduce(runs: int) -> Measurement:
    """FLOP/s (one add per element) of a cache-resident sum over the last axis."""
    a = np.ones((64, 512), dtype=np.float32)
    reps = 64

    def body() -> None:
        for _ in range(reps):
            a.sum(axis=-1)

    return _rate(float(a.size * reps), time_runs(body, runs))


def run_probe(backend: str = "numpy", kernel: MatmulKernel | None = None, quick: bool = False,
              dtypes: tuple[DType, ...] = (DType.F32, DType.F16, DType.BF16)) -> ProbeReport:
    """Measure this node now (no cache). `quick` uses fewer, smaller runs (well under a second)."""
    kernel = kernel or backend_matmul(backend)
    runs = 5 if quick else 9
    report = ProbeReport(Device(kind=backend, cores=core_count(), memory=available_memory(),
                                cache=cache_sizes(), vector_width=vector_width()),
                         fingerprint=fingerprint(backend))
    for dtype in dtypes:
        n = _MATMUL_SIZES.get(dtype, 256) // (2 if quick else 1)
        m = probe_matmul(kernel, dtype, n, runs)
        report.measurements[f"matmul.{dtype.value}"] = m
        report.device.compute[dtype.value] = m.median
    bw = probe_memory_bandwidth((16 if quick else 64) << 20, runs)
    report.measurements["memory_bandwidth"] = bw
    report.device.memory_bandwidth = bw.median
    ew = probe_elementwise(runs)
    report.measurements["elementwise"] = ew
    for cls in ("unary", "binary", "ternary", "cast", "movement"):
        report.device.op_rates[cls] = ew.median
    red = probe_reduce(runs)
    report.measurements["reduce"] = red
    report.device.op_rates["reduce"] = red.median
    return report


# -- the cache -----------------------------------------------------------------------------------
def cache_dir() -> Path:
    root = os.environ.get("DNET_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "dnet")
    return Path(root) / "probe"


def probe(backend: str = "numpy", quick: bool = False, refresh: bool = False,
          kernel: MatmulKernel | None = None) -> ProbeReport:
    """The node's probe report, from the cache when this hardware and backend were probed before."""
    path = cache_dir() / f"{fingerprint(backend)}{'-quick' if quick else ''}.json"
    if not refresh and path.exists():
        try:
            report = ProbeReport.from_json(json.loads(path.read_text()))
            report.cached = True
            report.device.memory = available_memory()  # free memory changes; the rest does not
            return report
        except (ValueError, KeyError, TypeError):
            pass  # a corrupt entry is measured again and overwritten
    report = run_probe(backend, kernel, quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=1))
    os.replace(tmp, path)  # atomic: a reader never sees half a file
    return report


def probe_device(backend: str = "numpy", quick: bool = False) -> Device:
    return probe(backend, quick).device
