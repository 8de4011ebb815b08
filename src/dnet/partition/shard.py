"""Op-level sharding: one op split across several devices, where the cost model says it pays.

The devices are those of one node, or of a group of well-linked nodes (a tensor-parallel
group that acts as one pipeline stage). A matmul is split by output columns, a
convolution by output channels, an element-wise op by tiles of rows; each device takes
a share in proportion to its speed on that op, so all finish together, and the pieces
are gathered onto the lead device over the interconnect (or the link) in between. An
op is split only where that beats running it whole on the lead device; the rest of a
stage runs on the lead.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dnet.graph.analysis import evaluate, value_bytes
from dnet.graph.ops import ELEMENTWISE, OpClass
from dnet.partition.cost import OpTable, op_times
from dnet.partition.layers import LayerChain
from dnet.topology.model import Node

SPLITTABLE = {OpClass.MATMUL: "columns", OpClass.CONV: "channels", **{c: "rows" for c in ELEMENTWISE}}


@dataclass(frozen=True)
class Shard:
    """One graph op split across devices: who takes which share of its output."""

    op: int
    axis: str
    devices: tuple[str, ...]  # "node/device index" labels, the lead first
    shares: tuple[float, ...]
    seconds: float            # predicted, gather included
    unsharded_seconds: float  # whole, on the lead device


@dataclass
class Team:
    """Devices that may share ops: per-op times on each (lead first), and how they exchange data."""

    labels: list[str]
    times: np.ndarray         # (devices, ops) seconds of every graph op on every device
    bandwidth: float          # bytes/s for gathering the pieces
    latency: float            # seconds per gather

    def split(self, chain: LayerChain, ops: list[int]) -> tuple[np.ndarray, list[Shard]]:
        """Seconds of each op in `ops` (split where that pays), and the shards."""
        t = self.times[:, ops]
        lead = t[0]
        if len(self.labels) < 2:
            return lead, []
        positive = np.all(t > 0, axis=0)
        speed = np.where(positive, 1.0 / np.where(positive, t, 1.0), 0.0)
        total_speed = speed.sum(axis=0)
        out_bytes = np.array([_bytes(chain, op) for op in ops], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            moved = out_bytes * (1 - speed[0] / total_speed)
            split = 1.0 / total_speed + moved / self.bandwidth + self.latency
        can = positive & np.array([chain.graph.nodes[op].op.cls in SPLITTABLE for op in ops])
        use = can & (split < lead)
        shards = [Shard(op, SPLITTABLE[chain.graph.nodes[op].op.cls], tuple(self.labels),
                        tuple(float(x) for x in speed[:, i] / total_speed[i]), float(split[i]), float(lead[i]))
                  for i, op in enumerate(ops) if use[i]]
        return np.where(use, split, lead), shards

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
    return Team([f"{node.name}/{i}" for i in order], times[order], gather, 0.0)


def group_team(nodes: list[Node], table: OpTable, bandwidth: float, latency: float) -> Team:
    """Several nodes as one team: each node contributes its lead device; pieces cross their links."""
    leads = [node_team(n, table) for n in nodes]
    times = np.stack([t.times[0] for t in leads])
    order = np.argsort(times.sum(axis=1), kind="stable")
    return Team([leads[i].labels[0] for i in order], times[order], bandwidth, latency)
