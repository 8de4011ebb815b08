"""Distributed generation: SmolLM2 on three unequal local workers, against the plans users would pick instead.

Three worker processes on this machine, one thread each, simulating devices 2x, 3x and 4x
slower (`--slowdowns`), joined by shaped links: a 1 Gb/s / 0.3 ms LAN and a 100 Mb/s / 3 ms
Wi-Fi-like network. For one stream and for eight, each plan is loaded (`dnet.llm.load(...,
topology=)`: every worker keeps its layers' KV caches) and decodes greedily in timed windows:

- dnet: what `load` runs: the partitioner's plan (latency for one stream, throughput for eight); for
  eight, measured at load against the same split sent as one request a step and against the best
  single node, the fastest kept (`ClusterEngine.calibrate`);
- best single: the whole model on the fastest worker alone;
- equal: the same number of layers on every worker;
- exo: layers in proportion to each worker's memory (exo's ring memory-weighted split);

beside the plan's own prediction (the probed cost model, uncalibrated). Then one worker of dnet's
eight-stream plan is killed mid-run: the pause until decoding goes on (re-plan + cache rebuild).
Figures are medians of windows at steady state; the workers share this machine's cores with the
coordinator, so absolute rates are low and the ratios are what to read.

    .venv/bin/python benchmarks/llm_cluster.py [--slowdowns 2,3,4] [--windows 5] [--steps 8]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from dnet.llm import load
from dnet.partition import build_problem, layer_chain, plan_from_stages
from dnet.partition.baselines import equal_split, memory_proportional
from dnet.partition.problem import Stage
from dnet.topology import Topology

CONTEXT = 256
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, a small robot",
           "List three colors:", "Water boils at", "The best way to learn is", "import numpy as np",
           "In 1969, astronauts"]
LINKS = {"LAN 1 Gb/s, 0.3 ms": (1e9 / 8, 0.3e-3), "Wi-Fi 100 Mb/s, 3 ms": (100e6 / 8, 3e-3)}


def planner(kind: str):
    """(graph, topology, env, objective) -> Plan for `kind`."""
    def make(graph, topology, env, objective):
        chain = layer_chain(graph, env)
        problem = build_problem(chain, topology)
        stages = {"best single": lambda p: [Stage(0, 0, p.n_layers)], "equal": equal_split,
                  "exo": memory_proportional}[kind](problem)
        return plan_from_stages(chain, topology, problem, stages, objective, kind)
    return make


def measure(llm, streams: int, windows: int, steps: int, kill_after: int | None = None) -> tuple[float, float]:
    """Decode tokens/s of `streams` sequences decoded together (median of windows), and the longest
    step (the pause, when a worker is killed after `kill_after` steps)."""
    engine = llm.engine
    seqs = [engine.open() for _ in range(streams)]
    try:
        logits = np.stack([engine.prefill(s, llm.tokenizer.encode(PROMPTS[i % len(PROMPTS)]))[-1]
                           for i, s in enumerate(seqs)])
        rates, longest, done = [], 0.0, 0
        for w in range(windows + 1):                       # the first window warms up
            start = time.perf_counter()
            for _ in range(steps):
                if kill_after is not None and done == kill_after:
                    exe = engine.exe
                    exe.local.kill(exe.coordinator.placement[len(exe.coordinator.placement) // 2])
                t = time.perf_counter()
                logits = engine.decode(seqs, [int(x) for x in logits.argmax(-1)])
                longest = max(longest, time.perf_counter() - t)
                done += 1
            if w:
                rates.append(streams * steps / (time.perf_counter() - start))
        return statistics.median(rates), longest
    finally:
        for s in seqs:
            engine.close(s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slowdowns", default="2,3,4",
                    help="each worker this many times slower: together they must not need more cores than the machine has")
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8, help="decode steps per window")
    args = ap.parse_args()
    factors = [float(x) for x in args.slowdowns.split(",")]
    console = Console(width=140)
    table = Table(title=f"SmolLM2-135M Q4_1 decode on {len(factors)} local workers (slowdowns {args.slowdowns}, "
                        f"1 thread each), tokens/s, median of {args.windows} windows of {args.steps} steps")
    for col in ("link", "streams", "plan", "stages (node: layers)", "predicted tok/s", "measured tok/s",
                "vs best single"):
        table.add_column(col, justify="right")
    pause = None
    for link, (bandwidth, latency) in LINKS.items():
        for streams in (1, 8):
            best = None
            for kind in ("best single", "dnet", "equal", "exo"):
                topo = Topology.local(len(factors), scales=[1 / f for f in factors], bandwidth=bandwidth,
                                      latency=latency)
                options = {"slowdowns": factors} if kind == "dnet" else {"plan": planner(kind), "slowdowns": factors}
                with load(context=CONTEXT, topology=topo, slots=streams, cluster=options) as llm:
                    plan = llm.engine.exe.plan
                    rate, _ = measure(llm, streams, args.windows, args.steps)
                    if kind == "dnet" and streams == 8 and pause is None:
                        _, pause = measure(llm, streams, 1, 2 * args.steps, kill_after=args.steps)
                best = rate if kind == "best single" else best
                layout = ", ".join(f"{s.node}: {len(s.layers)}" for s in plan.stages)
                predicted = streams * plan.throughput if streams > 1 else 1 / plan.latency
                table.add_row(link, str(streams), kind, layout, f"{predicted:.1f}",
                              f"{rate:.1f}", f"{rate / best:.2f}x")
                console.print(f"{link}, {streams} stream(s), {kind}: {rate:.1f} tok/s ({layout})")
    console.print(table)
    if pause is not None:
        console.print(f"a worker of dnet's 8-stream LAN plan killed mid-run: the longest step took {pause:.2f} s "
                      "(loss noticed, re-planned, every cache rebuilt); no sequence lost")


if __name__ == "__main__":
    main()
