"""Dead-code elimination: drop the nodes no output needs. Graph inputs stay (the signature is fixed)."""
from __future__ import annotations

from dnet.core.passes import Pass
from dnet.graph.analysis import ancestors
from dnet.graph.ir import Graph
from dnet.graph.rebuild import GraphRebuilder


def dce(graph: Graph) -> Graph:
    live = ancestors(graph, graph.outputs) | set(graph.outputs) | set(graph.inputs)
    rebuilder = GraphRebuilder(graph)
    for node in graph.nodes:
        if node.id in live:
            rebuilder.copy(node)
    return rebuilder.finish()


DCE = Pass("dce", "graph", dce, "drop nodes that no output depends on")
