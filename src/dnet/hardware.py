"""What this host is, read at run time: cores, vector instruction sets, cache sizes.

Nothing here assumes the machine dnet was written on. The C backend uses these facts
to pick its vector width, its register blocking and its cache tiles, and the compile
cache keys on `Host.fingerprint()` so that a cache moved to another CPU is not reused.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
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
                "avx512_bf16", "avx512_fp16", "neon", "asimd", "fphp", "asimdhp", "sve")


def _cpuinfo() -> tuple[str, frozenset[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown", frozenset()
    model, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and model == "unknown":
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    if "asimd" in flags:
        flags.add("neon")
    return model, frozenset(f for f in flags if f in _INTERESTING)


def _size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def _caches() -> dict[str, int]:
    """Per-level data cache sizes from sysfs; empty where sysfs does not say."""
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
        out["l1d" if level == "1" else f"l{level}"] = size
    return out


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@functools.cache
def detect() -> Host:
    """The host this process runs on (read once)."""
    model, isa = _cpuinfo()
    caches = _caches()
    return Host(machine=platform.machine(), cpu_model=model, cores=_cores(), isa=isa,
                **{k: v for k, v in caches.items() if k in ("l1d", "l2", "l3")})
