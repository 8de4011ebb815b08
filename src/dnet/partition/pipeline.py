"""Pipeline partitioners: contiguous stages of a layer chain onto an order of nodes.

Two objectives: "throughput" minimises the busiest node or link (the bottleneck,
transfers overlapping compute), "latency" minimises the sum of all stage and
transfer times. Nodes may be left out. Solvers:

- `solve_order`: exact for a fixed node order, by dynamic programming over
  (last node, layers covered): O(N^2 L^2).
- `solve_exact`: exact over every order and subset of nodes, by dynamic programming
  over (set of nodes used, last node, layers covered), pruned by the best plan found
  so far: O(2^N N^2 L^2) at worst, fast for up to ~10 nodes.
- `solve_heuristic`: iterated local search over node orders, each solved by
  `solve_order`; for large node counts.
- `solve`: exact where the instance is small enough; else the heuristic, then the
  exact solver within a time limit, pruned by the heuristic's plan.

A unit may be a group of nodes (`PipelineProblem.members`); no plan uses a node twice.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass

import numpy as np

from dnet.errors import DnetError, did_you_mean
from dnet.partition.problem import PipelineProblem, PlanError, Stage

OBJECTIVES = ("throughput", "latency")
METHODS = ("auto", "exact", "heuristic")
_EXACT_BUDGET = 4e8   # element operations the exact solver may spend at worst


@dataclass
class Solution:
    stages: list[Stage]
    cost: float            # the objective's value: bottleneck or latency, seconds
    solver: str
    seconds: float = 0.0   # time the solver took


def _combine(objective: str):
    if objective not in OBJECTIVES:
        raise DnetError(f"unknown objective '{objective}'",
                        hint=did_you_mean(objective, OBJECTIVES) or "one of " + ", ".join(OBJECTIVES))
    return np.maximum if objective == "throughput" else np.add


def _extend(best: np.ndarray, xfer: np.ndarray, stage: np.ndarray, combine) -> tuple[np.ndarray, np.ndarray]:
    """Add one stage after a partial plan: best[a] is the cost of covering layers [0, a) ending on
    the previous node, xfer[a] the transfer at cut a, stage[a, b] the new stage [a, b).
    Returns the new cost of covering [0, b) for each b, and the best a for each b."""
    cand = combine(combine(best, xfer)[:, None], stage)
    arg = np.argmin(cand, axis=0)
    return cand[arg, np.arange(cand.shape[1])], arg


def _walk_back(end_state, L: int, table: dict) -> list[Stage]:
    """Rebuild the stages from back-pointers. A state is a tuple whose last item is its node;
    table[state] = (cost[b], prev_state[b], prev_cut[b]) for each b layers covered."""
    stages: list[Stage] = []
    state, b = end_state, L
    while state is not None:
        node = state[-1]
        _, prev_state, prev_cut = table[state]
        a = int(prev_cut[b])
        stages.append(Stage(node, a, b))
        state, b = prev_state[b], a
    return stages[::-1]


def solve_order(p: PipelineProblem, order: list[int], objective: str = "throughput") -> Solution:
    """The best plan that uses nodes in this order (skipping any), exactly."""
    t0 = time.perf_counter()
    combine = _combine(objective)
    L = p.n_layers
    stage = {k: p.stage_matrix(k) for k in order}
    table: dict = {}
    for t, k in enumerate(order):
        cost = stage[k][0].copy()
        table[(t, k)] = (cost, [None] * (L + 1), np.zeros(L + 1, np.int64))
        for s in range(t):
            j = order[s]
            new, arg = _extend(table[(s, j)][0], p.transfer_vector(j, k), stage[k], combine)
            _merge(table, (t, k), new, arg, (s, j))
    end = min(table, key=lambda s: table[s][0][L])
    if not np.isfinite(table[end][0][L]):
        raise PlanError("no feasible plan in this node order")
    sol = Solution(_walk_back(end, L, table), float(table[end][0][L]), "order-dp")
    sol.seconds = time.perf_counter() - t0
    return sol


class SolverTimeout(Exception):
    """The exact solver ran past its deadline."""


def solve_exact(p: PipelineProblem, objective: str = "throughput", bound: float = np.inf,
                deadline: float | None = None) -> Solution:
    """The best plan over every order and subset of nodes. `bound`: a known plan's cost, for pruning;
    `deadline`: a time.perf_counter() value after which it gives up (SolverTimeout)."""
    t0 = time.perf_counter()
    combine = _combine(objective)
    N, L = p.n_nodes, p.n_layers
    bits = [sum(1 << m for m in p.unit(k)) for k in range(N)]  # the topology nodes each unit occupies
    stage = [p.stage_matrix(k) for k in range(N)]
    xfer = {(j, k): p.transfer_vector(j, k) for j in range(N) for k in range(N) if j != k}
    table: dict = {}
    for k in range(N):
        table[(bits[k], k)] = (stage[k][0].copy(), [None] * (L + 1), np.zeros(L + 1, np.int64))
    best_end, best_cost = None, bound
    for mask in range(1, 1 << p.n_physical):  # every subset of nodes comes before its supersets
        if deadline is not None and time.perf_counter() > deadline:
            raise SolverTimeout()
        for j in range(N):
            entry = table.get((mask, j))
            if entry is None:
                continue
            cost = entry[0]
            if cost[L] < best_cost or (best_end is None and cost[L] <= best_cost and np.isfinite(cost[L])):
                best_end, best_cost = (mask, j), cost[L]
            if cost[1:L].min(initial=np.inf) >= best_cost:
                continue  # costs only grow: nothing built on this state can win
            for k in range(N):
                if mask & bits[k]:
                    continue
                new, arg = _extend(cost, xfer[(j, k)], stage[k], combine)
                _merge(table, (mask | bits[k], k), new, arg, (mask, j))
    if best_end is None:
        raise PlanError("no feasible plan")
    sol = Solution(_walk_back(best_end, L, table), float(best_cost), "exact-dp")
    sol.seconds = time.perf_counter() - t0
    return sol


def _merge(table: dict, key, new: np.ndarray, arg: np.ndarray, prev) -> None:
    """Keep, for each b, the cheaper of the known way to reach state `key` and the new one from `prev`."""
    entry = table.get(key)
    if entry is None:
        table[key] = (new, [prev] * len(new), arg)
        return
    cost, prev_state, prev_cut = entry
    better = new < cost
    cost[better], prev_cut[better] = new[better], arg[better]
    for b in np.flatnonzero(better):
        prev_state[b] = prev


def candidate_orders(p: PipelineProblem) -> list[list[int]]:
    """Promising orders of the single-node units: fastest first, largest memory first, greedy memory
    fill, and chains that follow the widest links from each start; then each with every group of
    nodes standing in for its members. No order holds two units that share a node."""
    singles = [k for k in range(p.n_nodes) if len(p.unit(k)) == 1]
    speed = p.time.sum(axis=1)  # seconds for the whole model: smaller is faster
    orders = [sorted(singles, key=lambda k: speed[k]), sorted(singles, key=lambda k: -p.capacity[k]),
              _fill_order(p, singles), _fill_order(p, singles, backward=True)]
    for start in singles:
        order, left = [start], set(singles) - {start}
        while left:
            nxt = max(left, key=lambda k: (p.bandwidth[order[-1], k], -speed[k]))
            order.append(nxt)
            left.remove(nxt)
        orders.append(order)
    groups = [k for k in range(p.n_nodes) if len(p.unit(k)) > 1]
    orders += [_with_group(p, o, g) for o in list(orders) for g in groups]
    unique = []
    for o in orders:
        o = [int(k) for k in o]
        if o not in unique:
            unique.append(o)
    return unique


def _with_group(p: PipelineProblem, order: list[int], group: int) -> list[int]:
    """The order with `group` in place of its first member and without the others."""
    members = set(p.unit(group))
    first = next(i for i, k in enumerate(order) if k in members)
    return [k for k in order[:first] if k not in members] + [group] + [k for k in order[first:] if k not in members]


def _fill_order(p: PipelineProblem, units: list[int], backward: bool = False) -> list[int]:
    """Walk the layers (from the last one when `backward`), each time taking the unused unit that
    holds the most of the layers left: an order in which the model fits, where memory is tight."""
    L = p.n_layers
    held, chosen, left = 0, [], set(units)

    def fits(k: int, count: int) -> bool:
        a, b = (L - held - count, L - held) if backward else (held, held + count)
        return p.memory(a, b) <= p.capacity[k]

    while left and held < L:
        reach = {k: max((c for c in range(1, L - held + 1) if fits(k, c)), default=0) for k in left}
        k = max(left, key=lambda k: (reach[k], -p.time[k].sum()))
        chosen.append(k)
        left.remove(k)
        held += reach[k]
    order = chosen[::-1] if backward else chosen
    return order + sorted(left, key=lambda k: p.time[k].sum())


def solve_heuristic(p: PipelineProblem, objective: str = "throughput", time_limit: float = 0.5,
                    patience: int = 30) -> Solution:
    """Iterated local search over node orders, each order solved exactly by `solve_order`.

    Local search (swap two nodes, move one) runs from every feasible candidate order; then the
    best order is perturbed at random (two swaps) and searched again, until `patience`
    perturbations in a row find nothing better or `time_limit` seconds pass."""
    t0 = time.perf_counter()
    deadline = t0 + time_limit
    rng = np.random.default_rng(0)
    starts = [(sol, order) for order in candidate_orders(p) if (sol := _try(p, order, objective))]
    singles = [k for k in range(p.n_nodes) if len(p.unit(k)) == 1]
    while not starts and time.perf_counter() < deadline:  # tight memory: look for any order that fits
        order = [int(k) for k in rng.permutation(singles)]
        if sol := _try(p, order, objective):
            starts.append((sol, order))
    if not starts:
        raise PlanError("no feasible plan in any node order tried")
    best, best_order = min(starts, key=lambda so: so[0].cost)
    for sol, order in sorted(starts, key=lambda so: so[0].cost):
        sol, order = _local_search(p, sol, order, objective, deadline)
        if sol.cost < best.cost:
            best, best_order = sol, order
    idle = 0
    while idle < patience and time.perf_counter() < deadline:
        order = list(best_order)
        for _ in range(2):
            i, j = rng.choice(len(order), 2, replace=False)
            order[i], order[j] = order[j], order[i]
        sol = _try(p, order, objective)
        if sol is not None:
            sol, order = _local_search(p, sol, order, objective, deadline)
        if sol is not None and sol.cost < best.cost * (1 - 1e-12):
            best, best_order, idle = sol, order, 0
        else:
            idle += 1
    best.solver, best.seconds = "heuristic", time.perf_counter() - t0
    return best


def _local_search(p: PipelineProblem, sol: Solution, order: list[int], objective: str,
                  deadline: float) -> tuple[Solution, list[int]]:
    """First-improvement descent over swaps and moves of nodes in the order."""
    improved = True
    while improved and time.perf_counter() < deadline:
        improved = False
        for i, j in itertools.combinations(range(len(order)), 2):
            for move in (_swap, _relocate, _relocate_back):
                trial = move(order, i, j)
                new = _try(p, trial, objective)
                if new is not None and new.cost < sol.cost * (1 - 1e-12):
                    sol, order, improved = new, trial, True
            if time.perf_counter() > deadline:
                return sol, order
    return sol, order


def _try(p: PipelineProblem, order: list[int], objective: str) -> Solution | None:
    try:
        return solve_order(p, order, objective)
    except PlanError:
        return None


def _better(a: Solution | None, b: Solution | None) -> Solution | None:
    if a is None:
        return b
    return b if b is not None and b.cost < a.cost else a


def _swap(order: list[int], i: int, j: int) -> list[int]:
    out = list(order)
    out[i], out[j] = out[j], out[i]
    return out


def _relocate(order: list[int], i: int, j: int) -> list[int]:
    out = list(order)
    out.insert(j, out.pop(i))
    return out


def _relocate_back(order: list[int], i: int, j: int) -> list[int]:
    out = list(order)
    out.insert(i, out.pop(j))
    return out


def solve(p: PipelineProblem, objective: str = "throughput", method: str = "auto",
          time_limit: float = 0.8) -> Solution:
    """Plan with the named method: "exact", "heuristic", or "auto": exact where the instance is small;
    else the heuristic for half of `time_limit`, then the exact solver, pruned by the heuristic's
    plan, for the other half (pruning often makes it finish), keeping the heuristic's plan if not."""
    if method not in METHODS:
        raise DnetError(f"unknown planning method '{method}'",
                        hint=did_you_mean(method, METHODS) or "one of " + ", ".join(METHODS))
    t0 = time.perf_counter()
    if method == "heuristic":
        return solve_heuristic(p, objective, time_limit)
    if method == "exact" or _exact_work(p) <= _EXACT_BUDGET:
        seed = _try_heuristic(p, objective)
        sol = solve_exact(p, objective, seed.cost * (1 + 1e-9) if seed else np.inf)
    else:
        sol = solve_heuristic(p, objective, time_limit / 2)
        try:
            sol = solve_exact(p, objective, sol.cost * (1 + 1e-9), deadline=t0 + time_limit)
        except (SolverTimeout, PlanError):
            pass
    sol.seconds = time.perf_counter() - t0
    return sol


def _try_heuristic(p: PipelineProblem, objective: str) -> Solution | None:
    best = None
    for order in candidate_orders(p):
        best = _better(best, _try(p, order, objective))
    return best


def _exact_work(p: PipelineProblem) -> float:
    return 2.0 ** p.n_physical * p.n_nodes**2 * (p.n_layers + 1) ** 2


def explain_infeasible(p: PipelineProblem) -> str:
    """Why no plan exists: the memory short-fall in total, or the layer no node can hold."""
    need = float(p.weight.sum() + p.activation.max(initial=0))
    have = float(p.capacity[: p.n_physical].sum())
    if need > have:
        return (f"the model needs {need / 2**20:.1f} MiB of memory, the nodes have {have / 2**20:.1f} MiB "
                f"({(need - have) / 2**20:.1f} MiB short)")
    for l in range(p.n_layers):
        one = p.memory(l, l + 1)
        if one > p.capacity.max():
            return (f"layer '{p.layer_names[l]}' needs {one / 2**20:.1f} MiB, the largest node "
                    f"'{p.names[int(p.capacity.argmax())]}' has {p.capacity.max() / 2**20:.1f} MiB")
    return _missing_links(p)


def _missing_links(p: PipelineProblem) -> str:
    """Plan as if every pair of nodes were linked (a missing link costing more than any real one),
    and name the links that plan needs and lacks."""
    linked = dataclasses.replace(p, bandwidth=np.where(p.bandwidth > 0, p.bandwidth, 1e-100), _memo={})
    try:
        stages = solve_exact(linked).stages if p.n_physical <= 12 else solve_heuristic(linked).stages
    except PlanError:
        return "no assignment of the layers fits in the nodes' memory"
    missing = [(p.names[a.node], p.names[b.node]) for a, b in zip(stages, stages[1:])
               if p.bandwidth[a.node, b.node] <= 0]
    if not missing:
        return "no order of the nodes lets their contiguous shares of the layers fit in memory"
    return ("the nodes that can hold the model together are not all linked: "
            + ", ".join(f"no [[link]] from '{a}' to '{b}'" for a, b in missing))
