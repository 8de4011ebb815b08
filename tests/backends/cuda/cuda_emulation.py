"""The CUDA backend's kernels run on the CPU: the same CUDA C compiled as C++ with a small emulation of CUDA's
grid, for checking on a machine without a GPU what NVRTC cannot: that the kernels compute the right values.

The emulation supplies what CUDA C adds to C++: blockIdx/threadIdx/blockDim/gridDim, `__global__`,
`__launch_bounds__`, `__shared__` (a function-local static: shared by the threads of the one block that
runs at a time), `__syncthreads()` (a barrier over the block's threads), and the bit casts. A launch
runs its blocks one after another; a block's threads run one after another, except in a kernel with a
barrier (a tiled matmul, a QMatmul's block sum), where each thread is a real thread so `__syncthreads()` means what it means on a GPU. Each
kernel gets a wrapper `emu_<name>(args, grid, block)` that unpacks the 8-byte arguments as the CUDA
launcher packs them. Buffers are host memory (`program.device.HostAllocator`), the launch sizes are
the CUDA runtime's own (`backends/cuda/runtime.launch_sizes`) for a nominal GPU target.

What this cannot check: the driver calls, device memory and copies, NVRTC's code generation (the
NVRTC tests compile the same source), and anything about a real GPU's scheduling or speed.
"""
from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Mapping

import numpy as np

from dnet.backends.cuda import render_program
from dnet.backends.cuda.renderer import Blocks
from dnet.backends.cuda.runtime import launch_sizes
from dnet.backends.opencl.renderer import Tiles
from dnet.kernel.target import GpuTarget
from dnet.program.device import HostAllocator
from dnet.program.executor import ProgramExecutor
from dnet.program.instructions import Launch, segments

NOMINAL = GpuTarget("emulated", max_work_group=1024, local_memory=48 * 1024, simd_width=32, compute_units=4)

HEADER = r"""
#include <cstdint>
#include <cstring>
#include <math.h>
#include <pthread.h>
struct dn_dim3 { unsigned x, y, z; };
static thread_local dn_dim3 threadIdx;
static dn_dim3 blockIdx, blockDim, gridDim;
static pthread_barrier_t dn_barrier;
#define __global__
#define __launch_bounds__(n)
#define __shared__ static
#define __syncthreads() pthread_barrier_wait(&dn_barrier)
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
/* an 8-byte launch argument, as whatever the kernel's parameter is (a pointer or an int64) */
struct dn_arg {
    uint64_t v;
    template <class T> operator T*() const { return reinterpret_cast<T*>(v); }
    operator int64_t() const { return static_cast<int64_t>(v); }
};
struct dn_thread { void (*body)(const uint64_t*); const uint64_t* args; dn_dim3 id; };
static void* dn_thread_main(void* p) {
    dn_thread* t = static_cast<dn_thread*>(p);
    threadIdx = t->id;
    t->body(t->args);
    return nullptr;
}
static void dn_launch(void (*body)(const uint64_t*), const uint64_t* args, unsigned gx, unsigned gy, unsigned gz,
                      unsigned bx, unsigned by, unsigned bz, int threaded) {
    gridDim = {gx, gy, gz}; blockDim = {bx, by, bz};
    const unsigned n = bx * by * bz;
    for (unsigned z = 0; z < gz; ++z) for (unsigned y = 0; y < gy; ++y) for (unsigned x = 0; x < gx; ++x) {
        blockIdx = {x, y, z};
        if (!threaded) {
            for (unsigned tz = 0; tz < bz; ++tz) for (unsigned ty = 0; ty < by; ++ty) for (unsigned tx = 0; tx < bx; ++tx) {
                threadIdx = {tx, ty, tz};
                body(args);
            }
            continue;
        }
        pthread_barrier_init(&dn_barrier, nullptr, n);
        dn_thread* ts = new dn_thread[n];
        pthread_t* ids = new pthread_t[n];
        for (unsigned i = 0; i < n; ++i) {
            ts[i] = {body, args, {i % bx, (i / bx) % by, i / (bx * by)}};
            pthread_create(&ids[i], nullptr, dn_thread_main, &ts[i]);
        }
        for (unsigned i = 0; i < n; ++i) pthread_join(ids[i], nullptr);
        pthread_barrier_destroy(&dn_barrier);
        delete[] ts; delete[] ids;
    }
}
"""

# the prelude's own definitions of what <cstdint> and <cmath> define here
_PRELUDE_DEFINITIONS = re.compile(r"^(typedef (long long|int|signed char|unsigned long long|unsigned int|"
                                  r"unsigned short|unsigned char) u?int\d+_t;|#define (INT64_MAX|INT64_MIN|INFINITY|NAN) .*)$",
                                  re.M)


def _wrappers(kernels: Mapping, rendered: Mapping) -> str:
    out = []
    for name, kernel in kernels.items():
        count = len(kernel.params) + len(kernel.dims)
        args = ", ".join(f"dn_arg{{a[{i}]}}" for i in range(count))
        threaded = int(isinstance(rendered[name].launch, (Tiles, Blocks)))     # kernels with barriers
        out.append(f"static void body_{name}(const uint64_t* a) {{ {name}({args}); }}\n"
                   f'extern "C" void emu_{name}(const uint64_t* a, unsigned gx, unsigned gy, unsigned gz, '
                   f"unsigned bx, unsigned by, unsigned bz) {{ dn_launch(body_{name}, a, gx, gy, gz, bx, by, bz, "
                   f"{threaded}); }}")
    return "\n".join(out)


def build_library(source: str, directory: Path) -> ctypes.CDLL:
    """`source` (HEADER, the CUDA module's text, the wrappers) compiled by the system's C++ compiler."""
    compiler = shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        raise RuntimeError("no C++ compiler (g++ or clang++) to emulate CUDA kernels with")
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    cpp, lib = directory / f"{digest}.cpp", directory / f"{digest}.so"
    if not lib.exists():
        cpp.write_text(source)
        proc = subprocess.run([compiler, "-std=c++17", "-O1", "-shared", "-fPIC", "-pthread", "-w", "-o", str(lib),
                               str(cpp)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError("the C++ compiler refused the emulated CUDA source:\n" + proc.stderr[-3000:])
    return ctypes.CDLL(str(lib))


class EmulatedLauncher:
    """A program's CUDA kernels run through the emulation: the CUDA launcher's launches, on the CPU."""

    def __init__(self, library: ctypes.CDLL, program, kernels, rendered):
        self.program, self.kernels, self.rendered = program, kernels, rendered
        self.device = SimpleNamespace(target=NOMINAL)
        self.launches = [ins for ins in program.instrs if isinstance(ins, Launch)]
        self._entries = {name: getattr(library, f"emu_{name}") for name in {ins.kernel for ins in self.launches}}
        position = {id(ins): k for k, ins in enumerate(self.launches)}
        self._segments = {i: [position[id(ins)] for ins in seg]
                          for i, seg in enumerate(segments(program)) if i % 2 == 0}

    def run_segment(self, index: int, table, dims: np.ndarray) -> None:
        env = dict(zip(self.program.symbols, (int(d) for d in dims)))
        for k in self._segments[index]:
            self.run_one(k, table, env)

    def run_launch(self, index: int, table, dims: np.ndarray) -> None:
        self.run_one(index, table, dict(zip(self.program.symbols, (int(d) for d in dims))))

    def run_one(self, k: int, table, env) -> None:
        ins = self.launches[k]
        sizes = launch_sizes(self.rendered[ins.kernel].launch, env, self.device)
        if sizes is None:
            return
        (gx, gy, gz), (bx, by, bz) = sizes
        values = np.array([int(table[b]) for b in ins.args] + [env[d] for d in ins.dims], np.int64).view(np.uint64)
        entry = self._entries[ins.kernel]
        entry(ctypes.c_void_p(values.ctypes.data), *(ctypes.c_uint(v) for v in (gx, gy, gz, bx, by, bz)))


class EmulatedRunner:
    def __init__(self, graph, directory: Path):
        rendered = render_program(graph, NOMINAL)
        self.source = rendered.source
        kernels = rendered.compiled.kernels
        text = HEADER + _PRELUDE_DEFINITIONS.sub("", rendered.source) + "\n" + _wrappers(kernels, rendered.kernels)
        library = build_library(text, directory)
        launcher = EmulatedLauncher(library, rendered.compiled.program, kernels, rendered.kernels)
        self.module = ProgramExecutor(rendered.compiled.program, rendered.compiled.weights, HostAllocator(), launcher)
        self._library = library

    def run(self, inputs):
        return self.module.run(inputs)


def emulate(graph, directory: Path | None = None) -> EmulatedRunner:
    """`graph` on the CUDA backend's kernels, run on the CPU through the emulation."""
    return EmulatedRunner(graph, Path(directory or tempfile.mkdtemp(prefix="dnet-cuda-emu-")))
