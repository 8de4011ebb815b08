"""Pipeline solvers against brute force: every order of every subset of nodes, every set of cuts."""
import itertools

import numpy as np
import pytest

from dnet.errors import DnetError
from dnet.partition import PipelineProblem, PlanError, Stage, evaluate, solve, solve_exact, solve_heuristic, solve_order
from dnet.partition.baselines import equal_split, halda, memory_proportional


def random_problem(rng, nodes, layers, memory=1.0):
    return PipelineProblem(
        names=[f"n{i}" for i in range(nodes)], layer_names=[f"l{i}" for i in range(layers)],
        time=rng.uniform(0.5, 2, (nodes, 1)) * rng.uniform(1, 2, (1, layers)),
        weight=rng.uniform(1, 3, layers), activation=rng.uniform(0, 1, layers),
        boundary=rng.uniform(0, 2, layers + 1), capacity=memory * rng.uniform(3, 3 + 3.0 * layers / nodes, nodes),
        bandwidth=rng.uniform(0.5, 5, (nodes, nodes)) * (rng.random((nodes, nodes)) > 0.2),
        latency=rng.uniform(0, 0.2, (nodes, nodes)))


def brute_force(p, objective):
    """The oracle: try every assignment, keep the best feasible one."""
    best = np.inf
    for m in range(1, p.n_nodes + 1):
        for order in itertools.permutations(range(p.n_nodes), m):
            for cuts in itertools.combinations(range(1, p.n_layers), m - 1):
                b = [0, *cuts, p.n_layers]
                metrics = evaluate(p, [Stage(order[i], b[i], b[i + 1]) for i in range(m)])
                if metrics.feasible:
                    best = min(best, metrics.bottleneck if objective == "throughput" else metrics.latency)
    return best


@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_exact_solver_matches_brute_force(objective):
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(25):
        p = random_problem(rng, int(rng.integers(2, 5)), int(rng.integers(3, 7)))
        truth = brute_force(p, objective)
        if not np.isfinite(truth):
            with pytest.raises(PlanError):
                solve_exact(p, objective)
            continue
        sol = solve_exact(p, objective)
        metrics = evaluate(p, sol.stages)
        assert metrics.feasible
        assert sol.cost == pytest.approx(truth)
        assert (metrics.bottleneck if objective == "throughput" else metrics.latency) == pytest.approx(truth)
        assert solve(p, objective).cost == pytest.approx(truth)
        checked += 1
    assert checked >= 15


def test_order_dp_is_exact_for_its_order():
    rng = np.random.default_rng(3)
    p = random_problem(rng, 3, 6, memory=3.0)
    order = [2, 0, 1]
    best = np.inf
    for m in range(1, 4):
        for used in itertools.combinations(order, m):   # subsequences of the order
            for cuts in itertools.combinations(range(1, 6), m - 1):
                b = [0, *cuts, 6]
                metrics = evaluate(p, [Stage(used[i], b[i], b[i + 1]) for i in range(m)])
                if metrics.feasible:
                    best = min(best, metrics.bottleneck)
    assert solve_order(p, order).cost == pytest.approx(best)


def test_heuristic_is_feasible_and_never_better_than_exact():
    rng = np.random.default_rng(11)
    checked = 0
    for _ in range(10):
        p = random_problem(rng, 6, 12, memory=1.5)
        try:
            exact = solve_exact(p)
        except PlanError:
            continue
        heur = solve_heuristic(p, time_limit=0.1)
        assert evaluate(p, heur.stages).feasible
        assert heur.cost >= exact.cost * (1 - 1e-9)
        checked += 1
    assert checked >= 5  # infeasible instances check nothing: most must be feasible


def test_evaluate_hand_computed_two_stage_pipeline():
    p = PipelineProblem(["a", "b"], ["x", "y", "z"], time=np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]]),
                        weight=np.array([1.0, 1.0, 1.0]), activation=np.array([0.5, 0.25, 0.0]),
                        boundary=np.array([0.0, 10.0, 20.0, 0.0]), capacity=np.array([10.0, 10.0]),
                        bandwidth=np.array([[0.0, 10.0], [10.0, 0.0]]), latency=np.array([[0.0, 0.5], [0.5, 0.0]]))
    m = evaluate(p, [Stage(0, 0, 2), Stage(1, 2, 3)])
    assert m.node_time == {0: 3.0, 1: 6.0}
    assert m.link_time == {(0, 1): 0.5 + 20.0 / 10.0}
    assert m.bottleneck == 6.0 and m.latency == 3.0 + 2.5 + 6.0
    assert m.memory == {0: 2.0 + 0.5, 1: 1.0}


def test_memory_limits_and_missing_links_make_plans_infeasible():
    p = PipelineProblem(["a", "b"], ["x", "y"], time=np.ones((2, 2)), weight=np.array([4.0, 4.0]),
                        activation=np.zeros(2), boundary=np.ones(3), capacity=np.array([5.0, 5.0]),
                        bandwidth=np.zeros((2, 2)), latency=np.zeros((2, 2)))
    assert "needs" in evaluate(p, [Stage(0, 0, 2)]).problems[0]
    assert "no link from 'a' to 'b'" in evaluate(p, [Stage(0, 0, 1), Stage(1, 1, 2)]).problems[0]
    with pytest.raises(PlanError):
        solve(p)


def test_baselines_follow_their_rules():
    rng = np.random.default_rng(0)
    p = random_problem(rng, 3, 10, memory=10.0)
    p.bandwidth = np.maximum(p.bandwidth, 1.0)   # a ring needs every link
    assert [(s.start, s.stop) for s in equal_split(p)] == [(0, 4), (4, 7), (7, 10)]
    mem = memory_proportional(p)
    assert [s.node for s in mem] == list(np.argsort(-p.capacity))            # largest memory first
    counts = [s.stop - s.start for s in mem]
    assert counts == pytest.approx(p.capacity[[s.node for s in mem]] / p.capacity.sum() * 10, abs=1)
    ring = halda(p)
    assert ring is not None and evaluate(p, ring).feasible
    windows = [s.stop - s.start for s in ring]
    k = len(ring) // 3
    assert windows == windows[:3] * k and [s.node for s in ring] == [0, 1, 2] * k  # k rounds of the same windows
    assert solve(p).cost <= evaluate(p, ring).bottleneck + 1e-12


def test_halda_gives_faster_nodes_wider_windows():
    p = PipelineProblem(["slow", "fast"], [f"l{i}" for i in range(8)], time=np.array([[4.0] * 8, [1.0] * 8]),
                        weight=np.ones(8), activation=np.zeros(8), boundary=np.ones(9), capacity=np.array([100.0, 100.0]),
                        bandwidth=np.full((2, 2), 1e9), latency=np.zeros((2, 2)))
    ring = halda(p)
    # the ILP minimises 4*w_slow + 1*w_fast with w >= 1: the slow node keeps one layer per round
    assert [s.stop - s.start for s in ring if s.node == 0] == [1] * (len(ring) // 2)


def test_exact_solver_with_groups_of_nodes_matches_brute_force():
    """Units that are groups of nodes: no plan may use a node twice, directly or through a group."""
    rng = np.random.default_rng(5)
    checked = 0
    for _ in range(12):
        p = random_problem(rng, 3, 5)
        # add the group (0, 1): faster than either member, holds more, talks through node 0's links
        p.names.append("n0+n1")
        p.members = [(0,), (1,), (2,), (0, 1)]
        p.time = np.vstack([p.time, 0.6 * p.time[:2].min(axis=0)])
        p.capacity = np.append(p.capacity, p.capacity[:2].sum())
        grow = lambda m: np.vstack([np.column_stack([m, m[:, 0]]), np.append(m[0], 0.0)])
        p.bandwidth, p.latency = grow(p.bandwidth), grow(p.latency)
        truth = brute_force(p, "throughput")   # evaluate() rejects plans that reuse a node
        if not np.isfinite(truth):
            continue
        sol = solve_exact(p)
        assert sol.cost == pytest.approx(truth) and evaluate(p, sol.stages).feasible
        assert solve_heuristic(p, time_limit=0.05).cost >= truth * (1 - 1e-9)
        checked += 1
    assert checked >= 6


def test_evaluate_rejects_a_node_used_alone_and_in_a_group():
    p = random_problem(np.random.default_rng(0), 2, 4, memory=10.0)
    p.names.append("n0+n1")
    p.members = [(0,), (1,), (0, 1)]
    p.time = np.vstack([p.time, p.time[0]])
    p.capacity = np.append(p.capacity, 100.0)
    p.bandwidth = np.ones((3, 3))
    p.latency = np.zeros((3, 3))
    assert "'n0' is in two stages' units" in evaluate(p, [Stage(0, 0, 2), Stage(2, 2, 4)]).problems[0]


def test_halda_windows_are_the_integer_optimum():
    """The ILP's windows against every integer vector with w >= 1 summing to the window total."""
    from dnet.partition.baselines import _windows

    rng = np.random.default_rng(2)
    for _ in range(10):
        n, k, total = 3, int(rng.integers(1, 3)), int(rng.integers(3, 9))
        per_layer, capacity = rng.uniform(1, 5, n), rng.uniform(2, 12, n)
        w = _windows(per_layer, 1.0, 0.5, capacity, k, total)
        fits = [np.array(v) for v in itertools.product(range(1, total + 1), repeat=n)
                if sum(v) == total and all(k * x + 0.5 <= c for x, c in zip(v, capacity))]
        if not fits:
            assert w is None
            continue
        assert w.sum() == total and np.all(k * w + 0.5 <= capacity)
        assert per_layer @ w == pytest.approx(min(per_layer @ v for v in fits))


def test_an_unknown_objective_or_method_is_a_dnet_error_with_a_suggestion():
    p = random_problem(np.random.default_rng(0), 2, 3)
    with pytest.raises(DnetError, match="unknown objective 'latncy'.*did you mean 'latency'"):
        solve(p, objective="latncy", method="exact")
    with pytest.raises(DnetError, match="unknown planning method 'exakt'.*did you mean 'exact'"):
        solve(p, method="exakt")
