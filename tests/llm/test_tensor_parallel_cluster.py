"""SmolLM2 split over a tensor-parallel group of local worker processes: every layer's heads and MLP
features divided between them, two all-reduces a layer over their own links.

Oracle: the same model on one node (`dnet.llm.load` without a topology), greedy.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from dnet.llm import load
from dnet.topology import Device, Topology

from test_cluster_generation import PROMPTS, greedy

CONTEXT = 128
STEPS = 8


@pytest.fixture(scope="module")
def single():
    with load(context=CONTEXT, slots=2) as llm:
        yield llm


def test_a_tensor_parallel_group_decodes_as_one_node(single):
    topo = Topology.local(3, scales=[1.0, 1.0, 0.5])     # three members, the last with a smaller share
    with load(context=CONTEXT, topology=topo, parallel="tensor", slots=2) as llm:
        exe = llm.engine.exe
        assert exe.pipeline.parallel and sorted(exe.coordinator.placement) == [0, 1, 2]
        assert greedy(llm, PROMPTS[:2], STEPS) == greedy(single, PROMPTS[:2], STEPS)    # two streams at once
        ids = single.tokenizer.encode(" ".join(PROMPTS))
        got, want = llm.logits(ids), single.logits(ids)          # a prefill: every position's logits
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-2)
        assert (got.argmax(-1) == want.argmax(-1)).all()
        assert all(t.runs > 0 for t in exe.timings.values())     # every member ran every step


def test_the_group_links_are_shaped_like_the_topology(single):
    """Two members over links of 10 ms: a request crosses them twice a layer (an all-reduce each), so a
    prefill cannot take less than 2 x layers x 10 ms (hand-derived: each member waits for the other's
    partial, sent 10 ms after it was put), and its logits are one node's."""
    latency = 10e-3
    with load(context=CONTEXT, topology=Topology.local(2, latency=latency), parallel="tensor") as llm:
        assert llm.engine.exe.pipeline.parallel
        ids = single.tokenizer.encode(PROMPTS[0])
        llm.logits(ids)                                          # warm: the members' first run
        start = time.perf_counter()
        got = llm.logits(ids)
        seconds = time.perf_counter() - start
        assert seconds >= 2 * single.config.num_layers * latency
        np.testing.assert_allclose(got, single.logits(ids), rtol=0, atol=2e-2)


def test_a_member_killed_mid_generation_the_survivors_finish_every_sequence(single):
    expected = greedy(single, PROMPTS[:2], STEPS)
    with load(context=CONTEXT, topology=Topology.local(2), parallel="tensor", slots=2) as llm:
        exe = llm.engine.exe
        victim = exe.coordinator.placement[1]

        def kill(k: int) -> None:
            if k == 3:
                exe.local.kill(victim)

        assert greedy(llm, PROMPTS[:2], STEPS, after_step=kill) == expected
        assert llm.engine.rebuilds == 1 and exe.coordinator.placement == [0] and not exe.coordinator.parallel


def test_auto_keeps_a_group_whose_exchanges_cost_more_than_they_save(single):
    """Two equal nodes over a link of 1 ms: 60 all-reduces a token cost far more than half the model saves.
    The nodes' figures are given, not probed: a probe taken while the machine is busy (kept ten minutes, marked
    suspect) prices a step at half a second, and then a group would pay."""
    device = Device(kind="cpu", cores=1, compute={"f32": 50e9}, memory=8e9, memory_bandwidth=10e9)
    topo = Topology.local(2, device=device, latency=1e-3)    # a step about 10 ms on one node, by these figures
    with load(context=CONTEXT, topology=topo, parallel="auto") as llm:
        assert not llm.engine.exe.pipeline.parallel
