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
    if node.op in (Op.INPUT, Op.STATE, Op.SCATTER):
        return (node.op, node.id)  # each input is its own value; each write happens once
    if node.op is Op.CONST:
        return (Op.CONST, node.type, weight_hash(graph.weights[node.attrs["name"]]))
    return (node.op, inputs, node.attr_key(), node.type)


CSE = Pass("cse", "graph", cse, "merge nodes that compute the same value (weights by content)")


def unshare_views(graph: Graph) -> Graph:
    """Give every reader of a broadcast its own copy of it.

    A broadcast is a free view, so copying it costs nothing; shared, it turns a small tensor
    into a large one that crosses every pipeline cut between its readers (one (batch, heads,
    seq, seq) attention mask read by every layer, where the (batch, seq) mask would do).
    """
    rebuilder = GraphRebuilder(graph)
    views = {n.id: n for n in graph.nodes if n.op is Op.EXPAND}
    for node in graph.nodes:
        if node.id in views:
            continue
        inputs = [_fresh_view(rebuilder, views, i, node.name) for i in node.inputs]
        rebuilder.value[node.id] = rebuilder.add(node.op, inputs, node.attrs, node.type, node.name)
    for out in graph.outputs:
        if out in views:
            rebuilder.value[out] = _fresh_view(rebuilder, views, out, views[out].name)
    return rebuilder.finish()


def _fresh_view(rebuilder: GraphRebuilder, views: dict[int, Node], i: int, reader: str) -> int:
    """A new copy of view `i` (and of views it reads), named for its reader: it runs where the reader does."""
    view = views.get(i)
    if view is None:
        return rebuilder.value[i]
    source = _fresh_view(rebuilder, views, view.inputs[0], reader)
    return rebuilder.add(view.op, [source], view.attrs, view.type, reader)


UNSHARE_VIEWS = Pass("unshare_views", "graph", unshare_views, "one copy of each broadcast per reader")
