"""JIT feedback: a running plan's measured stage times correct the cost model, and the plan follows.

The cost model predicts each layer's time on each node; a deployed plan's workers
measure each stage's compute time per request. Per node, measured over predicted
stage time is a correction factor: it holds whatever the model missed (a probe too
optimistic, a device secretly slower, cores shared with other work). The factors
scale the node's row of layer times, the solver plans again on the corrected model,
and the new plan is deployed only where it is predicted meaningfully faster than
the one running (`threshold`), so that measurement noise cannot make work flap
between nodes. Repeated until the plan stops moving (a fixed point) or a round limit.

Each round's prediction comes from the factors measured on the plan deployed in that
round, so the last round's prediction is the deployed plan's own. Across rounds, a
node's factor is smoothed (an average in log space, the newest round weighted
`weight`), so one noisy round moves the plan less; a node no plan has used yet is
taken at the model's own value (factor 1).

Nothing here touches a cluster: `retune` is given a `measure` function that deploys a
list of stages and measures it (`dnet.cluster` provides one; the tests simulate one).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np

from dnet.errors import DnetError
from dnet.partition.pipeline import solve
from dnet.partition.plan import Plan
from dnet.partition.problem import Metrics, PipelineProblem, Stage, evaluate


@dataclass
class Measurement:
    """What one deployed plan did: requests per second and each stage's compute seconds per request."""

    throughput: float
    stage_seconds: list[float]                      # one per stage, in pipeline order
    window_throughputs: list[float] = dataclasses.field(default_factory=list)  # the spread behind `throughput`


@dataclass
class Round:
    """One feedback round: the plan that ran, what it measured, and where the plan goes next."""

    index: int
    stages: list[Stage]             # the plan measured in this round
    measured: Measurement
    factors: np.ndarray             # per node, measured / modelled, from this round alone (nan: no stage)
    smoothed: np.ndarray            # per node, across rounds: what the next plan is solved with
    predicted: float                # items/s of `stages`, from this round's own factors
    proposal: list[Stage]           # the best plan under the smoothed factors
    proposal_predicted: float       # its items/s under the smoothed factors
    moved: bool                     # whether the proposal runs in the next round

    @property
    def error(self) -> float:
        """Measured over predicted throughput."""
        return self.measured.throughput / self.predicted if self.predicted > 0 else float("nan")


def node_factors(p: PipelineProblem, stages: list[Stage], stage_seconds: list[float]) -> np.ndarray:
    """Per node: its stages' measured seconds over the model's seconds for them; nan for a node without a stage."""
    if len(stage_seconds) != len(stages):
        raise DnetError(f"{len(stage_seconds)} stage times measured for a plan of {len(stages)} stages")
    measured, modelled = np.zeros(p.n_nodes), np.zeros(p.n_nodes)
    for stage, seconds in zip(stages, stage_seconds):
        measured[stage.node] += seconds
        modelled[stage.node] += p.time[stage.node, stage.start:stage.stop].sum()
    used = modelled > 0
    return np.divide(measured, modelled, out=np.full(p.n_nodes, np.nan), where=used)


def smooth(previous: np.ndarray | None, factors: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """Blend this round's factors into the running ones: a geometric mean, the new round weighted `weight`.
    A node measured for the first time takes its measurement; one not measured keeps its value (nan: never)."""
    if not 0 < weight <= 1:
        raise DnetError(f"the newest round's weight must be in (0, 1], got {weight}")
    if previous is None:
        return factors.copy()
    with np.errstate(invalid="ignore"):
        blended = np.exp((1 - weight) * np.log(previous) + weight * np.log(factors))
    return np.where(np.isnan(previous), factors, np.where(np.isnan(factors), previous, blended))


def corrected(p: PipelineProblem, factors: np.ndarray) -> PipelineProblem:
    """The problem with each node's layer times scaled by its factor (nan counts as 1)."""
    scale = np.where(np.isnan(factors), 1.0, factors)
    return dataclasses.replace(p, time=p.time * scale[:, None], _memo={})


def _cost(m: Metrics, objective: str) -> float:
    return m.bottleneck if objective == "throughput" else m.latency


@dataclass
class Proposal:
    stages: list[Stage]            # the solver's best plan under the factors
    current: Metrics               # the running plan under the factors
    best: Metrics                  # the best plan under the factors
    move: bool                     # whether the best beats the running plan by more than the threshold


def propose(p: PipelineProblem, stages: list[Stage], factors: np.ndarray, threshold: float = 0.05,
            objective: str = "throughput") -> Proposal:
    """The best plan on the corrected model, and whether it beats the running one by more than `threshold`
    (a fraction of the running plan's cost: its bottleneck, or its latency)."""
    q = corrected(p, factors)
    current = evaluate(q, stages)
    best_stages = solve(q, objective).stages
    best = evaluate(q, best_stages)
    move = best_stages != stages and _cost(best, objective) < (1 - threshold) * _cost(current, objective)
    return Proposal(best_stages, current, best, move)


def retune(p: PipelineProblem, stages: list[Stage], measure: Callable[[list[Stage]], Measurement],
           rounds: int = 4, threshold: float = 0.05, weight: float = 0.5,
           objective: str = "throughput") -> list[Round]:
    """Measure the running plan, correct the model, re-plan; until the plan is a fixed point or `rounds` ran.

    `measure(stages)` deploys `stages` (when they are not already running) and measures them. The last
    round never moves: the plan it leaves deployed is the one it measured, and its prediction that plan's own.
    """
    if rounds < 1:
        raise DnetError(f"retune needs at least one round, got {rounds}")
    history: list[Round] = []
    smoothed: np.ndarray | None = None
    for index in range(rounds):
        measured = measure(stages)
        factors = node_factors(p, stages, measured.stage_seconds)
        smoothed = smooth(smoothed, factors, weight)
        proposal = propose(p, stages, smoothed, threshold, objective)
        moved = proposal.move and index + 1 < rounds
        history.append(Round(index, list(stages), measured, factors, smoothed,
                             evaluate(corrected(p, factors), stages).throughput,
                             proposal.stages, proposal.best.throughput, moved))
        if not moved:
            break
        stages = proposal.stages
    return history


def stages_of(plan: Plan, p: PipelineProblem) -> list[Stage]:
    """A Plan's stages as (node, first layer, end) over the problem it was made for."""
    stages, start = [], 0
    for stage in plan.stages:
        if stage.node not in p.names:
            raise DnetError(f"the plan names node '{stage.node}', which the problem does not have")
        stop = start + len(stage.layers)
        if p.layer_names[start:stop] != list(stage.layers):
            raise DnetError(f"the plan's stage on '{stage.node}' does not hold layers {start}..{stop - 1} "
                            "of the problem in order")
        stages.append(Stage(p.names.index(stage.node), start, stop))
        start = stop
    return stages


def layout(p: PipelineProblem, stages: list[Stage]) -> str:
    """A plan in one line: each stage's node and its number of layers ("local2:3 local0:5")."""
    return " ".join(f"{p.names[s.node]}:{s.stop - s.start}" for s in stages)


def factor_line(p: PipelineProblem, factors: np.ndarray) -> str:
    """Each node's factor in one line ("local0 1.75, local1 -"): '-' for a node not measured."""
    return ", ".join(f"{name} {'-' if np.isnan(f) else f'{f:.2f}'}" for name, f in zip(p.names, factors))
