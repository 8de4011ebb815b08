"""The int8 and bf16 Gemms of the C backend (`backends/c/igemm.py`) against the numpy reference running the
same graph (`quantize="int8-dynamic"`: activations quantized per row, int8 weights per column;
`precision="bf16"`: bf16 weights and activations, f32 sums).

Each path the host has is built by the macros that force it (AVX512-VNNI, 256-bit AVX-VNNI, AVX2 without
VNNI, portable; AVX512-BF16, portable) and checked over row counts, batch shapes, ragged k and n (k not a
multiple of 4 or 2, n not of the panel width), thread counts, and fused epilogues. The library says which
path it was built with (`dnet_igemm_path`), so a test cannot pass on a path it did not force.

The model, the inputs and the tolerance (f32 rounding of the sums, relative to sum |a| * |b|) are the LLVM
backend's too: tests/backends/igemm_support.py.
"""
import ctypes
import dataclasses
import re
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import dnet
import dnet.backends.c.backend  # noqa: F401  (registers the backend, which imports its compiler lookup)
from dnet.backends.c.compiler import find_compiler
from dnet.hardware import cpu_flags

from dnet.backends.numpy import run_graph
from igemm_support import (SHAPES, assert_matches_within_sum_rounding, bf16_graph, crowded_rows_graph, inputs,
                           int8_graph, smoothed_block_graph)

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
    assert_matches_within_sum_rounding(graph, exe, inputs(graph, np.random.default_rng(m * 7 + batch), m, batch, offset))


def test_int8_forced_paths_compute_the_same_integers(tmp_path_factory, monkeypatch):
    """Every int8 path sums the same integers: their results agree to f32 rounding of the final scaling."""
    feeds = inputs(int8_graph(), np.random.default_rng(3), 29, 2, 4.0)
    results = {p: _exe_for(("int8", p), int8_graph(), INT8_PATHS[p][0], tmp_path_factory, monkeypatch).run(feeds)
               for p in INT8_PATHS}
    first = results.pop("portable")
    for other in results.values():
        for name, y in first.items():
            np.testing.assert_allclose(other[name], y, rtol=1e-6, atol=1e-5)


@pytest.mark.skipif("avx512_vnni" not in FLAGS or "avx512_bf16" not in FLAGS,
                    reason="for a host with AVX-512 VNNI and BF16")
def test_amx_code_builds_and_falls_back_where_there_are_no_tiles(tmp_path_factory, monkeypatch):
    """The AMX kernels compiled in, and no tiles to be had: on a CPU without AMX Linux refuses the tile data; on
    an AMX host $DNET_NO_AMX stands in for the refusal (read at the library's first call). The library reports
    and runs the AVX-512 paths, with the reference's results."""
    from dnet.backends.c.compiler import _accepts

    compiler = find_compiler()
    if not _accepts(compiler.path, list(compiler.flags) + list(AMX_FLAGS)):
        pytest.skip("the C compiler does not take -mamx-*")
    monkeypatch.setenv("DNET_NO_AMX", "1")
    for kind, graph in (("int8", int8_graph()), ("bf16", bf16_graph())):
        exe = _compile(graph, AMX_FLAGS, tmp_path_factory.mktemp(f"amx-{kind}"), monkeypatch)
        assert "dn_amx_ready" in exe.runner.source
        assert _path(exe, "dnet_igemm_path" if kind == "int8" else "dnet_bgemm_path") == (
            "avx512-vnni" if kind == "int8" else "avx512-bf16")
        for m, threads in ((33, 2), (7, 1)):
            exe.runner.module.set_threads(threads)
            assert_matches_within_sum_rounding(graph, exe, inputs(graph, np.random.default_rng(m), m, 2, 4.0))


@pytest.mark.skipif("amx_bf16" not in FLAGS or "amx_int8" not in FLAGS, reason="for a host with AMX")
def test_amx_kernels_are_the_ones_that_run(tmp_path):
    """On an AMX host a native build computes its Gemms with the tile kernels (one block call per Gemm)."""
    for graph, call in ((int8_graph(), "dn_amx_i8_block(g_K"), (bf16_graph(), "dn_amx_bf16_block(g_K")):
        source = dnet.compile(graph, target="c", cache_dir=tmp_path).runner.source
        assert source.count(call) >= len(SHAPES)


@pytest.mark.parametrize("path", list(INT8_PATHS))
def test_int8_sums_are_exact_where_rows_crowd_one_end(path, tmp_path, monkeypatch):
    """Rows of sixteenths v / 16, v in 0..255, mostly 0 (as after a GELU): quantized exactly (step 1/16, zero
    offset 128, q = v - 128), so y = x @ w.T is an integer over 16, the hand-derived oracle, and the kernel
    must give exactly its f32 rounding. Its sums of q * b and z * sum b pass 2^24 at k = 1536 and nearly
    cancel: summed in f32 they were off by a unit."""
    k, n, m = 1536, 40, 7
    graph, w = crowded_rows_graph(k, n)
    exe = _compile(graph, INT8_PATHS[path][0], tmp_path, monkeypatch)
    rng = np.random.default_rng(12)
    v = np.where(rng.random((m, k)) < 0.9, 0, rng.integers(0, 256, (m, k))).astype(np.float64)
    v[:, 0], v[:, 1] = 0.0, 255.0
    x = (v / 16).astype(np.float32)
    want = ((v @ w.T.astype(np.float64)) / 16).astype(np.float32)
    for threads in (1, 2):
        exe.runner.module.set_threads(threads)
        np.testing.assert_array_equal(exe.run({"x": x})["y"], want)


@pytest.mark.parametrize("path", ["native", "portable"])
def test_a_smoothed_block_equals_the_reference(path, tmp_path, monkeypatch):
    """quantize="int8-dynamic" on a norm -> projections -> GELU FFN block: the norm's output smoothed (x * 1/s
    computed where it is quantized) into int8 Gemms, the FFN's second matmul a bf16 Gemm; the C library (the
    host's paths, or both portable ones) gives the numpy reference's results to f32 rounding of the sums
    (measured: 1.5e-6 of the largest output), except where the two round an activation differently: a GELU
    output one f32 ulp apart can round to neighbouring bf16 values (2^-8 apart, relative), so a few outputs
    of a row move by about 2^-8 of one product (measured, native: 5 of 2112 and 55 of 12800 outputs of y, at
    most 1.2e-4 of the largest)."""
    graph = smoothed_block_graph()
    flags = () if path == "native" else ("-DDN_QUANT_PORTABLE", "-DDN_BF16_PORTABLE")
    exe = _compile(graph, flags, tmp_path, monkeypatch)
    assert exe.runner.source.count("dn_igemm_") > 0 and exe.runner.source.count("dn_bgemm_") > 0
    if path == "portable":
        assert (_path(exe, "dnet_igemm_path"), _path(exe, "dnet_bgemm_path")) == ("portable", "portable")
    rng = np.random.default_rng(1)
    for m, threads in ((1, 1), (33, 2), (200, 2)):
        exe.runner.module.set_threads(threads)
        x = (rng.standard_normal((m, 64)) * 2).astype(np.float32)
        want, got = run_graph(graph, {"x": x}), exe.run({"x": x})
        for name, y in want.items():
            off = np.abs(got[name] - y) > 1e-5 * np.abs(y).max()
            assert off.mean() <= 0.01 and np.abs(got[name] - y).max() <= 2 ** -8 * np.abs(y).max(), (name, m)
