"""Fusion: what becomes one kernel, and that fused kernels still compute the reference's values."""
import numpy as np
import pytest

from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.kernel.ir import Gemm, Loop, Reduce
from dnet.kernel.schedule import schedule

from backend_support import assert_matches_reference

S = Sym("seq")


def _mlp_block(rng):
    """linear -> GELU -> linear + residual -> layer norm -> softmax: a transformer's shapes."""
    b = GraphBuilder()
    x = b.input("x", TensorType((2, S, 32), DType.F32))
    w1 = b.const("w1", rng.standard_normal((64, 32)).astype(np.float32) / 6)
    b1 = b.const("b1", rng.standard_normal(64).astype(np.float32))
    w2 = b.const("w2", rng.standard_normal((32, 64)).astype(np.float32) / 8)
    b2 = b.const("b2", rng.standard_normal(32).astype(np.float32))
    g = b.const("g", rng.standard_normal(32).astype(np.float32))
    h = C.gelu(b, C.linear(b, x, w1, b1))
    y = b.elementwise(Op.ADD, C.linear(b, h, w2, b2), x)
    b.output("y", C.softmax(b, C.layer_norm(b, y, g, None), -1))
    return b.finish()


@pytest.fixture(scope="module")
def mlp(compile_c):
    graph = _mlp_block(np.random.default_rng(1))
    return graph, compile_c(graph)


def test_bias_gelu_and_residual_run_in_the_matmul_epilogues(mlp):
    graph, runner = mlp
    kernels = [runner.compiled.kernels[s.kernel] for s in runner.compiled.schedule.steps]
    gemms = [k.body[0] for k in kernels if isinstance(k.body[0], Gemm)]
    assert len(gemms) == 2
    assert len(kernels) == 3, "two matmuls with epilogues, then layer norm + softmax as one kernel"
    assert "erf" in str(kernels[0]) and "add(acc" in str(kernels[1]).replace(" ", "")


def test_layer_norm_then_softmax_is_one_kernel_with_row_reductions(mlp):
    _, runner = mlp
    last = runner.compiled.kernels[runner.compiled.schedule.steps[-1].kernel]
    loop = last.body[0]
    assert isinstance(loop, Loop) and loop.parallel == 2
    row = loop.body[0].body
    reductions = [s for s in row if isinstance(s, Reduce)]
    assert [r.op for r in reductions] == [Op.SUM, Op.SUM, Op.REDUCE_MAX, Op.SUM]


@pytest.mark.parametrize("seq", [1, 7, 33])
def test_fused_block_matches_reference(mlp, seq):
    graph, runner = mlp
    x = np.random.default_rng(seq).standard_normal((2, seq, 32)).astype(np.float32)
    assert_matches_reference(runner, graph, {"x": x}, rtol=1e-4, atol=1e-5)


def test_a_value_read_by_two_kernels_gets_its_own_buffer():
    b = GraphBuilder()
    x = b.input("x", TensorType((4, 8), DType.F32))
    e = b.unary(Op.EXP, x)
    b.output("a", b.reduce(Op.SUM, e, 0))        # reads e by columns
    b.output("b", b.elementwise(Op.MUL, e, 2.0))
    sched = schedule(b.finish())
    assert e in sched.materialized


def test_a_reduction_that_inlining_would_recompute_is_materialized():
    b = GraphBuilder()
    x = b.input("x", TensorType((4, 8), DType.F32))
    col = b.reduce(Op.SUM, x, 0, keepdim=True)   # one value per column, used in every row
    b.output("y", b.elementwise(Op.SUB, x, col))
    sched = schedule(b.finish())
    assert col in sched.materialized
    assert len(sched.steps) == 2


def test_movement_ops_are_index_arithmetic_not_copies():
    b = GraphBuilder()
    x = b.input("x", TensorType((2, S, 12), DType.F32))
    heads = b.permute(b.reshape(x, (2, S, 3, 4)), (0, 2, 1, 3))
    b.output("y", b.unary(Op.EXP, b.slice(heads, 3, 1, 4)))
    sched = schedule(b.finish())
    assert len(sched.steps) == 1
