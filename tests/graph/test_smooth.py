"""Smoothing of normalised matmul inputs (`graph.passes.smooth`) and the choice of bf16 for matmuls after an
activation function (`graph.passes.dynamic_quant`), run by the numpy reference: the f32 function kept, the
scale derived by hand, the patterns recognised and those left alone, and the int8 error it removes."""
import numpy as np
import pytest

from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.errors import DnetError
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.graph.passes.dynamic_quant import quantize_dynamic, reads_activation_function
from dnet.graph.passes.smooth import smooth_matmul_inputs, smoothing_scale


def _const(b, name, rng, shape, scale=1.0):
    return b.const(name, (rng.standard_normal(shape) * scale).astype(np.float32))


def _block(rng, hidden=64, outlier=30.0, norm=C.layer_norm):
    """A post-norm transformer block's shape: norm (one outlier channel in its gain) read by three projections
    and by the residual add, then an FFN (linear, GELU, linear)."""
    b = GraphBuilder()
    x = b.input("x", TensorType(("m", hidden), DType.F32))
    gain = (rng.uniform(0.5, 1.5, hidden)).astype(np.float32)
    gain[7] = outlier
    if norm is C.layer_norm:
        h = C.layer_norm(b, x, b.const("g", gain), _const(b, "beta", rng, hidden, 0.5))
    else:
        h = C.rms_norm(b, x, b.const("g", gain))
    qkv = [C.linear(b, h, _const(b, f"w{i}", rng, (hidden, hidden), 0.1)) for i in range(3)]
    up = C.gelu(b, C.linear(b, h, _const(b, "up", rng, (4 * hidden, hidden), 0.1), _const(b, "bup", rng, 4 * hidden)))
    down = C.linear(b, up, _const(b, "down", rng, (hidden, 4 * hidden), 0.1))
    b.output("y", b.elementwise(Op.ADD, b.elementwise(Op.ADD, down, h), qkv[0]))
    b.output("k", qkv[1])
    b.output("v", qkv[2])
    return b.finish()


@pytest.mark.parametrize("norm", [C.layer_norm, C.rms_norm])
def test_smoothing_keeps_the_f32_function(rng, norm):
    """(x / s) @ (s W) = x @ W: before quantization the smoothed graph computes what the original does."""
    graph = _block(rng, norm=norm)
    smoothed = smooth_matmul_inputs(graph)
    assert {"w0@smooth", "w1@smooth", "w2@smooth", "up@smooth"} <= set(smoothed.weights)
    assert "down@smooth" not in smoothed.weights          # GELU's output has no bound from constants
    x = rng.standard_normal((9, 64)).astype(np.float32) * 3
    want, got = run_graph(graph, {"x": x}), run_graph(smoothed, {"x": x})
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5 * np.abs(want[name]).max())


def test_the_scale_by_hand():
    """s_j = reach_j^a / max_k |W_jk|^(1 - a): reach [4, 1, 0, 9], rows [1, 4, 2, 0], a = 1/2 -> [2, 1/2, 1, 1]
    (a channel with no range or no weight is left alone)."""
    np.testing.assert_allclose(smoothing_scale(np.array([4, 1, 0, 9]), np.array([1, 4, 2, 0]), 0.5),
                               [2, 0.5, 1, 1], rtol=1e-7)
    np.testing.assert_allclose(smoothing_scale(np.array([8.0]), np.array([2.0]), 0.75), [8 ** 0.75 / 2 ** 0.25])


def test_a_layer_norm_range_by_hand():
    """LayerNorm gain [1, 1/4], bias [0, 2]: reach 4 |g| + |b| = [4, 3]; W's rows (input channels) reach
    max |W| = [1, 3]; a = 1/2 gives s = [sqrt(4 / 1), sqrt(3 / 3)] = [2, 1]: W's first row doubles, and the
    matmul reads x * [1/2, 1]."""
    b = GraphBuilder()
    x = b.input("x", TensorType(("m", 2), DType.F32))
    h = C.layer_norm(b, x, b.const("g", np.array([1, 0.25], np.float32)), b.const("b", np.array([0, 2], np.float32)))
    w = np.array([[1, -0.5, 0.25], [3, 1, -2]], np.float32)
    b.output("y", b.matmul(h, b.const("w", w)))
    graph = smooth_matmul_inputs(b.finish(), alpha=0.5)
    np.testing.assert_allclose(graph.weights["w@smooth"], w * np.array([[2], [1]], np.float32), rtol=1e-6)
    inverse = [v for k, v in graph.weights.items() if k.endswith(tuple(f"@smooth{i}" for i in range(99)))]
    assert len(inverse) == 1
    np.testing.assert_allclose(inverse[0], [0.5, 1], rtol=1e-6)


def test_inputs_without_a_bound_are_left_alone(rng):
    """A graph input, and a weight read beside two different activations (whose rows cannot take two scales),
    are not smoothed: the graph comes back as it was."""
    b = GraphBuilder()
    x = b.input("x", TensorType(("m", 32), DType.F32))
    h = C.layer_norm(b, x, _const(b, "g", rng, 32), _const(b, "beta", rng, 32))
    shared = _const(b, "w", rng, (32, 32))
    b.output("a", b.matmul(x, _const(b, "raw", rng, (32, 32))))
    b.output("b", b.matmul(h, shared))
    b.output("c", b.matmul(b.unary(Op.TANH, h), shared))
    graph = b.finish()
    assert smooth_matmul_inputs(graph) is graph


def test_matmuls_after_an_activation_function_are_recognised(rng):
    """GELU, SiLU and ReLU outputs of a matmul read by another: yes; the first matmul (on a norm), a matmul on
    a reshaped matmul output (attention's), and one after an affine step only (bias, scale): no."""
    b = GraphBuilder()
    x = b.input("x", TensorType(("m", 16), DType.F32))
    h = C.layer_norm(b, x, _const(b, "g", rng, 16), _const(b, "beta", rng, 16))
    first = C.linear(b, h, _const(b, "w1", rng, (16, 16)), _const(b, "b1", rng, 16))
    outs = {"gelu": C.gelu(b, first), "silu": C.silu(b, first), "relu": C.relu(b, first),
            "affine": b.elementwise(Op.MUL, b.elementwise(Op.ADD, first, 1.0), 2.0),
            "reshaped": b.reshape(b.reshape(first, (Sym("m"), 4, 4)), (Sym("m"), 16))}
    for name, value in outs.items():
        b.output(name, b.matmul(value, _const(b, f"w_{name}", rng, (16, 16))))
    graph = b.finish()
    got = {graph.output_names[i]: reads_activation_function(graph, graph.nodes[o])
           for i, o in enumerate(graph.outputs)}
    assert got == {"gelu": True, "silu": True, "relu": True, "affine": False, "reshaped": False}
    matmuls = [n for n in graph.nodes if n.op is Op.MATMUL]
    assert not reads_activation_function(graph, matmuls[0])


def test_int8_dynamic_runs_the_ffn_down_projection_in_bf16(rng):
    """The projections of the norm's output get int8 weights; the FFN's second matmul bf16 ones."""
    graph = quantize_dynamic(_block(rng), min_elements=1)
    assert {"w0@smooth@int8", "up@smooth@int8", "down@bf16"} <= set(graph.weights)
    assert graph.weights["down@bf16"].dtype == DType.BF16.np


@pytest.mark.parametrize("mode", ["f32", "int8"])
def test_a_cpu_without_bf16_keeps_the_ffn_down_projection_f32_or_plain_int8(rng, mode):
    """after_activations="f32" leaves that weight as it was (the f32 graph's own array); "int8" quantizes
    it like the others; the rest is int8 either way."""
    block = _block(rng)
    graph = quantize_dynamic(block, min_elements=1, after_activations=mode)
    assert {"w0@smooth@int8", "up@smooth@int8"} <= set(graph.weights)
    assert not any(name.endswith("@bf16") for name in graph.weights)
    if mode == "f32":
        np.testing.assert_array_equal(graph.weights["down"], block.weights["down"])
    else:
        assert "down@int8" in graph.weights and "down" not in graph.weights
    with pytest.raises(DnetError, match="after_activations"):
        quantize_dynamic(block, after_activations="fp8")


@pytest.mark.parametrize("isa, down", [({"avx512f", "avx512_bf16"}, "down@bf16"), ({"avx2", "fma"}, "down")])
def test_compile_int8_dynamic_asks_the_host_for_bf16_units(rng, monkeypatch, isa, down):
    import dataclasses

    import dnet.api
    import dnet.hardware

    host = dataclasses.replace(dnet.hardware.detect(), isa=frozenset(isa))
    monkeypatch.setattr(dnet.hardware, "detect", lambda: host)
    assert down in dnet.api._quantized(_block(rng), "int8-dynamic").weights


def test_smoothing_removes_most_of_an_outlier_channels_error(rng):
    """One norm channel 30x the others sets every row's int8 step; smoothed, the int8 projections of the
    norm's output come much closer to f32 (oracle: the f32 graph on the numpy reference)."""
    graph = _block(rng)
    x = rng.standard_normal((32, 64)).astype(np.float32)
    want = run_graph(graph, {"x": x})["k"]

    def error(g) -> float:
        return float(np.abs(run_graph(g, {"x": x})["k"] - want).max() / np.abs(want).max())

    plain = error(quantize_dynamic(graph, min_elements=1, smooth=False))
    smoothed = error(quantize_dynamic(graph, min_elements=1))
    assert smoothed < plain / 2, (plain, smoothed)   # measured: 0.0126 -> 0.0049
