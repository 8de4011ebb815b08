"""Algebraic simplification: rewrite rules kept as data, applied to a fixed point.

A rule names the op it applies to and a function that looks at a node (whose inputs
are already simplified) and its producers. It returns None (no match), an existing
value to use instead of the node, or a replacement node of the same type. Nodes are
visited in topological order and a replacement is offered to the rules again, so one
sweep reaches the fixed point: a rule reads only a node and its producers, which are
final by then. Nodes left unused are for DCE to drop.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from dnet.core.passes import Pass
from dnet.graph.ir import Graph, Node
from dnet.graph.ops import Op
from dnet.graph.rebuild import GraphRebuilder

Rewrite = Callable[[Graph, Node], "int | Node | None"]


@dataclass(frozen=True)
class Rule:
    op: Op
    pattern: str      # what it does, for a reader and for `dnet inspect`
    rewrite: Rewrite


def _same_type(g: Graph, n: Node) -> int | None:
    """A reshape, expand or cast to what its input already is."""
    return n.inputs[0] if g.nodes[n.inputs[0]].type == n.type else None


def _merge_with_inner(g: Graph, n: Node) -> Node | None:
    """op(op(x)) -> op(x), for ops whose outer attributes say everything (reshape, expand)."""
    inner = g.nodes[n.inputs[0]]
    return replace(n, inputs=inner.inputs) if inner.op is n.op else None


def _permute_of_permute(g: Graph, n: Node) -> Node | None:
    inner = g.nodes[n.inputs[0]]
    if inner.op is not Op.PERMUTE:
        return None
    perm = tuple(inner.attrs["perm"][axis] for axis in n.attrs["perm"])
    return replace(n, inputs=inner.inputs, attrs={"perm": perm})


def _identity_permute(g: Graph, n: Node) -> int | None:
    return n.inputs[0] if tuple(n.attrs["perm"]) == tuple(range(len(n.shape))) else None


def _whole_slice(g: Graph, n: Node) -> int | None:
    x = g.nodes[n.inputs[0]]
    whole = (all(s == 0 for s in n.attrs["starts"]) and tuple(n.attrs["stops"]) == x.shape
             and all(s == 1 for s in n.attrs["steps"]))
    return n.inputs[0] if whole else None


def _drop_fill(value: int, sides: tuple[int, ...]) -> Rewrite:
    """x op FULL(value) -> x, with the fill on one of `sides` (0: left, 1: right)."""
    def rewrite(g: Graph, n: Node) -> int | None:
        for side in sides:
            fill = g.nodes[n.inputs[side]]
            if fill.op is Op.FULL and _is_number(fill.attrs["value"]) and fill.attrs["value"] == value:
                return n.inputs[1 - side]
        return None
    return rewrite


def _is_number(v: object) -> bool:
    return isinstance(v, (bool, int, float))  # not a symbolic Dim fill


RULES: tuple[Rule, ...] = (
    Rule(Op.RESHAPE, "reshape(reshape(x, a), b) -> reshape(x, b)", _merge_with_inner),
    Rule(Op.RESHAPE, "reshape(x, shape of x) -> x", _same_type),
    Rule(Op.EXPAND, "expand(expand(x, a), b) -> expand(x, b)", _merge_with_inner),
    Rule(Op.EXPAND, "expand(x, shape of x) -> x", _same_type),
    Rule(Op.PERMUTE, "permute(permute(x, p), q) -> permute(x, p[q])", _permute_of_permute),
    Rule(Op.PERMUTE, "permute(x, identity) -> x", _identity_permute),
    Rule(Op.SLICE, "slice(x, all of x) -> x", _whole_slice),
    Rule(Op.CAST, "cast(x, dtype of x) -> x", _same_type),
    Rule(Op.MUL, "x * 1 -> x, 1 * x -> x", _drop_fill(1, (0, 1))),
    Rule(Op.ADD, "x + 0 -> x, 0 + x -> x", _drop_fill(0, (0, 1))),
    Rule(Op.SUB, "x - 0 -> x", _drop_fill(0, (1,))),
    Rule(Op.DIV, "x / 1 -> x", _drop_fill(1, (1,))),
)


def simplify(graph: Graph, rules: tuple[Rule, ...] = RULES) -> Graph:
    by_op: dict[Op, list[Rule]] = {}
    for rule in rules:
        by_op.setdefault(rule.op, []).append(rule)
    rebuilder = GraphRebuilder(graph)
    for node in graph.nodes:
        node = replace(node, inputs=tuple(rebuilder.value[i] for i in node.inputs))
        rebuilder.value[node.id] = _rewrite(rebuilder, node, by_op)
    return rebuilder.finish()


def _rewrite(rebuilder: GraphRebuilder, node: Node, by_op: dict[Op, list[Rule]]) -> int:
    """Apply rules until none matches; the result is an existing value or a new node."""
    while True:
        out = _first_match(rebuilder.new, node, by_op.get(node.op, []))
        if out is None:
            return rebuilder.add(node.op, node.inputs, node.attrs, node.type, node.name)
        if isinstance(out, int):
            return out
        node = out


def _first_match(g: Graph, node: Node, rules: list[Rule]) -> int | Node | None:
    for rule in rules:
        out = rule.rewrite(g, node)
        if out is not None:
            return out
    return None


SIMPLIFY = Pass("simplify", "graph", simplify, "algebraic identities: " + "; ".join(r.pattern for r in RULES))
