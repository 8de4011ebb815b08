"""Op-level sharding: one op split across the devices of one node, where the cost model says it pays.

A matmul or convolution is split by output columns (channels), an element-wise op by
tiles of rows, each device taking a share in proportion to its speed on that op, so
that all finish together; the pieces are then gathered over the node's interconnect
(or through shared memory). The rest of a layer runs on the node's best device.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dnet.graph.analysis import evaluate, value_bytes
from dnet.graph.ops import ELEMENTWISE, OpClass
from dnet.partition.cost import OpTable, op_times
from dnet.partition.layers import LayerChain
from dnet.topology.model import Node

SPLITTABLE = {OpClass.MATMUL: "columns", OpClass.CONV: "channels",
              **{c: "rows" for c in ELEMENTWISE}}


@dataclass(frozen=True)
class Shard:
    """One graph op split across devices of a node: device indices and each one's share of the output."""

    op: int
    axis: str
    devices: tuple[int, ...]
    shares: tuple[float, ...]
    seconds: float            # predicted, gather included
    unsharded_seconds: float  # on the best single device


def _gather_bandwidth(node: Node) -> float:
    return node.interconnect or min(d.memory_bandwidth or np.inf for d in node.devices)


def _device_times(node: Node, table: OpTable) -> np.ndarray:
    """(devices, ops): each op's time on each device of the node."""
    return np.stack([op_times(table, d) for d in node.devices])


def plan_shards(chain: LayerChain, node: Node, table: OpTable, ops: list[int]) -> tuple[int, list[Shard]]:
    """For a group of ops on `node`: the device to run them on, and the ops worth sharding."""
    times = _device_times(node, table)
    home = int(np.argmin(times[:, ops].sum(axis=1)))
    bw = _gather_bandwidth(node)
    shards = []
    for op in ops:
        graph_node = chain.graph.nodes[op]
        axis = SPLITTABLE.get(graph_node.op.cls)
        t = times[:, op]
        if axis is None or len(node.devices) < 2 or not np.all(t > 0):
            continue
        speed = 1.0 / t
        parallel = 1.0 / speed.sum()  # every device busy for the same time
        moved = evaluate(value_bytes(graph_node.type), chain.env) * (1 - speed[home] / speed.sum())
        total = parallel + moved / bw
        if total < t[home]:
            shares = tuple(float(s) for s in speed / speed.sum())
            shards.append(Shard(op, axis, tuple(range(len(node.devices))), shares, float(total), float(t[home])))
    return home, shards


def layer_times_sharded(chain: LayerChain, node: Node, table: OpTable) -> np.ndarray:
    """(L,) seconds of each layer on a many-device node, sharding the ops where that pays."""
    out = []
    times = _device_times(node, table)
    for layer in chain.layers:
        home, shards = plan_shards(chain, node, table, layer.nodes)
        saved = sum(s.unsharded_seconds - s.seconds for s in shards)
        out.append(float(times[home, layer.nodes].sum()) - saved)
    return np.array(out)
