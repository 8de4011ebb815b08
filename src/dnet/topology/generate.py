"""Seeded random heterogeneous topologies, for benchmarks and tests of the partitioner."""
from __future__ import annotations

import numpy as np

from dnet.topology.model import Device, Node, Topology


def random_topology(rng: np.random.Generator, nodes: int, model_bytes: float, base_rate: float = 50e9,
                    rate_spread: float = 20.0, bandwidth: tuple[float, float] = (10e6, 10e9),
                    memory: tuple[float, float] = (1.2, 2.0), largest_layer: float = 0.0,
                    link_drop: float = 0.0) -> Topology:
    """`nodes` nodes whose compute rates spread over `rate_spread`x (log-uniform), joined by links
    of log-uniform bandwidth in `bandwidth` (asymmetric; each missing with probability `link_drop`),
    with memory that binds: together they hold `memory` (low, high) times the model, split unevenly,
    the largest node holding at least 1.2 x `largest_layer` bytes."""
    topo = Topology()
    speed = base_rate * np.exp(rng.uniform(0, np.log(rate_spread), nodes))
    share = rng.dirichlet(np.full(nodes, 2.0))
    total = model_bytes * rng.uniform(*memory)
    biggest = int(np.argmax(share))
    want = min(1.0, max(share[biggest], 1.2 * largest_layer / total))
    others = np.arange(nodes) != biggest
    if others.any():
        share[others] *= (1 - want) / share[others].sum()
    share[biggest] = want
    for i in range(nodes):
        device = Device(kind="cpu", cores=int(rng.integers(1, 17)), compute={"f32": speed[i], "f16": speed[i]},
                        memory=float(total * share[i]), memory_bandwidth=float(speed[i] * rng.uniform(0.1, 0.5)))
        topo.nodes.append(Node(f"n{i}", [device]))
    lo, hi = np.log(bandwidth[0]), np.log(bandwidth[1])
    for a in topo.names:
        for b in topo.names:
            if a != b and rng.random() >= link_drop:
                topo.add_link(a, b, float(np.exp(rng.uniform(lo, hi))), float(rng.uniform(50e-6, 5e-3)),
                              symmetric=False)
    return topo
