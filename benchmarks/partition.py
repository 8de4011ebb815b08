"""Partitioner benchmark: dnet's plans against the optimum and three baselines.

For each of `--topologies` seeded random heterogeneous topologies (2-8 nodes, compute
rates spread 1-20x, links 10 MB/s-10 GB/s, memory that binds) and each model
(MiniLM, a 1B-parameter Llama, a VGG-style CNN), it prints the predicted throughput
of dnet's plan relative to the optimum (found by exhaustive search over every node
order, with the exact per-order DP, up to `--exhaustive` nodes; by dnet's exact
solver above that) and dnet's advantage over the equal split, exo's memory-
proportional split and prima.cpp's Halda, and the latency of dnet's latency-objective
plan over Halda's (Halda's own objective) where Halda's assignment fits. MiniLM is the real all-MiniLM-L6-v2 of
`dnet.models` at batch 1, sequence 128; the others are stand-ins with no weights
(`dnet.partition.synthetic`). Then it times planning a 100-layer model on 8 nodes.

    .venv/bin/python benchmarks/partition.py [--topologies 50] [--seed 0]
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from dnet.partition import PlanError, build_problem, evaluate, layer_chain, solve, solve_heuristic, solve_order
from dnet.partition.baselines import BASELINES
from dnet.partition.synthetic import MODELS, LlamaConfig, llama
from dnet.topology.generate import random_topology


def exhaustive(problem) -> float:
    """The best bottleneck over every order of every set of units that shares no node (every node
    alone, or some in groups), each order solved exactly by the per-order DP."""
    best = np.inf
    groups = [k for k in range(problem.n_nodes) if len(problem.unit(k)) > 1]
    for r in range(len(groups) + 1):
        for chosen in itertools.combinations(groups, r):
            taken = [m for g in chosen for m in problem.unit(g)]
            if len(taken) != len(set(taken)):
                continue
            units = list(chosen) + [k for k in range(problem.n_physical) if k not in taken]
            for order in itertools.permutations(units):
                try:
                    best = min(best, solve_order(problem, list(order)).cost)
                except PlanError:
                    pass
    return best


def models() -> dict:
    """name -> (graph, dims): the real all-MiniLM-L6-v2 where dnet.models has it, and the stand-ins."""
    out = {name: (make(), {}) for name, make in MODELS.items()}
    try:
        import dnet
        from dnet.cli.model_loading import load_model

        model, inputs = load_model("minilm")
        out["minilm"] = (dnet.to_graph(model, inputs), {"batch": 1, "seq": 128})
    except Exception as err:  # no weights package: the stand-in of the same shape
        print(f"(MiniLM stand-in: the real model did not load: {err})")
    return out


def _sizes(chain) -> dict[str, float]:
    """What the model needs (weights and activations of every layer), and the most any one layer needs."""
    return {"model_bytes": sum(l.weight_bytes + l.activation_bytes for l in chain.layers),
            "largest_layer": max(l.weight_bytes + l.activation_bytes for l in chain.layers)}


def throughput(problem, stages) -> float:
    return evaluate(problem, stages).throughput if stages else 0.0


def run(topologies: int, seed: int, exhaustive_up_to: int, memory: tuple[float, float] = (1.2, 2.0)) -> list[dict]:
    rows = []
    chains = {name: layer_chain(graph, env) for name, (graph, env) in models().items()}
    for t in range(topologies):
        rng = np.random.default_rng(seed + t)
        nodes = int(rng.integers(2, 9))
        for name, chain in chains.items():
            topology = random_topology(np.random.default_rng([seed, t]), nodes, memory=memory, **_sizes(chain))
            problem = build_problem(chain, topology)
            try:
                plan = solve(problem)
            except PlanError:
                rows.append({"model": name, "nodes": nodes, "feasible": False})
                continue
            opt = 1.0 / (exhaustive(problem) if nodes <= exhaustive_up_to else plan.cost)
            row = {"model": name, "nodes": nodes, "feasible": True, "seconds": plan.seconds,
                   "dnet": 1.0 / plan.cost / opt, "heuristic": 1.0 / solve_heuristic(problem).cost / opt,
                   "exhaustive": nodes <= exhaustive_up_to}
            for base, fn in BASELINES.items():
                row[base] = throughput(problem, fn(problem)) / opt
            ring = BASELINES["halda"](problem)   # Halda's own objective: per-token latency
            if ring is not None and evaluate(problem, ring).feasible:
                row["latency_vs_halda"] = solve(problem, "latency").cost / evaluate(problem, ring).latency
            rows.append(row)
    return rows


def table(rows: list[dict]) -> Table:
    out = Table(title="predicted throughput / the optimum's: dnet (mean, min); baselines (mean where the "
                      "assignment fits in memory, and how often it fits)")
    for col in ("model", "instances", "dnet", "dnet heuristic", "equal", "memory (exo)", "halda",
                "dnet >= all", "latency / halda's", "plan ms (median)"):
        out.add_column(col, justify="right")
    for model in dict.fromkeys(r["model"] for r in rows):
        ok = [r for r in rows if r["model"] == model and r["feasible"]]
        infeasible = sum(1 for r in rows if r["model"] == model and not r["feasible"])
        cells = [model, f"{len(ok)} (+{infeasible} infeasible)" if infeasible else str(len(ok))]
        for key in ("dnet", "heuristic"):
            vals = [r[key] for r in ok]
            cells.append(f"{statistics.mean(vals):.4f}, {min(vals):.4f}")
        for base in BASELINES:
            fit = [r[base] for r in ok if r[base] > 0]
            cells.append(f"{statistics.mean(fit):.3f} ({len(fit)} fit)" if fit else "(none fit)")
        wins = sum(1 for r in ok if all(r["dnet"] >= r[b] * (1 - 1e-9) for b in BASELINES))
        lat = [r["latency_vs_halda"] for r in ok if "latency_vs_halda" in r]
        cells += [f"{wins}/{len(ok)}", f"{statistics.mean(lat):.3f}, max {max(lat):.3f}" if lat else "-",
                  f"{statistics.median(r['seconds'] for r in ok) * 1e3:.1f}"]
        out.add_row(*cells)
    return out


def time_large(nodes: int = 8, layers: int = 100, seed: int = 0) -> tuple[float, float, int]:
    """Seconds to build the layer chain and to solve, for a `layers`-layer Llama on `nodes` nodes."""
    graph = llama(LlamaConfig(layers=layers, hidden=1024, heads=16, kv_heads=4, ffn=4096, vocab=32000))
    t0 = time.perf_counter()
    chain = layer_chain(graph)
    problem = build_problem(chain, random_topology(np.random.default_rng(seed), nodes, **_sizes(chain)))
    t1 = time.perf_counter()
    solve(problem)
    return t1 - t0, time.perf_counter() - t1, len(chain)


def cost_model_check(runs: int = 9) -> Table:
    """Predicted against measured seconds for each layer of the real MiniLM on the numpy backend,
    each layer cut out as a pipeline stage (`dnet.runtime.pipeline.split_pipeline`) and timed alone.
    Probe and layers are timed in CPU time on one BLAS thread, which other processes on a shared
    machine do not change (wall-clock figures there vary several-fold from run to run)."""
    from threadpoolctl import threadpool_limits

    from dnet.backends.numpy import run_graph
    from dnet.partition.cost import OpTable, op_times
    from dnet.runtime.pipeline import split_pipeline
    from dnet.topology.probe import cpu_clock, run_probe, time_runs

    graph, env = models()["minilm"]
    chain = layer_chain(graph, env)
    stage_of = [0] * len(graph.nodes)
    for k, layer in enumerate(chain.layers):
        for n in layer.nodes:
            stage_of[n] = k
    stages = split_pipeline(graph, stage_of, len(chain))
    rng = np.random.default_rng(0)
    values = {"input_ids": rng.integers(0, 30522, (1, 128)), "attention_mask": np.ones((1, 128), np.int64)}
    out = Table(title=f"cost model: MiniLM layers on the numpy backend, one thread, CPU time, median of {runs}")
    for col in ("layer", "predicted ms", "measured ms", "error"):
        out.add_column(col, justify="right")
    with threadpool_limits(1), cpu_clock():
        per_op = op_times(OpTable.of(graph, env), run_probe("numpy").device)   # measured now, not cached
        for layer, stage in zip(chain.layers, stages):
            feed = {name: values[name] for name in stage.input_names}
            measured = time_runs(lambda: run_graph(stage, feed), runs).median
            values.update(run_graph(stage, feed))
            predicted = float(per_op[layer.nodes].sum())
            out.add_row(layer.name, f"{predicted * 1e3:.2f}", f"{measured * 1e3:.2f}", f"{predicted / measured - 1:+.1%}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topologies", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exhaustive", type=int, default=6, help="exhaustive search up to this many nodes")
    ap.add_argument("--memory", default="1.2,2.0", help="the nodes' memory together, as LOW,HIGH times the model's")
    ap.add_argument("--cost-model", action="store_true", help="only compare predicted and measured layer times")
    args = ap.parse_args()
    if args.cost_model:
        Console(width=120).print(cost_model_check())
        return
    t0 = time.perf_counter()
    low, high = (float(x) for x in args.memory.split(","))
    rows = run(args.topologies, args.seed, args.exhaustive, (low, high))
    console = Console(width=200)
    console.print(table(rows))
    exh = sum(1 for r in rows if r.get("exhaustive"))
    console.print(f"{exh} of {sum(r['feasible'] for r in rows)} optima by exhaustive search "
                  f"(<= {args.exhaustive} nodes), the rest by the exact DP; {time.perf_counter() - t0:.1f} s in all")
    build, solve_s, n_layers = time_large()
    console.print(f"100-layer Llama ({n_layers} chain layers) on 8 nodes: layer chain + cost model {build:.3f} s, "
                  f"solve {solve_s:.3f} s, total {build + solve_s:.3f} s")


if __name__ == "__main__":
    main()
