"""dnet.compile(model, topology=...): planned by the partitioner, run on a local cluster it starts."""
import numpy as np
import pytest

import dnet
from dnet.cluster.session import link_shapes, pipeline_from_plan
from dnet.errors import DnetError
from dnet.partition import plan_pipeline
from dnet.topology import Device, Topology
from residual_nets import ResidualNet, oracle, request


def _topology(n: int) -> Topology:
    device = Device(kind="numpy", cores=1, compute={"f32": 1e6}, memory=1e9, memory_bandwidth=1e9)
    return Topology.local(n, device=device, bandwidth=1e8, latency=1e-4)


def test_compile_with_a_local_topology_runs_the_model_across_its_workers(rng):
    net = ResidualNet(rng)
    t = dnet.TensorType(("batch", "seq", 8), dnet.f32)
    with dnet.compile(net, {"x": t, "mask": t}, topology=_topology(2), env={"batch": 2, "seq": 3}) as exe:
        reqs = [request(rng) for _ in range(6)]
        outs = exe.run_many(reqs)
        single = exe(reqs[0]["x"], reqs[0]["mask"])
        placement = exe.pipeline.placement
        timings = exe.timings
    for req, out in zip(reqs, outs):
        np.testing.assert_allclose(out["output"], oracle(net, req["x"], req["mask"]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(single, outs[0]["output"], rtol=0, atol=0)
    assert sorted(placement) == [0, 1]  # slow nodes, fast links: the plan uses both
    assert all(t.runs == 7 for t in timings.values())


def test_the_plans_stages_become_stage_graphs_on_the_nodes_it_names(rng):
    net = ResidualNet(rng)
    t = dnet.TensorType(("batch", "seq", 8), dnet.f32)
    graph = dnet.to_graph(net, {"x": t, "mask": t})
    topo = _topology(3)
    plan = plan_pipeline(graph, topo, env={"batch": 2, "seq": 3})
    pipeline = pipeline_from_plan(graph, plan, topo.names)
    assert [topo.names[i] for i in pipeline.placement] == [s.node for s in plan.stages]
    assert pipeline.predicted_throughput == plan.throughput
    plan.stages[0].node = "elsewhere"
    with pytest.raises(DnetError, match=r"plan names node\(s\) \['elsewhere'\]"):
        pipeline_from_plan(graph, plan, topo.names)


def test_topology_links_become_transport_shapes():
    shapes = link_shapes(_topology(2))
    assert shapes[(0, 1)].bandwidth == 1e8 and shapes[(1, 0)].latency == 1e-4


def test_a_batch_cut_into_micro_batches_gives_the_same_outputs(rng):
    net = ResidualNet(rng)
    t = dnet.TensorType(("batch", "seq", 8), dnet.f32)
    req = request(rng, batch=7, seq=3)
    with dnet.compile(net, {"x": t, "mask": t}, topology=_topology(2), env={"batch": 2, "seq": 3}) as exe:
        out = exe.run(req, micro_batches=3)["output"]
        runs = [timing.runs for timing in exe.timings.values()]
    np.testing.assert_allclose(out, oracle(net, req["x"], req["mask"]), rtol=1e-5, atol=1e-5)
    assert runs == [3, 3]  # three pieces went through each of the two stages


def test_micro_batches_need_a_shared_symbolic_batch_dim(rng):
    net = ResidualNet(rng)
    t = dnet.TensorType((2, 3, 8), dnet.f32)
    with dnet.compile(net, {"x": t, "mask": t}, topology=_topology(2)) as exe:
        with pytest.raises(DnetError, match="cannot cut this model's requests into micro-batches"):
            exe.run(request(rng), micro_batches=2)


def test_symbolic_dims_the_caller_does_not_size_are_planned_at_one(rng):
    net = ResidualNet(rng)
    t = dnet.TensorType(("batch", "seq", 8), dnet.f32)
    with dnet.compile(net, {"x": t, "mask": t}, topology=_topology(2)) as exe:
        req = request(rng, batch=3, seq=4)
        out = exe.run(req)["output"]
    np.testing.assert_allclose(out, oracle(net, req["x"], req["mask"]), rtol=1e-5, atol=1e-5)


def test_a_worker_lost_without_a_spare_is_planned_around_and_no_request_is_lost(rng):
    net = ResidualNet(rng)
    t = dnet.TensorType(("batch", "seq", 8), dnet.f32)
    with dnet.compile(net, {"x": t, "mask": t}, topology=_topology(3), env={"batch": 2, "seq": 3},
                      heartbeat_s=0.2, dead_after_s=2.0) as exe:
        assert sorted(exe.pipeline.placement) == [0, 1, 2]       # every worker runs a stage: none is spare
        reqs = [request(rng) for _ in range(12)]
        futures = [exe.coordinator.submit(r) for r in reqs[:6]]
        victim = exe.pipeline.placement[1]
        exe.local.kill(victim)
        futures += [exe.coordinator.submit(r) for r in reqs[6:]]
        outs = [f.result(timeout=30) for f in futures]
        assert victim not in exe.pipeline.placement and exe.coordinator.placement == exe.pipeline.placement
    for req, out in zip(reqs, outs):
        np.testing.assert_allclose(out["output"], oracle(net, req["x"], req["mask"]), rtol=1e-5, atol=1e-5)


def test_workers_at_addresses_measure_their_links_and_the_plan_uses_the_figures(rng, tmp_path):
    from dnet.cluster import LocalCluster

    net = ResidualNet(rng)
    t = dnet.TensorType(("batch", "seq", 8), dnet.f32)
    with LocalCluster(2, cache_dir=str(tmp_path)) as local:
        topo = _topology(2)
        for node, address in zip(topo.nodes, local.addresses):
            node.address = address
        topo.add_link("local0", "local1", 1e3, 1.0)          # the file is wrong: 1 KB/s, 1 s
        with dnet.compile(net, {"x": t, "mask": t}, topology=topo, env={"batch": 2, "seq": 3},
                          secret=local.secret) as exe:
            measured = exe.topology.link("local0", "local1")
            req = request(rng)
            out = exe.run(req)
            assert sorted(exe.pipeline.placement) == [0, 1]   # loopback is fast: both nodes used
    assert measured.bandwidth > 1e7 and measured.latency < 0.01
    np.testing.assert_allclose(out["output"], oracle(net, req["x"], req["mask"]), rtol=1e-5, atol=1e-5)
