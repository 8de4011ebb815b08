"""The C backend's direct convolutions (`backends/c/conv.py`) against the numpy reference.

One graph holds pools (max; average dividing by the window or by its part inside the image; one over a
transposed view of the input) and convolutions of every kind the kernel distinguishes: 3x3 with a bias and ReLU
epilogue and a ragged number of output channels (13: a full and a partial row sliver), strides (2, 3)
with dilation and asymmetric padding, depthwise (one output channel a group, the wide tile) with
stride 2, depthwise with a channel multiplier of 2, a grouped 1x1 with stride 2, a 7x7 stem, a
pointwise 1x1. Its batch, height and width are symbolic, so one library per forced ISA path serves
every example hypothesis draws (image sizes that leave ragged tiles and bands, batch, thread count).
Each path the host has is forced by the macros of `backends/c/conv.py`, and the library must say it
computed with it (`dnet_conv_path`), so a test cannot pass on a path it did not force.
"""
import ctypes
import re
import dataclasses
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import dnet
import dnet.backends.c.backend  # noqa: F401  (registers the backend, which imports its compiler lookup)
from dnet.backends.c.compiler import find_compiler
from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.hardware import cpu_flags, detect
from dnet.kernel.ir import Gemm
from dnet.kernel.schedule import schedule
from dnet.kernel.target import CpuTarget

FLAGS = cpu_flags()
# forced path -> (compiler flags, the path the library must report)
PATHS = {"portable": (("-DDN_CONV_PORTABLE",), "portable")}
if {"avx2", "fma"} <= FLAGS:
    PATHS["avx2"] = (("-DDN_CONV_NO_AVX512",), "avx2")
if "avx512f" in FLAGS:
    PATHS["avx512"] = ((), "avx512")

C = 6
# name -> (output channels, kernel, stride, padding (top, left, bottom, right), dilation, groups, epilogue)
CONVS = {
    "c3x3": (13, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, "bias_relu"),
    "strided": (20, (5, 3), (2, 3), (2, 0, 1, 1), (1, 2), 1, ""),
    "depthwise": (6, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 6, "bias_relu"),
    "multiplier": (12, (3, 3), (1, 1), (0, 1, 2, 1), (2, 1), 6, ""),
    "grouped1x1": (16, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 2, "residual"),
    "stem": (4, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1, ""),
    "pointwise": (30, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, "bias_relu"),
}

# name -> (op, attributes, kernel, stride, padding): vectorised pools (backends/c/pool.py)
POOLS = {
    "maxpool": (Op.MAXPOOL2D, {}, (3, 3), (2, 2), (1, 1, 1, 1)),
    "avg_inside": (Op.AVGPOOL2D, {"count_include_pad": False}, (2, 3), (1, 2), (0, 1, 1, 1)),
    "avg_pad": (Op.AVGPOOL2D, {"count_include_pad": True}, (3, 3), (1, 1), (1, 1, 1, 1)),
    "transposed": (Op.MAXPOOL2D, {}, (2, 2), (2, 2), (0, 0, 0, 0)),
}


def conv_graph():
    rng = np.random.default_rng(0)
    g = GraphBuilder()
    x = g.input("x", TensorType(("n", C, "h", "w"), DType.F32))
    for name, (o, k, stride, padding, dilation, groups, epilogue) in CONVS.items():
        w = g.const(f"{name}_w", rng.standard_normal((o, C // groups, *k)).astype(np.float32))
        y = g.node(Op.CONV2D, [x, w], stride=stride, padding=padding, dilation=dilation, groups=groups)
        if epilogue == "bias_relu":
            bias = g.const(f"{name}_b", rng.standard_normal((1, o, 1, 1)).astype(np.float32))
            y = g.elementwise(Op.MAX, g.elementwise(Op.ADD, y, bias), 0.0)
        elif epilogue == "residual":   # a value of the same shape, added as the tile is stored
            y = g.elementwise(Op.ADD, y, g.elementwise(Op.MUL, y, y))
        g.output(name, y)
    for name, (op, extra, kernel, stride, padding) in POOLS.items():
        source = g.permute(x, (0, 1, 3, 2)) if name == "transposed" else x   # a strided view of the input
        g.output(name, g.node(op, [source], kernel=kernel, stride=stride, padding=padding, **extra))
    return g.finish()


GRAPH = conv_graph()


def _compile(graph, flags: tuple[str, ...], cache, monkeypatch):
    """The C backend built with the host's compiler flags plus `flags` (wherever it looks its compiler up)."""
    compiler = find_compiler()
    forced = dataclasses.replace(compiler, flags=compiler.flags + flags)
    for name, module in list(sys.modules.items()):
        if name.startswith("dnet.backends.c.") and getattr(module, "find_compiler", None) is find_compiler:
            monkeypatch.setattr(module, "find_compiler", lambda: forced)
    return dnet.compile(graph, target="c", cache_dir=cache)


_BUILT: dict = {}


def _exe(path, tmp_path_factory, monkeypatch):
    if path not in _BUILT:
        _BUILT[path] = _compile(GRAPH, PATHS[path][0], tmp_path_factory.mktemp(f"conv-{path}"), monkeypatch)
    return _BUILT[path]


def _path(exe) -> str:
    fn = ctypes.CDLL(str(exe.runner.module.library)).dnet_conv_path
    fn.restype = ctypes.c_char_p
    return fn().decode()


def test_every_convolution_is_a_direct_convolution(tmp_path):
    """Each convolution, depthwise ones included, is one kernel calling the direct micro-kernels."""
    exe = dnet.compile(conv_graph(), target="c", cache_dir=tmp_path)
    gemms = [k.body[0] for k in exe.runner.compiled.kernels.values() if isinstance(k.body[0], Gemm)]
    assert len(gemms) == len(CONVS) and all(g.b.im2col is not None for g in gemms)
    for taps in (9, 15, 1, 49):
        assert re.search(rf"dn_conv_t{taps}[pd]\(wide, g_C", exe.runner.source)
    assert not re.search(r"dn_pack_im2col_\w+\(g_K", exe.runner.source) and "dn_parallel" in exe.runner.source
    pools = [k for k in exe.runner.compiled.kernels.values() if "pool" in k.meta]
    assert len(pools) == len(POOLS)   # each with its geometry, rendered from phase planes
    assert exe.runner.source.count("-INFINITY);") >= 2


def test_depthwise_stays_a_loop_nest_where_the_gemm_gathers_im2col():
    """The default CPU target (the LLVM backend's) keeps one-row groups out of the Gemm."""
    graph = conv_graph()
    sched = schedule(graph, CpuTarget(detect()))
    convs = [k for k in sched.kernels.values() if isinstance(k.body[0], Gemm)]
    assert len(convs) == len(CONVS) - 2   # depthwise and multiplier (2 rows a group) are loop nests


@pytest.mark.parametrize("path", list(PATHS))
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 3), h=st.integers(4, 37), w=st.integers(4, 41), threads=st.sampled_from([1, 2, 3]),
       seed=st.integers(0, 99))
def test_direct_convolutions_match_the_reference(path, tmp_path_factory, monkeypatch, n, h, w, threads, seed):
    exe = _exe(path, tmp_path_factory, monkeypatch)
    assert _path(exe) == PATHS[path][1]
    exe.runner.module.set_threads(threads)
    x = np.random.default_rng(seed).standard_normal((n, C, h, w)).astype(np.float32)
    got, want = exe.run({"x": x}), run_graph(GRAPH, {"x": x})
    for name in [*CONVS, *POOLS]:
        assert got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4, err_msg=f"{name} on {path}")


def test_forced_paths_agree(tmp_path_factory, monkeypatch):
    """The paths sum the same products in different orders: equal to f32 rounding."""
    x = np.random.default_rng(7).standard_normal((2, C, 23, 19)).astype(np.float32)
    results = [_exe(p, tmp_path_factory, monkeypatch).run({"x": x}) for p in PATHS]
    for other in results[1:]:
        for name, y in results[0].items():
            np.testing.assert_allclose(other[name], y, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_small_images_read_the_weights_in_place(tmp_path, threads):
    """Below `PACK_MIN_PIXELS` output pixels (a 7 x 7 image), the slivers' weights are read where they lie,
    rows at the weight's stride (20 output channels: a full sliver and a partial one)."""
    rng = np.random.default_rng(threads)
    g = GraphBuilder()
    x = g.input("x", TensorType(("n", 24, 7, 7), DType.F32))
    w = g.const("w", rng.standard_normal((20, 24, 3, 3)).astype(np.float32))
    y = g.node(Op.CONV2D, [x, w], stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1)
    g.output("y", g.elementwise(Op.MAX, y, 0.0))
    graph = g.finish()
    exe = dnet.compile(graph, target="c", cache_dir=tmp_path)
    assert "dn_conv_t9d(wide, g_C" in exe.runner.source
    exe.runner.module.set_threads(threads)
    feeds = {"x": rng.standard_normal((2, 24, 7, 7)).astype(np.float32)}
    np.testing.assert_allclose(exe.run(feeds)["y"], run_graph(graph, feeds)["y"], rtol=1e-4, atol=1e-4)


# name -> (op, attributes, kernel, stride, padding): stride-2 pools, whose rows the vectorised copy takes
WIDE_POOLS = {
    "max3s2": (Op.MAXPOOL2D, {}, (3, 3), (2, 2), (1, 1, 1, 1)),
    "max2s2": (Op.MAXPOOL2D, {}, (2, 2), (2, 2), (0, 0, 0, 0)),
    "avg3s2": (Op.AVGPOOL2D, {"count_include_pad": False}, (3, 3), (2, 2), (1, 0, 1, 2)),
    "transposed": (Op.MAXPOOL2D, {}, (3, 3), (2, 2), (1, 1, 1, 1)),
}


def wide_pool_graph():
    g = GraphBuilder()
    x = g.input("x", TensorType(("n", 3, "h", "w"), DType.F32))
    for name, (op, extra, kernel, stride, padding) in WIDE_POOLS.items():
        source = g.permute(x, (0, 1, 3, 2)) if name == "transposed" else x   # columns at a stride: the general copy
        g.output(name, g.node(op, [source], kernel=kernel, stride=stride, padding=padding, **extra))
    return g.finish()


WIDE_GRAPH = wide_pool_graph()


@pytest.mark.parametrize("path", list(PATHS))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 2), h=st.integers(2, 19), w=st.integers(2, 150), threads=st.sampled_from([1, 2]),
       seed=st.integers(0, 99))
def test_stride_2_pools_over_wide_rows_match_the_reference(path, tmp_path_factory, monkeypatch, n, h, w, threads, seed):
    """Rows long enough for the vectorised stride-2 copy (`dn_conv_row_even`: two vectors, a shuffle) on every
    path, ragged at both ends, and output rows both shorter and longer than a vector (the last vector of a row
    overlapping the one before). Max pools are exact; an average sums in the loop nest's order."""
    key = f"wide-{path}"
    if key not in _BUILT:
        _BUILT[key] = _compile(WIDE_GRAPH, PATHS[path][0], tmp_path_factory.mktemp(key), monkeypatch)
    exe = _BUILT[key]
    assert _path(exe) == PATHS[path][1]
    assert exe.runner.source.count("dn_conv_row_even(g_dst") == 3 * 4 and "dn_conv_row(g_dst" in exe.runner.source
    exe.runner.module.set_threads(threads)
    x = np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype(np.float32)
    got, want = exe.run({"x": x}), run_graph(WIDE_GRAPH, {"x": x})
    for name in WIDE_POOLS:
        if name.startswith("avg"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=f"{name} on {path}")
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name} on {path}")


# name -> (output channels, kernel, stride, padding): convolutions whose epilogue adds a residual input
RESIDUAL_CONVS = {
    "down1x1": (13, (1, 1), (2, 2), (0, 0, 0, 0)),
    "c3x3s2": (20, (3, 3), (2, 2), (1, 1, 1, 1)),
}


def residual_graph(h: int, w: int):
    """Each convolution + bias + a residual (a graph input of its output's shape) + ReLU: the epilogue reads a
    value per output pixel, which the kernel prefetches a tile ahead of its store."""
    rng = np.random.default_rng(1)
    g = GraphBuilder()
    x = g.input("x", TensorType(("n", C, h, w), DType.F32))
    for name, (o, k, stride, padding) in RESIDUAL_CONVS.items():
        oh = (h + padding[0] + padding[2] - k[0]) // stride[0] + 1
        ow = (w + padding[1] + padding[3] - k[1]) // stride[1] + 1
        res = g.input(f"{name}_r", TensorType(("n", o, oh, ow), DType.F32))
        wt = g.const(f"{name}_w", rng.standard_normal((o, C, *k)).astype(np.float32))
        y = g.node(Op.CONV2D, [x, wt], stride=stride, padding=padding, dilation=(1, 1), groups=1)
        y = g.elementwise(Op.ADD, y, g.const(f"{name}_b", rng.standard_normal((1, o, 1, 1)).astype(np.float32)))
        g.output(name, g.elementwise(Op.MAX, g.elementwise(Op.ADD, y, res), 0.0))
    return g.finish()


@pytest.mark.parametrize("path", list(PATHS))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 3), size=st.sampled_from([(9, 11), (30, 23), (57, 64)]), threads=st.sampled_from([1, 2]),
       seed=st.integers(0, 99))
def test_residual_epilogues_match_the_reference(path, tmp_path_factory, monkeypatch, n, size, threads, seed):
    key = f"residual-{path}-{size}"
    graph = residual_graph(*size)
    if key not in _BUILT:
        _BUILT[key] = _compile(graph, PATHS[path][0], tmp_path_factory.mktemp(key), monkeypatch)
    exe = _BUILT[key]
    assert _path(exe) == PATHS[path][1]
    assert exe.runner.source.count("__builtin_prefetch(&") == 3 * len(RESIDUAL_CONVS)   # the residual's tile lines
    exe.runner.module.set_threads(threads)
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.standard_normal((n, C, *size)).astype(np.float32)}
    for name, (o, k, stride, padding) in RESIDUAL_CONVS.items():
        oh = (size[0] + padding[0] + padding[2] - k[0]) // stride[0] + 1
        ow = (size[1] + padding[1] + padding[3] - k[1]) // stride[1] + 1
        feeds[f"{name}_r"] = rng.standard_normal((n, o, oh, ow)).astype(np.float32)
    got, want = exe.run(feeds), run_graph(graph, feeds)
    for name in RESIDUAL_CONVS:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4, err_msg=f"{name} on {path}")
