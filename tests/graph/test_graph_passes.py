import numpy as np
import pytest
from graph_strategies import random_graphs
from hypothesis import given, settings

from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.analysis import ancestors, verify
from dnet.graph.builder import GraphBuilder
from dnet.graph.ir import Graph
from dnet.graph.ops import Op
from dnet.graph.passes import RULES, cse, dce, default_graph_pipeline, simplify
from dnet.graph.passes.cse import unshare_views
from dnet.core.dtypes import boolean

f32 = DType.F32
fast = settings(max_examples=40, deadline=None)
PASSES = {"simplify": simplify, "cse": cse, "dce": dce, "pipeline": default_graph_pipeline()}


def assert_same_results(before: Graph, after: Graph, feeds) -> None:
    """The oracle: the reference backend gives the same outputs, bit for bit (NaNs where NaNs were)."""
    verify(after)
    assert after.input_types() == before.input_types()
    assert after.output_types() == before.output_types()
    want, got = run_graph(before, feeds), run_graph(after, feeds)
    for name in before.output_names:
        assert got[name].dtype == want[name].dtype
        np.testing.assert_array_equal(got[name], want[name])


def count(g: Graph, op: Op) -> int:
    return sum(n.op is op for n in g.nodes)


# -- every pass, on random graphs -----------------------------------------------------------------

@pytest.mark.parametrize("name", PASSES)
@fast
@given(case=random_graphs())
def test_pass_keeps_results_and_never_grows_the_graph(name, case):
    graph, feeds = case
    after = PASSES[name](graph)
    assert_same_results(graph, after, feeds)
    assert len(after) <= len(graph)


@fast
@given(case=random_graphs())
def test_pipeline_reaches_a_fixed_point(case):
    once = default_graph_pipeline()(case[0])
    assert str(default_graph_pipeline()(once)) == str(once)


@fast
@given(case=random_graphs())
def test_after_cse_no_two_nodes_compute_the_same_value(case):
    g = cse(case[0])
    keys = [(n.op, n.inputs, n.attr_key(), n.type) for n in g.nodes if n.op is not Op.INPUT]
    assert len(set(keys)) == len(keys)
    weights = [(w.dtype, w.shape, w.tobytes()) for w in g.weights.values()]
    assert len(set(weights)) == len(weights)


@fast
@given(case=random_graphs())
def test_after_dce_every_node_feeds_an_output_or_is_an_input(case):
    g = dce(case[0])
    needed = ancestors(g, g.outputs) | set(g.outputs) | set(g.inputs)
    assert needed == set(range(len(g)))


# -- CSE ------------------------------------------------------------------------------------------

def test_cse_merges_a_repeated_subexpression_and_what_reads_it():
    b = GraphBuilder()
    x = b.input("x", TensorType((Sym("n"), 4), f32))
    left = b.unary(Op.TANH, b.unary(Op.EXP, x))
    right = b.unary(Op.TANH, b.unary(Op.EXP, x))
    b.output("y", b.elementwise(Op.ADD, left, right))
    g = b.finish()
    after = cse(g)
    assert (count(after, Op.EXP), count(after, Op.TANH), len(after)) == (1, 1, len(g) - 2)
    assert_same_results(g, after, {"x": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)})


def test_cse_merges_identical_weights_by_content():
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = GraphBuilder()
    x = b.input("x", TensorType((2, 3), f32))
    y1 = b.matmul(x, b.const("layer1.w", w))
    y2 = b.matmul(x, b.const("layer2.w", w.copy()))                  # same bytes: the same weight
    y3 = b.matmul(x, b.const("layer3.w", w + 1))                      # different bytes
    z = b.cast(b.const("as_int", np.zeros((3, 4), np.int32)), f32)    # zero bytes, another dtype
    zf = b.const("as_float", np.zeros((3, 4), np.float32))
    b.output("y", b.elementwise(Op.ADD, b.elementwise(Op.ADD, y1, y2), y3))
    b.output("z", b.elementwise(Op.ADD, z, zf))
    g = b.finish()
    after = cse(g)
    assert sorted(after.weights) == ["as_float", "as_int", "layer1.w", "layer3.w"]
    assert count(after, Op.MATMUL) == 2
    assert_same_results(g, after, {"x": np.ones((2, 3), np.float32)})


def test_cse_tells_negative_zero_from_zero():
    b = GraphBuilder()
    b.output("pos", b.unary(Op.RECIP, b.full((2,), 0.0, f32)))
    b.output("neg", b.unary(Op.RECIP, b.full((2,), -0.0, f32)))      # 1/-0.0 is -inf
    b.output("nan", b.elementwise(Op.ADD, b.full((2,), float("nan"), f32), b.full((2,), float("nan"), f32)))
    g = b.finish()
    after = cse(g)
    assert count(after, Op.FULL) == 3  # the two NaN fills are one value, the zeros are two
    assert_same_results(g, after, {})
    assert list(run_graph(after, {})["neg"]) == [-np.inf, -np.inf]


def test_cse_keeps_inputs_of_the_same_type_apart():
    b = GraphBuilder()
    t = TensorType((3,), f32)
    b.output("d", b.elementwise(Op.SUB, b.input("a", t), b.input("b", t)))
    g = b.finish()
    assert str(cse(g)) == str(g)


# -- DCE ------------------------------------------------------------------------------------------

def test_dce_drops_dead_chains_but_keeps_every_input():
    b = GraphBuilder()
    x = b.input("x", TensorType((4,), f32))
    b.input("unused", TensorType((2,), f32))
    b.unary(Op.EXP, b.unary(Op.SIN, x))                    # read by nothing
    b.matmul(b.reshape(x, (1, 4)), b.const("w", np.ones((4, 2), np.float32)))
    b.output("y", b.unary(Op.NEG, x))
    g = b.finish()
    after = dce(g)
    assert [n.op for n in after.nodes] == [Op.INPUT, Op.INPUT, Op.NEG]
    assert after.weights == {} and after.input_names == ["x", "unused"]
    assert_same_results(g, after, {"x": np.arange(4, dtype=np.float32), "unused": np.zeros(2, np.float32)})


# -- simplify: one example per rule ---------------------------------------------------------------

def _example(pattern: str):
    """A graph where `pattern` applies, and how many nodes of the rule's op should remain."""
    b = GraphBuilder()
    x = b.input("x", TensorType((2, 3, 4), f32))
    node = b.node
    graphs = {
        "reshape(reshape(x, a), b) -> reshape(x, b)": (node(Op.RESHAPE, [node(Op.RESHAPE, [x], shape=(6, 4))],
                                                            shape=(24,)), 1),
        "reshape(x, shape of x) -> x": (node(Op.RESHAPE, [x], shape=(2, 3, 4)), 0),
        "expand(expand(x, a), b) -> expand(x, b)": (node(Op.EXPAND, [node(Op.EXPAND, [
            b.slice(b.slice(x, 0, 0, 1), 1, 0, 1)], shape=(1, 3, 4))], shape=(5, 3, 4)), 1),
        "expand(x, shape of x) -> x": (node(Op.EXPAND, [x], shape=(2, 3, 4)), 0),
        # (1, 2, 0) then (2, 0, 1) compose to the identity: two rules in a row remove both
        "permute(permute(x, p), q) -> permute(x, p[q])": (node(Op.PERMUTE, [node(Op.PERMUTE, [x], perm=(1, 2, 0))],
                                                               perm=(2, 0, 1)), 0),
        "permute(x, identity) -> x": (node(Op.PERMUTE, [x], perm=(0, 1, 2)), 0),
        "slice(x, all of x) -> x": (node(Op.SLICE, [x], starts=(0, 0, 0), stops=(2, 3, 4), steps=(1, 1, 1)), 0),
        "cast(x, dtype of x) -> x": (node(Op.CAST, [x], dtype=f32), 0),
        "x * 1 -> x, 1 * x -> x": (b.elementwise(Op.MUL, 1.0, b.elementwise(Op.MUL, x, 1.0)), 0),
        "x + 0 -> x, 0 + x -> x": (b.elementwise(Op.ADD, -0.0, b.elementwise(Op.ADD, x, 0.0)), 0),
        "x - 0 -> x": (b.elementwise(Op.SUB, x, 0.0), 0),
        "x / 1 -> x": (b.elementwise(Op.DIV, x, 1.0), 0),
    }
    y, remaining = graphs[pattern]
    b.output("y", b.unary(Op.TANH, y))
    # one node built for each example: drop the others' so that counts speak of this one only
    return dce(b.finish()), remaining


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.pattern)
def test_each_rule_fires_and_keeps_results(rule):
    g, remaining = _example(rule.pattern)
    after = dce(simplify(g))
    assert count(g, rule.op) > remaining and count(after, rule.op) == remaining
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    x[0, 0, 0] = -0.0
    assert_same_results(g, after, {"x": x})


def test_simplify_leaves_what_is_not_an_identity():
    b = GraphBuilder()
    x = b.input("x", TensorType((2, 2), f32))
    ys = [b.elementwise(Op.SUB, 0.0, x), b.elementwise(Op.DIV, 1.0, x), b.elementwise(Op.MUL, x, 2.0),
          b.permute(b.permute(x, (1, 0)), (1, 0)), b.node(Op.PERMUTE, [x], perm=(1, 0)),
          b.cast(b.cast(x, DType.F16), f32)]
    for i, y in enumerate(ys):
        b.output(f"y{i}", y)
    g = b.finish()
    after = dce(simplify(g))
    assert [n.op for n in after.nodes if n.op.cls.value != "source"] == [
        Op.SUB, Op.DIV, Op.MUL, Op.PERMUTE, Op.CAST, Op.CAST]  # permute(permute) is x, the other one stays
    assert_same_results(g, after, {"x": np.array([[1.5, -2], [0.1, 3]], np.float32)})


# -- the pipeline ---------------------------------------------------------------------------------

def test_default_pipeline_on_an_attention_block_with_repeated_work():
    b = GraphBuilder()
    x = b.input("x", TensorType((Sym("batch"), Sym("seq"), 8), f32))
    rng = np.random.default_rng(3)
    w, v = rng.standard_normal((8, 8)).astype(np.float32), np.ones(8, np.float32)
    # a frontend that normalises twice and loads the same projection under two names
    q = C.linear(b, C.layer_norm(b, x, b.const("ln.w", v)), b.const("q.w", w))
    k = C.linear(b, C.layer_norm(b, x, b.const("ln.w2", v.copy())), b.const("k.w", w.copy()))
    batch, seq = b.shape(x)[:2]
    flat = b.node(Op.RESHAPE, [x], shape=(batch, seq * 8))
    b.output("y", C.scaled_dot_product_attention(b, q, k, b.node(Op.RESHAPE, [flat], shape=(batch, seq, 8))))
    g = b.finish()
    trace: list = []
    after = default_graph_pipeline()(g, trace)
    assert [name for name, _ in trace] == ["simplify", "cse", "unshare_views", "dce"]
    assert count(g, Op.SUM) == 5 and count(after, Op.SUM) == 3   # one layer norm (2 sums) + softmax
    assert count(g, Op.RESHAPE) > count(after, Op.RESHAPE)
    assert len(after.weights) == 2
    assert_same_results(g, after, {"x": rng.standard_normal((2, 5, 8)).astype(np.float32)})


def test_unshare_views_gives_each_reader_its_own_broadcast():
    b = GraphBuilder()
    mask = b.input("mask", TensorType((Sym("batch"), 1, 4), boolean))
    x = b.input("x", TensorType((Sym("batch"), 3, 4), f32))
    wide = b.expand(mask, (Sym("batch"), 3, 4))
    first = b.elementwise(Op.WHERE, wide, x, 0.0)
    b.output("y", b.elementwise(Op.WHERE, wide, first, 1.0))
    g = b.finish()
    after = unshare_views(g)
    readers = [n for n in after.nodes if n.op is Op.WHERE]
    views = [after.nodes[n.inputs[0]] for n in readers]
    assert all(v.op is Op.EXPAND and v.inputs == (after.inputs[0],) for v in views)
    assert len({v.id for v in views}) == 2
    rng = np.random.default_rng(0)
    assert_same_results(g, after, {"mask": rng.random((2, 1, 4)) > 0.5,
                                   "x": rng.standard_normal((2, 3, 4)).astype(np.float32)})
