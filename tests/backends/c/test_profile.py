"""`dnet.backends.c.profile`: each kernel's launches, time, flops and bytes, against hand-derived counts."""
import numpy as np
import pytest

from dnet.backends.c import profile as profiling
from dnet.core.dtypes import DType
from dnet.core.perf_counters import CountersUnavailable
from dnet.core.types import TensorType
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.program.instructions import Launch

M, K, N = 8, 32, 64     # N a multiple of the micro-kernel's 32 columns: packed weights hold no padding


@pytest.fixture(scope="module")
def case(compile_c):
    """y = (x @ w1 + x @ w1) @ w2: two matmuls with weights, an add between them."""
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("x", TensorType((M, K), DType.F32))
    w1 = b.const("w1", rng.standard_normal((K, N)).astype(np.float32))
    w2 = b.const("w2", rng.standard_normal((N, N)).astype(np.float32))
    h = b.node(Op.MATMUL, [x, w1])
    y = b.node(Op.MATMUL, [b.elementwise(Op.ADD, h, h), w2])
    b.output("y", y)
    graph = b.finish()
    runner = compile_c(graph, threads=1)
    return runner, {"x": rng.standard_normal((M, K)).astype(np.float32)}


def test_every_launch_is_timed_and_counted_once(case):
    runner, feeds = case
    result = profiling.profile(runner, feeds, repeats=3, counters=False)
    launches = [i.kernel for i in runner.module.program.instrs if isinstance(i, Launch)]
    assert sorted(k.kernel for k in result.kernels) == sorted(set(launches))
    assert sum(k.calls for k in result.kernels) == len(launches) == len(result.trace)
    assert all(k.seconds > 0 for k in result.kernels)
    assert result.seconds == pytest.approx(sum(k.seconds for k in result.kernels))
    assert [e["name"] for e in result.trace] == launches and result.trace[0]["ph"] == "X"
    assert result.counters_note == "counters not asked for"


def test_a_matmul_kernels_flops_and_bytes_are_its_own(case):
    """Whatever the fusion, the graph's flops are all counted once: 2MKN + MN (the add) + 2MNN; and the first
    matmul (its own kernel: the add reads its output twice) reads x and w1 and writes its output (f32)."""
    runner, feeds = case
    result = profiling.profile(runner, feeds, repeats=2, counters=False)
    assert sum(k.flops for k in result.kernels) == 2 * M * K * N + M * N + 2 * M * N * N
    first = [k for k in result.kernels if k.ops == "matmul" and k.flops == 2 * M * K * N]
    assert len(first) == 1 and first[0].bytes == 4 * (M * K + K * N + M * N)
    assert all(k.gflops == k.flops / k.seconds / 1e9 for k in result.kernels)


def test_without_counters_the_profile_says_why_and_still_times(case, monkeypatch):
    def refuse(*_):
        raise CountersUnavailable("the kernel gives no hardware counters here: not permitted")

    monkeypatch.setattr(profiling, "open_counters", refuse)
    result = profiling.profile(*case, repeats=2)
    assert "not permitted" in result.counters_note
    assert all(k.counters == {} and k.seconds > 0 for k in result.kernels)


def test_counters_where_the_os_gives_them(case):
    from dnet.core.perf_counters import open_counters

    try:
        open_counters().close()
    except CountersUnavailable as err:
        pytest.skip(f"no hardware counters on this machine: {err}")
    result = profiling.profile(*case, repeats=2)
    assert result.counters_note == ""
    assert all(k.counters.get("instructions", 1) > 0 for k in result.kernels)
