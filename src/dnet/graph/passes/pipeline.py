"""The default order of graph passes. A pipeline is a plain list: edit it, or build your own."""
from __future__ import annotations

from dnet.core.passes import Pipeline
from dnet.graph.ir import Graph
from dnet.graph.passes.cse import CSE
from dnet.graph.passes.dce import DCE
from dnet.graph.passes.simplify import SIMPLIFY

GRAPH_PASSES = {p.name: p for p in (SIMPLIFY, CSE, DCE)}


def default_graph_pipeline() -> Pipeline[Graph]:
    """simplify (may leave producers unused), cse (may merge what simplify exposed), dce (drops both)."""
    return Pipeline([SIMPLIFY, CSE, DCE])
