"""`dnet tune` before and after: MiniLM f32 against ONNX Runtime, and the f32 matmul against torch.matmul.

    .venv/bin/python benchmarks/tune.py [--threads 2] [--budget 120] [--batches 1 8] [--seq 128]
                                        [--size 2048] [--repeats 10]

Each model is compiled untuned (`tuned=False`), tuned on this node (`backends.c.tune.tune`, the
search `dnet tune` runs) within --budget seconds into a temporary cache, and compiled again with
the tuned tiles; then untuned, tuned and the reference run interleaved (medians of rounds, so load
from other processes hits all of them alike). MiniLM is tuned at the first of --batches (a tile is
fixed when the kernel compiles, while batch and sequence are symbolic: one choice serves every
size) and timed at each; the matmul is tuned and timed at --size cubed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved_medians, pin_threads, table  # noqa: E402
from minilm import export_onnx, onnx_session, torch_model  # noqa: E402


def minilm(args, threads: int, cache: Path) -> list[list[str]]:
    import numpy as np

    import dnet
    from dnet.backends.c.tune import tune
    from dnet.models.minilm import minilm_model

    module, types = minilm_model()
    graph = dnet.to_graph(module, types)
    before = dnet.compile(graph, target="c", threads=threads, cache_dir=cache, tuned=False)
    rng = np.random.default_rng(0)
    feeds, ort_feeds = {}, {}
    for batch in args.batches:
        ids = rng.integers(1000, 20000, (batch, args.seq))
        arrays = [ids, np.ones_like(ids), np.zeros_like(ids)]
        feeds[batch] = dict(zip(graph.input_names, arrays))   # dnet's graph takes ids and mask
        ort_feeds[batch] = dict(zip(["input_ids", "attention_mask", "token_type_ids"], arrays))
    start = time.perf_counter()
    report = tune(before.runner, feeds[args.batches[0]], args.budget, cache_dir=cache)
    print(f"MiniLM tuned at batch {args.batches[0]} x {args.seq} in {time.perf_counter() - start:.0f} s "
          f"(budget {args.budget:.0f} s); per kernel (one launch, ms: analytic -> tuned):")
    for k in report.kernels:
        print(f"  {k.kernel:5} {k.shape:26} x{k.launches}: {1e3 * k.default_seconds:.3f} -> {1e3 * k.seconds:.3f}  "
              f"{'kept analytic' if k.best == k.start else k.best}")
    after = dnet.compile(graph, target="c", threads=threads, cache_dir=cache)
    ort = onnx_session(export_onnx(torch_model(), cache / "minilm.onnx"), threads, True)
    rows = [["batch x seq", "untuned ms", "tuned ms", "onnxruntime ms", "untuned / ort", "tuned / ort"]]
    for batch, feed in feeds.items():
        name = graph.output_names[0]
        np.testing.assert_allclose(after.run(feed)[name], before.run(feed)[name], rtol=1e-4, atol=1e-5)
        ort_feed = ort_feeds[batch]
        t = interleaved_medians({"before": lambda: before.run(feed), "after": lambda: after.run(feed),
                                 "ort": lambda: ort.run(None, ort_feed)}, args.repeats)
        rows.append([f"{batch} x {args.seq}", f"{1e3 * t['before']:.2f}", f"{1e3 * t['after']:.2f}",
                     f"{1e3 * t['ort']:.2f}", f"{t['before'] / t['ort']:.2f}", f"{t['after'] / t['ort']:.2f}"])
    return rows


def matmul(args, threads: int, cache: Path) -> list[list[str]]:
    import numpy as np
    import torch

    from dnet.backends.c import CBackend
    from dnet.backends.c.tune import tune
    from dnet.core.dtypes import DType
    from dnet.core.shapes import Sym
    from dnet.core.types import TensorType
    from dnet.graph.builder import GraphBuilder

    g = GraphBuilder()
    a = g.input("a", TensorType((Sym("m"), Sym("k")), DType.F32))
    b = g.input("b", TensorType((Sym("k"), Sym("n")), DType.F32))
    g.output("c", g.matmul(a, b))
    graph = g.finish()
    n = args.size
    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    feeds = {"a": x, "b": y}
    before = CBackend().prepare(graph, threads=threads, cache_dir=cache, tuned=False)
    report = tune(before, feeds, args.budget, cache_dir=cache)
    k = report.kernels[0]
    print(f"matmul {n}^3 tuned: {1e3 * k.default_seconds:.1f} -> {1e3 * k.seconds:.1f} ms a launch, "
          f"{'kept analytic' if k.best == k.start else k.best}")
    after = CBackend().prepare(graph, threads=threads, cache_dir=cache)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    np.testing.assert_allclose(after.run(feeds)["c"], (tx @ ty).numpy(), rtol=1e-3, atol=1e-2 * np.sqrt(n))
    t = interleaved_medians({"before": lambda: before.run(feeds), "after": lambda: after.run(feeds),
                             "torch": lambda: tx @ ty}, max(2, args.repeats * 1024 // n))
    gf = {key: 2.0 * n ** 3 / v / 1e9 for key, v in t.items()}
    return [["size", "untuned GFLOP/s", "tuned GFLOP/s", "torch GFLOP/s", "untuned / torch", "tuned / torch"],
            [f"{n}^3", f"{gf['before']:.1f}", f"{gf['after']:.1f}", f"{gf['torch']:.1f}",
             f"{gf['before'] / gf['torch']:.2f}", f"{gf['after'] / gf['torch']:.2f}"]]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=120.0, help="seconds of tuning, per model")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--only", choices=["minilm", "matmul"], default=None)
    args = ap.parse_args(argv)
    from dnet.hardware import detect

    pin_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads, {detect().summary()}; load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory(prefix="dnet-tune-") as tmp:
        if args.only in (None, "minilm"):
            print(table(minilm(args, args.threads, Path(tmp))))
        if args.only in (None, "matmul"):
            print(table(matmul(args, args.threads, Path(tmp))))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
