"""The AArch64 integer kernels of the GGUF block formats (`backends/c/quant_neon.py`), run for real: the kernels
cross-compiled and run under qemu-user on a CPU model with dotprod (`max`) and one without (`cortex-a53`)
(tests/backends/c/aarch64_emulation.py).

Oracles, as for the x86 paths (tests/backends/c/test_quant_kernels.py, whose cases and bounds these are):
gguf's numpy dequantizer times x quantized per 32-block in numpy (int8 or int16), to f32 rounding, and the
exact product within the bound the activations' quantization allows; then the other paths' results equal
the first's bit for bit (sdot and NEON sum the same integers in the same lanes). The driver says which path
computed.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import aarch64_emulation as emu
from dnet.core.dtypes import DType
from dnet.core.quant import BLOCK_DTYPES, dequantize
from test_quant_kernels import CASES, ROUNDING, TOP, emulate_quantized, k_sizes, random_weights

pytestmark = pytest.mark.skipif(emu.missing() is not None, reason=f"AArch64 emulation: {emu.missing()}")

BUILDS = {"dispatch": ("-march=armv8-a",), "no-dotprod": ("-march=armv8.2-a+dotprod", "-DDN_QUANT_NO_DOTPROD")}
# (build, qemu CPU model) -> the path dn_quant_path() must name
RUNS = {
    ("dispatch", emu.WITH_DOTPROD): "neon-dotprod",
    ("dispatch", emu.WITHOUT_DOTPROD): "neon",
    ("no-dotprod", emu.WITH_DOTPROD): "neon",
}

_BUILT: dict = {}


def _binary(build: str, tmp_path_factory):
    if build not in _BUILT:
        _BUILT[build] = emu.compile_quant(BLOCK_DTYPES, tmp_path_factory.mktemp(f"q-{build}"), BUILDS[build])
    return _BUILT[build]


def _cases(rng) -> list:
    """test_quant_kernels' shapes: every format, int8 and int16, k of 1-3 blocks and ~4096 (decode shapes
    only there), (m, n) from one row (GEMV) to 37 x 70 (panels; n ragged against 8 and 32)."""
    cases = []
    for dtype in BLOCK_DTYPES:
        for bits in (8, 16):
            for k in k_sizes(dtype):
                for m, n in CASES:
                    if k > 1024 and m > 5:
                        continue
                    cases.append((dtype, bits, rng.standard_normal((m, k)).astype(np.float32),
                                  random_weights(rng, dtype, n, k)))
    return cases


def _check(case, got) -> None:
    """The bounds of test_quant_kernels.test_qmatmul_matches_the_dequantized_product for an integer path."""
    dtype, bits, x, w = case
    (m, k), n = x.shape, w.shape[0]
    wf = dequantize(w, dtype, (n, k)).astype(np.float64)
    got = got.astype(np.float64)
    where = f"{dtype.value} int{bits} m={m} n={n} k={k}"
    xq = emulate_quantized(x, bits).astype(np.float64)
    rounding = ROUNDING[bits]
    assert np.all(np.abs(got - xq @ wf.T) <= rounding * (np.abs(xq) @ np.abs(wf).T) + 1e-30), where
    half_step = np.repeat(np.abs(x).reshape(m, -1, 32).max(axis=-1) / (2 * TOP[bits]), 32, axis=1)
    bound = half_step @ np.abs(wf).T
    assert np.all(np.abs(got - x @ wf.T) <= 1.001 * bound + rounding * (np.abs(x) @ np.abs(wf).T)), where


def test_neon_block_kernels_equal_the_quantized_product_on_every_path(tmp_path_factory):
    """Each (build, CPU) names its path and is within the bounds; sdot and NEON equal each other bit for bit
    (they sum the same integers in the same lanes)."""
    cases = _cases(np.random.default_rng(2))
    first = None
    for build, cpu in RUNS:
        path, ys = emu.run_quant(_binary(build, tmp_path_factory), cpu, BLOCK_DTYPES, cases,
                                 tmp_path_factory.mktemp("q-run"))
        assert path == RUNS[build, cpu]
        if first is None:
            first = ys
            for case, y in zip(cases, ys):
                _check(case, y)
            continue
        for case, a, b in zip(cases, first, ys):
            np.testing.assert_array_equal(b, a, err_msg=f"{build} on {cpu}: {case[0].value} int{case[1]} "
                                                        f"{case[2].shape} x {case[3].shape[0]}")


@settings(max_examples=12, deadline=None)
@given(dtype=st.sampled_from(BLOCK_DTYPES), bits=st.sampled_from([8, 16]), m=st.integers(1, 11),
       n=st.integers(1, 75), blocks=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_drawn_shapes_on_both_cpus(dtype, bits, m, n, blocks, seed, tmp_path_factory):
    """Rows across the GEMV / panel switch (3) and the 4-row tile, columns ragged against 8 and 32."""
    rng = np.random.default_rng(seed)
    k = blocks * dtype.block
    case = (dtype, bits, rng.standard_normal((m, k)).astype(np.float32), random_weights(rng, dtype, n, k))
    for cpu in (emu.WITH_DOTPROD, emu.WITHOUT_DOTPROD):
        path, (y,) = emu.run_quant(_binary("dispatch", tmp_path_factory), cpu, BLOCK_DTYPES, [case],
                                   tmp_path_factory.mktemp("q-drawn"))
        assert path == RUNS["dispatch", cpu]
        _check(case, y)


def test_zero_rows_give_zeros(tmp_path_factory):
    """A block of zeros quantizes with scale 0 (no division by zero), on both paths."""
    cases = [(d, bits, np.zeros((m, 96), np.float32), random_weights(np.random.default_rng(4), d, 16, 96))
             for d in (DType.Q8_0, DType.Q4_1) for bits in (8, 16) for m in (1, 5)]
    for cpu in (emu.WITH_DOTPROD, emu.WITHOUT_DOTPROD):
        _, ys = emu.run_quant(_binary("dispatch", tmp_path_factory), cpu, BLOCK_DTYPES, cases,
                              tmp_path_factory.mktemp("q-zero"))
        for y in ys:
            np.testing.assert_array_equal(y, np.zeros_like(y))


def _block_weights_graph(rng, k: int, n: int):
    """y_d = silu(x @ W_d.T + bias) for Q4_1 (SmolLM2's), Q8_0 (stored signed) and Q6_K (groups of 16), and one
    weight's rows gathered (element loads); rows of x symbolic."""
    from dnet.core.quant import random_blocks
    from dnet.core.types import TensorType
    from dnet.graph import composites as C
    from dnet.graph.builder import GraphBuilder
    from dnet.graph.ops import Op
    from dnet.graph.passes import default_graph_pipeline

    b = GraphBuilder()
    x = b.input("x", TensorType(("m", k), DType.F32))
    weights = {}
    for dtype in (DType.Q4_1, DType.Q8_0, DType.Q6_K):
        storage = random_blocks(dtype, (n, k), rng)
        weights[dtype] = dequantize(storage, dtype, (n, k))
        w = b.cast(b.block_const(f"w_{dtype.value}", storage, dtype, (n, k)), DType.F32)
        bias = b.const(f"bias_{dtype.value}", np.linspace(-1, 1, n, dtype=np.float32))
        b.output(f"y_{dtype.value}", C.silu(b, C.linear(b, x, w, bias)))
        if dtype is DType.Q8_0:
            b.output("rows", b.node(Op.GATHER, [w, b.input("ids", TensorType(("r",), DType.I64))], axis=0))
    return default_graph_pipeline()(b.finish()), weights


def test_block_weight_matmuls_of_a_compiled_graph_run_on_the_neon_kernels(tmp_path_factory):
    """A whole program for an AArch64 node (QMatmul statements, their epilogues, element loads) through dnet's
    executor under qemu, against the numpy reference: products within the bound of 8-bit activations (16-bit
    are finer), the gathered rows exact (gguf's values), on both CPUs."""
    from dnet.backends.numpy import run_graph
    from dnet.kernel.ir import QMatmul

    rng = np.random.default_rng(13)
    k, n = 256, 37
    graph, weights = _block_weights_graph(rng, k, n)
    build = emu.compile_program(graph, tmp_path_factory.mktemp("q-graph"), BUILDS["dispatch"])
    assert sum(isinstance(s, QMatmul) for kern in build.kernels.values() for s in kern.body) == 3
    for cpu in (emu.WITH_DOTPROD, emu.WITHOUT_DOTPROD):
        for m in (1, 6):   # decode (the GEMV) and prefill (the panels)
            run, launcher = emu.executor(build, cpu, tmp_path_factory.mktemp("q-graph-run"), 2)
            x = rng.standard_normal((m, k)).astype(np.float32)
            feeds = {"x": x, "ids": np.array([0, n - 1, 5])}
            got, want = run.run(feeds), run_graph(graph, feeds)
            assert set(launcher.paths) == {RUNS["dispatch", cpu]}
            np.testing.assert_array_equal(got["rows"], want["rows"])
            for dtype, w in weights.items():
                bound = 6 * np.sqrt(k) * (np.abs(x).max() / 127 / np.sqrt(12)) * np.sqrt((w ** 2).mean())
                np.testing.assert_allclose(got[f"y_{dtype.value}"], want[f"y_{dtype.value}"], rtol=0, atol=bound,
                                           err_msg=f"{dtype.value} m={m} on {cpu}")
