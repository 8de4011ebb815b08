"""quantize="int8-dynamic" and precision="bf16" as graph rewrites, run by the numpy reference: the values
they stand for (hand-derived), the bound they keep, and the option errors."""
import numpy as np
import pytest

import dnet
from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.errors import DnetError
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.graph.passes.bf16 import bf16_matmuls
from dnet.graph.passes.dynamic_quant import quantize_dynamic


def _through(x_shape, w: np.ndarray):
    b = GraphBuilder()
    x = b.input("x", TensorType(x_shape, DType.F32))
    b.output("y", b.matmul(x, b.const("w", w)))
    return b.finish()


def test_a_row_quantized_by_hand():
    """x = [-1, 0, 0.5, 3]: step 4/255, zero offset floor(-63.75 + 1/2) + 128 = 64, q = [-128, -64, -32, 127];
    the identity weight is exact in int8 (127 steps of 1/127), so the matmul returns (q + 64) * 4/255."""
    graph = quantize_dynamic(_through((1, 4), np.eye(4, dtype=np.float32)), min_elements=1)
    y = run_graph(graph, {"x": np.array([[-1, 0, 0.5, 3]], np.float32)})["y"]
    step = np.float32(4) / np.float32(255)
    want = (np.array([-128, -64, -32, 127], np.float32) + 64) * step
    np.testing.assert_allclose(y[0], want, rtol=1e-6)
    assert y[0, 1] == 0                                   # zero is exact in every row that holds it


def test_rows_keep_half_a_step(rng):
    """Per element |x~ - x| <= step / 2, step = (max - min) / 255 of its row (identity weight: exact)."""
    x = (rng.standard_normal((9, 64)) * rng.uniform(0.01, 100, (9, 1)) + rng.uniform(-5, 5, (9, 1))).astype(np.float32)
    x[3] = 7.25                                           # a constant row: its range widened, still exact
    graph = quantize_dynamic(_through(("m", 64), np.eye(64, dtype=np.float32)), min_elements=1)
    y = run_graph(graph, {"x": x})["y"]
    step = (x.max(1, keepdims=True) - x.min(1, keepdims=True)) / 255
    assert np.all(np.abs(y - x) <= step / 2 * (1 + 1e-5) + np.abs(x) * 1e-6)
    np.testing.assert_allclose(y[3], 7.25, rtol=1e-6)


def test_one_quantization_per_activation(rng):
    """Three matmuls reading one activation (attention's q, k, v) share its quantized form."""
    b = GraphBuilder()
    x = b.input("x", TensorType(("m", 64), DType.F32))
    for i in range(3):
        b.output(f"y{i}", b.matmul(x, b.const(f"w{i}", rng.standard_normal((64, 64)).astype(np.float32))))
    graph = quantize_dynamic(b.finish(), min_elements=1)
    assert sum(n.op is Op.REDUCE_MAX for n in graph.nodes) == 1
    assert sum(n.op is Op.CAST and n.dtype is DType.I8 for n in graph.nodes) == 1


def test_bf16_rounds_weights_and_activations(rng):
    """f32(bf16(x)) @ f32(bf16(W)), summed in f32 (ml_dtypes rounds to nearest even, as the C kernels do)."""
    import ml_dtypes

    w = rng.standard_normal((64, 48)).astype(np.float32)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    graph = bf16_matmuls(_through(("m", 64), w), min_elements=1)
    assert graph.weights["w@bf16"].dtype == ml_dtypes.bfloat16 and "w" not in graph.weights
    rounded = x.astype(ml_dtypes.bfloat16).astype(np.float32) @ w.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_allclose(run_graph(graph, {"x": x})["y"], rounded, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options, message", [
    ({"quantize": "int8-dynamc"}, "unknown quantization 'int8-dynamc' (did you mean 'int8-dynamic'?)"),
    ({"precision": "bf61"}, "unknown precision 'bf61' (did you mean 'bf16'?)"),
    ({"quantize": "int8", "precision": "bf16"}, "quantize='int8' and precision='bf16' together"),
])
def test_unknown_options_are_one_line_errors(options, message):
    with pytest.raises(DnetError) as err:
        dnet.compile(_through((2, 64), np.eye(64, dtype=np.float32)), **options)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
