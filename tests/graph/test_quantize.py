"""Weight-only int8 quantization of matmul weights: the arithmetic, which weights, and the bound it keeps."""
import numpy as np
import pytest

from dnet.api import compile as dnet_compile
from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.errors import DnetError
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.graph.passes.quantize import quantize, quantize_weights


def test_scales_are_the_channel_maximum_over_127():
    w = np.array([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]], np.float32)
    q, s = quantize(w, axis=0)
    assert s.shape == (2, 1)
    np.testing.assert_allclose(s[:, 0], [2 / 127, 1.0])          # an all-zero channel gets scale 1
    np.testing.assert_array_equal(q, [[64, -127, 32], [0, 0, 0]])   # 1 / (2/127) = 63.5 rounds to even 64
    q, s = quantize(w, axis=1)
    np.testing.assert_allclose(s[0], [1 / 127, 2 / 127, 0.5 / 127])
    assert np.all(np.abs(q.astype(np.float32) * s - w) <= s / 2 + 1e-7)


def _model(rng, n_out=48, shared=False):
    b = GraphBuilder()
    x = b.input("x", TensorType(("m", 64), DType.F32))
    w1 = b.const("w1", rng.standard_normal((n_out, 64)).astype(np.float32))      # torch layout: transposed use
    w2 = b.const("w2", rng.standard_normal((n_out, 40)).astype(np.float32))      # direct use: x @ w2
    bias = b.const("bias", rng.standard_normal((n_out,)).astype(np.float32))
    emb = b.const("emb", rng.standard_normal((100, 40)).astype(np.float32))     # rows read by a gather
    ids = b.input("ids", TensorType(("m",), DType.I64))
    h = C.gelu(b, C.linear(b, x, w1, bias))
    b.output("y", b.elementwise(Op.ADD, b.matmul(h, w2), b.node(Op.GATHER, [emb, ids], axis=0)))
    if shared:
        b.output("z", b.elementwise(Op.ADD, w1, 1.0))                         # w1 also read by an add
    return b.finish()


def test_matmul_weights_per_output_channel_and_embeddings_per_row(rng):
    g = quantize_weights(_model(rng), min_elements=16)
    assert g.weights["w1@int8"].dtype == np.int8 and g.weights["w1@scale"].shape == (48, 1)
    assert g.weights["w2@int8"].shape == (48, 40) and g.weights["w2@scale"].shape == (1, 40)
    assert g.weights["emb@scale"].shape == (100, 1)
    assert "bias" in g.weights and not {"w1", "w2", "emb"} & set(g.weights)
    shared = quantize_weights(_model(rng, shared=True), min_elements=16)
    assert "w1" in shared.weights and "w1@int8" not in shared.weights   # not only a matmul reads it
    small = quantize_weights(_model(rng), min_elements=48 * 64 + 1)
    assert "w1" in small.weights and "w2@int8" not in small.weights


def test_error_stays_within_the_rounding_bound(rng):
    """|y_int8 - y| <= sum_k |x_k| * scale_j / 2 for a single linear layer (hand-derived)."""
    b = GraphBuilder()
    x = b.input("x", TensorType((5, 64), DType.F32))
    w = rng.standard_normal((48, 64)).astype(np.float32)
    b.output("y", C.linear(b, x, b.const("w", w)))
    graph = b.finish()
    xv = rng.standard_normal((5, 64)).astype(np.float32)
    exact = run_graph(graph, {"x": xv})["y"]
    got = run_graph(quantize_weights(graph, min_elements=16), {"x": xv})["y"]
    _, scale = quantize(w, axis=0)
    bound = np.abs(xv).sum(1, keepdims=True) * scale[:, 0][None, :] / 2
    assert np.all(np.abs(got - exact) <= bound * (1 + 1e-5) + 1e-5)
    assert np.abs(got - exact).max() > 0          # it did quantize


def test_unknown_schemes_are_named():
    b = GraphBuilder()
    b.output("y", b.input("x", TensorType((2,), DType.F32)))
    with pytest.raises(DnetError, match="unknown quantization 'int4'"):
        dnet_compile(b.finish(), quantize="int4")
