"""dnet's 3x3 stride-1 convolutions, direct against Winograd, side by side: one-core CPU time per call.

    .venv/bin/python benchmarks/winograd.py [--batches 1 8] [--modes off auto 4 2] [--threads 1]

The layers are ResNet-18's stride-1 3x3 shapes (channels in = out, 224 x 224 input: 56, 28, 14 and 7),
each with its bias and ReLU in the epilogue. Each mode ($DNET_WINOGRAD: "off" the direct convolution,
"auto" the rule, "4" / "2" always F(m x m, 3 x 3)) gets its own compiled library, and the libraries run in
turn, call by call, so a change in the machine's load falls on all of them alike. With one thread the
figure is CPU time (time.process_time), which a shared machine disturbs least; with more, wall time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import pin_threads, table  # noqa: E402

LAYERS = [(64, 56), (128, 28), (256, 14), (512, 7)]   # (channels, image size)


def layer_graph(c: int, size: int, rng):
    from dnet.core.dtypes import DType
    from dnet.core.types import TensorType
    from dnet.graph.builder import GraphBuilder
    from dnet.graph.ops import Op

    g = GraphBuilder()
    x = g.input("x", TensorType(("n", c, size, size), DType.F32))
    w = (rng.standard_normal((c, c, 3, 3)) / (3 * c ** 0.5)).astype("float32")
    y = g.node(Op.CONV2D, [x, g.const("w", w)], stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1)
    bias = rng.standard_normal((1, c, 1, 1)).astype("float32")
    g.output("y", g.elementwise(Op.MAX, g.elementwise(Op.ADD, y, g.const("b", bias)), 0.0))
    return g.finish()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--modes", nargs="+", default=["off", "auto", "4", "2"], choices=["off", "auto", "4", "2"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    pin_threads(args.threads)
    import numpy as np

    from dnet.backends.c import CBackend
    from dnet.hardware import detect

    clock = time.process_time if args.threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    rows = [["layer", "batch", *[f"{m} ms" for m in args.modes], *[f"off/{m}" for m in args.modes if m != "off"]]]
    for c, size in LAYERS:
        graph = layer_graph(c, size, rng)
        runners = {}
        for mode in args.modes:
            os.environ["DNET_WINOGRAD"] = mode
            runners[mode] = CBackend().prepare(graph, threads=args.threads)
        for batch in args.batches:
            x = {"x": rng.standard_normal((batch, c, size, size)).astype(np.float32)}
            want = runners[args.modes[0]].run(x)["y"]
            for r in runners.values():   # every mode computes the same layer (to Winograd's rounding)
                np.testing.assert_allclose(r.run(x)["y"], want, rtol=1e-3, atol=1e-3)
            samples: dict[str, list[float]] = {m: [] for m in args.modes}
            repeats = 3 if batch == 1 else 1
            for _ in range(args.rounds):
                for mode, r in runners.items():
                    t0 = clock()
                    for _ in range(repeats):
                        r.run(x)
                    samples[mode].append((clock() - t0) / repeats)
            med = {m: statistics.median(s) for m, s in samples.items()}
            rows.append([f"{c} x {size}^2", str(batch), *[f"{med[m] * 1e3:.2f}" for m in args.modes],
                         *[f"{med['off'] / med[m]:.2f}" for m in args.modes if m != "off" and "off" in med]])
    unit = "one-core CPU time" if args.threads == 1 else f"wall time, {args.threads} threads"
    print(f"3x3 stride-1 conv + bias + ReLU, {unit}, medians of {args.rounds} rounds, load average "
          f"{os.getloadavg()[0]:.1f}, {detect().summary()}")
    print(table(rows))


if __name__ == "__main__":
    main()
