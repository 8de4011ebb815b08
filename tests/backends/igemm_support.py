"""The model and the bound shared by the int8/bf16 Gemm tests of the C and LLVM backends.

`quantize="int8-dynamic"`: activations quantized per row, int8 weights per column; `precision="bf16"`:
bf16 weights and activations, f32 sums. The tolerance is f32 rounding of the sums, relative to
sum |a| * |b| (hand-derived: the integer sums are exact, the reference's f32 sums are off by at most
~k ulp of it, and both round the same quantized values).
"""
import functools

import numpy as np

from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.shapes import evaluate_shape
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.graph.passes.bf16 import bf16_matmuls
from dnet.graph.passes.dynamic_quant import quantize_dynamic

# (k, n) of each matmul: k below, at and past a group of 4 and the panel, n ragged against 16 and 32
SHAPES = [(1, 3), (3, 17), (4, 32), (7, 33), (64, 48), (130, 70)]


def model(seed: int = 0):
    """y_i = x_i @ W_i for SHAPES (x_i: (m, k), or (b, m, k) for the last), the first with bias + GELU, the
    second with a residual add: every matmul against a constant weight, m symbolic."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder()
    for i, (k, n) in enumerate(SHAPES):
        shape = ("b", "m", k) if i == len(SHAPES) - 1 else ("m", k)
        x = b.input(f"x{i}", TensorType(shape, DType.F32))
        w = b.const(f"w{i}", rng.standard_normal((n, k)).astype(np.float32))
        if i == 0:
            y = C.gelu(b, C.linear(b, x, w, b.const("bias", rng.standard_normal(n).astype(np.float32))))
        elif i == 1:
            y = b.elementwise(Op.ADD, C.linear(b, x, w), b.input("r", TensorType(("m", n), DType.F32)))
        else:
            y = C.linear(b, x, w)
        b.output(f"y{i}", y)
    return b.finish()


def smoothed_block_graph(hidden: int = 64):
    """quantize="int8-dynamic" of a post-norm block: a LayerNorm (one channel of its gain 30x the others) read
    by three projections and the residual, then an FFN (linear, GELU, linear): the norm's output smoothed into
    int8 Gemms, the FFN's second matmul in bf16 (`graph.passes.smooth`, `graph.passes.dynamic_quant`)."""
    rng = np.random.default_rng(0)
    b = GraphBuilder()

    def const(name, shape, scale=1.0):
        return b.const(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    x = b.input("x", TensorType(("m", hidden), DType.F32))
    gain = rng.uniform(0.5, 1.5, hidden).astype(np.float32)
    gain[7] = 30
    h = C.layer_norm(b, x, b.const("g", gain), const("beta", hidden, 0.5))
    qkv = [C.linear(b, h, const(f"w{i}", (hidden, hidden), 0.1)) for i in range(3)]
    up = C.gelu(b, C.linear(b, h, const("up", (4 * hidden, hidden), 0.1), const("bup", 4 * hidden)))
    down = C.linear(b, up, const("down", (hidden, 4 * hidden), 0.1))
    b.output("y", b.elementwise(Op.ADD, b.elementwise(Op.ADD, down, h), qkv[0]))
    b.output("k", qkv[1])
    b.output("v", qkv[2])
    graph = quantize_dynamic(b.finish(), min_elements=1)
    assert {"w0@smooth@int8", "up@smooth@int8", "down@bf16"} <= set(graph.weights)
    return graph


@functools.cache
def int8_graph():
    return quantize_dynamic(model(), min_elements=1)


@functools.cache
def bf16_graph():
    return bf16_matmuls(model(), min_elements=1)


def inputs(graph, rng, m: int, batch: int, offset: float) -> dict[str, np.ndarray]:
    out = {}
    for name, t in graph.input_types().items():
        shape = evaluate_shape(t.shape, {"m": m, "b": batch})
        # an offset moves some rows off zero, so zero offsets of both signs occur; one row all zeros
        x = (rng.standard_normal(shape) + offset * rng.standard_normal(shape[:-1] + (1,))).astype(np.float32)
        if m > 2:
            x[..., 1, :] = 0
        out[name] = x
    return out


def assert_matches_within_sum_rounding(graph, runner, feeds: dict[str, np.ndarray]) -> None:
    """`runner`'s outputs equal the numpy reference's to within f32 rounding of the sums."""
    want, got = run_graph(graph, feeds), runner.run(feeds)
    for i, (k, n) in enumerate(SHAPES):
        x = feeds[f"x{i}"]
        w = np.asarray(graph.weights.get(f"w{i}@int8", graph.weights.get(f"w{i}@bf16")), np.float32)
        magnitude = (np.abs(x) + np.abs(x).max(-1, keepdims=True)) @ np.abs(w).T * (np.abs(w).max() + 1)
        bound = 1e-5 * magnitude + 1e-6
        if i < 2:   # the epilogue: GELU's slope is at most 1.13; the residual add is exact
            bound = 1.2 * bound + 1e-5 * np.abs(want[f"y{i}"])
        assert got[f"y{i}"].shape == want[f"y{i}"].shape
        assert np.all(np.abs(got[f"y{i}"] - want[f"y{i}"]) <= bound), f"y{i} (k={k}, n={n})"


def crowded_rows_graph(k: int, n: int):
    """y = x @ w.T, weights integers with a column maximum of 127 (int8 scale exactly 1)."""
    w = np.random.default_rng(11).integers(-127, 128, (n, k)).astype(np.float32)
    w[:, 0] = 127.0
    b = GraphBuilder()
    b.output("y", C.linear(b, b.input("x", TensorType(("m", k), DType.F32)), b.const("w", w)))
    return quantize_dynamic(b.finish(), min_elements=1), w
