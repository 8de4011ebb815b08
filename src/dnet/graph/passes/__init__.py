"""Graph-level passes: each a function Graph -> Graph, wrapped as a named `Pass`."""
from dnet.graph.passes.cse import CSE, cse
from dnet.graph.passes.dce import DCE, dce
from dnet.graph.passes.pipeline import GRAPH_PASSES, default_graph_pipeline
from dnet.graph.passes.simplify import RULES, SIMPLIFY, Rule, simplify

__all__ = ["CSE", "DCE", "SIMPLIFY", "GRAPH_PASSES", "RULES", "Rule", "cse", "dce", "simplify",
           "default_graph_pipeline"]
