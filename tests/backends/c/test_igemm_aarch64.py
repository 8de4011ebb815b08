"""The AArch64 int8 Gemms of the C backend (`backends/c/igemm.py`: sdot, NEON widening multiplies, portable),
run for real: the library of an AArch64 node is cross-compiled and run under qemu-user on a CPU model with
dotprod (`max`) and one without (`cortex-a53`), through dnet's own executor (tests/backends/c/aarch64_emulation.py).

Oracles: the numpy reference running the same quantized graph (within f32 rounding of the sums, as on x86:
tests/backends/igemm_support.py), the portable path's results bit for bit (every path sums the same integers
and shares the float epilogue), and a hand-derived exact product. The library says which path computed
(`dnet_igemm_path`), so a test cannot pass on a path it did not mean to run.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import aarch64_emulation as emu
from igemm_support import assert_matches_within_sum_rounding, crowded_rows_graph, inputs, int8_graph

pytestmark = pytest.mark.skipif(emu.missing() is not None, reason=f"AArch64 emulation: {emu.missing()}")

# build -> compiler flags: a generic armv8-a build (sdot chosen at run time from AT_HWCAP), one whose compiler
# targets dotprod (sdot always), and the two macros that force the NEON and the portable paths
BUILDS = {
    "dispatch": ("-march=armv8-a",),
    "dotprod": ("-march=armv8.2-a+dotprod",),
    "no-dotprod": ("-march=armv8.2-a+dotprod", "-DDN_QUANT_NO_DOTPROD"),
    "portable": ("-march=armv8.2-a+dotprod", "-DDN_QUANT_PORTABLE"),
}
# (build, qemu CPU model) -> the path the library must report
RUNS = {
    ("dispatch", emu.WITH_DOTPROD): "neon-dotprod",
    ("dispatch", emu.WITHOUT_DOTPROD): "neon",
    ("dotprod", emu.WITH_DOTPROD): "neon-dotprod",
    ("no-dotprod", emu.WITH_DOTPROD): "neon",
    ("portable", emu.WITH_DOTPROD): "portable",
}

_BUILT: dict = {}


def _build(name: str, graph, key: str, tmp_path_factory) -> emu.Build:
    """One cross-compiled library per (graph, build); hypothesis varies the run, not the build."""
    if (key, name) not in _BUILT:
        _BUILT[key, name] = emu.compile_program(graph, tmp_path_factory.mktemp(f"a64-{key}-{name}"), BUILDS[name])
    return _BUILT[key, name]


def test_the_dotprod_builds_compute_with_sdot(tmp_path_factory):
    """sdot in both dotprod builds' machine code (the generic one's too: its sdot kernels carry their own
    target), NEON's smull/sadalp in the generic one, and no sdot where -DDN_QUANT_NO_DOTPROD keeps it out."""
    def mnemonics(name: str) -> set[str]:
        text = emu.disassembly(_build(name, int8_graph(), "int8", tmp_path_factory).binary)
        return {line.split("\t")[2].strip() for line in text.splitlines() if line.count("\t") >= 2}

    dispatch, dotprod, no_dotprod = mnemonics("dispatch"), mnemonics("dotprod"), mnemonics("no-dotprod")
    assert "sdot" in dispatch and "sdot" in dotprod
    assert {"smull", "smull2", "sadalp"} <= dispatch
    assert "sdot" not in no_dotprod and {"smull", "sadalp"} <= no_dotprod


@pytest.mark.parametrize("build,cpu", list(RUNS))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_int8_gemm_on_aarch64_equals_the_reference(build, cpu, tmp_path_factory, data):
    """Row counts 0-40 against the 12-row tile, batches, 1-3 threads, zero offsets of both signs; k and n of
    the model's matmuls ragged against a group of 4 and the 8-column panel (igemm_support.SHAPES)."""
    graph = int8_graph()
    compiled = _build(build, graph, "int8", tmp_path_factory)
    m = data.draw(st.integers(0, 40), "m")
    batch = data.draw(st.integers(1, 3), "batch")
    threads = data.draw(st.sampled_from([1, 2, 3]), "threads")
    offset = data.draw(st.sampled_from([0.0, 4.0]), "offset")
    run, launcher = emu.executor(compiled, cpu, tmp_path_factory.mktemp("run"), threads)
    assert_matches_within_sum_rounding(graph, run, inputs(graph, np.random.default_rng(m * 7 + batch), m, batch,
                                                          offset))
    assert launcher.paths and set(launcher.paths) == {RUNS[build, cpu]}


def test_aarch64_paths_give_the_portable_paths_results_bit_for_bit(tmp_path_factory):
    """sdot, NEON and portable sum the same integers and share the float epilogue: equal outputs, every bit."""
    graph = int8_graph()
    feeds = inputs(graph, np.random.default_rng(5), 37, 2, 4.0)
    results = {}
    for build, cpu in RUNS:
        run, launcher = emu.executor(_build(build, graph, "int8", tmp_path_factory), cpu,
                                     tmp_path_factory.mktemp("same"), 2)
        results[launcher.cpu, build] = run.run(feeds)
        assert launcher.paths == [RUNS[build, cpu]]
    first = results.pop((emu.WITH_DOTPROD, "portable"))
    for key, other in results.items():
        for name, y in first.items():
            np.testing.assert_array_equal(other[name], y, err_msg=f"{key} {name}")


@pytest.mark.parametrize("cpu", [emu.WITH_DOTPROD, emu.WITHOUT_DOTPROD])
def test_int8_sums_are_exact_on_aarch64(cpu, tmp_path_factory):
    """The hand-derived oracle of tests/backends/c/test_igemm.py (rows of sixteenths crowding one end, k = 1536,
    an integer product over 16): sdot and the NEON path give exactly its f32 rounding."""
    k, n, m = 1536, 40, 7
    graph, w = crowded_rows_graph(k, n)
    run, launcher = emu.executor(_build("dispatch", graph, "crowded", tmp_path_factory), cpu,
                                 tmp_path_factory.mktemp("exact"), 2)
    rng = np.random.default_rng(12)
    v = np.where(rng.random((m, k)) < 0.9, 0, rng.integers(0, 256, (m, k))).astype(np.float64)
    v[:, 0], v[:, 1] = 0.0, 255.0
    want = ((v @ w.T.astype(np.float64)) / 16).astype(np.float32)
    np.testing.assert_array_equal(run.run({"x": (v / 16).astype(np.float32)})["y"], want)
    assert launcher.paths == [RUNS["dispatch", cpu]]

