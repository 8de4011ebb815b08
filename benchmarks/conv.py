"""dnet's generated convolution (the C backend's direct convolution) vs torch's conv2d, in GFLOP/s.

    .venv/bin/python benchmarks/conv.py [--threads N] [--batch 1] [--im2col] [--winograd auto|off|2|4] [--cpu-time]

The layers are ResNet-18's distinct convolution shapes at 224 x 224 input (f32, NCHW), and two
of MobileNetV2's depthwise ones, each with its bias and ReLU (fused into dnet's epilogue; torch
runs them after). `--im2col` renders dnet's convolutions as the Gemm over gathered im2col
panels instead (what the C backend did before its direct convolutions; depthwise ones stay Gemms).
`--winograd` sets $DNET_WINOGRAD for dnet's 3x3 stride-1 layers: "auto" (the default rule, F(4x4, 3x3) with
a direct fallback for batches of few tiles), "off" (the direct convolution), "4" or "2" (always F(m, 3));
`DNET_WINOGRAD=off dnet bench conv` does the same through the CLI. `--cpu-time` times each call in process CPU
time instead of wall time: with `--threads 1`, what a shared machine disturbs least.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved_medians, pin_threads, table  # noqa: E402
from onnx_models import interleaved_cpu_medians  # noqa: E402

# (in channels, out channels, image size, kernel, stride, padding[, groups])
LAYERS = [(3, 64, 224, 7, 2, 3), (64, 64, 56, 3, 1, 1), (64, 128, 56, 3, 2, 1), (128, 128, 28, 3, 1, 1),
          (128, 256, 28, 3, 2, 1), (256, 256, 14, 3, 1, 1), (256, 512, 14, 3, 2, 1), (512, 512, 7, 3, 1, 1),
          (64, 128, 56, 1, 2, 0), (96, 96, 112, 3, 2, 1, 96), (144, 144, 56, 3, 1, 1, 144)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--im2col", action="store_true", help="the Gemm over im2col panels, not the direct kernel")
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time per call, not wall time")
    ap.add_argument("--winograd", choices=["auto", "off", "2", "4"], default=None,
                    help="3x3 stride-1 layers as Winograd's F(m x m, 3 x 3) (default: $DNET_WINOGRAD, else auto)")
    args = ap.parse_args(argv)
    import os

    if args.winograd is not None:   # `dnet bench conv` passes none: $DNET_WINOGRAD, as for any compile
        os.environ["DNET_WINOGRAD"] = args.winograd
    args.winograd = os.environ.get("DNET_WINOGRAD", "auto")
    from dnet.hardware import detect

    threads = args.threads or detect().cores
    pin_threads(threads)
    import numpy as np
    import torch

    from dnet.backends.c import CBackend, conv as c_conv
    from dnet.core.dtypes import DType
    from dnet.core.types import TensorType
    from dnet.graph.builder import GraphBuilder
    from dnet.graph.ops import Op

    torch.set_num_threads(threads)
    c_conv.DIRECT = not args.im2col
    rng = np.random.default_rng(0)
    rows = [["layer (c -> o, size, k, stride)", "dnet GFLOP/s", "torch GFLOP/s", "dnet/torch"]]
    for c, o, size, k, s, p, *grouped in LAYERS:
        groups = grouped[0] if grouped else 1
        w = (rng.standard_normal((o, c // groups, k, k)) / np.sqrt(c // groups * k * k)).astype(np.float32)
        bias = rng.standard_normal(o).astype(np.float32)
        x = rng.standard_normal((args.batch, c, size, size)).astype(np.float32)
        g = GraphBuilder()
        xi = g.input("x", TensorType(("n", c, size, size), DType.F32))
        y = g.node(Op.CONV2D, [xi, g.const("w", w)], stride=(s, s), padding=(p, p, p, p), dilation=(1, 1), groups=groups)
        y = g.elementwise(Op.ADD, y, g.const("bias", bias.reshape(1, o, 1, 1)))
        g.output("y", g.elementwise(Op.MAX, y, 0.0))
        runner = CBackend().prepare(g.finish(), threads=threads)
        tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias)

        def run_torch():
            with torch.inference_mode():
                return torch.relu(torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p, groups=groups))

        np.testing.assert_allclose(runner.run({"x": x})["y"], run_torch().numpy(), rtol=1e-3, atol=1e-3)
        measure = interleaved_cpu_medians if args.cpu_time else interleaved_medians
        t = measure({"dnet": lambda: runner.run({"x": x}), "torch": run_torch}, args.repeats)
        out = (size + 2 * p - k) // s + 1
        flops = 2.0 * args.batch * o * c // groups * k * k * out * out
        d, q = flops / t["dnet"] / 1e9, flops / t["torch"] / 1e9
        rows.append([f"{c} -> {o}, {size}^2, {k}x{k}, /{s}" + (f", {groups} groups" if groups > 1 else ""), f"{d:.1f}", f"{q:.1f}", f"{d / q:.2f}"])
    form = "im2col Gemm" if args.im2col else f"direct, Winograd {args.winograd}"
    clock = "CPU time" if args.cpu_time else "wall time"
    print(f"f32 conv2d + bias + ReLU ({form}), batch {args.batch}, {threads} threads, {clock}, "
          f"load average {os.getloadavg()[0]:.1f}, {detect().summary()}")
    print(table(rows))


if __name__ == "__main__":
    main()
