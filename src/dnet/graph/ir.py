"""The graph IR: one flat DAG of primitive ops over typed values.

A `Graph` owns a list of `Node`s in topological order (a node's inputs always come
earlier, and a node's id is its index), the names of its inputs and outputs, and
the weights that its CONST nodes refer to by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from dnet.core.shapes import render_dim
from dnet.core.types import TensorType
from dnet.graph.ops import Op


@dataclass(frozen=True, eq=False)
class Node:
    id: int
    op: Op
    inputs: tuple[int, ...]
    attrs: dict[str, Any]
    type: TensorType
    name: str = ""  # where it came from: a symbol path such as 'encoder.layer.0.attn.forward'

    @property
    def shape(self):
        return self.type.shape

    @property
    def dtype(self):
        return self.type.dtype

    def attr_key(self) -> tuple:
        """A hashable form of the attributes, for CSE and hashing."""
        return tuple(sorted((k, _freeze(v)) for k, v in self.attrs.items()))


def _freeze(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, float):  # hex is exact, equal for NaNs, and tells -0.0 (1/x = -inf) from 0.0
        return ("float", v.hex())
    if isinstance(v, int) and not isinstance(v, bool):
        return ("int", v)  # 1 and 1.0 are different fill values
    return v


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, i: int) -> Node:
        return self.nodes[i]

    @property
    def input_names(self) -> list[str]:
        return [self.nodes[i].attrs["name"] for i in self.inputs]

    def input_types(self) -> dict[str, TensorType]:
        return {self.nodes[i].attrs["name"]: self.nodes[i].type for i in self.inputs}

    def output_types(self) -> dict[str, TensorType]:
        return {n: self.nodes[i].type for n, i in zip(self.output_names, self.outputs)}

    def users(self) -> list[list[int]]:
        """For each node, the nodes that read it."""
        out: list[list[int]] = [[] for _ in self.nodes]
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n.id)
        return out

    def weight_bytes(self) -> int:
        return sum(int(w.nbytes) for w in self.weights.values())

    def __str__(self) -> str:
        from dnet.graph.printer import print_graph

        return print_graph(self)


def format_attr(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_attr(x) for x in v) + "]"
    if hasattr(v, "terms"):
        return render_dim(v)
    return str(v)
