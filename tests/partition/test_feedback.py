"""JIT feedback: measured stage times correct the cost model and move the plan, checked against hand-solved plans.

A simulated cluster stands in for the workers: each node is secretly `secret[node]` times slower than the
model says, so a stage's measured time is its modelled time times that factor.
"""
import numpy as np
import pytest

from dnet.errors import DnetError
from dnet.partition import PipelineProblem, Stage
from dnet.partition.feedback import Measurement, corrected, layout, node_factors, retune, smooth


def uniform_problem(nodes: int, layers: int) -> PipelineProblem:
    """Identical nodes, identical 1 s layers, free links, room for everything: the model sees no difference."""
    return PipelineProblem(
        names=[f"n{i}" for i in range(nodes)], layer_names=[f"l{i}" for i in range(layers)],
        time=np.ones((nodes, layers)), weight=np.ones(layers), activation=np.zeros(layers),
        boundary=np.zeros(layers + 1), capacity=np.full(nodes, 1e9),
        bandwidth=np.full((nodes, nodes), 1e12), latency=np.zeros((nodes, nodes)))


class SimulatedCluster:
    """Stage seconds = modelled seconds x the node's secret factor (which may change each deployment)."""

    def __init__(self, p: PipelineProblem, secrets):
        self.p, self.secrets, self.deployed = p, secrets, []

    def __call__(self, stages: list[Stage]) -> Measurement:
        secret = np.asarray(self.secrets(len(self.deployed)) if callable(self.secrets) else self.secrets)
        self.deployed.append(list(stages))
        seconds = [float(self.p.time[s.node, s.start:s.stop].sum() * secret[s.node]) for s in stages]
        return Measurement(1.0 / max(seconds), seconds)


def layers_per_node(stages: list[Stage]) -> dict[int, int]:
    return {s.node: s.stop - s.start for s in stages}


def test_factors_are_measured_over_modelled_stage_time_per_node():
    p = uniform_problem(3, 6)
    stages = [Stage(0, 0, 2), Stage(2, 2, 6)]  # node 1 runs nothing
    factors = node_factors(p, stages, [2.0, 12.0])
    assert factors[0] == pytest.approx(1.0) and factors[2] == pytest.approx(3.0)
    assert np.isnan(factors[1])


def test_factors_need_one_time_per_stage():
    with pytest.raises(DnetError, match="1 stage times measured for a plan of 2 stages"):
        node_factors(uniform_problem(2, 4), [Stage(0, 0, 2), Stage(1, 2, 4)], [1.0])


def test_smoothing_is_a_geometric_mean_that_keeps_unmeasured_nodes():
    first = smooth(None, np.array([4.0, np.nan]))
    assert first[0] == 4.0 and np.isnan(first[1])  # node 1 not measured yet: the model's own value stands
    second = smooth(first, np.array([1.0, 9.0]), weight=0.5)
    assert second == pytest.approx([2.0, 9.0])  # sqrt(4 * 1); node 1's first measurement
    assert smooth(second, np.array([np.nan, 1.0]), weight=0.5) == pytest.approx([2.0, 3.0])


def test_a_secretly_slow_node_gets_its_factor_and_loses_layers_to_the_hand_solved_optimum():
    # 6 layers of 1 s on two nodes the model thinks equal: the plan splits them 3/3. Node 1 is really 3x
    # slower; with a layers on node 0, the bottleneck is max(a, 3 (6 - a)): a = 5 gives 5 s (a = 4: 6 s).
    p = uniform_problem(2, 6)
    cluster = SimulatedCluster(p, [1.0, 3.0])
    start = [Stage(0, 0, 3), Stage(1, 3, 6)]
    rounds = retune(p, start, cluster, rounds=10)
    first, last = rounds[0], rounds[-1]
    assert first.factors == pytest.approx([1.0, 3.0])
    assert first.predicted == pytest.approx(1 / 9) and first.moved
    assert layers_per_node(first.proposal) == {0: 5, 1: 1}
    assert first.proposal_predicted == pytest.approx(1 / 5)
    assert len(rounds) == 2 and not last.moved  # the fixed point stops the loop long before 10 rounds
    assert last.stages == first.proposal and cluster.deployed == [start, first.proposal]
    assert last.predicted == pytest.approx(1 / 5) == pytest.approx(last.measured.throughput)


def test_a_gain_below_the_threshold_does_not_move_the_plan():
    # 100 layers, node 1 really 1.1x slower: 50/50 costs 55 s; the best, 52/48, costs max(52, 1.1 * 48) = 52.8 s,
    # 4 % faster (53/47 costs 53 s)
    p = uniform_problem(2, 100)
    start = [Stage(0, 0, 50), Stage(1, 50, 100)]
    held = retune(p, start, SimulatedCluster(p, [1.0, 1.1]), threshold=0.05)
    assert len(held) == 1 and not held[0].moved and held[0].stages == start
    moved = retune(p, start, SimulatedCluster(p, [1.0, 1.1]), threshold=0.03)
    assert moved[0].moved and layers_per_node(moved[-1].stages) == {0: 52, 1: 48}
    assert moved[-1].predicted == pytest.approx(1 / 52.8)


def test_the_threshold_keeps_noise_from_making_work_flap_between_nodes():
    # each measurement finds one node 3 % slow, the other one each time: without a threshold the plan follows
    # the noise away and back again; with the default 5 % it stays where it is
    p = uniform_problem(2, 100)
    start = [Stage(0, 0, 50), Stage(1, 50, 100)]

    def noise(deployment: int) -> list[float]:
        return [1.03, 1.0] if deployment % 2 == 0 else [1.0, 1.03]

    flapping = retune(p, start, SimulatedCluster(p, noise), rounds=4, threshold=0.0)
    assert [r.moved for r in flapping[:2]] == [True, True]
    assert layers_per_node(flapping[1].stages) != layers_per_node(start) == layers_per_node(flapping[2].stages)
    steady = retune(p, start, SimulatedCluster(p, noise), rounds=4)
    assert len(steady) == 1 and steady[0].stages == start


def test_the_last_round_measures_the_plan_it_leaves_and_never_moves():
    p = uniform_problem(2, 6)
    cluster = SimulatedCluster(p, [1.0, 3.0])
    rounds = retune(p, [Stage(0, 0, 3), Stage(1, 3, 6)], cluster, rounds=1)
    assert len(rounds) == 1 and not rounds[0].moved and len(cluster.deployed) == 1
    assert layers_per_node(rounds[0].proposal) == {0: 5, 1: 1}  # what a further round would deploy


def test_the_corrected_model_scales_each_nodes_row():
    p = uniform_problem(2, 3)
    q = corrected(p, np.array([2.0, np.nan]))
    assert q.time.tolist() == [[2.0] * 3, [1.0] * 3] and p.time.tolist() == [[1.0] * 3] * 2
    assert layout(q, [Stage(1, 0, 1), Stage(0, 1, 3)]) == "n1:1 n0:2"
