"""dnet on a Ray cluster: one worker per Ray node, in a Ray actor; models planned and run across them.

One Ray cluster for the module (`ray.cluster_utils.Cluster`: three Ray nodes on this machine with 1, 2 and 3
CPUs, the third declaring a GPU where this machine cannot run cuda: a GPU only in Ray's books). Models (a small
residual net, MiniLM, a tiny LLM, SmolLM2) are spread over every actor. Oracle: the same model on one node, in
this process. About 45 s on two cores.
"""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (the optional extra `dnet[ray]`)")
cluster_utils = pytest.importorskip("ray.cluster_utils")

import dnet  # noqa: E402 - after the skip: without Ray there is nothing here to import for
from dnet.backends import registry  # noqa: E402
from dnet.cluster.ray_cluster import RayCluster, node_device  # noqa: E402
from dnet.partition import build_problem, layer_chain, plan_from_stages  # noqa: E402
from dnet.partition.problem import Stage  # noqa: E402
from dnet.topology import Device  # noqa: E402
from residual_nets import ResidualNet, request  # noqa: E402

CPUS = [1, 2, 3]
NO_CUDA = registry.unavailable("cuda")   # why this machine (every Ray node here) cannot run cuda; None: it can
# a GPU declared where cuda runs would be a real one, and a fourth worker every test here would have to expect
GPUS = [0, 0, 1] if NO_CUDA else [0, 0, 0]


@pytest.fixture(scope="module")
def topology():
    try:
        nodes = cluster_utils.Cluster(initialize_head=True,
                                      head_node_args={"num_cpus": CPUS[0], "include_dashboard": False})
    except Exception as err:  # noqa: BLE001 - Ray's own processes cannot start here (no /dev/shm, ports, ...)
        pytest.skip(f"Ray cannot start a cluster on this machine: {type(err).__name__}: {err}")
    try:
        for cpus, gpus in zip(CPUS[1:], GPUS[1:]):
            nodes.add_node(num_cpus=cpus, num_gpus=gpus)
        nodes.wait_for_nodes()
        ray.init(address=nodes.address, logging_level="WARNING")
        topology = dnet.Topology.from_ray(max_restarts=2)   # Ray is running: its cluster, not a new one
        try:
            yield topology
        finally:
            topology.cluster.close()
    finally:
        ray.shutdown()
        nodes.shutdown()


@pytest.fixture(scope="module")
def ray_cluster(topology) -> RayCluster:
    return topology.cluster


def spread(graph, topology, env, objective="throughput"):
    """A plan giving every node an equal run of layers, so the test is sure to cross every actor."""
    chain = layer_chain(graph, env)
    problem = build_problem(chain, topology)
    bounds = np.linspace(0, problem.n_layers, len(topology.nodes) + 1).astype(int)
    stages = [Stage(k, int(a), int(b)) for k, (a, b) in enumerate(zip(bounds, bounds[1:])) if b > a]
    return plan_from_stages(chain, topology, problem, stages, objective, "spread")


def test_each_ray_node_runs_one_worker_sized_by_its_cpus(topology):
    assert len(topology.nodes) == len(CPUS)
    assert len({n.address for n in topology.nodes}) == len(CPUS)
    # Ray's CPUs, but never more than the machine has (a Ray node's CPU count is only a number)
    cores = len(os.sched_getaffinity(0))
    assert sorted(n.devices[0].cores for n in topology.nodes) == [min(c, cores) for c in CPUS]
    rates = {n.devices[0].cores: n.devices[0].compute["f32"] for n in topology.nodes}
    if cores >= 2:   # rates follow the CPUs Ray gives the node
        assert rates[2] == pytest.approx(2 * rates[1])
    # every link measured by the workers themselves, both ways
    assert len(topology.links) == len(CPUS) * (len(CPUS) - 1)
    assert all(link.bandwidth > 0 and link.latency > 0 for link in topology.links.values())


@pytest.mark.skipif(not NO_CUDA, reason="this machine runs cuda: the test's Ray node has no GPU to fake")
def test_a_ray_nodes_gpu_is_claimed_and_where_cuda_cannot_run_the_node_joins_on_its_cpus_saying_why(
        ray_cluster, topology):
    # the actor holds the node's GPU in Ray's books while the cluster runs (Ray's view lags its grants a little)
    gpu = [r["GPU"] for r in ray_cluster.resources].index(1)        # its place in Ray's order of nodes
    assert ray.cluster_resources()["GPU"] == 1 and ray_cluster.claimed == [int(i == gpu) for i in range(len(CPUS))]
    deadline = time.monotonic() + 10
    while ray.available_resources().get("GPU", 0) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("GPU", 0) == 0
    # ... but cuda cannot run on it: its worker runs the CPU backend alone, and the report says why, once
    node = topology.nodes[gpu]
    assert [d.kind for d in node.devices] == ["numpy"] and ray_cluster.resources[gpu]["CPU"] == 3
    assert ray_cluster.backends == [["numpy"]] * len(CPUS) and len(topology.nodes) == len(CPUS)
    assert ray_cluster.notes == [f"node {node.name}: 1 GPU not used: {NO_CUDA}"]
    # the models below are spread over every node, this one included, and equal one node's results


def test_a_nodes_device_is_the_probe_cut_to_rays_cpus_and_memory():
    probed = Device(cores=8, compute={"f32": 8e9}, memory=32e9, memory_bandwidth=8e9, op_rates={"add": 4e9})
    device = node_device(probed, cpus=2, memory=4e9)
    assert (device.cores, device.compute, device.memory) == (2, {"f32": 2e9}, 4e9)
    assert device.op_rates == {"add": 1e9} and device.memory_bandwidth == 2e9
    assert node_device(probed, cpus=16, memory=None).compute == {"f32": 8e9}   # never more than the probe


def test_a_tiny_llm_generates_across_the_actors_the_same_text_as_one_node(topology, tmp_path):
    from tiny_models import write_tiny_gguf

    path = write_tiny_gguf(tmp_path, "llama", "f32")
    prompt = "The quick brown fox"
    with dnet.llm.load(path, target="numpy", context=32) as one:
        want = one.generate(prompt, max_tokens=8, temperature=0)
    with dnet.llm.load(path, target="numpy", context=32, topology=topology,
                       cluster={"plan": spread}) as llm:
        assert len({s.node for s in llm.engine.exe.plan.stages}) == len(CPUS)
        assert llm.generate(prompt, max_tokens=8, temperature=0) == want


def test_minilm_across_the_actors_embeds_as_one_node_does(topology):
    from dnet.cluster.session import compile_distributed
    from dnet.models import load_minilm

    encoder = load_minilm()
    graph = encoder.executable.graph
    inputs = encoder.tokenize(["A man is eating food.", "The girl is carrying a baby."])
    env = {"batch": 2, "seq": inputs["input_ids"].shape[1]}
    want = encoder.executable.run(inputs)[graph.output_names[0]]
    with compile_distributed(graph, topology, env=env, plan=lambda topo: spread(graph, topo, env)) as exe:
        assert sorted(exe.pipeline.placement) == [0, 1, 2]
        got = exe.run(inputs)[graph.output_names[0]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_model_across_the_actors_equals_one_node_through_killed_and_restarted_actors(ray_cluster, topology):
    rng = np.random.default_rng(0)
    net = ResidualNet(rng, depth=6)
    t = dnet.TensorType(("batch", "seq", 8), dnet.f32)
    inputs = {"x": t, "mask": t}
    env = {"batch": 2, "seq": 3}
    reqs = [request(rng) for _ in range(6)]
    single = dnet.compile(net, inputs)
    want = [single.run(r)["output"] for r in reqs]
    pids = ray_cluster.pids()
    with dnet.compile(net, inputs, topology=topology, env=env,
                      plan=lambda topo: spread(dnet.to_graph(net, inputs), topo, env)) as exe:
        assert sorted(exe.pipeline.placement) == [0, 1, 2]
        for got, expected in zip(exe.run_many(reqs), want):
            np.testing.assert_allclose(got["output"], expected, rtol=1e-6, atol=1e-6)
        victim = exe.pipeline.placement[1]
        os.kill(pids[victim], signal.SIGKILL)       # the actor's process, and with it its worker
        for got, expected in zip(exe.run_many(reqs), want):
            np.testing.assert_allclose(got["output"], expected, rtol=1e-6, atol=1e-6)
        assert victim not in exe.coordinator.placement   # planned again over the two survivors
        # Ray restarts the actor; its fresh worker joins the session as a spare (a fourth node) ...
        deadline = time.monotonic() + 60
        while len(exe.topology.nodes) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert exe.topology.nodes[3].name == f"{topology.nodes[victim].name}.1"
        assert exe.coordinator.workers[3].alive and 3 not in exe.coordinator.placement
        # ... which takes the stages of the next worker lost
        second = exe.coordinator.placement[0]
        os.kill(ray_cluster.pids()[second], signal.SIGKILL)
        for got, expected in zip(exe.run_many(reqs), want):
            np.testing.assert_allclose(got["output"], expected, rtol=1e-6, atol=1e-6)
        assert 3 in exe.coordinator.placement and second not in exe.coordinator.placement
    # Ray restarted the actor: a fresh process, a fresh worker at a new address, back in the next topology
    restarted = ray_cluster.pids()
    assert [restarted[i] != pids[i] for i in range(len(pids))] == [i in (victim, second) for i in range(len(pids))]
    again = ray_cluster.topology(measure_links=False)
    assert again.nodes[victim].address != topology.nodes[victim].address
    with dnet.compile(net, inputs, topology=again, env=env,
                      plan=lambda topo: spread(dnet.to_graph(net, inputs), topo, env)) as exe:
        np.testing.assert_allclose(exe.run(reqs[0])["output"], want[0], rtol=1e-6, atol=1e-6)


def _doc_block(needle: str) -> str:
    """The python block of docs/cluster.md that holds `needle`, as a reader would paste it."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "cluster.md").read_text()
    return next(b for b in re.findall(r"^```python\n(.*?)^```", text, re.S | re.M) if needle in b)


class Net(dnet.Module):
    """Six layers of one input, as the docs' `model`, `inputs` and `x` assume."""

    def __init__(self):
        super().__init__()
        self.layers = dnet.ModuleList([dnet.nn.Linear(32, 32) for _ in range(6)])

    def forward(self, x):
        for layer in self.layers:
            x = dnet.functional.gelu(layer(x))
        return x


def test_the_ray_example_of_cluster_md_runs_smollm2_and_a_model_as_one_node_does(topology):
    """The docs' block, on the running Ray cluster (it places actors of its own and removes them)."""
    model = Net()
    dnet.nn.init.seeded_(model, seed=0)
    inputs = [dnet.TensorType(("batch", 32), dnet.f32)]
    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    scope = {"model": model, "inputs": inputs, "x": x, "print": lambda *a: None, "spread": spread}
    block = _doc_block("Topology.from_ray()")
    # as written, but SmolLM2 spread over every actor (one stream alone would be planned onto one node)
    placeholder = "dnet.llm.load(topology=topology)"
    assert placeholder in block, "the docs' example changed: update this test"
    block = block.replace(placeholder, "dnet.llm.load(topology=topology, cluster={'plan': spread})")
    block = block.replace("    text = ", "    stages = {s.node for s in llm.engine.exe.plan.stages}\n    text = ")
    exec(compile(block, "docs/cluster.md (Ray)", "exec"), scope)  # noqa: S102
    assert len(scope["stages"]) == len(CPUS)
    np.testing.assert_allclose(scope["y"], dnet.compile(model, inputs)(x), rtol=1e-5, atol=1e-6)
    with dnet.llm.load() as one:
        assert scope["text"] == one.generate("The capital of France is", max_tokens=12, temperature=0)
    assert not scope["topology"].cluster.actors   # closed: its actors are gone


def _json_events(stderr: str) -> dict[str, list[dict]]:
    """`--json`'s lines on stderr, by task name (notes under "note")."""
    import json

    events: dict[str, list[dict]] = {}
    for line in stderr.splitlines():
        record = json.loads(line)
        events.setdefault(record.get("name", record["event"]), []).append(record)
    return events


def test_dnet_cluster_ray_prints_a_worker_per_ray_node_and_reports_progress_as_json(topology):
    """The command on the running Ray cluster (it places actors of its own): a row per Ray node with
    the CPUs Ray gives it, and with --json each step counted on stderr, one worker and one link at a time."""
    from click.testing import CliRunner

    from dnet.cli.main import _load_commands, cli

    _load_commands()
    result = CliRunner().invoke(cli, ["cluster", "ray", "--json"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.count("│") > 4 and "ray-" in line]
    assert len(rows) == len(CPUS)
    assert sorted(int(row.split("│")[7].strip()) for row in rows) == CPUS      # the "Ray CPUs" column
    assert sorted(int(row.split("│")[8].strip()) for row in rows) == sorted(GPUS)
    assert [row.split("│")[9].strip() for row in rows] == ["numpy"] * len(CPUS)   # the backends of its workers
    if NO_CUDA:   # the module's cluster holds the GPU: this command's cluster says so, rather than wait for it
        gpu_node = next(row.split("│")[1].strip() for row in rows if row.split("│")[8].strip() == "1")
        assert f"node {gpu_node}: 1 GPU not used: held by other Ray work" in result.stdout
    events = _json_events(result.stderr)
    started = events["start dnet workers on Ray nodes"]
    assert [e["event"] for e in started] == ["start"] + ["advance"] * len(CPUS) + ["done"]
    links = events["measure links between workers"]
    assert links[-1]["event"] == "done" and links[-1]["completed"] == links[-1]["total"] == len(CPUS) * (len(CPUS) - 1)
    assert events["note"][-1]["workers"] == len(CPUS) and events["note"][-1]["formed_s"] > 0
