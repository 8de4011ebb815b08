"""Group a graph's nodes into a chain of layers: the units a pipeline stage is made of.

Layers come from node names where the model has them (`encoder.layer.3.attn...`,
`layers.12.mlp...`, `blocks.2...`): nodes before the first layer form a prologue,
nodes after the last an epilogue. A graph without such names is cut where data-flow
analysis finds a single tensor crossing (`analysis.cut_points`).

Weights belong to every layer that reads them; graph inputs and every value a later
layer reads cross the boundaries between layers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from dnet.errors import DnetError
from dnet.graph.analysis import Env, constant_values, cut_points, evaluate, last_uses, value_bytes
from dnet.graph.ir import Graph
from dnet.graph.ops import Op, OpClass

LAYER_NAME = re.compile(r"^(.*?(?:^|\.)(?:layers?|h|blocks?|blk|stages?)\.\d+)(?:\.|$)")


@dataclass
class Layer:
    name: str
    nodes: list[int] = field(default_factory=list)     # compute nodes, in graph order
    weights: set[str] = field(default_factory=set)     # weight names its nodes read
    weight_bytes: int = 0
    state_bytes: int = 0                               # state it keeps between runs (a KV cache)
    activation_bytes: int = 0                          # peak live activations while it runs


@dataclass
class LayerChain:
    """Layers in order and the bytes crossing each boundary.

    `boundary[i]` is what crosses the cut before layer i: boundary[0] is the graph's
    input, boundary[len(layers)] its output.
    """

    graph: Graph
    layers: list[Layer]
    boundary: list[int]
    env: dict[str, int]
    crossing: list[list[int]] = field(default_factory=list)  # graph values crossing each cut
    constants: set[int] = field(default_factory=set)         # values from weights alone: folded, never sent

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def names(self) -> list[str]:
        return [l.name for l in self.layers]


def layer_chain(graph: Graph, env: Env | None = None, max_layers: int = 128, by: str = "auto") -> LayerChain:
    """The graph as a chain of layers: `by` "names", "cuts" (at most `max_layers` segments), or
    "auto" (names where they mark at least two layers, else cuts)."""
    if by not in ("auto", "names", "cuts"):
        raise DnetError(f"layers are found by 'names', 'cuts' or 'auto', not {by!r}")
    env = dict(env or {})
    group = _groups_by_name(graph) if by != "cuts" else None
    if group is None and by == "names":
        raise DnetError("no node names mark layers (such as 'layers.3' or 'encoder.layer.3')",
                        hint="find layers by cut points instead")
    if group is None:
        group = _groups_by_cuts(graph, env, max_layers)
    return _build(graph, env, group)


def _groups_by_name(graph: Graph) -> list[tuple[int, str]] | None:
    """For each node, (group index, group name); None when the names mark fewer than two layers."""
    keys = [_layer_key(n.name) for n in graph.nodes]
    keyed = [i for i, k in enumerate(keys) if k is not None]
    if len({keys[i] for i in keyed}) < 2:
        return None
    first, last = keyed[0], keyed[-1]
    names: list[str] = []
    index: dict[str, int] = {}
    out: list[tuple[int, str]] = []
    for node, key in zip(graph.nodes, keys):
        if key is None and not first < node.id < last:  # before the first layer or after the last
            key = "prologue" if node.id < first else "epilogue"
        if key is not None and key not in index:
            index[key] = len(names)
            names.append(key)
        g = index[key] if key is not None else -1
        # a node never runs before the layers it reads from
        g = max([g] + [out[i][0] for i in node.inputs if graph.nodes[i].op.cls is not OpClass.SOURCE])
        out.append((g, names[g] if g >= 0 else "prologue"))
    return _renumber(out)


def _layer_key(name: str) -> str | None:
    """'forward.bert.forward.bert.layers.0.attn.forward' -> 'bert.layers.0' (frontend call paths
    repeat the object path and say 'forward' at each step; both are dropped)."""
    m = LAYER_NAME.match(name or "")
    if not m:
        return None
    parts: list[str] = []
    for part in m.group(1).split("."):
        if part != "forward" and not (parts and _repeats(parts, part)):
            parts.append(part)
    return ".".join(parts)


def _repeats(parts: list[str], part: str) -> bool:
    """Whether `part` starts a repeat of the path so far (bert.bert -> bert)."""
    return not part.isdigit() and part in parts


def _groups_by_cuts(graph: Graph, env: Env, max_layers: int) -> list[tuple[int, str]]:
    """Segments between single-tensor cut points, merged to at most `max_layers` of similar size."""
    cuts = [c.node for c in cut_points(graph, env)]
    if not cuts:
        raise DnetError("cannot split the graph into layers: no node names mark layers and no cut point "
                        "leaves a single tensor crossing")
    sizes = np.array([max(1, c - p) for p, c in zip([-1] + cuts, cuts + [len(graph.nodes) - 1])], dtype=float)
    target = sizes.sum() / min(max_layers, len(sizes))
    bounds, acc = [], 0.0
    for c, size in zip(cuts, sizes):
        acc += size
        if acc >= target:
            bounds.append(c)
            acc = 0.0
    out, g = [], 0
    for node in graph.nodes:
        out.append((g, f"segment.{g}"))
        if g < len(bounds) and node.id == bounds[g]:
            g += 1
    return out


def _renumber(groups: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Make group indices dense (0, 1, 2, ...) in order of first appearance."""
    dense: dict[int, int] = {}
    for g, _ in groups:
        dense.setdefault(g, len(dense))
    return [(dense[g], name) for g, name in groups]


def _build(graph: Graph, env: Env, group: list[tuple[int, str]]) -> LayerChain:
    const = constant_values(graph)
    derived = _weights_behind(graph, const)
    count = 1 + max(g for g, _ in group)
    layers = [Layer("") for _ in range(count)]
    for node in graph.nodes:
        g, name = group[node.id]
        if node.id in const:
            continue
        layer = layers[g]
        layer.name = layer.name or name
        if node.op is not Op.INPUT:
            layer.nodes.append(node.id)
        for i in node.inputs:
            layer.weights |= derived.get(i, frozenset())
    layers_kept = [l for l in layers if l.nodes]
    index = {id(l): k for k, l in enumerate(layers_kept)}
    owner = [index.get(id(layers[group[n.id][0]]), -1) for n in graph.nodes]
    for layer in layers_kept:
        layer.weight_bytes = sum(int(graph.weights[w].nbytes) for w in layer.weights)
        layer.state_bytes = sum(evaluate(value_bytes(graph.nodes[n].type), env) for n in layer.nodes
                                if graph.nodes[n].op is Op.STATE)
    crossing = _crossing(graph, owner, const, len(layers_kept))
    boundary = [sum(evaluate(value_bytes(graph.nodes[v].type), env) for v in values) for values in crossing]
    _activation_peaks(graph, env, layers_kept, const)
    return LayerChain(graph, layers_kept, boundary, dict(env), crossing, const)


def _weights_behind(graph: Graph, const: set[int]) -> dict[int, frozenset[str]]:
    """For each constant value, the weights it is computed from (a transposed weight is still that weight)."""
    out: dict[int, frozenset[str]] = {}
    for node in graph.nodes:
        if node.id in const:
            own = {node.attrs["name"]} if node.op is Op.CONST else set()
            out[node.id] = frozenset(own.union(*(out[i] for i in node.inputs)))
    return out


def _crossing(graph: Graph, owner: list[int], const: set[int], count: int) -> list[list[int]]:
    """The values crossing the cut before each layer (and after the last): a value crosses every
    cut between the layer that makes it and the last layer that reads it."""
    last_reader = [-1] * len(graph.nodes)
    for node in graph.nodes:
        for i in node.inputs:
            last_reader[i] = max(last_reader[i], owner[node.id])
    for i in graph.outputs:
        last_reader[i] = count  # outputs travel to whoever collects them
    cuts: list[list[int]] = [[] for _ in range(count + 1)]
    for node in graph.nodes:
        if node.id in const:
            continue
        made = -1 if node.op is Op.INPUT else owner[node.id]  # inputs come from outside, before layer 0
        for cut in range(made + 1, last_reader[node.id] + 1):
            cuts[cut].append(node.id)
    return cuts


def _activation_peaks(graph: Graph, env: Env, layers: list[Layer], const: set[int]) -> None:
    """Peak bytes of activations alive at once inside each layer (its inputs included)."""
    last = last_uses(graph)
    for layer in layers:
        members = set(layer.nodes)
        inputs = {i for n in layer.nodes for i in graph.nodes[n].inputs
                  if i not in members and i not in const}
        live = sum(evaluate(value_bytes(graph.nodes[i].type), env) for i in inputs)
        peak = live
        for n in layer.nodes:
            if _in_state(graph, n):   # kept between runs: counted with the weights
                continue
            live += evaluate(value_bytes(graph.nodes[n].type), env)
            peak = max(peak, live)
            for i in graph.nodes[n].inputs:
                if last[i] == n and i not in const and graph.nodes[i].op is not Op.CONST:
                    live -= evaluate(value_bytes(graph.nodes[i].type), env)
        layer.activation_bytes = int(peak)


def _in_state(graph: Graph, n: int) -> bool:
    """A STATE, or a SCATTER writing into one in place: no memory of its own while a layer runs."""
    node = graph.nodes[n]
    return node.op is Op.STATE or (node.op is Op.SCATTER and graph.nodes[node.inputs[0]].op is Op.STATE)
