"""Convolution and pooling (padding, stride, dilation, groups) against the reference backend."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.kernel.ir import Gemm

from backend_support import assert_matches_reference


@pytest.fixture(scope="module")
def cnn(compile_c):
    rng = np.random.default_rng(3)
    g = GraphBuilder()
    x = g.input("x", TensorType((2, 4, 11, 9), DType.F32))
    w = g.const("w", rng.standard_normal((6, 2, 3, 3)).astype(np.float32))
    bias = g.const("bias", rng.standard_normal((1, 6, 1, 1)).astype(np.float32))
    conv = g.node(Op.CONV2D, [x, w], stride=(2, 1), padding=(1, 0, 2, 1), dilation=(1, 2), groups=2)
    relu = g.elementwise(Op.MAX, g.elementwise(Op.ADD, conv, bias), 0.0)
    g.output("conv", relu)
    g.output("max", g.node(Op.MAXPOOL2D, [x], kernel=(3, 2), stride=(2, 2), padding=(1, 1, 1, 1)))
    g.output("avg", g.node(Op.AVGPOOL2D, [x], kernel=(2, 3), stride=(1, 2), padding=(0, 1, 1, 1),
                          count_include_pad=False))
    g.output("avg_pad", g.node(Op.AVGPOOL2D, [x], kernel=(2, 2), stride=(2, 2), padding=(1, 1, 0, 0),
                              count_include_pad=True))
    graph = g.finish()
    return graph, compile_c(graph)


@pytest.mark.parametrize("seed", [0, 1])
def test_conv_and_pools_match_reference(cnn, seed):
    graph, runner = cnn
    x = np.random.default_rng(seed).standard_normal((2, 4, 11, 9)).astype(np.float32)
    assert_matches_reference(runner, graph, {"x": x}, rtol=1e-5, atol=1e-5)


def _conv_graph(rng, c, o, k, stride, dilation, padding, hw, epilogue=True):
    g = GraphBuilder()
    x = g.input("x", TensorType(("n", c, *hw), DType.F32))
    w = g.const("w", rng.standard_normal((o, c, *k)).astype(np.float32))
    y = g.node(Op.CONV2D, [x, w], stride=stride, padding=padding, dilation=dilation, groups=1)
    if epilogue:   # bias + ReLU: the gemm's epilogue
        bias = g.const("bias", rng.standard_normal((1, o, 1, 1)).astype(np.float32))
        y = g.elementwise(Op.MAX, g.elementwise(Op.ADD, y, bias), 0.0)
    g.output("y", y)
    return g.finish()


@settings(max_examples=12, deadline=None)
@given(c=st.integers(1, 9), o=st.integers(1, 40), kh=st.integers(1, 4), kw=st.integers(1, 4),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)), dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       padding=st.tuples(*[st.integers(0, 2)] * 4), n=st.integers(1, 3), seed=st.integers(0, 99))
def test_convolutions_run_as_a_gemm_and_match_the_reference(compile_c, c, o, kh, kw, stride, dilation, padding, n,
                                                            seed):
    rng = np.random.default_rng(seed)
    h, w = 9 + kh * dilation[0], 8 + kw * dilation[1]
    graph = _conv_graph(rng, c, o, (kh, kw), stride, dilation, padding, (h, w))
    runner = compile_c(graph, threads=2)
    (kernel,) = runner.compiled.kernels.values()     # conv, bias and ReLU: one gemm kernel
    assert isinstance(kernel.body[0], Gemm) and kernel.body[0].b.im2col is not None
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    assert_matches_reference(runner, graph, {"x": x}, rtol=1e-4, atol=1e-4)


def test_a_strided_input_view_and_symbolic_image_sizes(compile_c, rng):
    """The input a transposed view (NHWC buffer read as NCHW), height and width symbolic."""
    g = GraphBuilder()
    nhwc = g.input("x", TensorType(("n", "h", "w", 5), DType.F32))
    w = g.const("w", rng.standard_normal((7, 5, 3, 3)).astype(np.float32))
    g.output("y", g.node(Op.CONV2D, [g.permute(nhwc, (0, 3, 1, 2)), w], stride=(1, 2), padding=(1, 1, 1, 1),
                         dilation=(1, 1), groups=1))
    graph = g.finish()
    runner = compile_c(graph, threads=3)
    for shape in ((1, 6, 7, 5), (2, 13, 4, 5)):
        assert_matches_reference(runner, graph, {"x": rng.standard_normal(shape).astype(np.float32)},
                                 rtol=1e-4, atol=1e-4)


def test_bias_and_relu_before_a_pool_run_once_in_the_convolutions_epilogue(compile_c, rng):
    """Inlined into the pool, bias and ReLU would run once per window covering an element (2.25 times
    for 3x3/2); they get a buffer instead, which makes them the convolution's epilogue."""
    from dnet.kernel.ir import Ref

    g = GraphBuilder()
    x = g.input("x", TensorType(("n", 3, 20, 18), DType.F32))
    w = g.const("w", rng.standard_normal((8, 3, 3, 3)).astype(np.float32))
    y = g.node(Op.CONV2D, [x, w], stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1)
    bias = g.const("b", rng.standard_normal((1, 8, 1, 1)).astype(np.float32))
    y = g.elementwise(Op.MAX, g.elementwise(Op.ADD, y, bias), 0.0)
    g.output("y", g.node(Op.MAXPOOL2D, [y], kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1)))
    graph = g.finish()
    runner = compile_c(graph, threads=2)
    conv, pool = runner.compiled.kernels.values()
    assert not isinstance(conv.body[0].epilogue, Ref)          # the epilogue is bias + ReLU, not the bare acc
    assert "add(" not in str(pool) and len(pool.params) == 2    # the pool reads one buffer, adds nothing
    assert_matches_reference(runner, graph, {"x": rng.standard_normal((2, 3, 20, 18)).astype(np.float32)},
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups, per_group", [(2, 8), (4, 9), (3, 2), (5, 1)])
def test_grouped_convolutions_run_one_gemm_per_group(compile_c, rng, groups, per_group):
    """A Gemm batched over (image, group), however few output channels a group has: the C backend runs
    it as a direct convolution (`backends/c/conv.py`), one-row (depthwise) ones included."""
    g = GraphBuilder()
    c = 5 * groups
    x = g.input("x", TensorType(("n", c, 13, 11), DType.F32))
    w = g.const("w", rng.standard_normal((groups * per_group, 5, 3, 2)).astype(np.float32))
    y = g.node(Op.CONV2D, [x, w], stride=(2, 1), padding=(1, 0, 1, 1), dilation=(1, 2), groups=groups)
    g.output("y", g.elementwise(Op.ADD, y, 1.0))
    graph = g.finish()
    runner = compile_c(graph, threads=2)
    gemms = [k.body[0] for k in runner.compiled.kernels.values() if isinstance(k.body[0], Gemm)]
    # the add rides as its epilogue: one kernel
    assert len(runner.compiled.kernels) == 1 and len(gemms[0].batch) == 2 and gemms[0].m == per_group
    assert_matches_reference(runner, graph, {"x": rng.standard_normal((2, c, 13, 11)).astype(np.float32)},
                             rtol=1e-4, atol=1e-4)
