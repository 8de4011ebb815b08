"""dn_qmatmul on SmolLM2-135M's shapes (Q4_1 matrices, the Q8_0 tied lm_head), timed inside C.

    .venv/bin/python benchmarks/quant_kernels.py [--threads 1 2] [--rows 1 128 512] [--flags -DDN_QUANT_NO_VNNI]

Prints GFLOP/s (2 m n k per call) and, at m = 1, GB/s of weight bytes read. Each call is timed in a C loop
(no ctypes overhead), the median of several rounds.
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
SHAPES = [("q/o", 576, 576, "Q4_1"), ("k/v", 192, 576, "Q4_1"), ("gate/up", 1536, 576, "Q4_1"),
          ("down", 576, 1536, "Q4_1"), ("lm_head", 49152, 576, "Q8_0")]

_TIMER = """
#include <time.h>
const char* bench_path(void) { return dn_quant_path(); }
"""
_PER_DTYPE = """
double bench_{name}(int64_t m, int64_t n, int64_t k, const float* x, const uint8_t* w, float* y, int reps) {{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int r = 0; r < reps; ++r) dn_qmatmul_{name}(m, n, k, x, k, w, y, n);
    clock_gettime(CLOCK_MONOTONIC, &b);
    return ((double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec)) / reps;
}}
"""


def build(flags: list[str], dtypes) -> ctypes.CDLL:
    from dnet.backends.c.compiler import compile_shared, find_compiler
    from dnet.backends.c.prelude import PRELUDE
    from dnet.backends.c.quant import quant_support

    compiler = find_compiler()
    compiler = dataclasses.replace(compiler, flags=compiler.flags + tuple(flags))
    source = PRELUDE + quant_support(dtypes) + _TIMER + "".join(_PER_DTYPE.format(name=d.value) for d in dtypes)
    tmp = Path(tempfile.mkdtemp(prefix="dnet-qbench-"))
    (tmp / "bench.c").write_text(source)
    compile_shared(compiler, tmp / "bench.c", tmp / "bench.so")
    lib = ctypes.CDLL(str(tmp / "bench.so"))
    lib.bench_path.restype = ctypes.c_char_p
    for d in dtypes:
        fn = getattr(lib, f"bench_{d.value}")
        fn.restype = ctypes.c_double
        fn.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 3 + [ctypes.c_int]
    return lib


def seconds(lib, dtype, m, n, k, x, w, y, budget: float, rounds: int) -> float:
    fn = getattr(lib, f"bench_{dtype.value}")
    once = fn(m, n, k, x.ctypes.data, w.ctypes.data, y.ctypes.data, 1)
    reps = max(1, int(budget / rounds / max(once, 1e-7)))
    return statistics.median(fn(m, n, k, x.ctypes.data, w.ctypes.data, y.ctypes.data, reps) for _ in range(rounds))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 128, 512])
    ap.add_argument("--flags", nargs="*", default=[], help="C flags, e.g. -DDN_QUANT_NO_VNNI")
    ap.add_argument("--shapes", nargs="*", default=None, help="names among " + ", ".join(s[0] for s in SHAPES))
    ap.add_argument("--budget", type=float, default=0.3, help="seconds per figure")
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
    rows = [["shape", "n x k", "dtype", "m", "threads", "us/call", "GFLOP/s", "weight GB/s"]]
    for name, n, k, t in shapes:
        w = weights[(n, k, t)]
        for m in args.rows:
            x = rng.standard_normal((m, k)).astype(np.float32)
            y = np.empty((m, n), dtype=np.float32)
            for threads in args.threads:
                lib.dnet_set_threads(threads)
                s = seconds(lib, DType[t], m, n, k, x, w, y, args.budget, 5)
                gbs = f"{w.nbytes / s / 1e9:.1f}" if m == 1 else ""
                rows.append([name, f"{n}x{k}", t, str(m), str(threads), f"{s * 1e6:.1f}",
                             f"{2.0 * m * n * k / s / 1e9:.1f}", gbs])
    print(table(rows))


if __name__ == "__main__":
    main()
