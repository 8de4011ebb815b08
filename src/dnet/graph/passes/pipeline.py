"""The default order of graph passes. A pipeline is a plain list: edit it, or build your own."""
from __future__ import annotations

from dnet.core.passes import Pipeline
from dnet.graph.ir import Graph
from dnet.graph.passes.cse import CSE, UNSHARE_VIEWS
from dnet.graph.passes.dce import DCE
from dnet.graph.passes.simplify import SIMPLIFY

GRAPH_PASSES = {p.name: p for p in (SIMPLIFY, CSE, UNSHARE_VIEWS, DCE)}


def default_graph_pipeline() -> Pipeline[Graph]:
    """simplify (may leave producers unused), cse (may merge what simplify exposed), unshare_views
    (a broadcast per reader, so stages exchange small tensors), dce (drops what is left unused)."""
    return Pipeline([SIMPLIFY, CSE, UNSHARE_VIEWS, DCE])
