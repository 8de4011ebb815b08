"""The one way graph passes and `subgraph` make a new graph: copy nodes, in order, into a fresh one."""
from __future__ import annotations

from typing import Any, Sequence

from dnet.core.types import TensorType
from dnet.graph.ir import Graph, Node
from dnet.graph.ops import INPUTS, Op


class GraphRebuilder:
    """Builds a new graph from an old one; `value[old_id]` is what an old node became.

    Nodes are appended with ids in order, so a graph built by visiting the old nodes in
    topological order is topological and compact. INPUT and CONST nodes keep the graph's
    signature and weights in step.
    """

    def __init__(self, old: Graph) -> None:
        self.old = old
        self.new = Graph()
        self.value: dict[int, int] = {}

    def add(self, op: Op, inputs: Sequence[int], attrs: dict[str, Any], type: TensorType, name: str = "",
            weight: Any = None) -> int:
        """Append a node; a CONST brings its old weight of that name, or the new `weight` given."""
        node = Node(len(self.new.nodes), op, tuple(inputs), attrs, type, name)
        self.new.nodes.append(node)
        if op in INPUTS:
            self.new.inputs.append(node.id)
        if op is Op.CONST:
            self.new.weights[attrs["name"]] = self.old.weights[attrs["name"]] if weight is None else weight
        return node.id

    def copy(self, node: Node) -> int:
        """Copy an old node, its inputs already copied; record and return its new id."""
        inputs = [self.value[i] for i in node.inputs]
        self.value[node.id] = self.add(node.op, inputs, node.attrs, node.type, node.name)
        return self.value[node.id]

    def finish(self) -> Graph:
        """The new graph, returning what the old one's outputs became."""
        self.new.outputs = [self.value[i] for i in self.old.outputs]
        self.new.output_names = list(self.old.output_names)
        return self.new
