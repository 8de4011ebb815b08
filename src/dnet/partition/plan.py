"""The plan: which graph nodes run where, what crosses each link, and what the cost model predicts.

A Plan is plain data: it saves to JSON and loads back equal, prints as a table and
draws as an SVG of the topology with its stages and the bytes on each link.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from dnet.graph.ir import Graph
from dnet.partition.cost import OpTable
from dnet.partition.layers import LayerChain, layer_chain
from dnet.partition.pipeline import explain_infeasible, solve
from dnet.partition.problem import PipelineProblem, PlanError, Stage, build_problem, evaluate
from dnet.partition.shard import Shard, Team, group_team, node_team
from dnet.topology.model import Topology


@dataclass
class StagePlan:
    node: str
    layers: list[str]
    graph_nodes: list[int]        # ids of the compute nodes this stage runs
    inputs: list[int]             # ids of the values it receives (the cut tensors before it)
    compute_seconds: float
    memory_bytes: float
    capacity_bytes: float
    lead: str = ""                # the device that runs the unsharded ops ("node/device")
    members: list[str] = field(default_factory=list)  # the nodes of a group that splits ops; else empty
    shards: list[Shard] = field(default_factory=list)


@dataclass
class LinkPlan:
    src: str
    dst: str
    bytes: float                  # per item (all stages' transfers on this link)
    seconds: float


@dataclass
class Plan:
    model: str
    objective: str
    solver: str
    solve_seconds: float
    stages: list[StagePlan]
    links: list[LinkPlan]
    throughput: float             # items per second at steady state
    latency: float                # seconds for one item
    bottleneck: str               # the node or link that sets the throughput
    unused: list[str] = field(default_factory=list)   # nodes given no stage

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(obj: dict) -> "Plan":
        stages = [StagePlan(**{**s, "shards": [Shard(**{**h, "devices": tuple(h["devices"]),
                                                         "shares": tuple(h["shares"])}) for h in s["shards"]]})
                  for s in obj["stages"]]
        return Plan(**{**obj, "stages": stages, "links": [LinkPlan(**l) for l in obj["links"]]})

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)

    @staticmethod
    def loads(text: str) -> "Plan":
        return Plan.from_json(json.loads(text))


def plan_pipeline(graph: Graph, topology: Topology, objective: str = "throughput", method: str = "auto",
                  env: dict[str, int] | None = None, model: str = "", chain: LayerChain | None = None,
                  groups: bool = False) -> Plan:
    """Partition `graph` into pipeline stages over `topology`; a PlanError says why when nothing fits.
    With `groups`, pairs of well-linked nodes may also run a stage together, splitting its ops."""
    chain = chain or layer_chain(graph, env)
    problem = build_problem(chain, topology, groups=groups)
    try:
        solution = solve(problem, objective, method)
    except PlanError:
        raise PlanError(f"no plan for {model or 'the model'} on {topology.source or 'this topology'}: "
                        + explain_infeasible(problem)) from None
    return plan_from_stages(chain, topology, problem, solution.stages, objective, solution.solver,
                            solution.seconds, model)


def plan_from_stages(chain: LayerChain, topology: Topology, problem: PipelineProblem, stages: list[Stage],
                     objective: str, solver: str, seconds: float = 0.0, model: str = "") -> Plan:
    """A Plan for any assignment (a solver's or a baseline's), with the cost model's predictions."""
    metrics = evaluate(problem, stages)
    table = OpTable.of(chain.graph, chain.env)
    out = []
    for s in stages:
        ops = [n for l in chain.layers[s.start:s.stop] for n in l.nodes]
        team = _team(problem, topology, table, s.node)
        _, shards = team.split(chain, ops)
        members = problem.unit(s.node)
        out.append(StagePlan(problem.names[s.node], chain.names[s.start:s.stop], ops, list(chain.crossing[s.start]),
                             float(problem.time[s.node, s.start:s.stop].sum()), problem.memory(s.start, s.stop),
                             float(problem.capacity[s.node]), lead=team.labels[0], shards=shards,
                             members=[problem.names[m] for m in members] if len(members) > 1 else []))
    links = [LinkPlan(problem.names[a], problem.names[b], metrics.link_bytes[(a, b)], t)
             for (a, b), t in metrics.link_time.items()]
    loads = {**{problem.names[k]: t for k, t in metrics.node_time.items()},
             **{f"{problem.names[a]}->{problem.names[b]}": t for (a, b), t in metrics.link_time.items()}}
    used = {m for s in stages for m in problem.unit(s.node)}
    return Plan(model, objective, solver, seconds, out, links, metrics.throughput, metrics.latency,
                max(loads, key=loads.get) if loads else "",
                [n for k, n in enumerate(problem.names[: problem.n_physical]) if k not in used])


def _team(problem: PipelineProblem, topology: Topology, table: OpTable, unit: int) -> Team:
    members = problem.unit(unit)
    if len(members) == 1:
        return node_team(topology.nodes[members[0]], table)
    a, b = members
    bw = min(problem.bandwidth[a, b], problem.bandwidth[b, a])
    return group_team([topology.nodes[m] for m in members], table, bw, max(problem.latency[a, b], problem.latency[b, a]))
