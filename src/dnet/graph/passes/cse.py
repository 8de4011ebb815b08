"""Common-subexpression elimination: one node for each distinct computation.

Two nodes are the same computation when they have the same op, the same inputs (after
earlier merges), the same attributes and the same type. Weights are compared by content,
so two names for identical arrays become one CONST and the weight travels once.
"""
from __future__ import annotations

from dnet.core.passes import Pass
from dnet.graph.ir import Graph, Node
from dnet.graph.ops import Op
from dnet.graph.rebuild import GraphRebuilder
from dnet.graph.serialize import weight_hash


def cse(graph: Graph) -> Graph:
    rebuilder = GraphRebuilder(graph)
    seen: dict[tuple, int] = {}
    for node in graph.nodes:
        key = _key(graph, node, tuple(rebuilder.value[i] for i in node.inputs))
        if key in seen:
            rebuilder.value[node.id] = seen[key]
        else:
            seen[key] = rebuilder.copy(node)
    return rebuilder.finish()


def _key(graph: Graph, node: Node, inputs: tuple[int, ...]) -> tuple:
    if node.op is Op.INPUT:
        return (Op.INPUT, node.id)  # each input is its own value
    if node.op is Op.CONST:
        return (Op.CONST, node.type, weight_hash(graph.weights[node.attrs["name"]]))
    return (node.op, inputs, node.attr_key(), node.type)


CSE = Pass("cse", "graph", cse, "merge nodes that compute the same value (weights by content)")
