import dataclasses
import itertools

import numpy as np
import pytest
from graph_strategies import random_graphs
from hypothesis import given, settings

from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.errors import DnetError, GraphError, SymbolError, WeightError
from dnet.graph import analysis as A
from dnet.graph.builder import GraphBuilder
from dnet.graph.ir import Graph
from dnet.graph.ops import Op

f32 = DType.F32
fast = settings(max_examples=40, deadline=None)


def _mlp_with_residual() -> Graph:
    """h = tanh(x); a = h @ w1; r = relu(a); y = tanh(r @ w2 + h): h crosses the block."""
    b = GraphBuilder()
    x = b.unary(Op.TANH, b.input("x", TensorType((Sym("batch"), 8), f32)))
    a = b.matmul(x, b.const("w1", np.ones((8, 8), np.float32)))
    r = b.elementwise(Op.MAX, a, 0.0)
    y = b.elementwise(Op.ADD, b.matmul(r, b.const("w2", np.ones((8, 8), np.float32))), x)
    b.output("y", b.unary(Op.TANH, y))
    return b.finish()


def _diamond(heavy_left: bool) -> Graph:
    """x -> (left, right) -> add: one side a matmul, the other an element-wise op."""
    b = GraphBuilder()
    x = b.input("x", TensorType((4, 4), f32))
    mm = b.matmul(x, b.const("w", np.eye(4, dtype=np.float32)))
    ew = b.unary(Op.EXP, x)
    b.output("y", b.elementwise(Op.ADD, mm, ew) if heavy_left else b.elementwise(Op.ADD, ew, mm))
    return b.finish()


def _broken(graph: Graph, i: int, **changes) -> Graph:
    nodes = list(graph.nodes)
    nodes[i] = dataclasses.replace(nodes[i], **changes)
    return dataclasses.replace(graph, nodes=nodes)


# -- verify ---------------------------------------------------------------------------------------

@fast
@given(random_graphs())
def test_every_builder_graph_verifies(case):
    A.verify(case[0])


@pytest.mark.parametrize("changes, error, message", [
    ({"inputs": (3, 6)}, GraphError, "%5 = max: input(s) %6 do not come before the node"),
    ({"inputs": (3,)}, GraphError, "%5 = max: takes 2 input(s), has 1"),
    ({"attrs": {"axis": 0}}, GraphError, "%5 = max: attributes ['axis'], expected []"),
    ({"type": TensorType((Sym("batch"), 9), f32)}, GraphError,
     "%5 = max: type f32(batch, 9) but its inputs and attributes give f32(batch, 8)"),
    ({"id": 7}, GraphError, "%7 = max: id 7 at position 5"),
])
def test_verify_names_the_node_that_breaks_an_invariant(changes, error, message):
    g = _mlp_with_residual()
    assert g.nodes[5].op is Op.MAX
    with pytest.raises(error) as e:
        A.verify(_broken(g, 5, **changes))
    assert message in str(e.value)


def test_verify_reports_shape_errors_of_reinference_with_the_node():
    g = _mlp_with_residual()
    bad = _broken(g, 3, inputs=(1, 1))  # h(batch, 8) @ h(batch, 8): inner dims differ
    with pytest.raises(DnetError, match=r"%3 = matmul: matmul: inner dims differ"):
        A.verify(bad)


def test_verify_checks_weights_against_their_nodes():
    g = _mlp_with_residual()
    with pytest.raises(WeightError, match="%2 = const: weight 'w1' is float64"):
        A.verify(dataclasses.replace(g, weights={**g.weights, "w1": np.ones((8, 8))}))
    with pytest.raises(WeightError, match="weight 'w2' is not in graph.weights"):
        A.verify(dataclasses.replace(g, weights={"w1": g.weights["w1"]}))


def test_verify_checks_the_signature():
    g = _mlp_with_residual()
    with pytest.raises(GraphError, match=r"graph.inputs \[\] are not the INPUT and STATE nodes \[0\]"):
        A.verify(dataclasses.replace(g, inputs=[]))
    with pytest.raises(GraphError, match="output names"):
        A.verify(dataclasses.replace(g, output_names=["y", "z"]))


# -- dependencies ---------------------------------------------------------------------------------

def test_ancestors_and_descendants_of_a_diamond():
    g = _diamond(True)  # 0 x, 1 w, 2 matmul, 3 exp, 4 add
    assert A.ancestors(g, 4) == {0, 1, 2, 3}
    assert A.ancestors(g, 2) == {0, 1}
    assert A.descendants(g, 1) == {2, 4}
    assert A.descendants(g, [2, 3]) == {4}


@fast
@given(random_graphs())
def test_ancestors_and_descendants_are_converse(case):
    g = case[0]
    for u, v in itertools.product(range(len(g)), repeat=2):
        assert (u in A.ancestors(g, v)) == (v in A.descendants(g, u))


# -- cost -----------------------------------------------------------------------------------------

def test_matmul_cost_is_2mnk_over_symbolic_dims():
    b = GraphBuilder()
    batch, seq = Sym("batch"), Sym("seq")
    q = b.input("q", TensorType((batch, seq, 64), f32))
    k = b.input("k", TensorType((batch, 64, seq), f32))
    g = b.finish()
    mm = b.matmul(q, k)
    cost = A.node_cost(g, mm)
    assert cost.flops == 2 * batch * seq * seq * 64
    assert cost.bytes == 4 * (2 * batch * seq * 64 + batch * seq * seq)
    assert A.node_cost(g, mm, {"batch": 2, "seq": 128}) == A.Cost(2 * 2 * 128 * 128 * 64, 4 * (2 * 2 * 128 * 64
                                                                                                + 2 * 128 * 128))


def test_conv_pool_reduce_and_elementwise_costs():
    b = GraphBuilder()
    x = b.input("x", TensorType((2, 4, 8, 8), f32))
    w = b.const("w", np.zeros((6, 2, 3, 3), np.float32))
    conv = b.node(Op.CONV2D, [x, w], stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=2)
    pool = b.node(Op.MAXPOOL2D, [conv], kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0))
    total = b.reduce(Op.SUM, pool, (2, 3))
    act = b.unary(Op.TANH, total)
    g = b.finish()
    # each of the 2*6*8*8 outputs is a dot product of (4/2 channels)*3*3 taps
    assert A.node_cost(g, conv).flops == 2 * (2 * 6 * 8 * 8) * (2 * 3 * 3)
    assert A.node_cost(g, pool).flops == (2 * 6 * 4 * 4) * 4
    assert A.node_cost(g, total) == A.Cost(2 * 6 * 4 * 4, 4 * (2 * 6 * 4 * 4 + 2 * 6))
    assert A.node_cost(g, act) == A.Cost(12, 4 * 24)
    assert A.node_cost(g, w) == A.Cost(0, 0)


def test_a_missing_dim_is_a_symbol_error_naming_it():
    g = _mlp_with_residual()
    with pytest.raises(SymbolError, match="no value for dim.s. batch"):
        A.node_cost(g, 3, {"seq": 4})


# -- critical path, levels, parallelism -----------------------------------------------------------

def _all_paths(g: Graph):
    """Every path through the DAG that starts at a node without inputs (the brute-force oracle)."""
    users = g.users()
    stack = [[n.id] for n in g.nodes if not n.inputs]
    while stack:
        path = stack.pop()
        yield path
        stack.extend(path + [u] for u in users[path[-1]])


@pytest.mark.parametrize("heavy_left", [True, False])
def test_critical_path_follows_the_matmul_through_a_diamond(heavy_left):
    g = _diamond(heavy_left)
    path = A.critical_path(g)
    assert path.nodes == [2, 4]
    assert path.cost == 2 * 4 * 4 * 4 + 16


@fast
@given(random_graphs(symbolic=False))
def test_critical_path_is_the_longest_path_by_any_cost(case):
    g = case[0]
    cost = lambda n: 1 + n.id % 3  # noqa: E731 - a cost unrelated to the ops
    path = A.critical_path(g, cost)
    assert path.cost == max(sum(cost(g.nodes[i]) for i in p) for p in _all_paths(g))
    for a, b in zip(path.nodes, path.nodes[1:]):
        assert a in g.nodes[b].inputs


@fast
@given(random_graphs())
def test_topological_levels_hold_independent_ops_each_as_early_as_possible(case):
    g = case[0]
    levels = A.topological_levels(g)
    level = {n: k for k, nodes in enumerate(levels) for n in nodes}
    ready = A.constant_values(g) | set(g.inputs)
    assert sorted(level) == [n.id for n in g.nodes if n.id not in ready]
    for n, k in level.items():
        assert k == 1 + max((level[i] for i in g.nodes[n].inputs if i in level), default=-1)


def test_parallelism_of_independent_chains():
    b = GraphBuilder()
    x = b.input("x", TensorType((16, 16), f32))
    for i in range(3):
        w = b.transpose(b.const(f"w{i}", np.full((16, 16), i, np.float32)))  # a constant: no level of its own
        b.output(f"y{i}", b.unary(Op.TANH, b.matmul(x, w)))
    p = A.parallelism(b.finish())
    chain = 2 * 16 ** 3 + 16 * 16
    assert (p.work, p.span, p.average) == (3 * chain, chain, 3.0)
    assert p.widths == [3, 3] and p.max_width == 3


# -- liveness and cut points ----------------------------------------------------------------------

def _live_at_each_step(g: Graph, env) -> list[int]:
    """Oracle: at step t, the bytes of non-weight values made at or before t and needed at or after t."""
    users = g.users()
    end = len(g.nodes)
    out = []
    for t in range(len(g.nodes)):
        live = [v for v in g.nodes[:t + 1] if v.op is not Op.CONST
                and max(users[v.id] + [v.id] + ([end] if v.id in g.outputs else [])) >= t]
        out.append(sum(A.evaluate(A.value_bytes(v.type), env) for v in live))
    return out


@fast
@given(random_graphs())
def test_peak_live_bytes_matches_a_step_by_step_count(case):
    g = case[0]
    assert A.peak_live_bytes(g, {"n": 3}) == max(_live_at_each_step(g, {"n": 3}))


def test_cut_points_skip_a_residual_block():
    g = _mlp_with_residual()  # 0 x, 1 h, 2 w1, 3 a, 4 fill, 5 r, 6 w2, 7 r @ w2, 8 add, 9 y
    cuts = A.cut_points(g, {"batch": 2})
    # inside the block h is alive beside a, r and r @ w2: the cuts are before and after it
    assert [(c.node, c.values, c.bytes) for c in cuts] == [(1, (1,), 2 * 8 * 4), (8, (8,), 2 * 8 * 4)]
    two = A.cut_points(g, max_values=2)
    assert [(c.node, c.values) for c in two] == [(1, (1,)), (3, (1, 3)), (5, (1, 5)), (7, (1, 7)), (8, (8,))]


@fast
@given(random_graphs())
def test_cut_points_are_where_one_computed_value_crosses(case):
    g = case[0]
    free = A.constant_values(g) | set(g.inputs)
    users = g.users()
    expected = []
    for t in range(len(g.nodes)):
        crossing = [v for v in range(t + 1) if v not in free and any(u > t for u in users[v])]
        if t not in free and len(crossing) == 1:
            expected.append((t, tuple(crossing)))
    assert [(c.node, c.values) for c in A.cut_points(g)] == expected


# -- summary --------------------------------------------------------------------------------------

def test_summary_adds_up_and_reads_well():
    g = _mlp_with_residual()
    env = {"batch": 4}
    s = A.summary(g, env)
    # two 4x8 @ 8x8 matmuls; tanh, max, add, tanh: one flop per element of a 4x8 value
    assert s.flops == sum(A.node_cost(g, n, env).flops for n in g.nodes) == 2 * (2 * 4 * 8 * 8) + 4 * (4 * 8)
    assert s.weight_bytes == 2 * 8 * 8 * 4
    assert s.by_class == {"source": 4, "unary": 2, "matmul": 2, "binary": 2}
    assert s.critical_path_nodes == 6 and s.peak_live_bytes == A.peak_live_bytes(g, env)
    text = str(s)
    assert "nodes          10 (source 4, unary 2, matmul 2, binary 2)" in text
    assert "weights        512 B" in text
    assert "critical path  6 ops, 1.15 KFLOP" in text
