"""A model compiled for a topology: planned, cut into stages, shipped, callable like one executable.

`compile_distributed(model, topology)` is what `dnet.compile(model, topology=...)`
does. Nodes with an `address` are existing workers (the cluster secret comes from
DNET_CLUSTER_SECRET); a topology without addresses (`Topology.local(n)`) starts its
own workers on loopback, and their links are shaped to the topology's bandwidth and
latency, so a local run behaves like the network the plan was made for.

`exe.retune(requests)` is the JIT's feedback loop (`dnet.partition.feedback`) on the
live cluster: it measures the running plan, corrects the cost model with what the
workers measured, re-plans, and moves the stages when that pays.
"""
from __future__ import annotations

import atexit
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dnet.backends import registry
from dnet.cluster.auth import secret_from_env
from dnet.cluster.tls import tls_from_env
from dnet.topology.probe import forget_if_far_off
from dnet.cluster.coordinator import Coordinator, StageTiming
from dnet.cluster.link import LinkShape
from dnet.cluster.local import LocalCluster, WorkerSpec, core_sets
from dnet.cluster.measure import measure
from dnet.core.origins import files_of
from dnet.core.shapes import shape_symbols
from dnet.errors import DnetError
from dnet.graph.ir import Graph
from dnet.partition import (LayerChain, PipelineProblem, Plan, build_problem, feedback, layer_chain,
                            plan_from_stages, plan_pipeline)
from dnet.partition.feedback import Measurement, Round
from dnet.runtime.pipeline import split_pipeline


@dataclass
class PipelinePlan:
    """What the runtime needs from a plan: stage graphs in pipeline order and the node of each."""

    stages: list[Graph]
    placement: list[int]              # stage -> node index in the topology
    predicted_throughput: float | None = None
    plan: Any = None                  # the partitioner's Plan, when there is one
    # the stages are the members of one tensor-parallel group: each takes every request, sums its partials
    # with the others' (ALL_REDUCE), and the answer joins their outputs along the last axis
    parallel: bool = False


def pipeline_from_plan(graph: Graph, plan: Any, node_names: Sequence[str]) -> PipelinePlan:
    """Adapt the partitioner's `Plan` (stages naming topology nodes and graph node ids)."""
    stage_of = [0] * len(graph.nodes)
    for k, stage in enumerate(plan.stages):
        for i in stage.graph_nodes:
            stage_of[i] = k
    names = list(node_names)
    unknown = [s.node for s in plan.stages if s.node not in names]
    if unknown:
        raise DnetError(f"plan names node(s) {unknown} that the topology does not have")
    return PipelinePlan(split_pipeline(graph, stage_of, len(plan.stages)),
                        [names.index(s.node) for s in plan.stages], plan.throughput, plan)


def link_shapes(topology: Any) -> dict[tuple[int, int], LinkShape]:
    """The topology's links between its nodes as shapes for the transport, by node index."""
    index = {name: i for i, name in enumerate(topology.names)}
    return {(index[l.src], index[l.dst]): LinkShape(l.bandwidth, l.latency) for l in topology.links.values()}


class DistributedExecutable:
    """Call it like `dnet.Executable`; requests pipeline through the workers."""

    def __init__(self, graph: Graph, pipeline: PipelinePlan, coordinator: Coordinator,
                 local: LocalCluster | None = None, topology: Any = None, env: dict[str, int] | None = None,
                 links: dict[tuple[int, int], LinkShape] | None = None):
        self.graph, self.pipeline, self.coordinator, self.local = graph, pipeline, coordinator, local
        self.topology, self.env, self.links = topology, dict(env or {}), links
        self.links_measured = False        # link figures measured by the workers (re-measured by `retune`)
        self.closed = False
        self._problem: tuple[LayerChain, PipelineProblem] | None = None
        if local is not None:   # a script that ends without close(): the coordinator goes first (atexit runs
            atexit.register(self.close)   # last-in first-out), so stopping the workers is no "worker lost"

    @property
    def plan(self) -> Any:
        return self.pipeline.plan

    @property
    def timings(self) -> dict[int, StageTiming]:
        return self.coordinator.timings

    # -- the JIT's feedback loop ----------------------------------------------------------------
    def deploy(self, plan: Plan) -> None:
        """Run `plan` (a partitioner Plan over this topology) from now on: its stages are shipped and wired
        under a new epoch, as a re-plan after a fault is; requests still travelling are sent again."""
        pipeline = pipeline_from_plan(self.graph, plan, self.topology.names)
        self.coordinator.load(pipeline.stages, pipeline.placement, self.links)
        self.pipeline = pipeline

    def measure(self, requests: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
                windows: int = 5, window: int = 8) -> Measurement:
        """Throughput and per-stage compute seconds at steady state: medians of `windows` windows of
        `window` answers each (see `dnet.cluster.measure`)."""
        return measure(self.coordinator, _request_list(requests), windows, window)

    def retune(self, requests: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None = None,
               rounds: int = 4, windows: int = 5, window: int = 8, threshold: float = 0.05, weight: float = 0.5,
               measure: Callable[[], Measurement] | None = None) -> list[Round]:
        """Feedback rounds: measure the running plan, correct the cost model per node with the measured stage
        times, re-plan, and deploy the new plan when it is predicted more than `threshold` faster; until the
        plan stays put or `rounds` ran. Afterwards `plan` is the deployed plan, its predictions made from the
        factors measured on it. Returns each round (`dnet.partition.feedback.Round`).

        The running plan is measured on `requests` (`windows` windows of `window` answers), or by `measure()`
        where plain requests cannot measure it (stateful stages: a generation engine times its own steps)."""
        if measure is None:
            if not requests:
                raise DnetError("retune needs requests to measure the plan with (or a measure function)")
            measure = lambda: self.measure(requests, windows, window)   # noqa: E731
        if self.links_measured:   # links change too: the plans below are made with today's figures
            self.topology = with_measured_links(self.topology, self.coordinator.measure_links())
            self._problem = None
        chain, problem = self.chain, self.problem
        objective = self.plan.objective

        def run(stages: list) -> Measurement:
            if stages != feedback.stages_of(self.plan, problem):
                self.deploy(plan_from_stages(chain, self.topology, problem, stages, objective, "retune"))
            return measure()

        history = feedback.retune(problem, feedback.stages_of(self.plan, problem), run, rounds, threshold,
                                  weight, objective)
        last = history[-1]
        if self.local is not None:   # a local topology's devices come from this machine's cached probe
            forget_if_far_off(last.factors)
        self.pipeline.plan = plan_from_stages(chain, self.topology, feedback.corrected(problem, last.factors),
                                              last.stages, objective, "retune")
        self.pipeline.predicted_throughput = self.pipeline.plan.throughput
        return history

    @property
    def chain(self) -> LayerChain:
        """The model as a chain of layers, for the dims the plan is made for."""
        return self._planning()[0]

    @property
    def problem(self) -> PipelineProblem:
        """The cost model the plans are made over, uncorrected: a `dnet.partition.PipelineProblem`."""
        return self._planning()[1]

    def _planning(self) -> tuple[LayerChain, PipelineProblem]:
        if self._problem is None:
            chain = layer_chain(self.graph, self.env)
            self._problem = chain, build_problem(chain, self.topology)
        return self._problem

    def replan_over(self, alive: Sequence[int]) -> tuple[list[Graph], list[int]]:
        """A plan over the surviving workers (topology node indices), made with the cost model and objective
        of the running one: its stages and their placement. What the coordinator asks for when a worker is
        lost and no spare is left; the new plan becomes this executable's."""
        names = [self.topology.names[i] for i in alive]
        objective = self.plan.objective if self.plan is not None else "throughput"
        plan = plan_pipeline(self.graph, self.topology.subset(names), objective=objective, env=self.env)
        self.pipeline = pipeline_from_plan(self.graph, plan, self.topology.names)
        self._problem = None
        return self.pipeline.stages, self.pipeline.placement

    def add_node(self, node: Any) -> int:
        """One more worker (a restarted one, at its new address): a node of this executable's topology and a
        spare of its coordinator, which the next lost worker's stages move to and re-plans count. Returns its
        index, the same in both."""
        from dnet.topology import Topology

        index = self.coordinator.add_worker(node.address)
        topology = Topology([*self.topology.nodes, node], dict(self.topology.links), self.topology.source,
                            self.topology.cluster)
        if index != len(topology.nodes) - 1:
            raise DnetError(f"worker {index} added to a topology of {len(topology.nodes) - 1} nodes",
                            hint="add workers to a distributed executable through add_node only")
        if self.links_measured:   # the planner needs the new node's links
            topology = with_measured_links(topology, self.coordinator.measure_links())
        self.topology, self._problem = topology, None
        return index

    def run(self, inputs: Mapping[str, np.ndarray], micro_batches: int = 1) -> dict[str, np.ndarray]:
        """One request; with `micro_batches` > 1 it is cut along the batch dim into that many
        pieces, which pipeline through the stages so every node works at once."""
        if micro_batches <= 1:
            return self.coordinator.run(inputs)
        self._check_batch_dim()
        size = len(next(iter(inputs.values())))
        bounds = np.linspace(0, size, min(micro_batches, size) + 1).astype(int)
        pieces = [{k: v[a:b] for k, v in inputs.items()} for a, b in zip(bounds, bounds[1:])]
        outs = self.coordinator.run_many(pieces)
        return {name: np.concatenate([o[name] for o in outs]) for name in outs[0]}

    def _check_batch_dim(self) -> None:
        """Cutting along axis 0 is sound only where every input and output leads with the same symbolic dim."""
        types = [*self.graph.input_types().values(), *self.graph.output_types().values()]
        leading = {t.shape[0] if t.shape else None for t in types}
        if len(leading) != 1 or isinstance(next(iter(leading)), int) or None in leading:
            raise DnetError("cannot cut this model's requests into micro-batches",
                            hint="every input and output must lead with the same symbolic batch dim")

    def run_many(self, requests: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return self.coordinator.run_many(requests)

    def __call__(self, *args: np.ndarray, **kwargs: np.ndarray) -> Any:
        inputs = {**dict(zip(self.graph.input_names, args)), **kwargs}
        out = self.run(inputs)
        values = [out[n] for n in self.graph.output_names]
        return values[0] if len(values) == 1 else tuple(values)

    def close(self) -> None:
        atexit.unregister(self.close)
        self.closed = True
        self.coordinator.close()
        if self.local is not None:
            self.local.close()

    def __enter__(self) -> "DistributedExecutable":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def compile_distributed(graph: Graph, topology: Any, *, plan: Any = None, env: dict[str, int] | None = None,
                        backend: str | Sequence[str] = "numpy", shape_links: bool | None = None,
                        slowdowns: Sequence[float] | None = None, secret: str | None = None,
                        slots: int = 1, measure_links: bool | None = None, models: Sequence[str] | None = None,
                        **coordinator_options: Any) -> DistributedExecutable:
    """Plan `graph` over `topology` (unless `plan` is given), start or reach its workers, ship the stages.

    `backend`: the backend of every local worker whose topology node names none (`backend = "llvm"` in its
    table), or a list, one per node. `env` gives the sizes of symbolic dims the plan is made for
    (`{"batch": 8, "seq": 128}`);
    dims it does not name are planned at 1. `plan`: a Plan or a `PipelinePlan` (its stage graphs as
    given: a tensor-parallel group's members, say), or a function of the topology returning one. Stages with STATE inputs keep `slots` sequences of it on their workers. With `measure_links`
    (the default for workers at addresses) the workers measure the links between them and the plan is
    made with those figures rather than the topology file's. A worker lost without a spare left is
    planned around: the survivors take its work. `models`: model files (or their directories) the local
    workers read their weights from where they can (`dnet worker --models`), instead of receiving them;
    by default the files the graph's weights were memory-mapped from (local workers share this disk).
    """
    symbols = set().union(*(shape_symbols(t.shape) for t in graph.input_types().values()))
    env = {**{s: 1 for s in symbols}, **(env or {})}
    addresses = [node.address for node in topology.nodes]
    if any(a is None for a in addresses) and not all(a is None for a in addresses):
        raise DnetError("some topology nodes have an address and some do not",
                        hint="give every node its worker's HOST:PORT, or none (a local cluster)")
    measure_links = addresses[0] is not None if measure_links is None else measure_links
    make_plan = plan if callable(plan) else (lambda topo: plan or plan_pipeline(graph, topo, env=env))
    chosen = None if measure_links else make_plan(topology)   # no plan, no workers started
    local = None
    if addresses[0] is None:
        # a node's own `backend` (its table in a topology file) wins over the session's target
        backends = ([node.backend or backend for node in topology.nodes] if isinstance(backend, str)
                    else list(backend))
        for name in dict.fromkeys(backends):   # refused here, in one line, not as a worker that fails to start
            registry.require_available(name)
        slow = list(slowdowns) if slowdowns is not None else [1.0] * len(addresses)
        threads = [node.devices[0].cores if node.devices else None for node in topology.nodes]
        models = files_of(graph.weights.values()) if models is None else list(models)
        specs = [WorkerSpec(backend=b, threads=t, cores=c, slowdown=s, name=node.name, models=list(models))
                 for node, b, t, c, s in zip(topology.nodes, backends, threads, core_sets(threads), slow)]
        local = LocalCluster(specs, secret).start()
        addresses, secret = local.addresses, local.secret
        shape_links = True if shape_links is None else shape_links
    owner = topology.cluster   # workers started for this topology (on Ray): their secret and TLS files
    secret = secret or (owner.secret if owner is not None else None) or secret_from_env()
    if not secret:
        raise DnetError("no cluster secret", hint="set DNET_CLUSTER_SECRET to the workers' secret")
    links = link_shapes(topology) if shape_links else None
    if "tls" not in coordinator_options:   # workers elsewhere: this node's TLS files from $DNET_TLS_DIR
        coordinator_options["tls"] = (local.tls if local is not None else owner.tls if owner is not None
                                      else tls_from_env())
    coordinator = None
    try:
        coordinator = Coordinator(addresses, secret, **coordinator_options)
        if measure_links:
            topology = with_measured_links(topology, coordinator.measure_links())
            chosen = make_plan(topology)
        pipeline = chosen if isinstance(chosen, PipelinePlan) else pipeline_from_plan(graph, chosen, topology.names)
        coordinator.load(pipeline.stages, pipeline.placement, links, slots=slots, parallel=pipeline.parallel)
    except BaseException:
        if coordinator is not None:
            coordinator.close()
        if local is not None:
            local.close()
        raise
    exe = DistributedExecutable(graph, pipeline, coordinator, local, topology, env, links)
    exe.links_measured = measure_links
    coordinator.replanner = exe.replan_over
    if owner is not None:   # whoever restarts the workers (Ray) brings them back to this executable
        owner.attach(exe)
    return exe


def with_measured_links(topology: Any, measured: Mapping[tuple[int, int], LinkShape]) -> Any:
    """A copy of `topology` whose links between workers i -> j are the measured ones."""
    from dnet.topology import Topology

    out = Topology(list(topology.nodes), dict(topology.links), topology.source, topology.cluster)
    for (i, j), shape in measured.items():
        out.add_link(topology.names[i], topology.names[j], shape.bandwidth, shape.latency, symmetric=False)
    return out


def _request_list(requests: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]]) -> list:
    return [requests] if isinstance(requests, Mapping) else list(requests)
