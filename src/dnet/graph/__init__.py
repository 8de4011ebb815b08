"""Graph IR: one flat DAG over a small closed op set, with shape inference, analysis and serialisation."""
from dnet.graph.builder import GraphBuilder, Value
from dnet.graph.ir import Graph, Node
from dnet.graph.ops import Op, OpClass

__all__ = ["Graph", "GraphBuilder", "Node", "Op", "OpClass", "Value"]
