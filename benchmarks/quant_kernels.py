"""dn_qmatmul (int8 activations) and dn_qmatmul16 (int16) on SmolLM2-135M's shapes (Q4_1 matrices, the Q8_0
tied lm_head), timed inside C, side by side.

    .venv/bin/python benchmarks/quant_kernels.py [--threads 1 2] [--rows 1 512] [--bits 8 16] [--flags -DDN_QUANT_NO_VNNI]

Prints microseconds per call for each precision (1 thread: the thread's CPU time, unless --wall; 2 threads:
wall time), int16's time over int8's, GFLOP/s (2 m n k per call) and, at m = 1, GB/s of weight bytes read.
Each call is timed in a C loop (no ctypes overhead); the two precisions' rounds alternate, so that load from
elsewhere on the machine hits both alike; the median of several rounds.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import table  # noqa: E402

# (name, n, k, dtype name): y = x @ W.T with W (n, k)
SHAPES = [("q/o", 576, 576, "Q4_1"), ("k/v", 192, 576, "Q4_1"), ("qkv", 960, 576, "Q4_1"),
          ("gate/up", 1536, 576, "Q4_1"), ("down", 576, 1536, "Q4_1"), ("lm_head", 49152, 576, "Q8_0")]
ENTRY = {8: "dn_qmatmul", 16: "dn_qmatmul16"}

_TIMER = """
#include <time.h>
const char* bench_path(void) { return dn_quant_path(); }
"""
_PER_ENTRY = """
double bench{bits}_{name}(int64_t m, int64_t n, int64_t k, const float* x, const uint8_t* w, float* y, int reps,
                         int cpu) {{
    struct timespec a, b;
    const clockid_t clock = cpu ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC;
    clock_gettime(clock, &a);
    for (int r = 0; r < reps; ++r) {entry}_{name}(m, n, k, x, k, w, y, n);
    clock_gettime(clock, &b);
    return ((double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec)) / reps;
}}
"""


def build(flags: list[str], dtypes) -> ctypes.CDLL:
    from dnet.backends.c.compiler import compile_shared, find_compiler
    from dnet.backends.c.prelude import PRELUDE
    from dnet.backends.c.quant import quant_support

    compiler = find_compiler()
    compiler = dataclasses.replace(compiler, flags=compiler.flags + tuple(flags))
    source = PRELUDE + quant_support(dtypes) + _TIMER
    source += "".join(_PER_ENTRY.format(bits=b, entry=e, name=d.value) for d in dtypes for b, e in ENTRY.items())
    tmp = Path(tempfile.mkdtemp(prefix="dnet-qbench-"))
    (tmp / "bench.c").write_text(source)
    compile_shared(compiler, tmp / "bench.c", tmp / "bench.so")
    lib = ctypes.CDLL(str(tmp / "bench.so"))
    lib.bench_path.restype = ctypes.c_char_p
    for d in dtypes:
        for bits in ENTRY:
            fn = getattr(lib, f"bench{bits}_{d.value}")
            fn.restype = ctypes.c_double
            fn.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 3 + [ctypes.c_int, ctypes.c_int]
    return lib


def seconds(lib, dtype, bits_list, m, n, k, x, w, y, budget: float, rounds: int, cpu: bool) -> dict[int, float]:
    """seconds per call for each precision in bits_list, the median of `rounds` rounds taken in turn; cpu: the
    calling thread's CPU time (one thread: what other work on the machine disturbs least), else wall time"""
    fns = {bits: getattr(lib, f"bench{bits}_{dtype.value}") for bits in bits_list}
    args = (m, n, k, x.ctypes.data, w.ctypes.data, y.ctypes.data)
    reps = {bits: max(1, int(budget / len(fns) / rounds / max(fn(*args, 1, int(cpu)), 1e-7)))
            for bits, fn in fns.items()}
    times: dict[int, list[float]] = {bits: [] for bits in fns}
    for _ in range(rounds):
        for bits, fn in fns.items():
            times[bits].append(fn(*args, reps[bits], int(cpu)))
    return {bits: statistics.median(t) for bits, t in times.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 512])
    ap.add_argument("--bits", type=int, nargs="+", default=[8, 16], choices=sorted(ENTRY),
                    help="activation precisions: 8 (dn_qmatmul), 16 (dn_qmatmul16)")
    ap.add_argument("--flags", nargs="*", default=[], help="C flags, e.g. -DDN_QUANT_NO_VNNI")
    ap.add_argument("--shapes", nargs="*", default=None, help="names among " + ", ".join(s[0] for s in SHAPES))
    ap.add_argument("--budget", type=float, default=0.3, help="seconds per line (all precisions)")
    ap.add_argument("--wall", action="store_true", help="wall time at 1 thread too (default: its CPU time)")
    args = ap.parse_args(argv)
    import numpy as np

    from dnet.core.dtypes import DType
    from dnet.core.quant import quantize

    shapes = [s for s in SHAPES if args.shapes is None or s[0] in args.shapes]
    dtypes = sorted({DType[s[3]] for s in shapes}, key=lambda d: d.value)
    lib = build(args.flags, dtypes)
    print(f"path: {lib.bench_path().decode()}")
    rng = np.random.default_rng(0)
    weights = {(n, k, t): quantize(rng.standard_normal((n, k)).astype(np.float32) * 0.05, DType[t])
               for _, n, k, t in shapes}
    bits_list = list(dict.fromkeys(args.bits))
    header = ["shape", "n x k", "dtype", "m", "threads"] + [f"int{b} us" for b in bits_list]
    if bits_list[:2] == [8, 16]:
        header.append("int16/int8")
    header += [f"int{b} GFLOP/s" for b in bits_list] + [f"int{b} GB/s" for b in bits_list]
    rows = [header]
    for name, n, k, t in shapes:
        w = weights[(n, k, t)]
        for m in args.rows:
            x = rng.standard_normal((m, k)).astype(np.float32)
            y = np.empty((m, n), dtype=np.float32)
            for threads in args.threads:
                lib.dnet_set_threads(threads)
                cpu = threads == 1 and not args.wall
                s = seconds(lib, DType[t], bits_list, m, n, k, x, w, y, args.budget, 7, cpu)
                row = [name, f"{n}x{k}", t, str(m), str(threads)] + [f"{s[b] * 1e6:.1f}" for b in bits_list]
                if bits_list[:2] == [8, 16]:
                    row.append(f"{s[16] / s[8]:.2f}")
                row += [f"{2.0 * m * n * k / s[b] / 1e9:.1f}" for b in bits_list]
                row += [f"{w.nbytes / s[b] / 1e9:.1f}" if m == 1 else "" for b in bits_list]
                rows.append(row)
    print(table(rows))


if __name__ == "__main__":
    main()
