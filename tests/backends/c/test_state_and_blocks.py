"""The C backend on states written in place and on weights kept in GGUF block formats, vs the numpy reference."""
import numpy as np
import pytest

from dnet.core.dtypes import DType
from dnet.backends.numpy import run_graph
from dnet.core.quant import BLOCK_DTYPES, dequantize, random_blocks
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.errors import BackendError
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.graph.passes import default_graph_pipeline
from dnet.kernel.ir import QMatmul

B, S = Sym("batch"), Sym("seq")


def _kv_graph():
    b = GraphBuilder()
    cache = b.state("cache", TensorType((B, 8, 2, 4), DType.F32))
    x = b.input("x", TensorType((B, S, 2, 4), DType.F32))
    pos = b.input("pos", TensorType((B, S), DType.I64))
    written = b.scatter(cache, pos, b.unary(Op.TANH, x), axis=1)       # computed values, written in place
    b.output("seen", b.reduce(Op.SUM, b.slice(written, 1, 0, Sym("ctx")), (2, 3)))
    b.input("ctx_marker", TensorType((Sym("ctx"),), DType.I64))
    return default_graph_pipeline()(b.finish())


def test_scatter_writes_only_the_new_rows_of_the_state(compile_c, rng):
    g = _kv_graph()
    runner = compile_c(g)
    c_cache, ref_cache = (rng.standard_normal((2, 8, 2, 4)).astype(np.float32) for _ in range(2))
    ref_cache[:] = c_cache
    feeds = {"x": rng.standard_normal((2, 3, 2, 4)).astype(np.float32), "pos": np.array([[0, 1, 2], [5, 6, 7]]),
             "ctx_marker": np.zeros(8, np.int64)}
    got = runner.run({**feeds, "cache": c_cache})
    want = run_graph(g, {**feeds, "cache": ref_cache})
    np.testing.assert_allclose(got["seen"], want["seen"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c_cache, ref_cache, rtol=1e-6, atol=1e-6)


def test_a_state_of_the_wrong_layout_is_refused_not_copied(compile_c):
    runner = compile_c(_kv_graph())
    feeds = {"x": np.zeros((1, 1, 2, 4), np.float32), "pos": np.zeros((1, 1), np.int64),
             "ctx_marker": np.zeros(8, np.int64)}
    with pytest.raises(Exception, match="state 'cache' must be a writeable C-contiguous f32"):
        runner.run({**feeds, "cache": np.zeros((1, 8, 2, 4), np.float64)})


def test_a_scatter_into_a_plain_input_is_a_backend_error(compile_c):
    b = GraphBuilder()
    dest = b.input("dest", TensorType((2, 4), DType.F32))
    written = b.scatter(dest, b.input("i", TensorType((2, 1), DType.I64)), b.input("v", TensorType((2, 1), DType.F32)), 1)
    b.output("y", b.unary(Op.NEG, written))
    with pytest.raises(BackendError, match="destination must be a state"):
        compile_c(b.finish())


def _linear_graph(dtype, storage, n, k, epilogue):
    b = GraphBuilder()
    x = b.input("x", TensorType((B, S, k), DType.F32))
    w = b.cast(b.block_const("w", storage, dtype, (n, k)), DType.F32)
    y = C.linear(b, x, w, b.const("bias", np.linspace(-1, 1, n, dtype=np.float32)))
    if epilogue:
        y = C.silu(b, y)
    ids = b.input("ids", TensorType((S,), DType.I64))
    b.output("y", y)
    b.output("rows", b.node(Op.GATHER, [w, ids], axis=0))    # the same weight, read row by row
    return default_graph_pipeline()(b.finish())


@pytest.mark.parametrize("dtype", BLOCK_DTYPES, ids=str)
@pytest.mark.parametrize("epilogue", [False, True], ids=["plain", "silu"])
def test_a_block_weight_matmul_is_one_qmatmul_and_matches_the_reference(dtype, epilogue, compile_c, rng):
    n, k = 40, 512
    storage = random_blocks(dtype, (n, k), rng)
    g = _linear_graph(dtype, storage, n, k, epilogue)
    runner = compile_c(g)
    qmatmuls = [s for kern in runner.compiled.kernels.values() for s in kern.body if isinstance(s, QMatmul)]
    assert len(qmatmuls) == 1 and qmatmuls[0].weight_dtype is dtype
    assert all(b.dtype is not DType.F32 or b.elements != n * k for b in runner.program.buffers)   # never expanded
    w = dequantize(storage, dtype, (n, k))
    for rows in (1, 5):
        x = rng.standard_normal((2, rows, k)).astype(np.float32)
        feeds = {"x": x, "ids": np.arange(rows) % n}
        got, want = runner.run(feeds), run_graph(g, feeds)
        np.testing.assert_array_equal(got["rows"], want["rows"])          # element loads dequantize exactly
        # integer paths quantize activations to 8 bits per block: error ~ sqrt(k) * step/sqrt(12) * rms(w)
        bound = 6 * np.sqrt(k) * (np.abs(x).max() / 127 / np.sqrt(12)) * np.sqrt((w ** 2).mean())
        np.testing.assert_allclose(got["y"], want["y"], rtol=0, atol=bound)
