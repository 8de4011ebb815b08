"""Every op of the graph IR through every compiled backend, against the reference backend.

One graph per dtype holds every op as a separate output, over symbolic dims, so it builds once per
backend; hypothesis then draws the dims and the data.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op

from backend_support import assert_matches_reference

N, M = Sym("n"), Sym("m")
FLOAT_UNARY = [Op.NEG, Op.EXP, Op.TANH, Op.ERF, Op.SIN, Op.COS, Op.ABS, Op.FLOOR]
POSITIVE_UNARY = [Op.LOG, Op.SQRT, Op.RECIP]
BINARY = [Op.ADD, Op.SUB, Op.MUL, Op.MAX, Op.MIN, Op.EQ, Op.NE, Op.LT, Op.LE]


def _float_graph(dtype: DType):
    b = GraphBuilder()
    x = b.input("x", TensorType((N, M), dtype))
    y = b.input("y", TensorType((N, M), dtype))
    pos = b.input("pos", TensorType((N, M), dtype))
    outs = {}
    for op in FLOAT_UNARY:
        outs[str(op)] = b.unary(op, x)
    for op in POSITIVE_UNARY:
        outs[str(op)] = b.unary(op, pos)
    for op in BINARY:
        outs[str(op)] = b.elementwise(op, x, y)
    outs["div"] = b.elementwise(Op.DIV, x, pos)
    outs["pow"] = b.elementwise(Op.POW, pos, y)
    outs["mod"] = b.elementwise(Op.MOD, x, pos)
    outs["where"] = b.elementwise(Op.WHERE, b.elementwise(Op.LT, x, y), x, y)
    for op in (Op.SUM, Op.REDUCE_MAX, Op.REDUCE_MIN):
        for axis in (0, 1):
            outs[f"{op}{axis}"] = b.reduce(op, x, axis, keepdim=bool(axis))
    outs["sum_all"] = b.reduce(Op.SUM, x, None)
    outs["argmax"] = b.node(Op.ARGMAX, [x], axis=1, keepdim=False)
    outs["to_i32"] = b.cast(x, DType.I32)
    outs["to_bool"] = b.cast(b.unary(Op.FLOOR, x), DType.BOOL)
    outs["softmax"] = C.softmax(b, x, -1)
    outs["layer_norm"] = C.layer_norm(b, x)
    for name, v in outs.items():
        b.output(name, v)
    return b.finish()


def _feeds(shape, dtype, rng):
    x = rng.standard_normal(shape) * 2
    y = rng.standard_normal(shape) * 2
    y[:, ::3] = x[:, ::3]  # ties, for eq/ne/le
    pos = rng.uniform(0.5, 3.0, shape)
    return {k: v.astype(dtype.np) for k, v in (("x", x), ("y", y), ("pos", pos))}


@pytest.fixture(scope="module", params=[DType.F32, DType.F16, DType.BF16], ids=str)
def float_case(request, compile_on):
    graph = _float_graph(request.param)
    return request.param, graph, compile_on(graph)


TOL = {DType.F32: (2e-5, 2e-6), DType.F16: (2e-3, 2e-3), DType.BF16: (2e-2, 2e-2)}


@settings(max_examples=12, deadline=None)
@given(shape=st.tuples(st.integers(1, 9), st.integers(1, 70)), seed=st.integers(0, 2**16))
def test_float_ops_match_reference_for_any_shape(float_case, shape, seed):
    dtype, graph, runner = float_case
    rtol, atol = TOL[dtype]
    feeds = _feeds(shape, dtype, np.random.default_rng(seed))
    # Summed in another order, n terms differ by up to n * eps * sum|x|, typically sqrt(n) * eps * sum|x|
    # (allowed here, per reduced slice): a near-cancelling sum, far below sum|x|, can miss a relative
    # tolerance (seen on PoCL for sum_all, and for a row's sum1). A dropped or doubled term still fails.
    terms = np.abs(feeds["x"].astype(np.float32))
    eps = np.finfo(dtype.np).eps

    def long_sum(axis: int | None) -> float:
        n, worst = (terms.size, terms.sum()) if axis is None else (terms.shape[axis], terms.sum(axis).max())
        return max(atol, float(np.sqrt(n) * eps * worst))

    assert_matches_reference(runner, graph, feeds, rtol, atol,
                             atol_of={"sum_all": long_sum(None), "sum0": long_sum(0), "sum1": long_sum(1)})


def _int_graph(dtype: DType):
    b = GraphBuilder()
    x = b.input("x", TensorType((N, M), dtype))
    y = b.input("y", TensorType((N, M), dtype))
    outs = {str(op): b.elementwise(op, x, y) for op in BINARY}
    outs["neg"] = b.unary(Op.NEG, x)
    outs["abs"] = b.unary(Op.ABS, x)
    outs["div"] = b.elementwise(Op.DIV, x, y)   # floor division
    outs["mod"] = b.elementwise(Op.MOD, x, y)
    outs["pow"] = b.elementwise(Op.POW, x, b.elementwise(Op.MOD, y, 3))
    outs["sum"] = b.reduce(Op.SUM, x, 1)
    outs["max"] = b.reduce(Op.REDUCE_MAX, x, 0, keepdim=True)
    outs["min"] = b.reduce(Op.REDUCE_MIN, x, 1, keepdim=True)
    outs["argmax"] = b.node(Op.ARGMAX, [x], axis=0, keepdim=True)
    outs["to_f32"] = b.cast(x, DType.F32)
    outs["arange"] = b.elementwise(Op.ADD, b.cast(b.arange(M), dtype), b.reduce(Op.SUM, x, 0))
    for name, v in outs.items():
        b.output(name, v)
    return b.finish()


@pytest.fixture(scope="module", params=[DType.I32, DType.I8, DType.I64], ids=str)
def int_case(request, compile_on):
    graph = _int_graph(request.param)
    return request.param, graph, compile_on(graph)


@settings(max_examples=10, deadline=None)
@given(shape=st.tuples(st.integers(1, 7), st.integers(1, 70)), seed=st.integers(0, 2**16))
def test_int_ops_match_reference_bit_for_bit(int_case, shape, seed):
    dtype, graph, runner = int_case
    rng = np.random.default_rng(seed)
    x = rng.integers(-20, 20, shape).astype(dtype.np)
    y = rng.integers(1, 7, shape).astype(dtype.np) * rng.choice([-1, 1], shape).astype(dtype.np)
    assert_matches_reference(runner, graph, {"x": x, "y": y})


def test_bool_logic_and_where_match_reference(compile_on):
    b = GraphBuilder()
    p = b.input("p", TensorType((N,), DType.BOOL))
    q = b.input("q", TensorType((N,), DType.BOOL))
    v = b.input("v", TensorType((N,), DType.F32))
    b.output("and", b.elementwise(Op.AND, p, q))
    b.output("or", b.elementwise(Op.OR, p, q))
    b.output("not", b.unary(Op.NOT, p))
    b.output("any", b.reduce(Op.SUM, b.cast(p, DType.I32), 0))
    b.output("where", b.elementwise(Op.WHERE, p, v, 0.0))
    graph = b.finish()
    runner = compile_on(graph)
    for seed, n in ((0, 37), (3, 137)):      # a length below and one past a vector's and a work-group's
        rng = np.random.default_rng(seed)
        feeds = {"p": rng.random(n) > 0.5, "q": rng.random(n) > 0.5, "v": rng.standard_normal(n).astype(np.float32)}
        assert_matches_reference(runner, graph, feeds)
