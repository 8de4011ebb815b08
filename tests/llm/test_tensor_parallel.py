"""Tensor-parallel members of a decoder (dnet.llm.tensor_parallel): each holds its heads and features,
sums its partials with the others (ALL_REDUCE), and the joined logits equal the whole model's."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from dnet.backends import registry
from dnet.errors import BackendError, DnetError
from dnet.llm.engine import step_inputs
from dnet.llm.model import build_graph
from dnet.llm.read import read_model
from dnet.llm.tensor_parallel import best_group, split_model
from dnet.program.instructions import AllReduce
from dnet.runtime.state import SlotState

from tiny_models import write_tiny_gguf

CONTEXT = 32


class ThreadGroup:
    """The members of a group as threads of this process: each adds every member's partial in rank order."""

    def __init__(self, size: int):
        self.barrier = threading.Barrier(size, timeout=30)
        self.parts: list = [None] * size
        self.calls = 0

    def member(self, rank: int):
        def all_reduce(group: str, x: np.ndarray) -> None:
            self.parts[rank] = x.copy()
            self.barrier.wait()
            total = self.parts[0].copy()
            for part in self.parts[1:]:
                total += part
            self.barrier.wait()
            x[...] = total
            self.calls += rank == 0
        return all_reduce


def _generate(graph, runner, collective=None) -> list[np.ndarray]:
    """Logits of a 5-token prompt (every position), then of three decode steps."""
    state = SlotState.of(graph, 1)
    steps = [([0], [[1, 5, 9, 3, 7]], np.arange(5))] + [([5 + t], [[tok]], np.arange(1))
                                                          for t, tok in enumerate([11, 2, 40])]
    out = []
    for starts, tokens, rows in steps:
        inputs = {**step_inputs(starts, np.array(tokens, np.int64), rows), **state.bind(0, 1)}
        out.append(runner.run(inputs, collective)["logits"] if collective else runner.run(inputs)["logits"])
    return out


def _members(model, shards, target: str, **options) -> list[list[np.ndarray]]:
    graphs = [build_graph(model.config, model.tensors, CONTEXT, s) for s in shards]
    runners = [registry.prepare(target, g, **options) for g in graphs]
    group, results = ThreadGroup(len(shards)), [None] * len(shards)

    def run(rank: int) -> None:
        results[rank] = _generate(graphs[rank], runners[rank], group.member(rank))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(len(shards))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert group.calls == 4 * 2 * model.config.num_layers   # two sums a layer, every step
    return results


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tp")
    return {fmt: read_model(write_tiny_gguf(folder, "llama", fmt=fmt, name=f"tiny-{fmt}")) for fmt in ("f32", "q4_0")}


def test_split_follows_speeds_in_whole_heads_and_blocks(tiny):
    model = tiny["q4_0"]
    cfg = model.config
    shards = split_model(cfg, model.tensors, [2.0, 1.0])
    assert [s.kv_heads for s in shards] == [(0, 1), (1, 2)]           # 2 KV heads: one each
    assert [s.ffn for s in shards] == [(0, 96), (96, 128)]   # 4 blocks of 32: 2.67, 1.33 -> 2, 1, the rest to 0
    assert shards[0].vocab == (0, cfg.vocab_size * 2 // 3) and shards[1].vocab[1] == cfg.vocab_size
    with pytest.raises(DnetError, match="KV heads"):
        split_model(cfg, model.tensors, [1.0, 1.0, 1.0])


@pytest.mark.parametrize("target, fmt, tol", [("numpy", "f32", 1e-5), ("c", "f32", 1e-4), ("c", "q4_0", 2e-3)])
def test_members_joined_equal_the_whole_model(tiny, target, fmt, tol):
    model = tiny[fmt]
    options = {"threads": 1} if target == "c" else {}
    whole = build_graph(model.config, model.tensors, CONTEXT)
    expected = _generate(whole, registry.prepare(target, whole, **options))
    members = _members(model, split_model(model.config, model.tensors, [1.0, 2.0]), target, **options)
    for step, want in enumerate(expected):
        got = np.concatenate([m[step] for m in members], axis=-1)
        np.testing.assert_allclose(got, want, atol=tol * np.abs(want).max(), rtol=0)
        assert (got.argmax(-1) == want.argmax(-1)).all()


def test_c_program_sums_each_layer_twice_between_segments(tiny):
    model = tiny["q4_0"]
    shard = split_model(model.config, model.tensors, [1.0, 1.0])[0]
    graph = build_graph(model.config, model.tensors, CONTEXT, shard)
    program = registry.prepare("c", graph, threads=1).program
    sums = [ins for ins in program.instrs if isinstance(ins, AllReduce)]
    assert len(sums) == 2 * model.config.num_layers and {(s.group, s.size) for s in sums} == {("tp", 2)}


@pytest.mark.parametrize("target", ["numpy", "c"])
def test_a_member_run_without_its_group_is_refused(tiny, target):
    model = tiny["f32"]
    shard = split_model(model.config, model.tensors, [1.0, 1.0])[1]
    graph = build_graph(model.config, model.tensors, CONTEXT, shard)
    runner = registry.prepare(target, graph, **({"threads": 1} if target == "c" else {}))
    state = SlotState.of(graph, 1)
    with pytest.raises(BackendError, match="ALL_REDUCE"):
        runner.run({**step_inputs([0], np.array([[1, 2]], np.int64), np.arange(1)), **state.bind(0, 1)})


def test_best_group_pays_for_its_exchanges_or_is_not_chosen():
    seconds = [0.010, 0.010, 0.040]             # whole-model step on each node
    lat = np.full((3, 3), 1e-4)
    bw = np.full((3, 3), 1e9)
    exchange = 1e-4 + 1e3 / 1e9                 # per all-reduce: latency + 1 kB over the link
    # two fast nodes: 0.005 s of work each, then 60 exchanges
    two = best_group(seconds, lat, bw, exchanges=60, exchange_bytes=1e3, max_members=2)
    assert two.members == (0, 1) and two.compute_seconds == pytest.approx(0.005)
    assert two.seconds == pytest.approx(0.005 + 60 * exchange)
    # the slow third node still shortens the work (1 / (100 + 100 + 25) s) at the same exchange cost
    three = best_group(seconds, lat, bw, exchanges=60, exchange_bytes=1e3, max_members=3)
    assert three.members == (0, 1, 2) and three.seconds == pytest.approx(1 / 225 + 60 * exchange)
    # ... unless it cannot hold its share; no link between the fast two: no group at all
    assert best_group(seconds, lat, bw, 60, 1e3, 3, fits=[[True] * 3, [True, True, False]]).members == (0, 1)
    cut = bw.copy()
    cut[0, 1] = 0
    assert best_group(seconds, lat, cut, 60, 1e3, 2) is None
