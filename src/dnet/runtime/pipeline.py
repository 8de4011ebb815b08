"""Cutting a graph into pipeline stages: each stage a graph of its own.

Stage k receives exactly the values that cross the boundary between stage k-1 and
k, and sends on exactly those that cross between k and k+1: values produced earlier
and still needed later pass through (a residual, an attention mask used by every
layer). Boundary values are stage inputs named `%<node id>` (graph inputs keep their
names); the last stage's outputs are the graph's outputs. Constant values (weights,
fills, and what is computed from them alone) are copied into every stage that reads
them rather than shipped per request.

A stage that uses a symbolic dim (`seq`, `batch`) must be able to bind it from its
own inputs, so graph inputs that bind a dim no other boundary value binds travel
along to the stages that need them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from dnet.core.shapes import Dim
from dnet.errors import DnetError
from dnet.graph.analysis import constant_values
from dnet.graph.ir import Graph, Node
from dnet.graph.ops import Op
from dnet.graph.serialize import boundary_name as _boundary


def boundary_name(graph: Graph, node_id: int) -> str:
    node = graph.nodes[node_id]
    return node.attrs["name"] if node.op is Op.INPUT else _boundary(node_id)


@dataclass(frozen=True)
class StageCut:
    """What each stage computes, receives and sends (node ids of the whole graph)."""

    nodes: list[list[int]]
    receives: list[list[int]]
    sends: list[list[int]]


def plan_cut(graph: Graph, stage_of: Sequence[int], n_stages: int) -> StageCut:
    """Boundary sets for an assignment of nodes to stages (`stage_of[node id]`; constants and inputs ignored)."""
    constants = constant_values(graph)
    produced = [(-1 if n.op is Op.INPUT or n.id in constants else stage_of[n.id]) for n in graph.nodes]
    last_use = [-2] * len(graph.nodes)
    nodes: list[list[int]] = [[] for _ in range(n_stages)]
    for node in graph.nodes:
        if node.op is Op.INPUT or node.id in constants:
            continue
        s = stage_of[node.id]
        if not 0 <= s < n_stages:
            raise DnetError(f"node %{node.id} ({node.op.name}) assigned to stage {s}, not in 0..{n_stages - 1}")
        nodes[s].append(node.id)
        for i in node.inputs:
            if i in constants:
                continue
            if produced[i] > s:
                raise DnetError(f"node %{node.id} in stage {s} reads %{i} from the later stage {produced[i]}",
                                hint="pipeline stages must follow the data flow")
            last_use[i] = max(last_use[i], s)
    for i in graph.outputs:
        last_use[i] = n_stages  # the coordinator, after the last stage
    for s, needed in enumerate(_inputs_binding_dims(graph, nodes, produced, last_use, constants)):
        for i in needed:
            last_use[i] = max(last_use[i], s)
    live = [i for i in range(len(graph.nodes)) if i not in constants and last_use[i] > produced[i]]
    receives = [[i for i in live if produced[i] < s <= last_use[i]] for s in range(n_stages)]
    sends = [[i for i in live if produced[i] <= s < last_use[i]] for s in range(n_stages)]
    return StageCut(nodes, receives, sends)


def _plain_symbols(shape: tuple) -> set[str]:
    """Dims that are a bare symbol (`seq`, not `seq*12`): the ones an input binds when it arrives."""
    out = set()
    for d in shape:
        if isinstance(d, Dim) and len(d.terms) == 1:
            (monomial, coefficient), = d.terms
            if coefficient == 1 and len(monomial) == 1 and isinstance(monomial[0], str):
                out.add(monomial[0])
    return out


def _symbols(shape: tuple) -> set[str]:
    return set().union(*(d.free_symbols() for d in shape if isinstance(d, Dim)))


def _inputs_binding_dims(graph: Graph, nodes: list[list[int]], produced: list[int],
                         last_use: list[int], constants: set[int]) -> list[set[int]]:
    """Per stage, the graph inputs it must also receive so that every dim it uses is bound."""
    binders: dict[str, int] = {}
    for i in graph.inputs:
        for sym in _plain_symbols(graph.nodes[i].shape):
            binders.setdefault(sym, i)
    out = []
    for s, ids in enumerate(nodes):
        received = {i for i in range(len(graph.nodes)) if produced[i] < s <= last_use[i] and i not in constants}
        bound = set().union(*(_plain_symbols(graph.nodes[i].shape) for i in received))
        read = {j for i in ids for j in graph.nodes[i].inputs if j in constants}  # copied in: a fill may be symbolic
        used = set().union(*(_symbols(graph.nodes[i].shape) for i in [*ids, *read]), set())
        out.append({binders[sym] for sym in used - bound if sym in binders})
    return out


def split_pipeline(graph: Graph, stage_of: Sequence[int], n_stages: int | None = None) -> list[Graph]:
    """One graph per stage; chained in order, they compute what `graph` computes."""
    n_stages = n_stages if n_stages is not None else max(
        (stage_of[n.id] for n in graph.nodes if n.op is not Op.INPUT), default=0) + 1
    cut = plan_cut(graph, stage_of, n_stages)
    return [_stage_graph(graph, cut, s, s == n_stages - 1) for s in range(n_stages)]


def _stage_graph(graph: Graph, cut: StageCut, s: int, last: bool) -> Graph:
    out = Graph()
    local: dict[int, int] = {}

    def add(node: Node, inputs: tuple[int, ...], attrs: dict) -> int:
        new = Node(len(out.nodes), node.op, inputs, attrs, node.type, node.name)
        out.nodes.append(new)
        return new.id

    def value(i: int) -> int:
        if i not in local:  # a constant read here for the first time: copy it (and what it reads) in
            src = graph.nodes[i]
            local[i] = add(src, tuple(value(j) for j in src.inputs), src.attrs)
            if src.op is Op.CONST:
                out.weights[src.attrs["name"]] = graph.weights[src.attrs["name"]]
        return local[i]

    for i in cut.receives[s]:
        node = graph.nodes[i]
        attrs = {"name": boundary_name(graph, i), "shape": node.shape, "dtype": node.dtype}
        local[i] = len(out.nodes)
        out.nodes.append(Node(local[i], Op.INPUT, (), attrs, node.type, node.name))
        out.inputs.append(local[i])
    for i in cut.nodes[s]:
        node = graph.nodes[i]
        local[i] = add(node, tuple(value(j) for j in node.inputs), node.attrs)
        if node.op is Op.STATE:   # state stays with the stage that reads it: its node binds it in place
            out.inputs.append(local[i])
    if last:
        out.outputs = [value(i) for i in graph.outputs]
        out.output_names = list(graph.output_names)
    else:
        out.outputs = [local[i] for i in cut.sends[s]]
        out.output_names = [boundary_name(graph, i) for i in cut.sends[s]]
    return out


def contiguous_assignment(graph: Graph, shares: Sequence[float],
                          cost: Callable[[Node], float] | None = None) -> list[int]:
    """Stage per node: cut the compute nodes, in order, into runs with costs in proportion to `shares`.

    The simple split the runtime needs before (or without) the partitioner: good for
    chains of similar layers. Cost defaults to flops with every symbolic dim at 1.
    """
    if not shares or any(x <= 0 for x in shares):
        raise DnetError(f"stage shares must be positive, got {list(shares)}")
    cost = cost or _default_cost(graph)
    constants = constant_values(graph)
    compute = [n for n in graph.nodes if n.op is not Op.INPUT and n.id not in constants]
    weights = [max(float(cost(n)), 1.0) for n in compute]  # movement ops count a little
    total, scale = sum(weights), sum(shares)
    bounds = [total * sum(shares[:k + 1]) / scale for k in range(len(shares))]
    stage_of = [0] * len(graph.nodes)
    done, s = 0.0, 0
    for node, w in zip(compute, weights):
        while s < len(shares) - 1 and done + w / 2 > bounds[s]:
            s += 1
        stage_of[node.id] = s
        done += w
    return stage_of


def _default_cost(graph: Graph) -> Callable[[Node], float]:
    from dnet.graph.analysis import node_cost

    def cost(node: Node) -> float:
        flops = node_cost(graph, node).flops
        if isinstance(flops, Dim):
            flops = flops.evaluate({s: 1 for s in flops.free_symbols()})
        return float(flops)

    return cost
