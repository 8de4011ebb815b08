"""What this host is, read at run time: cores, vector instruction sets, cache sizes, clock.

The one place dnet reads host facts: the C backend (through `Host`) and the probe
(`dnet.topology.probe`, through the functions below) both ask here. Nothing here assumes
the machine dnet was written on. The C backend uses these facts
to pick its vector width, its register blocking and its cache tiles, and the compile
cache keys on `Host.fingerprint()` so that a cache moved to another CPU is not reused.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

_SYSFS_CPU = Path("/sys/devices/system/cpu/cpu0/cache")


@dataclass(frozen=True)
class Host:
    machine: str                      # 'x86_64', 'aarch64', ...
    cpu_model: str
    cores: int                        # cores this process may run on
    isa: frozenset[str] = field(default_factory=frozenset)  # 'avx2', 'avx512f', 'fma', 'neon', ...
    l1d: int = 32 * 1024              # bytes
    l2: int = 256 * 1024
    l3: int = 8 * 1024 * 1024

    @property
    def vector_bytes(self) -> int:
        """Width of the widest float vector register the compiler may use."""
        if "avx512f" in self.isa:
            return 64
        if "avx2" in self.isa or "avx" in self.isa:
            return 32
        if self.isa & {"neon", "asimd", "sse2"}:
            return 16
        return 4  # scalar

    @property
    def vector_registers(self) -> int:
        if "avx512f" in self.isa or self.machine in ("aarch64", "arm64"):
            return 32
        return 16

    @property
    def has_bf16(self) -> bool:
        """Whether the CPU multiplies bf16 in hardware (AVX512-BF16, AMX-BF16), as the C backend's bf16 Gemm
        uses it; elsewhere its portable loop widens every value to f32 first."""
        return bool(self.isa & {"avx512_bf16", "amx_bf16"})

    @property
    def f32_lanes(self) -> int:
        return max(1, self.vector_bytes // 4)

    def fingerprint(self) -> str:
        """Stable id of the CPU as the compiler sees it (model and instruction sets)."""
        text = "|".join([self.machine, self.cpu_model, ",".join(sorted(self.isa))])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def summary(self) -> str:
        vec = f"{self.vector_bytes * 8}-bit vectors" if self.vector_bytes > 4 else "scalar"
        return (f"{self.cpu_model} ({self.machine}), {self.cores} cores, {vec}, "
                f"L1d {self.l1d // 1024} KiB, L2 {self.l2 // 1024} KiB, L3 {self.l3 // 1024} KiB")


_INTERESTING = ("sse2", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                "avx512_bf16", "avx512_fp16", "neon", "asimd", "fphp", "asimdhp", "sve",
                # the integer and bf16 dot products (backends/c/igemm.py, quant.py), and AMX's tiles
                "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimddp")


DEFAULT_CLOCK_HZ = 2.0e9   # where /proc/cpuinfo does not say


# macOS has no /proc/cpuinfo: `sysctl hw.optional` says what the CPU has, one key per feature. Each key -> the
# flags Linux's /proc/cpuinfo would list for it, so that the rest of dnet reads one vocabulary.
SYSCTL_FLAGS = {
    "hw.optional.neon": ("neon", "asimd"),
    "hw.optional.AdvSIMD": ("neon", "asimd"),
    "hw.optional.arm.FEAT_DotProd": ("asimddp",),
    "hw.optional.arm.FEAT_FP16": ("fphp", "asimdhp"),
    "hw.optional.arm.FEAT_I8MM": ("i8mm",),
    "hw.optional.arm.FEAT_BF16": ("bf16",),
    "hw.optional.sse2": ("sse2",),
    "hw.optional.sse4_1": ("sse4_1",),
    "hw.optional.sse4_2": ("sse4_2",),
    "hw.optional.avx1_0": ("avx",),
    "hw.optional.avx2_0": ("avx2",),
    "hw.optional.fma": ("fma",),
    "hw.optional.f16c": ("f16c",),
    "hw.optional.avx512f": ("avx512f",),
    "hw.optional.avx512bw": ("avx512bw",),
    "hw.optional.avx512vl": ("avx512vl",),
    "hw.optional.avx512vnni": ("avx512_vnni",),
}


def sysctl_flags(text: str) -> frozenset[str]:
    """The CPU flags in `sysctl hw.optional` output ("key: value" lines): each key of SYSCTL_FLAGS whose value
    is not 0."""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if value.strip() not in ("", "0"):
            flags.update(SYSCTL_FLAGS.get(key.strip(), ()))
    return frozenset(flags)


def _sysctl(*keys: str) -> str:
    """`sysctl` output for `keys` (a key's children too), or "" where there is none."""
    try:
        r = subprocess.run(["sysctl", *keys], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return r.stdout


def _darwin_cpu() -> tuple[str, frozenset[str], float]:
    model = _sysctl("-n", "machdep.cpu.brand_string").strip() or platform.processor() or "unknown"
    return model, sysctl_flags(_sysctl("hw.optional")), 0.0


@functools.cache
def _cpuinfo_all() -> tuple[str, frozenset[str], float]:
    """(model, every CPU flag, the fastest clock in Hz or 0) from /proc/cpuinfo (macOS: sysctl)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        if platform.system() == "Darwin":
            return _darwin_cpu()
        return platform.processor() or "unknown", frozenset(), 0.0
    model, flags, clock = "unknown", set(), 0.0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and model == "unknown":
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key == "cpu mhz":
            try:
                clock = max(clock, float(value) * 1e6)
            except ValueError:
                pass
    if "asimd" in flags:
        flags.add("neon")
    return model, frozenset(flags), clock


def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags, _ = _cpuinfo_all()
    return model, frozenset(f for f in flags if f in _INTERESTING)


def cpu_model() -> str:
    return _cpuinfo_all()[0]


def cpu_flags() -> frozenset[str]:
    """Every flag /proc/cpuinfo lists (the probe's fingerprint keys on all of them)."""
    return _cpuinfo_all()[1]


def clock_hz() -> float:
    """The cores' clock as /proc/cpuinfo reports it (the fastest), else DEFAULT_CLOCK_HZ."""
    return _cpuinfo_all()[2] or DEFAULT_CLOCK_HZ


def vector_bits(flags: frozenset[str] | set[str], machine: str | None = None) -> int:
    """Widest SIMD register in bits: 512 (AVX-512), 256 (AVX/AVX2), 128 (SSE2/NEON, any arm64), else 0."""
    if "avx512f" in flags:
        return 512
    if "avx2" in flags or "avx" in flags:
        return 256
    if flags & {"sse2", "asimd", "neon"} or (machine or platform.machine()) in ("arm64", "aarch64"):
        return 128
    return 0


def _size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def cache_sizes() -> dict[str, int]:
    """Data (or unified) cache bytes per level from sysfs, "l1", "l2", "l3"; empty where sysfs does not say."""
    out: dict[str, int] = {}
    for index in sorted(_SYSFS_CPU.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = _size((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind == "Instruction":
            continue
        out[f"l{level}"] = size
    return out


def cores() -> int:
    """Cores this process may run on (its affinity), read each time: a worker pins itself after start."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@functools.cache
def detect() -> Host:
    """The host this process runs on (read once)."""
    model, isa = _cpuinfo()
    caches = {"l1d" if k == "l1" else k: v for k, v in cache_sizes().items()}
    return Host(machine=platform.machine(), cpu_model=model, cores=cores(), isa=isa,
                **{k: v for k, v in caches.items() if k in ("l1d", "l2", "l3")})
