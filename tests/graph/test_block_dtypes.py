"""Weights in GGUF block formats in the graph IR: storage, dequantizing casts, errors."""
import numpy as np
import pytest

from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.quant import BLOCK_DTYPES, QUANTIZABLE, dequantize, quantize, random_blocks, storage_shape
from dnet.core.types import TensorType
from dnet.errors import DTypeError, WeightError
from dnet.graph.builder import GraphBuilder


@pytest.mark.parametrize("dtype", BLOCK_DTYPES, ids=str)
def test_a_block_weight_dequantizes_as_gguf_reads_it(dtype, rng):
    storage = random_blocks(dtype, (3, 512), rng)
    b = GraphBuilder()
    w = b.block_const("w", storage, dtype, (3, 512))
    b.output("w", b.cast(w, DType.F32))
    import gguf.quants

    expected = gguf.quants.dequantize(storage, getattr(gguf.GGMLQuantizationType, dtype.name))
    np.testing.assert_array_equal(run_graph(b.finish(), {})["w"], expected)


@pytest.mark.parametrize("dtype", QUANTIZABLE, ids=str)
def test_quantize_round_trips_within_the_formats_step(dtype, rng):
    x = rng.standard_normal((4, 64)).astype(np.float32)
    q = quantize(x, dtype)
    assert q.shape == storage_shape(dtype, x.shape) and q.dtype == np.uint8
    step = np.abs(x).reshape(4, 2, 32).max(-1, keepdims=True) / (127 if dtype is DType.Q8_0 else 7)
    assert np.all(np.abs(dequantize(q, dtype, x.shape) - x).reshape(4, 2, 32) <= step * 1.01)


def test_block_storage_must_hold_the_logical_shape(rng):
    b = GraphBuilder()
    with pytest.raises(WeightError, match="q4_1 storage uint8\\(2, 20\\) does not hold shape \\(2, 64\\)"):
        b.block_const("w", np.zeros((2, 20), np.uint8), DType.Q4_1, (2, 64))
    with pytest.raises(DTypeError, match="whole 256-element blocks"):
        b.block_const("k", np.zeros((2, 144), np.uint8), DType.Q4_K, (2, 100))


def test_a_block_dtype_is_never_a_cast_target():
    b = GraphBuilder()
    x = b.input("x", TensorType((2, 32), DType.F32))
    with pytest.raises(DTypeError, match="storage format"):
        b.cast(x, DType.Q8_0)
