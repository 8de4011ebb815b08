"""dnet's OpenCL backend against its C backend: MiniLM latency and SmolLM2 decode, on whatever OpenCL
device this machine has (in CI and on a developer's CPU: PoCL, an OpenCL driver that runs on the CPU).

    .venv/bin/python benchmarks/opencl.py [--batches 1 8] [--seq 128] [--tokens 16]

A benchmark row, not a target: on a CPU, PoCL compiles the same kernels a GPU would get (a grid of
work-items, local-memory tiles for matmuls) and runs each work-group as loops on a core, so it
shows what the portable path costs, not what a GPU gives. Latencies are medians of interleaved
runs; the largest difference of the embeddings from the C backend's is printed beside them.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved_medians, table  # noqa: E402


def minilm(batches: list[int], seq: int, repeats: int) -> str:
    import dnet
    from dnet.models.minilm import minilm_model

    module, types = minilm_model()
    graph = dnet.to_graph(module, types)
    exes, compile_s = {}, {}
    for target in ("c", "opencl"):
        start = time.perf_counter()
        exes[target] = dnet.compile(graph, target=target)
        compile_s[target] = time.perf_counter() - start
    device = exes["opencl"].runner.module.device.name
    rows = [["batch x seq", "C ms", "OpenCL ms", "OpenCL / C", "max |diff|"]]
    for batch in batches:
        rng = np.random.default_rng(batch)
        feeds = {"input_ids": rng.integers(1000, 20000, (batch, seq)), "attention_mask": np.ones((batch, seq), np.int64)}
        times = interleaved_medians({t: (lambda e=e: e(**feeds)) for t, e in exes.items()}, repeats, rounds=3)
        diff = float(np.abs(exes["opencl"](**feeds) - exes["c"](**feeds)).max())
        rows.append([f"{batch} x {seq}", f"{times['c'] * 1e3:.1f}", f"{times['opencl'] * 1e3:.1f}",
                     f"{times['opencl'] / times['c']:.1f}", f"{diff:.1e}"])
    compiled = ", ".join(f"{t} {s:.1f} s" for t, s in compile_s.items())
    return f"MiniLM on {device} (compile: {compiled})\n" + table(rows)


def smollm2(tokens: int) -> str:
    import dnet

    rows = [["target", "decode tok/s", "text"]]
    for target in ("c", "opencl"):
        llm = dnet.llm.load(target=target, context=256, prefix_cache=False)
        llm.generate("Once upon a time", max_tokens=2, temperature=0)          # warm
        start = time.perf_counter()
        text = llm.generate("Once upon a time", max_tokens=tokens, temperature=0)
        rows.append([target, f"{tokens / (time.perf_counter() - start):.1f}", repr(text[:40])])
    return f"SmolLM2-135M (Q4_1), {tokens} greedy tokens after a 4-token prompt\n" + table(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=16, help="SmolLM2 tokens to decode (0: skip SmolLM2)")
    args = ap.parse_args(argv)
    print(minilm(args.batches, args.seq, args.repeats))
    if args.tokens:
        print()
        print(smollm2(args.tokens))


if __name__ == "__main__":
    main()
