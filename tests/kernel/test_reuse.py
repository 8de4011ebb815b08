"""A reduction's costly per-element values stored once and loaded by the loop after it."""
import numpy as np
import pytest

from dnet.backends.c import CBackend
from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.kernel.ir import Loop, Reduce, Unary
from dnet.kernel.schedule import schedule


def _count(node, op: Op) -> int:
    """Occurrences of unary `op` in a statement tree."""
    if isinstance(node, (tuple, list)):
        return sum(_count(n, op) for n in node)
    if isinstance(node, Unary):
        return (node.op is op) + _count(node.x, op)
    if isinstance(node, Loop):
        return _count(node.body, op)
    if isinstance(node, Reduce):
        return _count(node.body, op) + _count(node.value, op)
    fields = [getattr(node, f) for f in ("value", "a", "b", "cond", "x") if hasattr(node, f)]
    return sum(_count(f, op) for f in fields)


def _graph(fn, dtype=DType.F32, shape=(3, 5, 37)):
    b = GraphBuilder()
    x = b.input("x", TensorType(shape, dtype))
    b.output("y", fn(b, x))
    return b.finish()


def _kernel_ops(graph, op):
    return [_count(k.body, op) for k in schedule(graph).kernels.values()]


@pytest.mark.parametrize("scale", [1.0, 0.125])
def test_softmax_computes_exp_once_and_matches_the_reference(scale):
    graph = _graph(lambda b, x: C.softmax(b, b.elementwise(Op.MUL, x, b.full((3, 5, 37), scale, DType.F32))))
    assert _kernel_ops(graph, Op.EXP) == [1]
    x = np.random.default_rng(0).standard_normal((3, 5, 37)).astype(np.float32) * 4
    got = CBackend().prepare(graph, threads=2).run({"x": x})["y"]
    np.testing.assert_allclose(got, run_graph(graph, {"x": x})["y"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("compute", [DType.F16, DType.F32])
def test_half_outputs_reuse_only_values_of_their_own_dtype(compute):
    """f16 ops round every value to f16, so an f16 exp can be kept in the f16 output; an f32 exp
    (softmax computed in f32, then cast) would be rounded by the store: it is recomputed."""
    graph = _graph(lambda b, x: b.cast(C.softmax(b, b.cast(x, compute)), DType.F16), DType.F16)
    assert _kernel_ops(graph, Op.EXP) == [1 if compute is DType.F16 else 2]
    x = np.random.default_rng(1).standard_normal((3, 5, 37)).astype(np.float16)
    got = CBackend().prepare(graph, threads=1).run({"x": x})["y"]
    want = run_graph(graph, {"x": x})["y"]
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=4e-3, atol=1e-3)


def test_values_the_loop_does_not_recompute_are_left_alone():
    """log_softmax sums exp(x - max) but writes x - max - log(sum): nothing to share."""
    graph = _graph(lambda b, x: C.log_softmax(b, x))
    (kernel,) = schedule(graph).kernels.values()
    assert "out[" not in str(kernel).split("sum over")[1].split("for ")[0]
    x = np.random.default_rng(2).standard_normal((3, 5, 37)).astype(np.float32)
    got = CBackend().prepare(graph, threads=1).run({"x": x})["y"]
    np.testing.assert_allclose(got, run_graph(graph, {"x": x})["y"], rtol=1e-6, atol=1e-6)
