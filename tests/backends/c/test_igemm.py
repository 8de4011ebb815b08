"""The int8 and bf16 Gemms of the C backend (`backends/c/igemm.py`) against the numpy reference running the
same graph (`quantize="int8-dynamic"`: activations quantized per row, int8 weights per column;
`precision="bf16"`: bf16 weights and activations, f32 sums).

Each path the host has is built by the macros that force it (AVX512-VNNI, 256-bit AVX-VNNI, AVX2 without
VNNI, portable; AVX512-BF16, portable) and checked over row counts, batch shapes, ragged k and n (k not a
multiple of 4 or 2, n not of the panel width), thread counts, and fused epilogues. The library says which
path it was built with (`dnet_igemm_path`), so a test cannot pass on a path it did not force.

The tolerance is f32 rounding of the sums, relative to sum |a| * |b| (hand-derived: the integer sums are
exact, the reference's f32 sums are off by at most ~k ulp of it, and both round the same quantized values).
"""
import ctypes
import dataclasses
import functools
import re
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import dnet
import dnet.backends.c.backend  # noqa: F401  (registers the backend, which imports its compiler lookup)
from dnet.backends.c.compiler import find_compiler
from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.shapes import evaluate_shape
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.graph.passes.bf16 import bf16_matmuls
from dnet.graph.passes.dynamic_quant import quantize_dynamic
from dnet.hardware import cpu_flags

FLAGS = cpu_flags()
VNNI = "avx512_vnni" in FLAGS or "avx_vnni" in FLAGS
# forced path -> (compiler flags, the path the library must report), for the paths this host has
INT8_PATHS = {
    "native": ((), None),
    "portable": (("-DDN_QUANT_PORTABLE",), "portable"),
    "avx2": (("-DDN_QUANT_NO_VNNI",), "avx2" if "avx2" in FLAGS else "portable"),
    "avx-vnni": (("-DDN_QUANT_NO_AVX512",), "avx-vnni" if "avx2" in FLAGS and (
        "avx_vnni" in FLAGS or {"avx512_vnni", "avx512vl"} <= FLAGS) else "avx2" if "avx2" in FLAGS else "portable"),
}
if "avx512_vnni" in FLAGS and "avx512bw" in FLAGS:
    INT8_PATHS["avx512-vnni"] = (("-DDN_NO_AMX",), "avx512-vnni")
if "amx_int8" in FLAGS:   # where Linux grants the tiles (never run on the machines this was written on)
    INT8_PATHS["amx-int8"] = ((), "amx-int8")
BF16_PATHS = {"native": ((), None), "portable": (("-DDN_BF16_PORTABLE",), "portable")}
if "avx512_bf16" in FLAGS:
    BF16_PATHS["avx512-bf16"] = (("-DDN_NO_AMX",), "avx512-bf16")
if "amx_bf16" in FLAGS:
    BF16_PATHS["amx-bf16"] = ((), "amx-bf16")
AMX_FLAGS = ("-mamx-tile", "-mamx-int8", "-mamx-bf16")

# (k, n) of each matmul: k below, at and past a group of 4 and the panel, n ragged against 16 and 32
SHAPES = [(1, 3), (3, 17), (4, 32), (7, 33), (64, 48), (130, 70)]


def _model(seed: int = 0):
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


def _compile(graph, flags: tuple[str, ...], cache, monkeypatch):
    """The C backend built with the host's compiler flags plus `flags` (wherever it looks its compiler up)."""
    compiler = find_compiler()
    forced = dataclasses.replace(compiler, flags=compiler.flags + flags)
    for name, module in list(sys.modules.items()):
        if name.startswith("dnet.backends.c.") and getattr(module, "find_compiler", None) is find_compiler:
            monkeypatch.setattr(module, "find_compiler", lambda: forced)
    return dnet.compile(graph, target="c", cache_dir=cache)


def _path(exe, entry: str) -> str:
    lib = ctypes.CDLL(str(exe.runner.module.library))
    fn = getattr(lib, entry)
    fn.restype = ctypes.c_char_p
    return fn().decode()


def _inputs(graph, rng, m: int, batch: int, offset: float) -> dict[str, np.ndarray]:
    out = {}
    for name, t in graph.input_types().items():
        shape = evaluate_shape(t.shape, {"m": m, "b": batch})
        # an offset moves some rows off zero, so zero offsets of both signs occur; one row all zeros
        x = (rng.standard_normal(shape) + offset * rng.standard_normal(shape[:-1] + (1,))).astype(np.float32)
        if m > 2:
            x[..., 1, :] = 0
        out[name] = x
    return out


def _check(graph, exe, feeds: dict[str, np.ndarray]) -> None:
    want = run_graph(graph, feeds)
    got = exe.run(feeds)
    for i, (k, n) in enumerate(SHAPES):
        x, w = feeds[f"x{i}"], np.asarray(graph.weights.get(f"w{i}@int8", graph.weights.get(f"w{i}@bf16")),
                                          np.float32)
        magnitude = (np.abs(x) + np.abs(x).max(-1, keepdims=True)) @ np.abs(w).T * (np.abs(w).max() + 1)
        bound = 1e-5 * magnitude + 1e-6
        if i < 2:   # the epilogue: GELU's slope is at most 1.13; the residual add is exact
            bound = 1.2 * bound + 1e-5 * np.abs(want[f"y{i}"])
        assert got[f"y{i}"].shape == want[f"y{i}"].shape
        assert np.all(np.abs(got[f"y{i}"] - want[f"y{i}"]) <= bound), f"y{i} (k={k}, n={n})"


@functools.cache
def int8_graph():
    return quantize_dynamic(_model(), min_elements=1)


@functools.cache
def bf16_graph():
    return bf16_matmuls(_model(), min_elements=1)


def test_every_matmul_runs_on_the_low_precision_gemm(tmp_path):
    """The fast path is taken, not the f32 fallback: one int8 (bf16) Gemm call per matmul in the source."""
    for graph, call in ((int8_graph(), "dn_igemm_"), (bf16_graph(), "dn_bgemm_")):
        source = dnet.compile(graph, target="c", cache_dir=tmp_path).runner.source
        assert len(re.findall(call + r"\d+x\d+\(g_K", source)) == len(SHAPES)


@pytest.mark.parametrize("path", list(INT8_PATHS))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_int8_gemm_equals_the_reference(path, tmp_path_factory, monkeypatch, data):
    exe = _exe_for(("int8", path), int8_graph(), INT8_PATHS[path][0], tmp_path_factory, monkeypatch)
    if INT8_PATHS[path][1] is not None:
        assert _path(exe, "dnet_igemm_path") == INT8_PATHS[path][1]
    _run_case(int8_graph(), exe, data)


@pytest.mark.parametrize("path", list(BF16_PATHS))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bf16_gemm_equals_the_reference(path, tmp_path_factory, monkeypatch, data):
    exe = _exe_for(("bf16", path), bf16_graph(), BF16_PATHS[path][0], tmp_path_factory, monkeypatch)
    if BF16_PATHS[path][1] is not None:
        assert _path(exe, "dnet_bgemm_path") == BF16_PATHS[path][1]
    _run_case(bf16_graph(), exe, data)


_BUILT: dict = {}


def _exe_for(key, graph, flags, tmp_path_factory, monkeypatch):
    """One library per forced path (hypothesis varies the run, not the build)."""
    if key not in _BUILT:
        _BUILT[key] = _compile(graph, flags, tmp_path_factory.mktemp("-".join(key)), monkeypatch)
    return _BUILT[key]


def _run_case(graph, exe, data) -> None:
    m = data.draw(st.integers(0, 40), "m")
    batch = data.draw(st.integers(1, 3), "batch")
    threads = data.draw(st.sampled_from([1, 2, 3]), "threads")
    offset = data.draw(st.sampled_from([0.0, 4.0]), "offset")
    exe.runner.module.set_threads(threads)
    _check(graph, exe, _inputs(graph, np.random.default_rng(m * 7 + batch), m, batch, offset))


def test_int8_forced_paths_compute_the_same_integers(tmp_path_factory, monkeypatch):
    """Every int8 path sums the same integers: their results agree to f32 rounding of the final scaling."""
    feeds = _inputs(int8_graph(), np.random.default_rng(3), 29, 2, 4.0)
    results = {p: _exe_for(("int8", p), int8_graph(), INT8_PATHS[p][0], tmp_path_factory, monkeypatch).run(feeds)
               for p in INT8_PATHS}
    first = results.pop("portable")
    for other in results.values():
        for name, y in first.items():
            np.testing.assert_allclose(other[name], y, rtol=1e-6, atol=1e-5)


@pytest.mark.skipif("avx512_vnni" not in FLAGS or "avx512_bf16" not in FLAGS or "amx_int8" in FLAGS,
                    reason="for a host with AVX-512 VNNI and BF16 but no AMX")
def test_amx_code_builds_and_falls_back_where_there_are_no_tiles(tmp_path_factory, monkeypatch):
    """The AMX kernels compiled in (as on an AMX host), on a CPU without AMX: Linux refuses the tile data, so the
    library reports and runs the AVX-512 paths, with the reference's results. (The AMX kernels themselves run
    only on an AMX host, where the `amx-*` paths above are checked.)"""
    from dnet.backends.c.compiler import _accepts

    compiler = find_compiler()
    if not _accepts(compiler.path, list(compiler.flags) + list(AMX_FLAGS)):
        pytest.skip("the C compiler does not take -mamx-*")
    for kind, graph in (("int8", int8_graph()), ("bf16", bf16_graph())):
        exe = _compile(graph, AMX_FLAGS, tmp_path_factory.mktemp(f"amx-{kind}"), monkeypatch)
        assert "dn_amx_ready" in exe.runner.source
        assert _path(exe, "dnet_igemm_path" if kind == "int8" else "dnet_bgemm_path") == (
            "avx512-vnni" if kind == "int8" else "avx512-bf16")
        _check(graph, exe, _inputs(graph, np.random.default_rng(5), 33, 2, 4.0))
