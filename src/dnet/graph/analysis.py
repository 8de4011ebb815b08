"""Data-flow analysis of the graph IR: validity, dependencies, cost, critical path, parallelism.

Everything here reads a `Graph` and changes nothing. Costs may be symbolic (`Dim`
expressions over `batch`, `seq`, ...); functions that compare or add costs take a
dims env such as `{'batch': 1, 'seq': 128}` to turn them into numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from dnet.core.shapes import Dim, numel, substitute
from dnet.core.types import TensorType
from dnet.errors import DnetError, GraphError, SymbolError, WeightError
from dnet.graph.infer import infer
from dnet.graph.ir import Graph, Node
from dnet.graph.ops import INPUTS, Op, OpClass

Env = Mapping[str, int]
Size = int | Dim  # a count that may be symbolic


# -- validity -------------------------------------------------------------------------------------

def verify(graph: Graph) -> None:
    """Raise a dnet error naming the first node that breaks an invariant of the IR."""
    for position, node in enumerate(graph.nodes):
        _verify_node(graph, position, node)
    _verify_signature(graph)


def _fail(node: Node, problem: str, kind: type[DnetError] = GraphError) -> None:
    raise kind(f"%{node.id} = {node.op}: {problem}", node.name or None)


def _verify_node(graph: Graph, position: int, node: Node) -> None:
    if node.id != position:
        _fail(node, f"id {node.id} at position {position} (a node's id is its index)")
    late = [i for i in node.inputs if not 0 <= i < node.id]
    if late:
        _fail(node, f"input(s) {', '.join(f'%{i}' for i in late)} do not come before the node")
    arity = node.op.arity
    if len(node.inputs) != arity if arity >= 0 else not node.inputs:
        _fail(node, f"takes {arity if arity >= 0 else 'one or more'} input(s), has {len(node.inputs)}")
    missing = set(node.op.attr_names) - set(node.attrs)
    extra = set(node.attrs) - set(node.op.attr_names)
    if missing or extra:
        _fail(node, f"attributes {sorted(node.attrs)}, expected {sorted(node.op.attr_names)}")
    if node.op is Op.CONST:
        _verify_weight(graph, node)
    try:
        expected = infer(node.op, [graph.nodes[i].type for i in node.inputs], node.attrs, node.name)
    except DnetError as e:
        _fail(node, e.message, type(e))
    if expected != node.type:
        _fail(node, f"type {node.type} but its inputs and attributes give {expected}")


def _verify_weight(graph: Graph, node: Node) -> None:
    name = node.attrs["name"]
    if name not in graph.weights:
        _fail(node, f"weight '{name}' is not in graph.weights", WeightError)
    array = graph.weights[name]
    stored = node.shape
    if node.dtype.is_block:
        from dnet.core.quant import storage_shape

        stored = storage_shape(node.dtype, node.shape)
    if tuple(array.shape) != stored or array.dtype != node.dtype.np:
        _fail(node, f"weight '{name}' is {array.dtype}{tuple(array.shape)}, the node says {node.type}", WeightError)


def _verify_signature(graph: Graph) -> None:
    declared = [n.id for n in graph.nodes if n.op in INPUTS]
    if sorted(graph.inputs) != declared:
        raise GraphError(f"graph.inputs {graph.inputs} are not the INPUT and STATE nodes {declared}")
    if len(set(graph.input_names)) != len(graph.inputs):
        raise GraphError(f"input names repeat: {graph.input_names}")
    bad = [i for i in graph.outputs if not 0 <= i < len(graph.nodes)]
    if bad:
        raise GraphError(f"output(s) {bad} are not nodes of the graph (it has {len(graph.nodes)})")
    if len(graph.output_names) != len(graph.outputs) or len(set(graph.output_names)) != len(graph.outputs):
        raise GraphError(f"output names {graph.output_names} do not name the outputs {graph.outputs} once each")


# -- dependencies ---------------------------------------------------------------------------------

def ancestors(graph: Graph, nodes: int | Iterable[int]) -> set[int]:
    """Every node that `nodes` depend on, not counting themselves."""
    seeds = [nodes] if isinstance(nodes, int) else list(nodes)
    seen: set[int] = set()
    stack = [i for n in seeds for i in graph.nodes[n].inputs]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(graph.nodes[n].inputs)
    return seen


def descendants(graph: Graph, nodes: int | Iterable[int]) -> set[int]:
    """Every node that depends on `nodes`, not counting themselves."""
    seeds = {nodes} if isinstance(nodes, int) else set(nodes)
    reached: set[int] = set()
    for node in graph.nodes[min(seeds, default=len(graph.nodes)):]:  # topological: one forward sweep
        if any(i in seeds or i in reached for i in node.inputs):
            reached.add(node.id)
    return reached


def constant_values(graph: Graph) -> set[int]:
    """Nodes computed from weights and fills alone (no graph input): foldable, free to copy anywhere."""
    const: set[int] = set()
    for node in graph.nodes:
        if node.op not in INPUTS and all(i in const for i in node.inputs):
            const.add(node.id)
    return const


# -- cost -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cost:
    """Arithmetic (flops) and memory traffic (bytes read + written) of one node."""

    flops: Size
    bytes: Size


def evaluate(x: Size, env: Env) -> int:
    """A symbolic count as a number; a SymbolError names the dims `env` lacks."""
    if isinstance(x, (int, float)):   # a float: bytes of a block dtype (a fraction of a byte per element)
        return int(x)
    missing = x.free_symbols() - set(env)
    if missing:
        raise SymbolError(f"no value for dim(s) {', '.join(sorted(missing))} in {x}",
                          hint="pass a dims env such as {" + ", ".join(f"'{s}': 1" for s in sorted(missing)) + "}")
    return int(substitute(x, env))


def value_bytes(t: TensorType) -> Size:
    return numel(t.shape) * t.dtype.itemsize


def node_cost(graph: Graph, node: Node | int, env: Env | None = None) -> Cost:
    """Flops and bytes moved by one node; symbolic unless `env` gives the dims."""
    node = graph.nodes[node] if isinstance(node, int) else node
    ins = [graph.nodes[i].type for i in node.inputs]
    cost = Cost(_flops(node, ins), _bytes(node, ins))
    if env is None:
        return cost
    return Cost(evaluate(cost.flops, env), evaluate(cost.bytes, env))


def _flops(node: Node, ins: list[TensorType]) -> Size:
    cls, out = node.op.cls, numel(node.shape)
    if cls in (OpClass.UNARY, OpClass.BINARY, OpClass.TERNARY, OpClass.CAST):
        return out
    if cls is OpClass.REDUCE:
        return numel(ins[0].shape)
    if cls is OpClass.MATMUL:
        return 2 * out * ins[0].shape[-1]              # 2*m*n*k per batch
    if cls is OpClass.CONV:
        return 2 * out * numel(ins[1].shape[1:])      # (C/groups)*kh*kw multiply-adds per output
    if cls is OpClass.POOL:
        return out * numel(node.attrs["kernel"])
    return 0                                          # sources and movement: no arithmetic


def _bytes(node: Node, ins: list[TensorType]) -> Size:
    if node.op in (Op.INPUT, Op.CONST, Op.RESHAPE):   # already in memory; a reshape is a view
        return 0
    if node.op is Op.GATHER:  # reads only the rows it takes: a few KiB of a 50 MB embedding table
        return 2 * value_bytes(node.type) + value_bytes(ins[1])
    return sum((value_bytes(t) for t in ins), value_bytes(node.type))


def flops_cost(graph: Graph, env: Env | None = None) -> Callable[[Node], int]:
    """The default cost function: a node's flops as a number."""
    return lambda node: evaluate(node_cost(graph, node).flops, env or {})


# -- critical path and parallelism ----------------------------------------------------------------

@dataclass(frozen=True)
class CriticalPath:
    nodes: list[int]   # the path, first to last, less its leading inputs and constants
    cost: float


def critical_path(graph: Graph, cost: Callable[[Node], float] | None = None, env: Env | None = None) -> CriticalPath:
    """The longest path through the DAG, a path's length being the sum of `cost` over its nodes.

    `cost` maps a node to a number; by default its flops, with the dims bound by `env`.
    """
    cost = cost or flops_cost(graph, env)
    best: list[float] = []
    came_from: list[int | None] = []
    for node in graph.nodes:
        pred = max(node.inputs, key=lambda i: best[i], default=None)
        best.append(cost(node) + (best[pred] if pred is not None else 0))
        came_from.append(pred)
    if not graph.nodes:
        return CriticalPath([], 0)
    end: int | None = max(range(len(graph.nodes)), key=lambda i: best[i])
    total, path = best[end], []
    while end is not None:
        path.append(end)
        end = came_from[end]
    ready = constant_values(graph) | set(graph.inputs)
    return CriticalPath([n for n in reversed(path) if n not in ready], total)


def topological_levels(graph: Graph) -> list[list[int]]:
    """Nodes grouped by their earliest step: the ops of one level can run at once.

    Graph inputs and constants (weights, fills and what is computed from them alone,
    which a compiler folds before running) are ready before step 0 and belong to no level.
    """
    ready = constant_values(graph) | set(graph.inputs)
    level: dict[int, int] = {}
    levels: list[list[int]] = []
    for node in graph.nodes:
        if node.id in ready:
            continue
        step = 1 + max((level[i] for i in node.inputs if i in level), default=-1)
        level[node.id] = step
        if step == len(levels):
            levels.append([])
        levels[step].append(node.id)
    return levels


@dataclass(frozen=True)
class Parallelism:
    work: float          # total cost of all nodes
    span: float          # cost of the critical path
    widths: list[int]    # ops per topological level

    @property
    def average(self) -> float:
        """work / span: how many ops' worth of work could run at once on average."""
        return self.work / self.span if self.span else 1.0

    @property
    def max_width(self) -> int:
        return max(self.widths, default=0)


def parallelism(graph: Graph, cost: Callable[[Node], float] | None = None, env: Env | None = None) -> Parallelism:
    cost = cost or flops_cost(graph, env)
    work = sum(cost(n) for n in graph.nodes)
    span = critical_path(graph, cost).cost
    return Parallelism(work, span, [len(level) for level in topological_levels(graph)])


# -- liveness and cut points ----------------------------------------------------------------------

def last_uses(graph: Graph) -> list[int]:
    """For each node, the position of its last reader (its own position when nobody reads it)."""
    last = [n.id for n in graph.nodes]
    for node in graph.nodes:
        for i in node.inputs:
            last[i] = node.id
    return last


def peak_live_bytes(graph: Graph, env: Env | None = None) -> int:
    """Most activation bytes alive at once when nodes run in order (weights not counted).

    Every value is counted as materialised, as the reference interpreter holds it: fills
    and expands that a kernel backend fuses into their readers count here in full.
    """
    last = last_uses(graph)
    for i in graph.outputs:
        last[i] = len(graph.nodes)  # outputs live to the end
    freed_at: list[int] = [0] * (len(graph.nodes) + 1)
    live = peak = 0
    for node in graph.nodes:
        if node.op is not Op.CONST:
            size = evaluate(value_bytes(node.type), env or {})
            live += size
            freed_at[last[node.id]] += size
        peak = max(peak, live)
        live -= freed_at[node.id]
    return peak


@dataclass(frozen=True)
class Cut:
    node: int                # cut right after this node
    values: tuple[int, ...]  # the values that cross the cut (usually just `node`)
    bytes: Size              # their total size


def cut_points(graph: Graph, env: Env | None = None, max_values: int = 1) -> list[Cut]:
    """Positions in the node order where at most `max_values` computed values cross.

    Cutting the node list right after such a node splits the graph into two pipeline
    stages that exchange only those values. Graph inputs and constant values do not
    count as crossing: every stage can be given them (`serialize.subgraph` copies
    constants into each piece). Outputs go to the caller, not to the next stage.
    """
    last, free = last_uses(graph), constant_values(graph) | set(graph.inputs)
    ends: list[list[int]] = [[] for _ in graph.nodes]
    crossing: set[int] = set()
    cuts = []
    for node in graph.nodes:
        crossing.difference_update(ends[node.id])
        if node.id in free:
            continue  # a cut just after a constant equals the cut before it
        if last[node.id] > node.id:
            crossing.add(node.id)
            ends[last[node.id]].append(node.id)
        if 0 < len(crossing) <= max_values:
            values = tuple(sorted(crossing))
            size = sum((value_bytes(graph.nodes[v].type) for v in values), 0)
            cuts.append(Cut(node.id, values, size if env is None else evaluate(size, env)))
    return cuts


# -- summary --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GraphSummary:
    nodes: int
    by_class: dict[str, int]
    weight_bytes: int
    flops: int
    bytes_moved: int
    critical_path_nodes: int
    critical_path_flops: int
    parallelism: Parallelism
    peak_live_bytes: int

    def __str__(self) -> str:
        classes = ", ".join(f"{k} {v}" for k, v in self.by_class.items())
        rows = [
            ("nodes", f"{self.nodes} ({classes})"),
            ("weights", _bytes_str(self.weight_bytes)),
            ("flops", _count_str(self.flops, "FLOP")),
            ("bytes moved", _bytes_str(self.bytes_moved)),
            ("critical path", f"{self.critical_path_nodes} ops, {_count_str(self.critical_path_flops, 'FLOP')}"),
            ("parallelism", f"{self.parallelism.average:.2f}x on average, "
                            f"at most {self.parallelism.max_width} ops at once"),
            ("peak live", f"{_bytes_str(self.peak_live_bytes)} of activations"),
        ]
        return "\n".join(f"{k:<14} {v}" for k, v in rows)


def summary(graph: Graph, env: Env | None = None) -> GraphSummary:
    """Counts, sizes and the data-flow figures of a graph, its dims bound by `env`."""
    env = env or {}
    by_class: dict[str, int] = {}
    for node in graph.nodes:
        by_class[node.op.cls.value] = by_class.get(node.op.cls.value, 0) + 1
    costs = [node_cost(graph, n, env) for n in graph.nodes]
    flops = lambda node: costs[node.id].flops  # noqa: E731 - computed once, read three times
    path = critical_path(graph, flops)
    return GraphSummary(
        nodes=len(graph.nodes),
        by_class=by_class,
        weight_bytes=sum(evaluate(value_bytes(n.type), env) for n in graph.nodes if n.op is Op.CONST),
        flops=sum(c.flops for c in costs),
        bytes_moved=sum(c.bytes for c in costs),
        critical_path_nodes=len(path.nodes),
        critical_path_flops=int(path.cost),
        parallelism=parallelism(graph, flops),
        peak_live_bytes=peak_live_bytes(graph, env),
    )


def _bytes_str(n: float) -> str:
    units = ["B", "KiB", "MiB", "GiB"]
    step = 0
    while n >= 1024 and step < len(units) - 1:
        n, step = n / 1024, step + 1
    return f"{n:.0f} B" if step == 0 else f"{n:.1f} {units[step]}"


def _count_str(n: float, unit: str) -> str:
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {prefix}{unit}"
    return f"{n:.0f} {unit}"
