"""Every compiled backend's matmul, convolution, pooling, movement and state kernels, against the numpy
reference backend. (What each backend makes of them, its source text, is checked in its own folder.)"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.errors import BackendError, DnetError
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.graph.passes import default_graph_pipeline
from dnet.graph.passes.bf16 import bf16_matmuls
from dnet.graph.passes.dynamic_quant import quantize_dynamic
from dnet.graph.passes.quantize import quantize_weights
from dnet.kernel.ir import Gemm

from backend_support import assert_matches_reference, matmul_graph, mlp

M, K, N, B = Sym("m"), Sym("k"), Sym("n"), Sym("b")


@pytest.fixture(scope="module")
def matmuls(compile_on):
    graph = matmul_graph()
    return graph, compile_on(graph)


@settings(max_examples=8, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 70), n=st.integers(1, 40), b=st.integers(1, 3),
       seed=st.integers(0, 1000))
def test_matmul_matches_reference_for_sizes_that_are_not_whole_tiles(matmuls, m, k, n, b, seed):
    graph, runner = matmuls
    rng = np.random.default_rng(seed)
    feeds = {"a": rng.standard_normal((m, k)), "bt": rng.standard_normal((n, k)),
             "x": rng.standard_normal((b, m, k)), "h": rng.standard_normal((m, k)) / 4}
    feeds = {name: v.astype(np.float16 if name == "h" else np.float32) for name, v in feeds.items()}
    assert_matches_reference(runner, graph, feeds, rtol=1e-4, atol=1e-4)


# every form a Gemm's operands take, each as a graph the reference runs as written (the oracle):
# f32 weights packed in panels; int8 weights with per-column scales; int8 activations per row (step and
# zero offset) against int8 weights; bf16 activations and weights
WEIGHT_FORMS = {"f32": lambda g: g, "int8": lambda g: quantize_weights(g, min_elements=1),
                "int8-dynamic": lambda g: quantize_dynamic(g, min_elements=1),
                "bf16": lambda g: bf16_matmuls(g, min_elements=1)}


@pytest.mark.parametrize("form", WEIGHT_FORMS)
def test_weights_and_epilogues_match_reference(compile_on, form):
    rng = np.random.default_rng(1)
    graph = WEIGHT_FORMS[form](mlp(rng, 70, 45, 33))
    runner = compile_on(graph)
    gemms = [s for k in runner.compiled.kernels.values() for s in k.body if isinstance(s, Gemm)]
    assert len(gemms) == 2
    if form in ("int8-dynamic", "bf16"):
        assert all(g.a.dtype is not DType.F32 for g in gemms)     # the low-precision Gemms, not f32 ones
    for shape in ((1, 1, 70), (2, 17, 70)):
        assert_matches_reference(runner, graph, {"x": rng.standard_normal(shape).astype(np.float32)},
                                 rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def cnn(compile_on):
    rng = np.random.default_rng(3)
    g = GraphBuilder()
    x = g.input("x", TensorType((2, 4, 11, 9), DType.F32))
    w = g.const("w", rng.standard_normal((16, 2, 3, 3)).astype(np.float32))
    bias = g.const("bias", rng.standard_normal((1, 16, 1, 1)).astype(np.float32))
    conv = g.node(Op.CONV2D, [x, w], stride=(2, 1), padding=(1, 0, 2, 1), dilation=(1, 2), groups=2)
    g.output("conv", g.elementwise(Op.MAX, g.elementwise(Op.ADD, conv, bias), 0.0))
    depthwise = g.const("dw", rng.standard_normal((4, 1, 3, 3)).astype(np.float32))   # a loop nest, not a gemm
    g.output("depthwise", g.node(Op.CONV2D, [x, depthwise], stride=(1, 1), padding=(1, 1, 1, 1),
                                 dilation=(1, 1), groups=4))
    g.output("max", g.node(Op.MAXPOOL2D, [x], kernel=(3, 2), stride=(2, 2), padding=(1, 1, 1, 1)))
    g.output("avg", g.node(Op.AVGPOOL2D, [x], kernel=(2, 3), stride=(1, 2), padding=(0, 1, 1, 1),
                          count_include_pad=False))
    graph = g.finish()
    return graph, compile_on(graph)


@pytest.mark.parametrize("seed", [0, 1])
def test_convolutions_and_pools_match_reference(cnn, seed):
    graph, runner = cnn
    x = np.random.default_rng(seed).standard_normal((2, 4, 11, 9)).astype(np.float32)
    assert_matches_reference(runner, graph, {"x": x}, rtol=1e-5, atol=1e-5)


def test_movement_ops_match_reference(compile_on):
    rng = np.random.default_rng(4)
    g = GraphBuilder()
    x = g.input("x", TensorType((3, Sym("s"), 8), DType.F32))
    ids = g.input("ids", TensorType((5,), DType.I64))
    table = g.const("table", rng.standard_normal((20, 8)).astype(np.float32))
    g.output("permute", g.node(Op.PERMUTE, [x], perm=(2, 0, 1)))
    g.output("reshape", g.reshape(x, (3, Sym("s") * 2, 4)))
    g.output("slice", g.slice(x, 2, 1, 7, 2))
    g.output("pad", g.node(Op.PAD, [x], pads=((0, 0), (1, 2), (3, 0)), value=-1.5))
    g.output("concat", g.node(Op.CONCAT, [x, g.unary(Op.EXP, x)], axis=1))
    g.output("gather", g.node(Op.GATHER, [table, ids], axis=0))
    g.output("expand", g.elementwise(Op.ADD, x, g.reduce(Op.SUM, x, 1, keepdim=True)))
    graph = g.finish()
    runner = compile_on(graph)
    for s in (1, 6):
        feeds = {"x": rng.standard_normal((3, s, 8)).astype(np.float32), "ids": rng.integers(-20, 20, 5)}
        assert_matches_reference(runner, graph, feeds)


def _kv_graph():
    b = GraphBuilder()
    cache = b.state("cache", TensorType((B, 8, 2, 4), DType.F32))
    x = b.input("x", TensorType((B, Sym("seq"), 2, 4), DType.F32))
    pos = b.input("pos", TensorType((B, Sym("seq")), DType.I64))
    written = b.scatter(cache, pos, b.unary(Op.TANH, x), axis=1)       # computed values, written in place
    b.output("seen", b.reduce(Op.SUM, b.slice(written, 1, 0, Sym("ctx")), (2, 3)))
    b.input("ctx_marker", TensorType((Sym("ctx"),), DType.I64))
    return default_graph_pipeline()(b.finish())


@pytest.fixture(scope="module")
def kv(compile_on):
    graph = _kv_graph()
    return graph, compile_on(graph)


def test_scatter_writes_the_new_rows_of_the_state_on_the_device_and_back(kv):
    graph, runner = kv
    rng = np.random.default_rng(5)
    ours = rng.standard_normal((2, 8, 2, 4)).astype(np.float32)
    theirs = ours.copy()
    feeds = {"x": rng.standard_normal((2, 3, 2, 4)).astype(np.float32), "pos": np.array([[0, 1, 2], [5, 6, 7]]),
             "ctx_marker": np.zeros(8, np.int64)}
    got = runner.run({**feeds, "cache": ours})
    want = run_graph(graph, {**feeds, "cache": theirs})
    np.testing.assert_allclose(got["seen"], want["seen"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_bad_inputs_are_one_line_dnet_errors(kv):
    _, runner = kv
    with pytest.raises(DnetError, match="missing input"):
        runner.run({"x": np.zeros((1, 1, 2, 4), np.float32)})
    # a state of the wrong layout is refused, not copied (the program writes it in place)
    with pytest.raises(DnetError, match="state 'cache' must be a writeable C-contiguous f32"):
        runner.run({"x": np.zeros((1, 1, 2, 4), np.float32), "pos": np.zeros((1, 1), np.int64),
                    "ctx_marker": np.zeros(8, np.int64), "cache": np.zeros((1, 8, 2, 4), np.float64)})


def test_a_scatter_into_a_plain_input_is_a_backend_error(compile_on):
    b = GraphBuilder()
    dest = b.input("dest", TensorType((2, 4), DType.F32))
    written = b.scatter(dest, b.input("i", TensorType((2, 1), DType.I64)), b.input("v", TensorType((2, 1), DType.F32)), 1)
    b.output("y", b.unary(Op.NEG, written))
    with pytest.raises(BackendError, match="destination must be a state"):
        compile_on(b.finish())


@pytest.fixture(scope="module")
def softmax_of_matmul(compile_on):
    g = GraphBuilder()
    a = g.input("a", TensorType((M, K), DType.F32))
    b = g.input("b", TensorType((K, N), DType.F32))
    g.output("y", C.softmax(g, g.matmul(a, b), -1))
    return compile_on(g.finish())


@pytest.mark.parametrize("m,k,n", [(0, 16, 24), (4, 0, 24), (4, 16, 0), (0, 0, 0)])
def test_an_empty_dim_gives_an_empty_or_zero_sum_result(softmax_of_matmul, m, k, n):
    """A launch over an empty grid is skipped; a k of 0 sums nothing (softmax of zeros: uniform)."""
    feeds = {"a": np.ones((m, k), np.float32), "b": np.ones((k, n), np.float32)}
    got = softmax_of_matmul.run(feeds)["y"]
    z = feeds["a"] @ feeds["b"]              # by hand: the reference's max has no identity on an empty row
    e = np.exp(z - z.max(-1, keepdims=True)) if n else z
    assert got.shape == (m, n)
    np.testing.assert_allclose(got, e / e.sum(-1, keepdims=True))
