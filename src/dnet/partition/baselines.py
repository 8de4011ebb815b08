"""Baselines the partitioner is measured against, each as its authors describe it.

- `equal_split`: every node gets the same number of layers, in topology order.
- `memory_proportional`: exo's ring memory-weighted strategy: nodes sorted by memory,
  largest first, each given a share of the layers proportional to its memory.
- `halda`: prima.cpp's Halda (arXiv 2504.08791): a pipelined ring in which the
  layers go round the nodes in k rounds, node m taking a window of w_m layers per
  round (L = k * sum(w_m)); for each k, the windows minimising per-token latency
  under the memory limits come from an integer program (`scipy.optimize.milp`),
  with Halda's model of identical layers (each node's mean layer time and the mean
  layer size); the k with the lowest predicted latency wins.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from dnet.partition.problem import PipelineProblem, Stage, evaluate


def _contiguous(order: list[int], counts: list[int]) -> list[Stage]:
    stages, start = [], 0
    for node, count in zip(order, counts):
        if count > 0:
            stages.append(Stage(node, start, start + count))
            start += count
    return stages


def equal_split(p: PipelineProblem) -> list[Stage]:
    n, L = p.n_physical, p.n_layers
    counts = [L // n + (1 if i < L % n else 0) for i in range(n)]
    return _contiguous(list(range(n)), counts)


def memory_proportional(p: PipelineProblem) -> list[Stage]:
    order = sorted(range(p.n_physical), key=lambda k: -p.capacity[k])
    share = np.cumsum([p.capacity[k] for k in order]) / p.capacity[: p.n_physical].sum()
    ends = np.round(share * p.n_layers).astype(int)
    counts = np.diff(np.concatenate([[0], ends])).tolist()
    return _contiguous(order, counts)


def halda(p: PipelineProblem) -> list[Stage] | None:
    """The ring assignment Halda picks (nodes in topology order); None when no k gives one that fits.
    Halda places whole layers on nodes: groups of nodes that split ops are not its to use."""
    L, n = p.n_layers, p.n_physical
    per_layer = p.time[:n].mean(axis=1)             # Halda's uniform-layer model
    layer_bytes = p.weight.mean()
    ring = [p.transfer(m, (m + 1) % n, L // 2) if n > 1 else 0.0 for m in range(n)]
    options = []
    for k in (k for k in range(1, L + 1) if L % k == 0 and L // k >= n):
        w = _windows(per_layer, layer_bytes, p.activation.max(initial=0), p.capacity[:n], k, L // k)
        if w is not None:
            predicted = k * (float(per_layer @ w) + sum(ring))
            options.append((predicted, k, w))
    for _, k, w in sorted(options, key=lambda o: o[0]):
        stages = _ring(k, w)
        if evaluate(p, stages).feasible:
            return stages
    return None


def _windows(per_layer: np.ndarray, layer_bytes: float, activation: float, capacity: np.ndarray,
             k: int, total: int) -> np.ndarray | None:
    """Integer windows w (>= 1 each, summing to `total`) minimising sum(per_layer * w), each
    node holding its k windows of layers in memory."""
    n = len(per_layer)
    room = np.floor((capacity - activation) / (k * layer_bytes)) if layer_bytes > 0 else np.full(n, total)
    if (room < 1).any():
        return None
    res = milp(c=per_layer, integrality=np.ones(n), bounds=Bounds(np.ones(n), np.minimum(room, total)),
               constraints=LinearConstraint(np.ones((1, n)), total, total))
    return np.round(res.x).astype(int) if res.success else None


def _ring(k: int, w: np.ndarray) -> list[Stage]:
    stages, start = [], 0
    for _ in range(k):
        for node, size in enumerate(w):
            stages.append(Stage(node, start, start + int(size)))
            start += int(size)
    return stages


BASELINES = {"equal": equal_split, "memory": memory_proportional, "halda": halda}
