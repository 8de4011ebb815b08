"""Finding the system C compiler and the flags for this host, at run time."""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dnet.core import progress
from dnet.core.files import write_text_atomic
from dnet.errors import BackendError


PROBE_VERSION = 3   # bump when the probing below changes: remembered results are then ignored


@dataclass(frozen=True)
class Compiler:
    path: str
    version: str
    flags: tuple[str, ...]

    def key(self) -> str:
        """What the compile cache keys on besides the source and the CPU."""
        return "\n".join([self.path, self.version, " ".join(self.flags)])


def _candidates() -> list[str]:
    env = os.environ.get("CC")
    names = ([env] if env else []) + ["cc", "gcc", "clang"]
    return [p for p in (shutil.which(n) for n in names) if p]


def _accepts(cc: str, flags: list[str], source: str = "int main(void) { return 0; }\n") -> bool:
    with tempfile.TemporaryDirectory(prefix="dnet-probe-") as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text(source)
        try:
            r = subprocess.run([cc, *flags, str(src), "-o", str(Path(tmp) / "probe.so")],
                               capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return r.returncode == 0


# A loop every vectorising compiler should vectorise; some -march=native choices stop it
# (GCC 12 tuned for a CPU it guesses wrongly in a VM leaves float loops scalar).
_VECTOR_PROBE = """
#include <math.h>
void probe(const float* restrict x, float* restrict y, long n) {
    for (long i = 0; i < n; ++i) y[i] = copysignf(floorf(x[i]) * x[i] + 1.0f, x[i]);
}
"""
_PACKED = re.compile(r"^\s+(v?[a-z0-9]+ps\s|[a-z0-9]+\s+v\d+\.4s)", re.M)   # x86 packed-single, NEON .4s


def _vectorizes(cc: str, flags: list[str]) -> bool:
    with tempfile.TemporaryDirectory(prefix="dnet-probe-") as tmp:
        src, asm = Path(tmp) / "probe.c", Path(tmp) / "probe.s"
        src.write_text(_VECTOR_PROBE)
        flags = [f for f in flags if f not in ("-shared", "-fPIC")]
        r = subprocess.run([cc, *flags, "-S", str(src), "-o", str(asm)], capture_output=True, text=True)
        return r.returncode == 0 and len(_PACKED.findall(asm.read_text())) > 4


def _arch_flags(cc: str, base: list[str]) -> list[str]:
    """The first of -march=native, the same with generic tuning, or nothing, that vectorises the probe;
    on AVX-512 hosts, full-width vectors for auto-vectorised loops (compilers default to 256 bits)."""
    from dnet.hardware import detect

    chosen = ["-march=native"] if _accepts(cc, base + ["-march=native"]) else []
    for extra in (["-march=native"], ["-march=native", "-mtune=generic"]):
        if _accepts(cc, base + extra) and _vectorizes(cc, base + extra):
            chosen = extra
            break
    wide = ["-mprefer-vector-width=512"]
    if "avx512f" in detect().isa and chosen and _accepts(cc, base + chosen + wide):
        chosen = chosen + wide
    return chosen


@functools.cache
def find_compiler() -> Compiler:
    """The first working C compiler ($CC, cc, gcc, clang) with the best flags it accepts.

    Probing runs the compiler a few times; the result is remembered on disk (keyed by the
    compiler binary's path, size and modification time) so later processes start at once.
    """
    tried = _candidates()
    memo = _probe_memo(tried)
    if memo is not None:
        known = _read_memo(memo)
        if known is not None:
            return known
    with progress.task("probe the C compiler"):   # a dozen compiler runs, once per compiler binary
        found = _probe(tried)
    if memo is not None:
        _write_memo(memo, found)
    return found


def _probe_memo(tried: list[str]) -> Path | None:
    from dnet.backends.c.cache import cache_dir

    if not tried:
        return None
    st = os.stat(os.path.realpath(tried[0]))
    key = f"{PROBE_VERSION}|{tried[0]}|{os.path.realpath(tried[0])}|{st.st_size}|{st.st_mtime_ns}|{os.environ.get('CC', '')}"
    import hashlib

    return cache_dir() / "c" / f"compiler-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _read_memo(path: Path) -> Compiler | None:
    try:
        obj = json.loads(path.read_text())
        return Compiler(obj["path"], obj["version"], tuple(obj["flags"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_memo(path: Path, compiler: Compiler) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({"path": compiler.path, "version": compiler.version,
                                            "flags": list(compiler.flags)}))
    except OSError:
        pass   # a read-only cache: probe again next time


def _probe(tried: list[str]) -> Compiler:
    for cc in tried:
        base = ["-std=gnu11", "-O3", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast"]
        if not _accepts(cc, base):
            continue
        base += _arch_flags(cc, base)
        # threads come from dnet's own pool (pthreads); OpenMP only marks loops as SIMD
        for extra in (["-pthread"], ["-fopenmp-simd"]):
            if _accepts(cc, base + extra):
                base += extra
        version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()
        return Compiler(cc, version[0] if version else "unknown", tuple(base))
    raise BackendError("no working C compiler found",
                       hint=f"tried {', '.join(tried) or 'cc, gcc, clang (none on PATH)'}; set $CC")


def compile_shared(compiler: Compiler, source: Path, output: Path) -> None:
    """source.c -> output.so; a BackendError with the compiler's message and the source path on failure."""
    cmd = [compiler.path, *compiler.flags, str(source), "-o", str(output), "-lm"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise BackendError(f"C compiler {compiler.path} could not run: {err}", hint=f"source: {source}") from err
    if r.returncode != 0:
        message = (r.stderr or r.stdout).strip()
        raise BackendError(f"C compiler {compiler.path} failed on {source}:\n{message[-4000:]}",
                           hint=f"source kept at {source}")
