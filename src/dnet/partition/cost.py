"""The cost model: each graph op's time on each device (a tensor's time on a link is `Link.time`).

An op's time is the device's fixed cost per op plus a roofline: the larger of its
arithmetic over the device's rate for that op class and dtype, and its memory
traffic over the device's memory bandwidth.
Flops and bytes per node come from `dnet.graph.analysis.node_cost`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dnet.core.dtypes import DType
from dnet.graph.analysis import Env, node_cost
from dnet.graph.ir import Graph
from dnet.graph.ops import Op, OpClass
from dnet.topology.model import Device

# (op, dtype) pairs in a fixed order, so that per-op rates can be gathered with one index array.
_KEYS = [(op, d) for op in Op for d in DType]
_KEY_INDEX = {k: i for i, k in enumerate(_KEYS)}


@dataclass
class OpTable:
    """Flops, bytes and rate key of every node of a graph, as arrays (one entry per node)."""

    flops: np.ndarray
    bytes: np.ndarray
    key: np.ndarray       # index into _KEYS: which device rate applies
    runs: np.ndarray      # whether the node runs at all (sources do not)

    @staticmethod
    def of(graph: Graph, env: Env) -> "OpTable":
        costs = [node_cost(graph, n, env) for n in graph.nodes]
        return OpTable(np.array([c.flops for c in costs], dtype=np.float64),
                       np.array([c.bytes for c in costs],
                                dtype=np.float64),
                       np.array([_KEY_INDEX[(n.op, n.dtype)] for n in graph.nodes], dtype=np.int64),
                       np.array([n.op.cls is not OpClass.SOURCE for n in graph.nodes]))


def rate_vector(device: Device) -> np.ndarray:
    """The device's FLOP/s for each (op, dtype) key; inf for ops that do no arithmetic."""
    return np.array([device.rate(op, d) or np.inf for op, d in _KEYS], dtype=np.float64)


def op_times(table: OpTable, device: Device) -> np.ndarray:
    """Seconds for each node of the table on `device`: its fixed cost per op plus the roofline."""
    rates = rate_vector(device)[table.key]
    compute = np.divide(table.flops, rates, out=np.zeros_like(table.flops), where=table.flops > 0)
    bw = device.memory_bandwidth or np.inf
    return np.maximum(compute, table.bytes / bw) + np.where(table.runs, device.op_overhead, 0.0)
