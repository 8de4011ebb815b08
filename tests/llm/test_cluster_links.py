"""Generation across workers at addresses: the links are measured by the workers when the session forms and
measured again by the feedback loop (`llm.engine.retune`), so a plan never rests on a topology file's figures.

Oracles: the same tiny model on one node, greedy; a link figure that loopback cannot have (1 KB/s, 1 s) must be
replaced by what the workers measure (loopback: far above 10 MB/s, far under 10 ms)."""
from __future__ import annotations

from dnet.cluster import LocalCluster
from dnet.llm import load
from dnet.topology import Topology
from test_cluster_weights import equal
from tiny_models import write_tiny_gguf

PROMPT = "The capital of France is"


def addressed(local: LocalCluster) -> Topology:
    topology = Topology.local(len(local.addresses))
    for node, address in zip(topology.nodes, local.addresses):
        node.address = address
    return topology


def test_retune_for_generation_measures_the_links_again_and_the_text_stays(tmp_path):
    path = write_tiny_gguf(tmp_path, "llama", "q4_1")
    with load(path, context=64) as one:
        want = one.generate(PROMPT, max_tokens=8, temperature=0)
    with LocalCluster(2, cache_dir=str(tmp_path / "cache")) as local:
        topology = addressed(local)
        topology.add_link("local0", "local1", 1e3, 1.0)          # the file is wrong
        options = {"plan": equal, "secret": local.secret, "calibrate": False}
        with load(path, context=64, slots=2, topology=topology, cluster=options) as llm:
            exe = llm.engine.exe
            at_load = exe.topology.link("local0", "local1")
            assert at_load.bandwidth > 1e7 and at_load.latency < 0.01     # measured when the session formed
            # the network changes under a running session: what the planner holds goes stale
            exe.topology.add_link("local0", "local1", 1e3, 1.0)
            calls = []
            measure_links = exe.coordinator.measure_links
            exe.coordinator.measure_links = lambda *a, **k: calls.append(1) or measure_links(*a, **k)
            llm.engine.retune(rounds=1, windows=1, steps=2)
            again = exe.topology.link("local0", "local1")
            assert calls and again.bandwidth > 1e7 and again.latency < 0.01
            assert llm.generate(PROMPT, max_tokens=8, temperature=0) == want
