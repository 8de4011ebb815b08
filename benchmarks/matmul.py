"""dnet's generated f32 matmul vs torch.matmul, in GFLOP/s, with the fraction of the machine's peak.

    .venv/bin/python benchmarks/matmul.py [--threads N] [--sizes 512 1024 2048]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved_medians, pin_threads, table  # noqa: E402


def peak_gflops(host, threads: int, ghz: float) -> float:
    """FMA peak: lanes x 2 flops x FMA units (2 on AVX-512/AVX2 server cores) x GHz x threads."""
    return host.f32_lanes * 2 * 2 * ghz * threads


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--ghz", type=float, default=None, help="core clock for the peak figure (read from /proc)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    from dnet.hardware import detect

    host = detect()
    threads = args.threads or host.cores
    pin_threads(threads)
    import numpy as np
    import torch

    from dnet.backends.c import CBackend
    from dnet.core.dtypes import DType
    from dnet.core.shapes import Sym
    from dnet.core.types import TensorType
    from dnet.graph.builder import GraphBuilder

    torch.set_num_threads(threads)
    g = GraphBuilder()
    a = g.input("a", TensorType((Sym("m"), Sym("k")), DType.F32))
    b = g.input("b", TensorType((Sym("k"), Sym("n")), DType.F32))
    g.output("c", g.matmul(a, b))
    runner = CBackend().prepare(g.finish(), threads=threads)
    ghz = args.ghz or cpu_ghz()
    peak = peak_gflops(host, threads, ghz)
    rows = [["size", "dnet GFLOP/s", "torch GFLOP/s", "dnet/torch", "dnet % peak", "torch % peak"]]
    rng = np.random.default_rng(0)
    for n in args.sizes:
        x = rng.standard_normal((n, n)).astype(np.float32)
        y = rng.standard_normal((n, n)).astype(np.float32)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        out = runner.run({"a": x, "b": y})["c"]
        np.testing.assert_allclose(out, (tx @ ty).numpy(), rtol=1e-3, atol=1e-2 * np.sqrt(n))
        repeats = max(2, args.repeats * 1024 // n)
        t = interleaved_medians({"dnet": lambda: runner.run({"a": x, "b": y}), "torch": lambda: tx @ ty}, repeats)
        flops = 2.0 * n ** 3
        d, p = flops / t["dnet"] / 1e9, flops / t["torch"] / 1e9
        rows.append([f"{n}^3", f"{d:.1f}", f"{p:.1f}", f"{d / p:.2f}", f"{100 * d / peak:.0f}%", f"{100 * p / peak:.0f}%"])
    print(f"f32 matmul, {threads} threads, {host.summary()}; peak {peak:.0f} GFLOP/s at {ghz:.2f} GHz")
    print(table(rows))


def cpu_ghz() -> float:
    try:
        for line in open("/proc/cpuinfo"):
            if line.lower().startswith("cpu mhz"):
                return float(line.split(":")[1]) / 1000
    except OSError:
        pass
    return 2.0


if __name__ == "__main__":
    main()
