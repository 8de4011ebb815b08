"""The generated matmul: any sizes (edge tiles), strided and broadcast operands, packed weights."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.hardware import Host
from dnet.kernel.ir import Gemm

from backend_support import assert_matches_reference, matmul_graph

M, K, N, B = Sym("m"), Sym("k"), Sym("n"), Sym("b")


@pytest.fixture(scope="module")
def matmuls(compile_c):
    """Plain, transposed-b, batched with a broadcast operand, and an f16 matmul, in one library."""
    graph = matmul_graph()
    return graph, compile_c(graph)


@settings(max_examples=10, deadline=None)
@given(m=st.integers(1, 70), k=st.integers(1, 300), n=st.integers(1, 70), b=st.integers(1, 3),
       seed=st.integers(0, 1000))
def test_matmul_matches_reference_for_any_sizes(matmuls, m, k, n, b, seed):
    graph, runner = matmuls
    rng = np.random.default_rng(seed)
    feeds = {"a": rng.standard_normal((m, k)), "bt": rng.standard_normal((n, k)),
             "x": rng.standard_normal((b, m, k)), "h": rng.standard_normal((m, k)) / 4}
    feeds = {name: v.astype(DType.F16.np if name == "h" else np.float32) for name, v in feeds.items()}
    assert_matches_reference(runner, graph, feeds, rtol=2e-4, atol=1e-3)


def test_f32_matmuls_use_the_gemm_kernel(matmuls):
    _, runner = matmuls
    gemms = [k for k in runner.compiled.kernels.values() if isinstance(k.body[0], Gemm)]
    assert len(gemms) == 3


def test_constant_weights_are_packed_once_at_load_time(compile_c, rng):
    g = GraphBuilder()
    x = g.input("x", TensorType((M, 40), DType.F32))
    w = g.const("w", rng.standard_normal((45, 40)).astype(np.float32))
    g.output("y", g.elementwise(Op.MAX, g.matmul(x, g.transpose(w)), 0.0))
    graph = g.finish()
    runner = compile_c(graph)
    (kernel,) = runner.compiled.kernels.values()
    assert kernel.body[0].b.packed
    assert any(b.name == f"w@packed{kernel.body[0].tile.nr}" for b in runner.program.buffers)
    feeds = {"x": rng.standard_normal((19, 40)).astype(np.float32)}
    assert_matches_reference(runner, graph, feeds, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 3])
def test_results_do_not_depend_on_the_thread_count(matmuls, threads):
    graph, runner = matmuls
    rng = np.random.default_rng(threads)
    feeds = {"a": rng.standard_normal((67, 129)), "bt": rng.standard_normal((45, 129)),
             "x": rng.standard_normal((2, 67, 129)), "h": rng.standard_normal((67, 129)) / 4}
    feeds = {name: v.astype(DType.F16.np if name == "h" else np.float32) for name, v in feeds.items()}
    module = runner.module
    before = module.threads
    try:
        module.set_threads(threads)
        assert module.threads == threads
        assert_matches_reference(runner, graph, feeds, rtol=2e-4, atol=1e-3)
    finally:
        module.set_threads(before)


def test_concurrent_calls_from_python_threads_agree(matmuls):
    """Calls from several threads take turns on the arena and the thread pool: no mixed results."""
    from concurrent.futures import ThreadPoolExecutor

    graph, runner = matmuls
    rng = np.random.default_rng(7)
    feeds = [{"a": rng.standard_normal((40, 64)), "bt": rng.standard_normal((50, 64)),
              "x": rng.standard_normal((2, 40, 64)), "h": rng.standard_normal((40, 64))} for _ in range(4)]
    feeds = [{k: v.astype(DType.F16.np if k == "h" else np.float32) for k, v in f.items()} for f in feeds]
    alone = [runner.run(f)["a_bt"] for f in feeds]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda f: runner.run(f)["a_bt"], feeds * 3))
    for i, out in enumerate(together):
        np.testing.assert_array_equal(out, alone[i % 4])


def _run_in_child(runner, feeds, queue):
    queue.put(runner.run(feeds)["a_bt"])


def test_a_forked_child_runs_without_the_parents_workers(matmuls):
    import multiprocessing

    graph, runner = matmuls
    rng = np.random.default_rng(8)
    feeds = {"a": rng.standard_normal((60, 96)), "bt": rng.standard_normal((70, 96)),
             "x": rng.standard_normal((1, 60, 96)), "h": rng.standard_normal((60, 96))}
    feeds = {k: v.astype(DType.F16.np if k == "h" else np.float32) for k, v in feeds.items()}
    want = runner.run(feeds)["a_bt"]                     # the parent's workers are running now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_run_in_child, args=(runner, feeds, queue))
    child.start()
    got = queue.get(timeout=60)
    child.join(10)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("rows_over", [1, 2])
@pytest.mark.parametrize("threads", [1, 3])
def test_every_cache_block_edge_matches_the_reference(compile_c, rng, rows_over, threads):
    """Sizes from the host's tile: several k blocks, several L2 blocks of b with a ragged last
    panel, a last row sliver of a third or two thirds of mr rows, and (with three threads and
    few rows) the columns split between threads. A bias and a ReLU ride as the epilogue."""
    from dnet.hardware import detect
    from dnet.kernel.gemm import choose_tile

    t = choose_tile(detect())
    m, k, n = 3 * t.mr + rows_over * t.mr // 3, 2 * t.kc + 37, 2 * t.nc + t.nr + 5
    g = GraphBuilder()
    x = g.input("x", TensorType((m, k), DType.F32))
    w = g.const("w", rng.standard_normal((k, n)).astype(np.float32))
    bias = g.const("bias", rng.standard_normal(n).astype(np.float32))
    y = g.elementwise(Op.ADD, g.matmul(x, w), g.expand(bias, (m, n)))
    g.output("y", g.elementwise(Op.MAX, y, 0.0))
    graph = g.finish()
    runner = compile_c(graph, threads=threads)
    assert_matches_reference(runner, graph, {"x": rng.standard_normal((m, k)).astype(np.float32)},
                             rtol=2e-4, atol=1e-3)


OTHER_HOSTS = {   # tiles of other machines, run here (x86 with AVX-512 runs their narrower vectors)
    "avx2": Host("x86_64", "avx2 test", 4, frozenset({"avx2", "fma"}), l1d=32 * 1024, l2=1 << 20),
    "neon-like": Host("aarch64", "neon test", 4, frozenset({"neon", "asimd"}), l1d=64 * 1024, l2=1 << 19),
}


@pytest.mark.parametrize("host", sorted(OTHER_HOSTS))
@pytest.mark.parametrize("int8", [False, True])
def test_other_hosts_tiles_match_the_reference(compile_c, rng, host, int8):
    """The generated gemm for another machine's tile (mr 6, nr 16 or 8, its own kc/mc/nc): f32 and int8
    weights, an a that must be packed (rows 4 KiB apart) and one read in place, one thread and three."""
    from dnet.graph.passes.quantize import quantize_weights
    from dnet.kernel.gemm import choose_tile

    t = choose_tile(OTHER_HOSTS[host])
    m, n = 5 * t.mr + 2, 3 * t.nc // 2 + 3
    g = GraphBuilder()
    for name, k in (("x", 2 * t.kc + 9), ("p", 1024)):
        x = g.input(name, TensorType((m, k), DType.F32))
        w = g.const(f"w_{name}", rng.standard_normal((n, k)).astype(np.float32))
        g.output(f"y_{name}", g.matmul(x, g.transpose(w)))
    graph = quantize_weights(g.finish(), min_elements=1) if int8 else g.finish()
    feeds = {"x": rng.standard_normal((m, 2 * t.kc + 9)).astype(np.float32),
             "p": rng.standard_normal((m, 1024)).astype(np.float32)}
    for threads in (1, 3):
        runner = compile_c(graph, threads=threads, host=OTHER_HOSTS[host])
        gemms = [s for kern in runner.compiled.kernels.values() for s in kern.body if isinstance(s, Gemm)]
        assert {(s.tile.mr, s.tile.nr, s.b.dtype) for s in gemms} == {(t.mr, t.nr, DType.I8 if int8 else DType.F32)}
        assert_matches_reference(runner, graph, feeds, rtol=2e-4, atol=1e-3)


SCALAR = Host("x86_64", "no vectors", 2, frozenset(), l1d=32 * 1024, l2=1 << 20)   # f32_lanes 1


@pytest.mark.parametrize("host", ["here", *sorted(OTHER_HOSTS), "scalar"])
@pytest.mark.parametrize("m", [1, 3, 4, 5])
def test_a_few_rows_against_an_unpacked_b_either_way_round_with_an_epilogue(compile_c, rng, m, host):
    """At most SMALL_M rows skip packing b: dot products (b contiguous along k, as k^T of a KV cache) or row
    updates (b contiguous along n, as v), vectorised with the host's lanes (16, 8, 4; none: plain loops);
    sizes straddle the 64-column tasks and the vectors; k symbolic (40: a part vector past the whole ones)
    and static (64, an LLM's head size); results as the reference."""
    g = GraphBuilder()
    for name, k, n in (("q", K, N), ("h", 64, Sym("ctx"))):
        q = g.input(name, TensorType((B, M, k), DType.F32))
        cache = g.input(f"{name}_cache", TensorType((B, n, k), DType.F32))
        scores = g.elementwise(Op.MUL, g.matmul(q, g.transpose(cache)), 0.125)       # b(k, j) = cache[j, k]
        g.output(f"{name}_scores", scores)
        g.output(f"{name}_mixed", g.elementwise(Op.ADD, g.matmul(scores, cache), 1.0))   # b(k, j) = cache[k, j]
    graph = g.finish()
    runner = compile_c(graph, **({} if host == "here" else {"host": OTHER_HOSTS.get(host, SCALAR)}))
    feeds = {"q": rng.standard_normal((2, m, 40)), "q_cache": rng.standard_normal((2, 131, 40)),
             "h": rng.standard_normal((2, m, 64)), "h_cache": rng.standard_normal((2, 77, 64))}
    feeds = {name: v.astype(np.float32) for name, v in feeds.items()}
    assert_matches_reference(runner, graph, feeds, rtol=1e-4, atol=1e-4)
