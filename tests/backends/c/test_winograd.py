"""Winograd convolutions F(4x4, 3x3) and F(2x2, 3x3) on the C backend (`backends/c/winograd.py`) against the
numpy reference.

Tolerance, derived from the magnitudes: |dnet - reference| <= k * 2^-23 * S elementwise, S the sum of
|w| |x| over each output's window (the convolution of |x| by |w|, in float64 here). A direct f32 sum errs
by a few units of 2^-23 S; Winograd adds the transforms' rounding, scaled by their constants (up to 8 in
F(4, 3)'s A, 5 in its B): k = 128 for F(4, 3), 32 for F(2, 3), where 21 and 2 were the worst measured
(64 channels, random normal data). A tile or channel read wrongly errs by about S itself.

The input's batch and image size are symbolic, so one library per (m, host tile) serves every example
hypothesis draws: ragged tiles at the right and bottom edges, images smaller than a tile, panels whose tiles
come from several images, batch and thread counts. Each vector width the Gemm's micro-kernel is built for is forced by
compiling for another host's tile (as `test_gemm.py` does): AVX-512's 12 x 32, AVX2's 6 x 16, NEON's 12 x 8.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.errors import BackendError
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.hardware import Host, detect
from dnet.kernel.ir import Gemm

HOSTS = {
    "this": detect(),
    "avx2": Host("x86_64", "avx2 test", 4, frozenset({"avx2", "fma"}), l1d=32 * 1024, l2=1 << 20),
    "neon-like": Host("aarch64", "neon test", 4, frozenset({"neon", "asimd"}), l1d=64 * 1024, l2=1 << 19),
}
BOUND = {4: 128, 2: 32}
# name -> (output channels, padding (top, left, bottom, right), epilogue)
CONVS = {
    "bias_relu": (13, (1, 1, 1, 1), "bias_relu"),   # 13 rows: a full sliver and a partial one (mr 12, 6)
    "residual": (8, (1, 1, 1, 1), "residual"),     # + another input at the output's index, then ReLU
    "asymmetric": (8, (0, 1, 2, 1), ""),
    "valid": (20, (0, 0, 0, 0), ""),
}
C = 7


def conv_graph(c_in: int = C, convs: dict = CONVS, seed: int = 0):
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    x = g.input("x", TensorType(("n", c_in, "h", "w"), DType.F32))
    for name, (o, padding, epilogue) in convs.items():
        w = g.const(f"{name}_w", rng.standard_normal((o, c_in, 3, 3)).astype(np.float32))
        y = g.node(Op.CONV2D, [x, w], stride=(1, 1), padding=padding, dilation=(1, 1), groups=1)
        if epilogue == "bias_relu":
            bias = g.const(f"{name}_b", rng.standard_normal((1, o, 1, 1)).astype(np.float32))
            y = g.elementwise(Op.MAX, g.elementwise(Op.ADD, y, bias), 0.0)
        elif epilogue == "residual":   # ResNet's block ending: relu(conv + skip)
            skip = g.input("skip", TensorType(("n", o, "h", "w"), DType.F32))
            y = g.elementwise(Op.MAX, g.elementwise(Op.ADD, y, skip), 0.0)
        g.output(name, y)
    return g.finish()


def magnitude(graph, name: str, x: np.ndarray) -> np.ndarray:
    """S: the convolution of |x| by |w| (float64), each output's sum of |w| |x| (the padding read off the graph)."""
    w = np.abs(graph.weights[f"{name}_w"]).astype(np.float64)
    conv = next(n for n in graph.nodes if n.op is Op.CONV2D
                and graph.nodes[n.inputs[1]].attrs.get("name") == f"{name}_w")
    top, left, bottom, right = conv.attrs["padding"]
    xp = np.pad(np.abs(x).astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))   # n, c, oh, ow, 3, 3
    return np.einsum("ncijyz,ocyz->noij", windows, w, optimize=True)


def feeds(graph, x: np.ndarray, seed: int) -> dict:
    out = {"x": x}
    if "skip" in graph.input_names:
        n, _, h, w = x.shape
        out["skip"] = np.random.default_rng(seed).standard_normal((n, CONVS["residual"][0], h, w)).astype(np.float32)
    return out


def assert_close(graph, got: dict, inputs: dict, m: int) -> None:
    want = run_graph(graph, inputs)
    for name in want:
        assert got[name].shape == want[name].shape
        s = magnitude(graph, name, inputs["x"])
        if name == "residual":   # the sum with skip rounds once more
            s = s + np.abs(inputs["skip"])
        err = np.abs(got[name].astype(np.float64) - want[name])
        bound = BOUND[m] * 2.0 ** -23 * s + 1e-30
        worst = float(np.max(err / bound)) if err.size else 0.0
        assert worst <= 1, f"{name}: error {worst:.2f} x the bound (F({m}, 3))"


_BUILT: dict = {}


GRAPH = conv_graph()


def _exe(compile_c, m: int, host: str, monkeypatch):
    key = (m, host)
    if key not in _BUILT:
        monkeypatch.setenv("DNET_WINOGRAD", str(m))
        _BUILT[key] = compile_c(GRAPH, host=HOSTS[host])
    return _BUILT[key]


def winograd_tiles(runner) -> list[int]:
    gemms = [s for k in runner.compiled.kernels.values() for s in k.body if isinstance(s, Gemm)]
    return sorted(s.b.im2col.winograd for s in gemms)


@pytest.mark.parametrize("m", [4, 2])
def test_every_3x3_stride_1_convolution_is_winograd_when_forced(compile_c, monkeypatch, m):
    """Forced, every such convolution is a Winograd kernel with no direct fallback in it."""
    runner = _exe(compile_c, m, "this", monkeypatch)
    assert winograd_tiles(runner) == [m] * len(CONVS)
    assert runner.source.count("dn_wino_gather(g_blocks") == len(CONVS) and "dn_conv_t9" not in runner.source


@pytest.mark.parametrize("host", sorted(HOSTS))
@pytest.mark.parametrize("m", [4, 2])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 3), h=st.integers(3, 30), w=st.integers(3, 30), threads=st.sampled_from([1, 2, 3]),
       seed=st.integers(0, 99))
def test_winograd_convolutions_match_the_reference(compile_c, monkeypatch, host, m, n, h, w, threads, seed):
    runner = _exe(compile_c, m, host, monkeypatch)
    runner.module.set_threads(threads)
    inputs = feeds(GRAPH, np.random.default_rng(seed).standard_normal((n, C, h, w)).astype(np.float32), seed)
    assert_close(GRAPH, runner.run(inputs), inputs, m)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(c_in=st.integers(1, 150), c_out=st.integers(1, 40), m=st.sampled_from([2, 4]), n=st.integers(1, 9),
       size=st.integers(3, 20), threads=st.sampled_from([1, 2]), padding=st.tuples(*[st.integers(0, 2)] * 4))
def test_channel_counts_and_batches(compile_c, monkeypatch, c_in, c_out, m, n, size, threads, padding):
    """Channel blocks (128 a block: 150 is a full and a ragged one), output slivers, paddings of 0-2 a side,
    and batches whose tiles share panels across images."""
    monkeypatch.setenv("DNET_WINOGRAD", str(m))
    graph = conv_graph(c_in, {"bias_relu": (c_out, padding, "bias_relu")}, seed=c_in)
    runner = compile_c(graph, threads=threads)
    assert winograd_tiles(runner) == [m]
    inputs = {"x": np.random.default_rng(size).standard_normal((n, c_in, size, size + 1)).astype(np.float32)}
    assert_close(graph, runner.run(inputs), inputs, m)


def test_off_keeps_the_direct_convolution(compile_c, monkeypatch):
    monkeypatch.setenv("DNET_WINOGRAD", "off")
    runner = compile_c(conv_graph())
    assert winograd_tiles(runner) == [0] * len(CONVS) and "dn_wino" not in runner.source


def test_an_unknown_mode_is_a_one_line_error(compile_c, monkeypatch):
    monkeypatch.setenv("DNET_WINOGRAD", "fastest")
    with pytest.raises(BackendError, match="DNET_WINOGRAD='fastest' is not a Winograd mode"):
        compile_c(conv_graph())


@pytest.mark.parametrize("threads", [1, 2])
def test_auto_convolves_directly_when_a_batch_has_too_few_tiles(compile_c, monkeypatch, threads):
    """Under "auto" (32 channels or more) the kernel keeps the filters as they are too: a batch with fewer
    tiles than one panel (nr) runs the direct convolution, more runs Winograd F(4, 3); both as the reference."""
    monkeypatch.delenv("DNET_WINOGRAD", raising=False)
    graph = conv_graph(40, {"bias_relu": (36, (1, 1, 1, 1), "bias_relu")}, seed=3)
    runner = compile_c(graph, threads=threads)
    assert winograd_tiles(runner) == [4]
    assert "too few tiles to fill one panel" in runner.source and "dn_conv_t9" in runner.source
    rng = np.random.default_rng(threads)
    for n, size in ((1, 5), (2, 7), (3, 16), (1, 30)):   # 4 and 8 tiles (direct); 48 and 64 (Winograd)
        inputs = {"x": rng.standard_normal((n, 40, size, size)).astype(np.float32)}
        assert_close(graph, runner.run(inputs), inputs, 4)


def test_a_saved_artefact_keeps_the_transformed_filters(monkeypatch, tmp_path):
    """The packed transformed filters travel with the artefact: loaded without a compiler, the same results."""
    import dnet
    from dnet.api import load_artifact, save_artifact
    from dnet.backends.c import device

    monkeypatch.setenv("DNET_WINOGRAD", "auto")
    graph = conv_graph(40, {"bias_relu": (36, (1, 1, 1, 1), "bias_relu")}, seed=5)
    exe = dnet.compile(graph, target="c")
    assert winograd_tiles(exe.runner) == [4]
    save_artifact(exe, tmp_path / "art")
    monkeypatch.setattr(device, "find_compiler", lambda: (_ for _ in ()).throw(AssertionError("compiled")))
    loaded = load_artifact(tmp_path / "art")
    for n, size in ((1, 6), (2, 17)):   # the direct fallback and Winograd
        inputs = {"x": np.random.default_rng(n).standard_normal((n, 40, size, size)).astype(np.float32)}
        np.testing.assert_array_equal(loaded.run(inputs)["bias_relu"], exe.run(inputs)["bias_relu"])
        assert_close(graph, loaded.run(inputs), inputs, 4)
