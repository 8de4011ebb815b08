"""The JIT's feedback loop on a live local cluster: work moves off a slowed worker, outputs stay exact."""
import numpy as np
import pytest

from dnet.cluster.coordinator import Answer
from dnet.cluster.measure import summarize
from dnet.cluster.session import compile_distributed
from dnet.partition import Stage, build_problem, layer_chain, plan_from_stages
from dnet.partition.baselines import equal_split
from dnet.partition.feedback import stages_of
from dnet.topology import Device, Topology
from residual_nets import oracle, request, residual_graph


def test_retune_moves_layers_off_a_slowed_worker_and_the_outputs_still_match_numpy(rng):
    net, graph = residual_graph(rng, d=16, depth=6)
    device = Device(kind="numpy", cores=1, compute={"f32": 1e6}, memory=1e9, memory_bandwidth=1e9)
    topology = Topology.local(2, device=device, bandwidth=1e8, latency=1e-4)  # the model: two equal nodes
    env = {"batch": 2, "seq": 3}
    chain = layer_chain(graph, env)
    problem = build_problem(chain, topology)
    start = plan_from_stages(chain, topology, problem, equal_split(problem), "throughput", "equal")
    reqs = [request(rng, d=16) for _ in range(4)]
    with compile_distributed(graph, topology, plan=start, env=env, slowdowns=[1.0, 6.0]) as exe:
        rounds = exe.retune(reqs, rounds=3, windows=3, window=6)
        outs = exe.run_many(reqs)
        final = stages_of(exe.plan, problem)
    first = rounds[0]
    assert [(s.node, s.stop - s.start) for s in first.stages] == [(0, 3), (1, 3)]
    assert first.factors[1] > 3 * first.factors[0]  # worker 1 really is much slower than the model says
    assert first.moved
    slow_layers = sum(s.stop - s.start for s in final if s.node == 1)
    assert slow_layers < 3 and final == rounds[-1].stages
    for req, out in zip(reqs, outs):
        np.testing.assert_allclose(out["output"], oracle(net, req["x"], req["mask"]), rtol=1e-5, atol=1e-5)


def test_windows_leave_out_the_fill_and_take_medians():
    # answers every 0.1 s after a 1 s fill, except one disturbed window (answers 0.5 s apart)
    times = [1.0 + 0.1 * i for i in range(13)]
    times[9:13] = [times[8] + 0.5 * k for k in range(1, 5)]
    answers = [Answer(t, {0: 0.1, 1: 0.05 if i < 9 else 0.5}) for i, t in enumerate(times)]
    m = summarize(answers, n_stages=2, windows=3, window=4, warmup=1)
    assert m.window_throughputs == pytest.approx([4 / 0.4, 4 / 0.4, 4 / 2.0])
    assert m.throughput == pytest.approx(10.0) and m.stage_seconds == pytest.approx([0.1, 0.05])


def test_deploying_another_plan_with_requests_in_flight_answers_each_once_and_exactly(rng):
    net, graph = residual_graph(rng, d=16, depth=6)
    device = Device(kind="numpy", cores=1, compute={"f32": 1e6}, memory=1e9, memory_bandwidth=1e9)
    topology = Topology.local(2, device=device, bandwidth=1e8, latency=1e-4)
    reqs = [request(rng, d=16) for _ in range(8)]
    with compile_distributed(graph, topology, env={"batch": 2, "seq": 3}, slowdowns=[20.0, 20.0]) as exe:
        first = exe.plan
        moved = plan_from_stages(exe.chain, topology, exe.problem, [Stage(1, 0, exe.problem.n_layers)],
                                 "throughput", "one node")
        futures = [exe.coordinator.submit(r) for r in reqs]
        assert not all(f.done() for f in futures)  # still travelling when the plan moves
        exe.deploy(moved)
        outs = [f.result(30) for f in futures]
        assert exe.pipeline.placement == [1] and exe.coordinator.epoch == 1
        assert len(exe.coordinator.answers) == len(reqs)
    assert [s.node for s in first.stages] != ["local1"]
    for req, out in zip(reqs, outs):
        np.testing.assert_allclose(out["output"], oracle(net, req["x"], req["mask"]), rtol=1e-5, atol=1e-5)
