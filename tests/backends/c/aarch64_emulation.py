"""The C backend's library for an AArch64 node, run for real on any Linux host: cross-compiled with
aarch64-linux-gnu-gcc (-static) and run under qemu-user on chosen CPU models. Also the GGUF block kernels
alone (`compile_quant`, `run_quant`): a batch of matmuls in one run of a small driver.

The program is built for an AArch64 `Host` (its own tile: 12 x 8 on 32 vector registers of 4 lanes) and
run by dnet's own `ProgramExecutor`: binding, the arena plan and the weights are the executor's; only
the device differs. `EmulatedAllocator` keeps every buffer as bytes on this host; `QemuLauncher` writes
them all to a file, runs the cross-compiled library's `dnet_segment_<k>` (or `dnet_launch_<i>`) in a small
driver under qemu, and reads them all back. The driver prints the integer path the library computed
with (`dnet_igemm_path()`, or the block kernels' `dn_quant_path()`), so a test can say which code ran.

Debian's packages: gcc-aarch64-linux-gnu and qemu-user-static (.ci/run installs them where it can).
"""
from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnet.backends.c.library import render_library
from dnet.backends.c.packing import PanelPacker
from dnet.graph.ir import Graph
from dnet.hardware import Host
from dnet.kernel.target import CpuTarget
from dnet.program.build import build_program
from dnet.program.executor import ProgramExecutor
from dnet.program.instructions import Launch, segments

CC = shutil.which("aarch64-linux-gnu-gcc")
QEMU = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
OBJDUMP = shutil.which("aarch64-linux-gnu-objdump")

# qemu CPU models: "max" has every feature qemu emulates (dotprod among them); a Cortex-A53 has NEON, no dotprod
WITH_DOTPROD, WITHOUT_DOTPROD = "max", "cortex-a53"

# An AArch64 node as dnet.hardware would describe one (a Cortex-A76-class core): the tile and the panels follow
HOST = Host(machine="aarch64", cpu_model="emulated aarch64", cores=2,
            isa=frozenset({"neon", "asimd", "asimddp"}), l1d=64 * 1024, l2=512 * 1024, l3=2 * 1024 * 1024)

# the backend's own flags (backends/c/compiler.py) at -O2 (the int8 test library builds in 0.9 s, 2.5 s at -O3),
# less -fPIC / -shared: the driver is linked static, so that qemu-user needs no AArch64 C library
FLAGS = ("-std=gnu11", "-O2", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast", "-static", "-pthread")


def missing() -> str | None:
    """Why AArch64 code cannot run here, or None."""
    if CC is None or OBJDUMP is None:
        return "no aarch64-linux-gnu-gcc / -objdump (Debian: apt-get install gcc-aarch64-linux-gnu)"
    if QEMU is None:
        return "no qemu-aarch64 (Debian: apt-get install qemu-user-static)"
    return None


def _driver(program, path: str) -> str:
    """main(entry, input file, output file, threads): the buffers in, one entry run (s<k>: dnet_segment_<k>,
    l<i>: dnet_launch_<i>), the buffers out, then `path` (a C expression: the name of the integer path) printed."""
    entries = [f"dnet_segment_{i}" for i in range(0, len(segments(program)), 2)]
    launches = [f"dnet_launch_{i}" for i in range(sum(isinstance(x, Launch) for x in program.instrs))]
    return r"""
#include <stdio.h>
void dnet_set_threads(int n);
typedef void (*dn_segment_fn)(void**, const int64_t*);
static const dn_segment_fn dn_driver_segments[] = {%s}, dn_driver_launches[] = {%s};

/* input: regions (int64 size, bytes), buffers (int64 region or -1, int64 offset), dims (int64 count, values);
   output: every region's bytes, in order */
static int64_t dn_read_i64(FILE* f) { int64_t v = 0; if (fread(&v, 8, 1, f) != 1) exit(3); return v; }

int main(int argc, char** argv) {
    if (argc != 5 || (argv[1][0] != 's' && argv[1][0] != 'l')) {
        fprintf(stderr, "usage: driver s<segment>|l<launch> IN OUT THREADS\n");
        return 2;
    }
    FILE* in = fopen(argv[2], "rb");
    if (!in) return 3;
    const int64_t nregions = dn_read_i64(in);
    char** regions = calloc((size_t)nregions + 1, sizeof(char*));
    int64_t* sizes = calloc((size_t)nregions + 1, sizeof(int64_t));
    for (int64_t r = 0; r < nregions; ++r) {
        sizes[r] = dn_read_i64(in);
        regions[r] = aligned_alloc(64, ((size_t)sizes[r] + 127) & ~(size_t)63);
        if (sizes[r] && fread(regions[r], 1, (size_t)sizes[r], in) != (size_t)sizes[r]) return 3;
    }
    const int64_t nbufs = dn_read_i64(in);
    void** bufs = calloc((size_t)nbufs + 1, sizeof(void*));
    for (int64_t b = 0; b < nbufs; ++b) {
        const int64_t region = dn_read_i64(in), offset = dn_read_i64(in);
        bufs[b] = region < 0 ? 0 : regions[region] + offset;
    }
    const int64_t ndims = dn_read_i64(in);
    int64_t* dims = calloc((size_t)ndims + 1, sizeof(int64_t));
    for (int64_t d = 0; d < ndims; ++d) dims[d] = dn_read_i64(in);
    fclose(in);
    dnet_set_threads(atoi(argv[4]));
    if (argv[1][0] == 's') dn_driver_segments[atoi(argv[1] + 1) / 2](bufs, dims);
    else dn_driver_launches[atoi(argv[1] + 1)](bufs, dims);
    FILE* out = fopen(argv[3], "wb");
    if (!out) return 4;
    for (int64_t r = 0; r < nregions; ++r)
        if (sizes[r] && fwrite(regions[r], 1, (size_t)sizes[r], out) != (size_t)sizes[r]) return 4;
    fclose(out);
    printf("%%s\n", %s);
    return 0;
}
""" % (", ".join(entries), ", ".join(launches) or "0", path)


@dataclass
class Build:
    """One cross-compiled driver: the program it runs, its kernels and the binary."""
    binary: Path
    program: object
    weights: dict
    kernels: dict


def compile_program(graph: Graph, folder: Path, flags: tuple[str, ...] = ()) -> Build:
    """The graph's program for HOST, its C library plus the driver cross-compiled with `flags` (-march=...,
    -DDN_QUANT_...) into `folder`."""
    compiled = build_program(graph, CpuTarget(HOST, HOST.cores, conv_group_rows=1), PanelPacker())
    library = render_library(compiled.kernels, compiled.program)
    # the integer path the library computes with: its int8 Gemms' (igemm.py), else its block kernels' (quant.py)
    path = ("dnet_igemm_path()" if "const char* dnet_igemm_path(void)" in library
            else "dn_quant_path()" if "const char* dn_quant_path(void)" in library else '"none"')
    source = library + _driver(compiled.program, path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "library.c").write_text(source)
    binary = folder / "driver"
    r = subprocess.run([CC, *FLAGS, *flags, str(folder / "library.c"), "-o", str(binary), "-lm"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"aarch64 build failed ({' '.join(flags)}):\n{r.stderr[-4000:]}")
    return Build(binary, compiled.program, compiled.weights, compiled.kernels)


def disassembly(binary: Path) -> str:
    return subprocess.run([OBJDUMP, "-d", str(binary)], capture_output=True, text=True, check=True).stdout


class EmulatedAllocator:
    """Buffers as bytes on this host: a handle is (region, offset), a region a flat uint8 array that the
    launcher ships to the emulated process and back (`program.device.Allocator`)."""

    def __init__(self) -> None:
        self._arena = np.zeros(0, np.uint8)

    def table(self, size: int) -> list:
        return [None] * size

    def copy_table(self, table: list) -> list:
        return list(table)

    def put(self, table: list, buffer: int, handle) -> None:
        table[buffer] = handle

    def get(self, table: list, buffer: int):
        return table[buffer]

    def arena(self, nbytes: int):
        if self._arena.nbytes < nbytes:
            self._arena = np.zeros(nbytes, np.uint8)
        return self._arena

    def at(self, arena: np.ndarray, offset: int):
        return arena, offset

    def to_device(self, array: np.ndarray, writable: bool):
        return np.ascontiguousarray(array).reshape(-1).view(np.uint8).copy(), 0

    def to_host(self, handle, array: np.ndarray) -> None:
        array[...] = self.view(handle, array.shape, array.dtype)

    def view(self, handle, shape: tuple[int, ...], dtype) -> np.ndarray:
        region, offset = handle
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        return region[offset:offset + size].view(dtype).reshape(shape)

    def received(self, handle, array: np.ndarray) -> None:
        pass                                  # the view is the region itself


class QemuLauncher:
    """Runs a Build's segments under qemu-aarch64 on one CPU model (`program.device.Launcher`)."""

    def __init__(self, build: Build, cpu: str, folder: Path, threads: int = 1):
        self.build, self.cpu, self.folder, self.threads = build, cpu, folder, threads
        self.paths: list[str] = []            # the path the driver named, one entry per run

    def run_segment(self, index: int, table: list, dims: np.ndarray) -> None:
        self._run(f"s{index}", table, dims)

    def run_launch(self, index: int, table: list, dims: np.ndarray) -> None:
        self._run(f"l{index}", table, dims)

    def _run(self, entry: str, table: list, dims: np.ndarray) -> None:
        regions: list[np.ndarray] = []
        ids: dict[int, int] = {}
        entries = []
        for handle in table:
            if handle is None:
                entries.append((-1, 0))
                continue
            region, offset = handle
            if id(region) not in ids:
                ids[id(region)] = len(regions)
                regions.append(region)
            entries.append((ids[id(region)], offset))
        parts = [struct.pack("<q", len(regions))]
        for region in regions:
            parts += [struct.pack("<q", region.nbytes), region.tobytes()]
        parts.append(struct.pack("<q", len(entries)))
        parts += [struct.pack("<qq", r, o) for r, o in entries]
        parts += [struct.pack("<q", len(dims)), np.asarray(dims, "<i8").tobytes()]
        src, dst = self.folder / "in.bin", self.folder / "out.bin"
        src.write_bytes(b"".join(parts))
        r = subprocess.run([QEMU, "-cpu", self.cpu, str(self.build.binary), entry, str(src), str(dst),
                            str(self.threads)], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise AssertionError(f"qemu -cpu {self.cpu}: exit {r.returncode}\n{r.stderr[-2000:]}")
        self.paths.append(r.stdout.strip())
        back = np.frombuffer(dst.read_bytes(), np.uint8)
        at = 0
        for region in regions:
            region[...] = back[at:at + region.nbytes]
            at += region.nbytes


def executor(build: Build, cpu: str, folder: Path, threads: int = 1) -> tuple[ProgramExecutor, QemuLauncher]:
    """dnet's ProgramExecutor running `build` under qemu on `cpu`; the launcher records the paths that ran."""
    folder.mkdir(parents=True, exist_ok=True)
    launcher = QemuLauncher(build, cpu, folder, threads)
    return ProgramExecutor(build.program, build.weights, EmulatedAllocator(), launcher), launcher


# -- the GGUF block kernels (backends/c/quant.py) alone: a driver that runs a batch of matmuls -----------------

def _quant_driver(dtypes) -> str:
    """main(IN, OUT, THREADS): cases (format, wide, m, n, k, x, weight bytes) in, each y out."""
    table = ", ".join(f"{{dn_qmatmul_{d.value}, dn_qmatmul16_{d.value}}}" for d in dtypes)
    return r"""
#include <stdio.h>
typedef void (*dn_qmm)(int64_t, int64_t, int64_t, const float*, int64_t, const uint8_t*, float*, int64_t);
static const dn_qmm dn_driver_q[][2] = {%s};
static int64_t dn_read_i64(FILE* f) { int64_t v = 0; if (fread(&v, 8, 1, f) != 1) exit(3); return v; }
static void* dn_read_bytes(FILE* f, int64_t n) {
    void* p = malloc((size_t)n + 64);
    if (!p || (n && fread(p, 1, (size_t)n, f) != (size_t)n)) exit(3);
    return p;
}

int main(int argc, char** argv) {
    if (argc != 4) { fprintf(stderr, "usage: driver IN OUT THREADS\n"); return 2; }
    FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
    if (!in || !out) return 3;
    dnet_set_threads(atoi(argv[3]));
    for (int64_t c = 0, cases = dn_read_i64(in); c < cases; ++c) {
        const int64_t format = dn_read_i64(in), wide = dn_read_i64(in), m = dn_read_i64(in), n = dn_read_i64(in);
        const int64_t k = dn_read_i64(in), wbytes = dn_read_i64(in);
        float* x = dn_read_bytes(in, m * k * 4);
        uint8_t* w = dn_read_bytes(in, wbytes);
        float* y = malloc((size_t)(m * n) * 4 + 64);
        dn_driver_q[format][wide](m, n, k, x, k, w, y, n);
        if (fwrite(y, 4, (size_t)(m * n), out) != (size_t)(m * n)) return 4;
        free(x); free(w); free(y);
    }
    fclose(in);
    fclose(out);
    printf("%%s\n", dn_quant_path());
    return 0;
}
""" % table


def compile_quant(dtypes, folder: Path, flags: tuple[str, ...] = ()) -> Path:
    """The block kernels of `dtypes` and the batch driver, cross-compiled with `flags` into `folder`."""
    from dnet.backends.c.prelude import PRELUDE
    from dnet.backends.c.quant import quant_support

    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "quant.c"
    source.write_text(PRELUDE + quant_support(dtypes) + _quant_driver(dtypes))
    binary = folder / "quant"
    r = subprocess.run([CC, *FLAGS, *flags, str(source), "-o", str(binary), "-lm"], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"aarch64 build failed ({' '.join(flags)}):\n{r.stderr[-4000:]}")
    return binary


def run_quant(binary: Path, cpu: str, dtypes, cases, folder: Path, threads: int = 2) -> tuple[str, list[np.ndarray]]:
    """(the path dn_quant_path() named, y of each case) for cases (dtype, bits, x (m, k) f32, w uint8 (n, bytes)),
    all in one run of the driver under qemu on `cpu`."""
    order = list(dtypes)
    parts = [struct.pack("<q", len(cases))]
    for dtype, bits, x, w in cases:
        m, k = x.shape
        parts.append(struct.pack("<6q", order.index(dtype), int(bits == 16), m, w.shape[0], k, w.nbytes))
        parts += [np.ascontiguousarray(x, "<f4").tobytes(), np.ascontiguousarray(w).tobytes()]
    folder.mkdir(parents=True, exist_ok=True)
    src, dst = folder / "cases.bin", folder / "y.bin"
    src.write_bytes(b"".join(parts))
    r = subprocess.run([QEMU, "-cpu", cpu, str(binary), str(src), str(dst), str(threads)],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise AssertionError(f"qemu -cpu {cpu}: exit {r.returncode}\n{r.stderr[-2000:]}")
    flat = np.frombuffer(dst.read_bytes(), "<f4")
    ys, at = [], 0
    for _, _, x, w in cases:
        size = x.shape[0] * w.shape[0]
        ys.append(flat[at:at + size].reshape(x.shape[0], w.shape[0]))
        at += size
    return r.stdout.strip(), ys
