"""The pipeline partitioning problem as plain arrays, and the evaluation of any assignment.

Solvers see only this: N topology nodes, a chain of L layers, each layer's time on
each node, its weights and activations, the bytes crossing each cut, each node's
memory and each link's bandwidth and latency. An assignment is a list of stages,
each a node and a contiguous range of layers; stages run in a pipeline, so the
throughput is set by the busiest node or link, and the latency is the sum of all.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dnet.errors import DnetError
from dnet.partition.cost import OpTable
from dnet.partition.layers import LayerChain
from dnet.partition.shard import group_team, node_team
from dnet.topology.model import Topology


class PlanError(DnetError):
    """No plan exists: the model does not fit, or the nodes that must talk are not linked."""


@dataclass(frozen=True)
class Stage:
    node: int      # index into PipelineProblem.names
    start: int     # first layer
    stop: int      # one past the last layer


@dataclass
class PipelineProblem:
    """Units are what a stage runs on: each topology node (units 0..P-1, in topology order),
    then any groups of well-linked nodes that share each op between them (`members`)."""

    names: list[str]            # N units
    layer_names: list[str]      # L layers
    time: np.ndarray            # (N, L) seconds of each layer on each node
    weight: np.ndarray          # (L,) bytes each layer keeps resident: its weights and its state (KV cache)
    activation: np.ndarray      # (L,) peak activation bytes of each layer
    boundary: np.ndarray        # (L+1,) bytes crossing the cut before each layer
    capacity: np.ndarray        # (N,) memory of each node
    bandwidth: np.ndarray       # (N, N) bytes/s of each directed link; 0 where there is none
    latency: np.ndarray         # (N, N) seconds
    members: list[tuple[int, ...]] = field(default_factory=list)  # nodes in each unit; empty: one each
    shared: list[tuple[float, tuple[int, ...]]] = field(default_factory=list)  # (bytes, layers) of shared weights
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_nodes(self) -> int:
        return len(self.names)

    @property
    def n_physical(self) -> int:
        """Topology nodes (the units that are single nodes come first)."""
        return sum(1 for k in range(self.n_nodes) if len(self.unit(k)) == 1)

    def unit(self, k: int) -> tuple[int, ...]:
        return self.members[k] if self.members else (k,)

    @property
    def n_layers(self) -> int:
        return len(self.layer_names)

    def memory(self, start: int, stop: int) -> float:
        """Bytes a stage holding layers [start, stop) needs: its weights (a weight several of its layers
        share, once) and its largest layer's activations."""
        return float(self.memory_matrix()[start, stop]) if stop > start else 0.0

    def memory_matrix(self) -> np.ndarray:
        """(L+1, L+1): memory of a stage [a, b), for every a < b. Computed once."""
        if "memory" not in self._memo:
            L = self.n_layers
            wprefix = np.concatenate([[0.0], np.cumsum(self.weight)])
            mem = wprefix[None, :] - wprefix[:, None]
            for a in range(L):  # running max of activations over [a, b)
                mem[a, a + 1:] += np.maximum.accumulate(self.activation[a:])
            for size, layers in self.shared:  # counted once per layer above: take off the repeats
                uses = np.zeros(L + 1)
                uses[1:] = np.cumsum(np.isin(np.arange(L), layers))
                mem -= size * np.maximum(uses[None, :] - uses[:, None] - 1, 0)
            self._memo["memory"] = mem
        return self._memo["memory"]

    def transfer(self, src: int, dst: int, cut: int) -> float:
        """Seconds to send what crosses `cut` from node src to node dst; inf without a link."""
        nbytes = self.boundary[cut]
        if src == dst or nbytes == 0:
            return 0.0
        bw = self.bandwidth[src, dst]
        return float(self.latency[src, dst] + nbytes / bw) if bw > 0 else np.inf

    # -- matrices for the solvers --------------------------------------------------------------
    def stage_matrix(self, node: int) -> np.ndarray:
        """(L+1, L+1): seconds of a stage [a, b) on `node`; inf where b <= a or the stage does not fit.
        Computed once per node (solvers must not write to it)."""
        if ("stage", node) not in self._memo:
            self._memo[("stage", node)] = self._stage_matrix(node)
        return self._memo[("stage", node)]

    def _stage_matrix(self, node: int) -> np.ndarray:
        L = self.n_layers
        prefix = np.concatenate([[0.0], np.cumsum(self.time[node])])
        out = prefix[None, :] - prefix[:, None]
        bad = (np.arange(L + 1)[None, :] <= np.arange(L + 1)[:, None]) | (self.memory_matrix() > self.capacity[node])
        out[bad] = np.inf
        return out

    def transfer_vector(self, src: int, dst: int) -> np.ndarray:
        """(L+1,): seconds to move each cut's bytes from src to dst."""
        key = ("transfer", src, dst)
        if key not in self._memo:
            self._memo[key] = np.array([self.transfer(src, dst, c) for c in range(self.n_layers + 1)])
        return self._memo[key]


@dataclass
class Metrics:
    """What an assignment costs under the model."""

    node_time: dict[int, float] = field(default_factory=dict)         # busy seconds per node per item
    link_time: dict[tuple[int, int], float] = field(default_factory=dict)
    link_bytes: dict[tuple[int, int], float] = field(default_factory=dict)
    memory: dict[int, float] = field(default_factory=dict)
    bottleneck: float = np.inf       # seconds per item at steady state
    latency: float = np.inf          # seconds for one item through every stage
    problems: list[str] = field(default_factory=list)  # why it is infeasible, if it is

    @property
    def feasible(self) -> bool:
        return not self.problems

    @property
    def throughput(self) -> float:
        """Items per second once the pipeline is full; 0 for an infeasible assignment."""
        return 1.0 / self.bottleneck if self.feasible and self.bottleneck > 0 else 0.0


def evaluate(p: PipelineProblem, stages: list[Stage]) -> Metrics:
    """Cost of an assignment: per-node and per-link load (a node or link used twice adds up), memory, feasibility."""
    m = Metrics()
    covered = [l for s in stages for l in range(s.start, s.stop)]
    if covered != list(range(p.n_layers)):
        m.problems.append("the stages do not cover the layers once each, in order")
        return m
    latency = 0.0
    for i, s in enumerate(stages):
        t = float(p.time[s.node, s.start:s.stop].sum())
        m.node_time[s.node] = m.node_time.get(s.node, 0.0) + t
        m.memory[s.node] = m.memory.get(s.node, 0.0) + p.memory(s.start, s.stop)
        latency += t
        if i + 1 < len(stages) and stages[i + 1].node != s.node:
            key = (s.node, stages[i + 1].node)
            x = p.transfer(*key, s.stop)
            if not np.isfinite(x):
                m.problems.append(f"no link from '{p.names[key[0]]}' to '{p.names[key[1]]}'")
            m.link_time[key] = m.link_time.get(key, 0.0) + x
            m.link_bytes[key] = m.link_bytes.get(key, 0.0) + float(p.boundary[s.stop])
            latency += x
    owner: dict[int, int] = {}
    for k in m.node_time:
        for member in p.unit(k):
            if owner.setdefault(member, k) != k:
                m.problems.append(f"node '{p.names[member]}' is in two stages' units, "
                                  f"'{p.names[owner[member]]}' and '{p.names[k]}'")
    for k, used in m.memory.items():
        if used > p.capacity[k]:
            m.problems.append(f"'{p.names[k]}' needs {used / 2**20:.1f} MiB, has {p.capacity[k] / 2**20:.1f} MiB")
    m.bottleneck = max([*m.node_time.values(), *m.link_time.values()], default=0.0)
    m.latency = latency
    return m


# -- building a problem from a graph and a topology ---------------------------------------------------
def build_problem(chain: LayerChain, topology: Topology, groups: bool = False, group_bandwidth: float = 1e9,
                  group_latency: float = 1e-3, max_groups: int | None = None) -> PipelineProblem:
    """The problem for `chain` on `topology`. With `groups`, pairs of nodes joined both ways by links of
    at least `group_bandwidth` and at most `group_latency` also become units that split ops between
    them, where that makes them faster than either alone (at most `max_groups`, default one per node).
    Groups are off by default: the distributed runtime runs whole stages, one node each, for now."""
    table = OpTable.of(chain.graph, chain.env)
    teams = [node_team(node, table) for node in topology.nodes]
    names, n = topology.names, len(topology.nodes)
    bandwidth, latency = np.zeros((n, n)), np.zeros((n, n))
    for (a, b), link in topology.links.items():
        i, j = names.index(a), names.index(b)
        bandwidth[i, j], latency[i, j] = link.bandwidth, link.latency
    p = PipelineProblem(
        names=list(names), layer_names=chain.names,
        time=np.stack([team.layer_times(chain) for team in teams]),
        weight=np.array([l.weight_bytes + l.state_bytes for l in chain.layers], dtype=np.float64),
        activation=np.array([l.activation_bytes for l in chain.layers], dtype=np.float64),
        boundary=np.array(chain.boundary, dtype=np.float64),
        capacity=np.array([node.memory for node in topology.nodes], dtype=np.float64),
        bandwidth=bandwidth, latency=latency, shared=_shared_weights(chain))
    if groups:
        _add_groups(p, chain, topology, table, group_bandwidth, group_latency, max_groups or n)
    return p


def _shared_weights(chain: LayerChain) -> list[tuple[float, tuple[int, ...]]]:
    """Weights read by more than one layer (tied embeddings): their size and the layers."""
    users: dict[str, list[int]] = {}
    for i, layer in enumerate(chain.layers):
        for w in layer.weights:
            users.setdefault(w, []).append(i)
    return [(float(chain.graph.weights[w].nbytes), tuple(ls)) for w, ls in sorted(users.items()) if len(ls) > 1]


def _add_groups(p: PipelineProblem, chain: LayerChain, topology: Topology, table: OpTable,
                min_bandwidth: float, max_latency: float, limit: int) -> None:
    n = p.n_nodes
    found = []
    for a in range(n):
        for b in range(a + 1, n):
            bw = min(p.bandwidth[a, b], p.bandwidth[b, a])
            lat = max(p.latency[a, b], p.latency[b, a])
            if bw < min_bandwidth or lat > max_latency:
                continue
            team = group_team([topology.nodes[a], topology.nodes[b]], table, bw, lat)
            times = team.layer_times(chain)
            alone = min(p.time[a].sum(), p.time[b].sum())
            if times.sum() < 0.9 * alone:
                found.append((times.sum() / alone, (a, b), times))
    if not found:
        return
    p.members = [(k,) for k in range(n)]
    for _, (a, b), times in sorted(found)[:limit]:
        speed = 1.0 / p.time[[a, b]].sum(axis=1)
        share = speed / speed.sum()            # each holds the share of the weights it computes
        lead = a if speed[0] >= speed[1] else b
        p.names.append(f"{p.names[a]}+{p.names[b]}")
        p.members.append((a, b))
        p.time = np.vstack([p.time, times])
        p.capacity = np.append(p.capacity, min(p.capacity[a] / share[0], p.capacity[b] / share[1]))
        p.bandwidth = _grow(p.bandwidth, lead)
        p.latency = _grow(p.latency, lead)


def _grow(matrix: np.ndarray, lead: int) -> np.ndarray:
    """Add a unit that talks to everyone through its lead node's links."""
    row = np.append(matrix[lead], 0.0)
    col = matrix[:, lead]
    return np.vstack([np.column_stack([matrix, col]), row])
