"""Shared checks for the compiled backends' tests (C, LLVM, OpenCL, and any backend registered later)."""
import numpy as np

from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder


def assert_matches_reference(runner, graph, feeds, rtol=1e-5, atol=1e-6, atol_of=None):
    """The backend's outputs equal the numpy reference backend's (the oracle).

    `atol_of` gives some outputs their own absolute tolerance (a long sum's rounding grows with its terms).
    """
    got = runner.run(feeds)
    want = run_graph(graph, feeds)
    assert set(got) == set(want)
    for name in graph.output_names:
        g, w = got[name], want[name]
        assert g.dtype == w.dtype and g.shape == w.shape, name
        r, a = rtol, (atol_of or {}).get(name, atol)
        if w.dtype.itemsize == 2:   # f16/bf16 results: one rounding step (summation order) apart
            r, a = max(rtol, 4e-3 if w.dtype == np.float16 else 3e-2), max(atol, 1e-3)
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(g, w, err_msg=name)
        else:
            np.testing.assert_allclose(g.astype(np.float32), w.astype(np.float32), rtol=r, atol=a, err_msg=name)


def matmul_graph():
    """Plain, transposed b, batched with a shared b, both operands views of one input, and an f16 matmul."""
    M, K, N, B = Sym("m"), Sym("k"), Sym("n"), Sym("b")
    g = GraphBuilder()
    a = g.input("a", TensorType((M, K), DType.F32))
    bt = g.input("bt", TensorType((N, K), DType.F32))
    x = g.input("x", TensorType((B, M, K), DType.F32))
    h = g.input("h", TensorType((M, K), DType.F16))
    g.output("a_bt", g.matmul(a, g.transpose(bt)))
    g.output("batched", g.matmul(x, g.transpose(bt)))                      # b shared by every batch item
    g.output("x_xt", g.matmul(x, g.transpose(x)))                          # both operands strided views
    g.output("half", g.matmul(h, g.transpose(h)))                          # f16: the generic loop nest
    return g.finish()


def mlp(rng, k: int, hidden: int, n: int):
    """x @ w1.T + bias, GELU, @ w2 on 3-D activations: constant weights (packed panels), an epilogue."""
    b = GraphBuilder()
    x = b.input("x", TensorType(("batch", "seq", k), DType.F32))
    w1 = b.const("w1", (rng.standard_normal((hidden, k)) / np.sqrt(k)).astype(np.float32))
    bias = b.const("bias", rng.standard_normal((hidden,)).astype(np.float32))
    w2 = b.const("w2", (rng.standard_normal((hidden, n)) / np.sqrt(hidden)).astype(np.float32))
    b.output("y", b.matmul(C.gelu(b, C.linear(b, x, w1, bias)), w2))
    return b.finish()
