"""Workers started with the model's directory read their stage's weights from the GGUF file themselves.

Oracle: the same model on one node, greedy; the coordinator's counters say which bytes travelled
(`weight_bytes_sent`) and which the workers read from their own copy of the file (`weight_bytes_mapped`)."""
from __future__ import annotations

import dataclasses

import pytest

from dnet.llm import load
from dnet.partition import build_problem, layer_chain, plan_from_stages
from dnet.partition.baselines import equal_split
from dnet.topology import Topology
from tiny_models import write_tiny_gguf, write_tiny_hf_folder

CONTEXT = 128
PROMPTS = ["The capital of France is", "def fibonacci(n):"]


def capped(topology: Topology, memory: float) -> Topology:
    for node in topology.nodes:
        node.devices = [dataclasses.replace(d, memory=memory) for d in node.devices]
    return topology


def equal(graph, topology, env, objective):
    """Every worker a stage, whatever the cost model says: the tiny model would stay on one node."""
    chain = layer_chain(graph, env)
    problem = build_problem(chain, topology)
    return plan_from_stages(chain, topology, problem, equal_split(problem), objective, "equal")


@pytest.mark.parametrize("held", ["same", "changed", "none"])
def test_workers_holding_a_tiny_gguf_read_its_permuted_and_stacked_weights_and_answer_as_one_node(tmp_path, held):
    folder = tmp_path / "models"
    folder.mkdir()
    path = write_tiny_gguf(folder, "llama", "q4_1")   # llama: q/k rows permuted, q/k/v stacked on reading
    with load(path, context=64) as one:
        want = [one.generate(p, max_tokens=8, temperature=0) for p in PROMPTS]
    models = {"same": [str(folder)], "changed": [str(changed_copy(path, tmp_path / "changed"))], "none": []}[held]
    options = {"plan": equal, "models": models, "calibrate": False}
    with load(path, context=64, topology=Topology.local(2), cluster=options) as llm:
        assert len(llm.engine.exe.plan.stages) == 2
        assert [llm.generate(p, max_tokens=8, temperature=0) for p in PROMPTS] == want
        coordinator = llm.engine.exe.coordinator
        if held == "same":
            assert coordinator.weight_bytes_mapped >= llm.weight_bytes
            assert coordinator.weight_bytes_sent < llm.weight_bytes / 10   # what travels: RoPE tables dnet computes
        else:   # sent, or found in the workers' weight cache from an earlier run
            assert coordinator.weight_bytes_mapped == 0


def changed_copy(path, folder):
    """A copy of the file under the same name, its last byte (inside the last tensor) changed."""
    folder.mkdir()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    (folder / path.name).write_bytes(bytes(data))
    return folder


def test_workers_read_a_hugging_face_folders_safetensors_shards_by_default(tmp_path):
    folder = write_tiny_hf_folder(tmp_path / "qwen2", "qwen2", max_shard_size="100KB")   # several shards
    assert len(list(folder.glob("*.safetensors"))) > 1
    with load(folder, context=64) as one:
        want = [one.generate(p, max_tokens=8, temperature=0) for p in PROMPTS]
    with load(folder, context=64, topology=Topology.local(2), cluster={"plan": equal, "calibrate": False}) as llm:
        assert [llm.generate(p, max_tokens=8, temperature=0) for p in PROMPTS] == want
        coordinator = llm.engine.exe.coordinator
        assert coordinator.weight_bytes_mapped >= llm.weight_bytes
        assert coordinator.weight_bytes_sent < llm.weight_bytes / 10


@pytest.fixture(scope="module")
def single():
    with load(context=CONTEXT) as llm:
        yield llm


def test_smollm2_split_over_local_workers_sends_almost_no_weights_they_read_its_gguf(single):
    topo = capped(Topology.local(3), 60e6)     # no node can hold it: it is split
    with load(context=CONTEXT, topology=topo) as llm:   # local workers are given the model's file by default
        assert len(llm.engine.exe.plan.stages) >= 2
        assert llm.generate(PROMPTS[0], max_tokens=12, temperature=0) == \
            single.generate(PROMPTS[0], max_tokens=12, temperature=0)
        coordinator = llm.engine.exe.coordinator
        assert coordinator.weight_bytes_mapped >= llm.weight_bytes       # 96.6 MB, the embedding on two workers
        assert coordinator.weight_bytes_sent < llm.weight_bytes / 100    # 33 KB of RoPE tables
