"""GGUF block weights on every compiled backend: element loads and one QMatmul per matmul against the
numpy reference (gguf's own dequantizers), in every block format, blocks never expanded."""
import numpy as np
import pytest

from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.quant import BLOCK_DTYPES, dequantize, random_blocks
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.graph.passes import default_graph_pipeline
from dnet.kernel.ir import QMatmul

B, S = Sym("batch"), Sym("seq")
# How close each backend's products must be. The C backend's integer paths quantize activations to 8 bits
# per block (error ~ sqrt(k) * step/sqrt(12) * rms(w)); the others multiply in f32 (rounding only).
QUANTIZES_ACTIVATIONS = {"c"}
PRODUCT_TOLERANCE = {"llvm": (1e-4, 1e-5)}        # (rtol, atol); any other f32 backend: (1e-4, 1e-4)
# Element loads: the CPU backends decode as gguf does, bit for bit; a device compiler may contract d*q + m
# into one fma, one rounding away
EXACT_LOADS = {"c", "llvm"}


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
def test_a_block_weight_matmul_is_one_qmatmul_and_matches_the_reference(dtype, epilogue, compile_on):
    backend = compile_on.backend
    rng = np.random.default_rng(11)
    n, k = 40, 512
    storage = random_blocks(dtype, (n, k), rng)
    graph = _linear_graph(dtype, storage, n, k, epilogue)
    runner = compile_on(graph)
    qmatmuls = [s for kern in runner.compiled.kernels.values() for s in kern.body if isinstance(s, QMatmul)]
    assert len(qmatmuls) == 1 and qmatmuls[0].weight_dtype is dtype
    assert all(b.dtype is not DType.F32 or b.elements != n * k for b in runner.program.buffers)   # never expanded
    w = dequantize(storage, dtype, (n, k))
    for rows in (1, 5):
        x = rng.standard_normal((2, rows, k)).astype(np.float32)
        feeds = {"x": x, "ids": np.arange(rows) % n}
        got, want = runner.run(feeds), run_graph(graph, feeds)
        if backend in EXACT_LOADS:
            np.testing.assert_array_equal(got["rows"], want["rows"])
        else:
            np.testing.assert_allclose(got["rows"], want["rows"], rtol=1e-6, atol=1e-6)
        if backend in QUANTIZES_ACTIVATIONS:
            bound = 6 * np.sqrt(k) * (np.abs(x).max() / 127 / np.sqrt(12)) * np.sqrt((w ** 2).mean())
            np.testing.assert_allclose(got["y"], want["y"], rtol=0, atol=bound)
        else:
            rtol, atol = PRODUCT_TOLERANCE.get(backend, (1e-4, 1e-4))
            np.testing.assert_allclose(got["y"], want["y"], rtol=rtol, atol=atol)
