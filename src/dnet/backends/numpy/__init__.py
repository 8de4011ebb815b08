"""The numpy reference backend: an exact interpreter of the graph IR, the oracle for all others."""
from dnet.backends.numpy.interpreter import bind_symbols, run_graph

__all__ = ["run_graph", "bind_symbols"]
