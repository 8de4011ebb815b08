"""dnet workers as Ray actors against plain worker processes: the MiniLM pipeline on three of each.

A three-node Ray cluster on this machine (`ray.cluster_utils.Cluster`, one CPU a node) and three-worker
`LocalCluster`s (plain TCP on loopback, and mutual TLS as the actors' links have) run the real
all-MiniLM-L6-v2 with the same stages (an equal split of its layers), links unshaped in all. Printed: the time to form each (the Ray cluster's nodes, then dnet's actors up, probed and
their links measured; the local workers started), then the throughput and per-request latency of each at
steady state (`exe.measure`: medians of windows), interleaved `--repeats` times so a busy moment of the machine
falls on both.

    .venv/bin/python benchmarks/ray_cluster.py [--repeats 3] [--windows 3] [--window 8]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from dnet.cluster.local import LocalCluster
from dnet.cluster.ray_cluster import RayCluster
from dnet.cluster.session import compile_distributed
from dnet.models import load_minilm
from dnet.partition import build_problem, layer_chain, plan_from_stages
from dnet.partition.problem import Stage
from dnet.topology import Topology

TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
         "A man is riding a horse."]


def equal_split(graph, env):
    def plan(topology):
        chain = layer_chain(graph, env)
        problem = build_problem(chain, topology)
        bounds = np.linspace(0, problem.n_layers, len(topology.nodes) + 1).astype(int)
        stages = [Stage(k, int(a), int(b)) for k, (a, b) in enumerate(zip(bounds, bounds[1:]))]
        return plan_from_stages(chain, topology, problem, stages, "throughput", "equal")
    return plan


def measure(exe, inputs, windows: int, window: int) -> tuple[float, float]:
    """(requests/s at steady state, median seconds of one request alone)."""
    rate = exe.measure(inputs, windows=windows, window=window).throughput
    alone = []
    for _ in range(10):
        start = time.perf_counter()
        exe.run(inputs)
        alone.append(time.perf_counter() - start)
    return rate, statistics.median(alone)


def main() -> None:
    import ray
    from ray.cluster_utils import Cluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--window", type=int, default=8)
    args = parser.parse_args()

    encoder = load_minilm()
    graph = encoder.executable.graph
    inputs = encoder.tokenize(TEXTS)
    env = {"batch": inputs["input_ids"].shape[0], "seq": inputs["input_ids"].shape[1]}
    want = encoder.executable.run(inputs)[graph.output_names[0]]

    start = time.perf_counter()
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(2):
            nodes.add_node(num_cpus=1)
        nodes.wait_for_nodes()
        ray.init(address=nodes.address, logging_level="WARNING")
        ray_nodes = time.perf_counter() - start
        with RayCluster() as actors:
            ray_topology = actors.topology()
            formed = time.perf_counter() - start
            start = time.perf_counter()
            local = compile_distributed(graph, Topology.local(3), env=env, plan=equal_split(graph, env),
                                        shape_links=False)
            local_formed = time.perf_counter() - start
            on_ray = compile_distributed(graph, ray_topology, env=env, plan=equal_split(graph, env))
            # Ray's workers listen on the node's address, so their links are TLS: plain workers with TLS too
            tls_workers = LocalCluster(3, tls=True).start()
            tls_topology = Topology.local(3)
            for node, address in zip(tls_topology.nodes, tls_workers.addresses):
                node.address = address
            on_tls = compile_distributed(graph, tls_topology, env=env, plan=equal_split(graph, env),
                                         secret=tls_workers.secret, tls=tls_workers.tls)
            exes = {"plain workers": local, "plain, TLS": on_tls, "Ray actors": on_ray}
            try:
                for exe in exes.values():
                    got = exe.run(inputs)[graph.output_names[0]]
                    assert np.abs(got - want).max() < 1e-4, "the pipeline disagrees with one node"
                rows: dict[str, list[tuple[float, float]]] = {name: [] for name in exes}
                for _ in range(args.repeats):
                    for name, exe in exes.items():
                        rows[name].append(measure(exe, inputs, args.windows, args.window))
            finally:
                for exe in exes.values():
                    exe.close()
                tls_workers.close()
    finally:
        ray.shutdown()
        nodes.shutdown()
    print(f"forming: Ray's 3 nodes {ray_nodes:.1f} s, then dnet's actors up, probed, links measured "
          f"{formed - ray_nodes:.1f} s (total {formed:.1f} s); 3 plain local workers and their session "
          f"{local_formed:.1f} s")
    print(f"MiniLM, {len(TEXTS)} sentences a request, equal split over 3 workers, medians of {args.repeats} runs:")
    for name, results in rows.items():
        rate = statistics.median(r[0] for r in results)
        alone = statistics.median(r[1] for r in results)
        print(f"  {name:14s} {rate:6.2f} requests/s   {1e3 * alone:6.1f} ms a request alone")


if __name__ == "__main__":
    main()
