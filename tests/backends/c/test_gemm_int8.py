"""int8 weights in the C backend: kept packed as int8, widened beside the micro-kernel, equal to the
reference backend running the same quantized graph."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnet.api import Executable, load_artifact, save_artifact
from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.graph.passes.quantize import quantize_weights
from dnet.kernel.ir import Gemm
from dnet.program.instructions import TEMP

from backend_support import assert_matches_reference


def _mlp(rng, k: int, hidden: int, n: int):
    """An int8 embedding table's rows, then x @ w1.T + bias, GELU, @ w2 (direct), on 3-D activations:
    both weight layouts, an epilogue, batch folding, and a gather that widens only its rows."""
    b = GraphBuilder()
    ids = b.input("ids", TensorType(("batch", "seq"), DType.I64))
    table = b.const("table", rng.standard_normal((50, k)).astype(np.float32))
    x = b.node(Op.GATHER, [table, ids], axis=0)
    w1 = b.const("w1", (rng.standard_normal((hidden, k)) / np.sqrt(k)).astype(np.float32))
    bias = b.const("bias", rng.standard_normal((hidden,)).astype(np.float32))
    w2 = b.const("w2", (rng.standard_normal((hidden, n)) / np.sqrt(hidden)).astype(np.float32))
    b.output("y", b.matmul(C.gelu(b, C.linear(b, x, w1, bias)), w2))
    return quantize_weights(b.finish(), min_elements=1)


@pytest.fixture(scope="module")
def shapes(compile_c):
    """Ragged panels (hidden 45, n 70) and several k blocks (k 700 > 1.5 kc), one thread and two."""
    rng = np.random.default_rng(0)
    graph = _mlp(rng, 700, 45, 70)
    return graph, compile_c(graph, threads=1), compile_c(graph, threads=2)


@settings(max_examples=8, deadline=None)
@given(batch=st.integers(1, 3), seq=st.integers(1, 40), seed=st.integers(0, 1000))
def test_int8_gemm_matches_the_reference(shapes, batch, seq, seed):
    graph, one, two = shapes
    ids = np.random.default_rng(seed).integers(0, 50, (batch, seq))
    for runner in (one, two):
        assert_matches_reference(runner, graph, {"ids": ids}, rtol=1e-4, atol=1e-4)


def test_int8_weights_stay_int8_in_memory(shapes):
    """Both matmuls run from packed int8 panels; no f32 copy of a weight is ever made."""
    graph, runner, _ = shapes
    gemms = [s for k in runner.compiled.kernels.values() for s in k.body if isinstance(s, Gemm)]
    assert len(gemms) == 2 and all(g.b.dtype is DType.I8 and g.b.scale for g in gemms)
    program = runner.compiled.program
    weights = [program.buffers[i] for i in runner.compiled.weights]
    assert [b.dtype for b in weights if len(b.shape) == 3] == [DType.I8, DType.I8]   # the packed panels
    assert not any(b.kind == TEMP and b.shape in ((45, 700), (700, 45), (45, 70), (50, 700)) for b in program.buffers)
    assert [b.dtype for b in weights if b.shape == (50, 700)] == [DType.I8]   # the table, as it was stored


def test_int8_artifacts_load_and_agree(shapes, tmp_path):
    graph, runner, _ = shapes
    save_artifact(Executable(graph, "c", runner), tmp_path / "art")
    ids = np.random.default_rng(3).integers(0, 50, (2, 5))
    np.testing.assert_array_equal(load_artifact(tmp_path / "art").run({"ids": ids})["y"], runner.run({"ids": ids})["y"])
