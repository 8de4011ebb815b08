"""Op-level sharding: one op split across several devices, where the cost model says it pays.

The devices are those of one node, or of a group of well-linked nodes (a tensor-parallel
group that acts as one pipeline stage). A matmul is split by output columns or by rows,
a convolution by output channels, an element-wise op by rows; each device takes a share
in proportion to its speed on that op, so all finish together; the lead device sends
the inputs out and gathers the pieces over the interconnect (or the link) in between.
An op is split only where that beats running it whole on the lead device, along the
cheaper axis; the rest of a stage runs on the lead.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dnet.graph.analysis import evaluate, value_bytes
from dnet.graph.ops import ELEMENTWISE, OpClass
from dnet.partition.cost import OpTable, op_times
from dnet.partition.layers import LayerChain
from dnet.topology.model import Node

# How each op class may be split: by output columns (channels), each device holding its slice of the
# weights and reading the whole input; or by rows of input and output, each device reading all weights.
SPLITS = {OpClass.MATMUL: ("columns", "rows"), OpClass.CONV: ("channels",), **{c: ("rows",) for c in ELEMENTWISE}}


@dataclass(frozen=True)
class Shard:
    """One graph op split across devices: who takes which share of its output."""

    op: int
    axis: str
    devices: tuple[str, ...]  # "node/device index" labels, the lead first
    shares: tuple[float, ...]
    seconds: float            # predicted, scatter and gather included
    unsharded_seconds: float  # whole, on the lead device


@dataclass
class Team:
    """Devices that may share ops: per-op times on each (lead first), and how they exchange data.

    The lead holds each op's inputs and must end with its output: a column split sends the whole
    input to every other device, a row split each device's rows; both gather the other devices'
    outputs. Row splits of a matmul need every device to read all of its weights, so they are
    only considered where the devices share memory."""

    labels: list[str]
    times: np.ndarray         # (devices, ops) seconds of every graph op on every device
    bandwidth: float          # bytes/s between the lead and the others
    latency: float            # seconds per exchange
    shared_memory: bool = False

    def split(self, chain: LayerChain, ops: list[int]) -> tuple[np.ndarray, list[Shard]]:
        """Seconds of each op in `ops` (split where that pays), and the shards."""
        lead = self.times[0, ops]
        if len(self.labels) < 2:
            return lead, []
        best, shards = lead.copy(), []
        for i, op in enumerate(ops):
            t = self.times[:, op]
            axes = SPLITS.get(chain.graph.nodes[op].op.cls, ())
            if not axes or not np.all(t > 0):
                continue
            share = (1.0 / t) / (1.0 / t).sum()   # all finish together: share[0] * t[0] each
            chosen = None
            for axis in axes:
                if axis == "rows" and chain.graph.nodes[op].op.cls is OpClass.MATMUL and not self.shared_memory:
                    continue
                seconds = float(share[0] * t[0] + self._moved(chain, op, axis, share) / self.bandwidth + self.latency)
                if seconds < best[i]:
                    best[i] = seconds
                    chosen = Shard(op, axis, tuple(self.labels), tuple(float(x) for x in share), seconds, float(t[0]))
            if chosen is not None:
                shards.append(chosen)
        return best, shards

    def _moved(self, chain: LayerChain, op: int, axis: str, share: np.ndarray) -> float:
        """Bytes the lead exchanges with the others for one split op."""
        others = 1.0 - share[0]
        node = chain.graph.nodes[op]
        act_in = sum(_bytes(chain, i) for i in node.inputs if i not in chain.constants)
        if axis == "rows":
            return (act_in + _bytes(chain, op)) * others
        return act_in * (len(self.labels) - 1) + _bytes(chain, op) * others

    def layer_times(self, chain: LayerChain) -> np.ndarray:
        """(L,) seconds of each layer on this team."""
        return np.array([self.split(chain, l.nodes)[0].sum() for l in chain.layers])


def _bytes(chain: LayerChain, op: int) -> int:
    return evaluate(value_bytes(chain.graph.nodes[op].type), chain.env)


def node_team(node: Node, table: OpTable) -> Team:
    """A node's devices as a team, led by the device fastest on the whole graph."""
    times = np.stack([op_times(table, d) for d in node.devices])
    order = np.argsort(times.sum(axis=1), kind="stable")
    gather = node.interconnect or min((d.memory_bandwidth or np.inf) for d in node.devices)
    return Team([f"{node.name}/{i}" for i in order], times[order], gather, 0.0, shared_memory=not node.interconnect)


def group_team(nodes: list[Node], table: OpTable, bandwidth: float, latency: float) -> Team:
    """Several nodes as one team: each node contributes its lead device; pieces cross their links."""
    leads = [node_team(n, table) for n in nodes]
    times = np.stack([t.times[0] for t in leads])
    order = np.argsort(times.sum(axis=1), kind="stable")
    return Team([leads[i].labels[0] for i in order], times[order], bandwidth, latency)
