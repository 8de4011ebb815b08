"""Movement ops as index arithmetic: views, padding, concatenation and gathers."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op

from backend_support import assert_matches_reference

B, S = Sym("b"), Sym("s")


@pytest.fixture(scope="module")
def views(compile_c):
    g = GraphBuilder()
    x = g.input("x", TensorType((B, S, 12), DType.F32))
    ids = g.input("ids", TensorType((B, S), DType.I64))
    table = g.input("table", TensorType((10, 12), DType.F32))
    heads = g.permute(g.reshape(x, (B, S, 3, 4)), (0, 2, 1, 3))                 # split heads
    g.output("merge", g.reshape(g.permute(g.unary(Op.EXP, heads), (0, 2, 1, 3)), (B, S * 12)))
    g.output("slice", g.node(Op.SLICE, [x], starts=(0, 1, 2), stops=(B, S, 12), steps=(1, 2, 3)))
    g.output("pad", g.node(Op.PAD, [g.unary(Op.NEG, x)], pads=((0, 1), (2, 0), (1, 1)), value=7.0))
    g.output("concat", g.node(Op.CONCAT, [x, g.unary(Op.ABS, x), x], axis=2))
    g.output("gather", g.elementwise(Op.ADD, g.node(Op.GATHER, [table, ids], axis=0), x))
    g.output("expand", g.elementwise(Op.MUL, x, g.reshape(g.reduce(Op.SUM, x, (0, 1)), (1, 1, 12))))
    graph = g.finish()
    return graph, compile_c(graph)


@settings(max_examples=10, deadline=None)
@given(b=st.integers(1, 3), s=st.integers(1, 9), seed=st.integers(0, 1000))
def test_views_match_reference(views, b, s, seed):
    graph, runner = views
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.standard_normal((b, s, 12)).astype(np.float32),
             "ids": rng.integers(-10, 10, (b, s)).astype(np.int64),
             "table": rng.standard_normal((10, 12)).astype(np.float32)}
    assert_matches_reference(runner, graph, feeds, rtol=1e-4, atol=1e-5)
