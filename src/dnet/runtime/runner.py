"""Runs one node's part of a model: a stage graph, compiled by the node's own backend."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from dnet.backends import registry
from dnet.graph.ir import Graph
from dnet.program.collective import Collective


@dataclass
class StageStats:
    runs: int = 0
    compute_s: float = 0.0

    def to_json(self) -> dict[str, float]:
        return {"runs": self.runs, "compute_s": self.compute_s,
                "mean_ms": 1e3 * self.compute_s / self.runs if self.runs else 0.0}


class StageRunner:
    """A compiled stage: call it with its boundary inputs, get its boundary outputs and the time taken."""

    def __init__(self, graph: Graph, backend: str = "numpy", **options: Any):
        self.graph = graph
        self.backend = backend
        start = time.perf_counter()
        self.runner = registry.prepare(backend, graph, **options)
        self.compile_s = time.perf_counter() - start
        self.stats = StageStats()

    def __call__(self, inputs: Mapping[str, np.ndarray],
                 collective: Collective | None = None) -> tuple[dict[str, np.ndarray], float]:
        start = time.perf_counter()
        out = self.runner.run(inputs, collective) if collective is not None else self.runner.run(inputs)
        seconds = time.perf_counter() - start
        self.stats.runs += 1
        self.stats.compute_s += seconds
        return {name: out[name] for name in self.graph.output_names}, seconds
