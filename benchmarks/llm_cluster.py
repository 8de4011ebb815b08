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
- tensor: every layer split over the three workers (`parallel="tensor"`: heads and MLP features in
  proportion to speed, two all-reduces a layer over the shaped links);

beside each plan's own prediction: from the probed cost model ("model"), and after one round of the
feedback loop (`engine.retune(rounds=1)`: the plan is timed, each node's speed corrected by what its
stages measured, the plan kept; "calibrated"), both against a fresh measurement after it. Then one
worker of dnet's eight-stream plan is killed mid-run: the pause until decoding goes on (re-plan + cache
rebuild). Every plan of a link and stream count is loaded at once (on workers of its own, idle while
another is timed) and their windows are taken in turn, so load from other processes drifting over the
minutes hits every plan alike; figures are medians of windows at steady state. The workers share this
machine's cores with the coordinator, so absolute rates are low and the ratios are what to read.

    .venv/bin/python benchmarks/llm_cluster.py [--slowdowns 2,3,4] [--windows 5] [--steps 8]
                                               [--links lan,wifi] [--streams 1,8] [--kinds dnet,equal,...]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import ExitStack

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
LINKS = {"lan": ("LAN 1 Gb/s, 0.3 ms", 1e9 / 8, 0.3e-3), "wifi": ("Wi-Fi 100 Mb/s, 3 ms", 100e6 / 8, 3e-3)}
KINDS = ("best single", "dnet", "tensor", "equal", "exo")


def planner(kind: str):
    """(graph, topology, env, objective) -> Plan for `kind`."""
    def make(graph, topology, env, objective):
        chain = layer_chain(graph, env)
        problem = build_problem(chain, topology)
        stages = {"best single": lambda p: [Stage(0, 0, p.n_layers)], "equal": equal_split,
                  "exo": memory_proportional}[kind](problem)
        return plan_from_stages(chain, topology, problem, stages, objective, kind)
    return make


class Decoding:
    """`streams` sequences of one loaded model, prefilled, decoded together a window of steps at a time."""

    def __init__(self, llm, streams: int):
        self.engine = llm.engine
        self.seqs = [self.engine.open() for _ in range(streams)]
        self.logits = np.stack([self.engine.prefill(s, llm.tokenizer.encode(PROMPTS[i % len(PROMPTS)]))[-1]
                                for i, s in enumerate(self.seqs)])

    def window(self, steps: int, kill_after: int | None = None) -> tuple[float, float]:
        """Decode tokens/s over `steps` steps, and the longest step (the pause, when a worker of the plan is
        killed after `kill_after` steps)."""
        start, longest = time.perf_counter(), 0.0
        for k in range(steps):
            if k == kill_after:
                exe = self.engine.exe
                exe.local.kill(exe.coordinator.placement[len(exe.coordinator.placement) // 2])
            t = time.perf_counter()
            self.logits = self.engine.decode(self.seqs, [int(x) for x in self.logits.argmax(-1)])
            longest = max(longest, time.perf_counter() - t)
        return len(self.seqs) * steps / (time.perf_counter() - start), longest

    def close(self) -> None:
        for s in self.seqs:
            self.engine.close(s)


def measure_interleaved(decodings: dict[str, Decoding], windows: int, steps: int) -> dict[str, float]:
    """Median tokens/s of each plan over `windows` windows, taken in turn (plan A's window, then B's, ...), so
    that load from other processes drifting over the minutes hits every plan alike; one window each warms up."""
    rates: dict[str, list[float]] = {kind: [] for kind in decodings}
    for w in range(windows + 1):
        for kind, d in decodings.items():
            rate, _ = d.window(steps)
            if w:
                rates[kind].append(rate)
    return {kind: statistics.median(r) for kind, r in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slowdowns", default="2,3,4",
                    help="each worker this many times slower: together they must not need more cores than the machine has")
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8, help="decode steps per window")
    ap.add_argument("--links", default=",".join(LINKS), help="which shaped links: " + ", ".join(LINKS))
    ap.add_argument("--streams", default="1,8", help="sequences decoded together, one row group each")
    ap.add_argument("--kinds", default=",".join(KINDS), help="which plans: " + ", ".join(KINDS))
    ap.add_argument("--no-kill", action="store_true", help="skip the killed-worker run")
    args = ap.parse_args()
    factors = [float(x) for x in args.slowdowns.split(",")]
    links = _choices(args.links, LINKS, "--links")
    kinds = _choices(args.kinds, KINDS, "--kinds")
    streams_list = [int(x) for x in args.streams.split(",")]
    console = Console(width=160)
    load_average = os.getloadavg()
    table = Table(title=f"SmolLM2-135M Q4_1 decode on {len(factors)} local workers (slowdowns {args.slowdowns}, "
                        f"1 thread each), tokens/s, median of {args.windows} windows of {args.steps} steps; "
                        f"load average at start {load_average[0]:.1f}")
    for col in ("link", "streams", "plan", "stages (node: layers)", "predicted: model", "calibrated",
                "measured", "measured / calibrated", "vs best single"):
        table.add_column(col, justify="right")
    pause = None
    for key in links:
        link, bandwidth, latency = LINKS[key]
        for streams in streams_list:
            with ExitStack() as stack:
                loaded = {}
                for kind in kinds:     # every plan loaded on workers of its own, then measured in turn
                    loaded[kind] = load_plan(stack, kind, factors, bandwidth, latency, streams, args.steps)
                decodings = {kind: Decoding(llm, streams) for kind, (llm, _, _) in loaded.items()}
                rates = measure_interleaved(decodings, args.windows, args.steps)
                if "dnet" in kinds and streams == 8 and pause is None and not args.no_kill:
                    _, pause = decodings["dnet"].window(2 * args.steps, kill_after=args.steps)
                best = rates.get("best single")
                for kind, (llm, predicted, calibrated) in loaded.items():
                    exe, rate = llm.engine.exe, rates[kind]
                    layout = ", ".join(f"{s.node}: {len(s.layers)}" for s in exe.plan.stages)
                    if exe.pipeline.parallel:
                        layout = "group " + ", ".join(s.node for s in exe.plan.stages) + " (every layer)"
                    table.add_row(link, str(streams), kind, layout, f"{predicted:.1f}",
                                  "-" if calibrated is None else f"{calibrated:.1f}", f"{rate:.1f}",
                                  "-" if calibrated is None else f"{rate / calibrated:.2f}x",
                                  f"{rate / best:.2f}x" if best else "-")
                    console.print(f"{link}, {streams} stream(s), {kind}: {rate:.1f} tok/s ({layout}; predicted "
                                  f"{predicted:.1f}, calibrated {'-' if calibrated is None else f'{calibrated:.1f}'})")
    console.print(table)
    console.print(f"load average (1, 5, 15 min) at start {load_average}, at end {os.getloadavg()}")
    if pause is not None:
        console.print(f"a worker of dnet's 8-stream plan killed mid-run ({links[0]}): the longest step took "
                      f"{pause:.2f} s (loss noticed, re-planned, every cache rebuilt); no sequence lost")


def load_plan(stack: ExitStack, kind: str, factors: list[float], bandwidth: float, latency: float, streams: int,
              steps: int):
    """(loaded model, predicted tokens/s, calibrated tokens/s or None) of one plan on three fresh workers."""
    topo = Topology.local(len(factors), scales=[1 / f for f in factors], bandwidth=bandwidth, latency=latency)
    options = {"slowdowns": factors} if kind in ("dnet", "tensor") else {"plan": planner(kind), "slowdowns": factors}
    llm = stack.enter_context(load(context=CONTEXT, topology=topo, slots=streams, cluster=options,
                                   parallel="tensor" if kind == "tensor" else "pipeline"))
    exe = llm.engine.exe
    predicted, calibrated = rate_of(exe.plan, streams), None
    if not exe.pipeline.parallel:   # the feedback loop corrects pipelines' stage times
        llm.engine.retune(rounds=1, windows=2, steps=steps)
        calibrated = rate_of(exe.plan, streams)
    return llm, predicted, calibrated


def rate_of(plan, streams: int) -> float:
    """The plan's predicted decode tokens/s: a step of every stream per throughput unit, or 1 / latency for one."""
    return streams * plan.throughput if streams > 1 else 1 / plan.latency


def _choices(text: str, known, flag: str) -> list[str]:
    picked = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in picked if x not in known]
    if unknown or not picked:
        raise SystemExit(f"{flag}: unknown {unknown or text!r}; known: {', '.join(known)}")
    return picked


if __name__ == "__main__":
    main()
