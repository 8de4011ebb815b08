"""One entry point from op names to graph nodes: `emit(builder, name, inputs, attrs)`.

Object IR, the DSL and the importers all name operations by string; `emit` turns a
name into a primitive node (with broadcasting and promotion for element-wise ops)
or expands a composite. `OP_NAMES` is the vocabulary a frontend may use.
"""
from __future__ import annotations

from typing import Any, Sequence

from dnet.errors import UnsupportedOpError, did_you_mean
from dnet.graph.builder import GraphBuilder, Value
from dnet.graph.composites import COMPOSITES
from dnet.graph.ops import OPS_BY_NAME, Op, OpClass

_SOURCES_FOR_FRONTENDS = {"full", "arange"}


def _primitive(b: GraphBuilder, op: Op, inputs: Sequence[Any], attrs: dict[str, Any]) -> Value:
    if op.cls in (OpClass.UNARY, OpClass.BINARY, OpClass.TERNARY):
        return b.elementwise(op, *inputs)
    if op is Op.CAST:
        return b.cast(inputs[0], attrs["dtype"])
    if op is Op.MATMUL:
        return b.matmul(*inputs)
    if op in (Op.SUM, Op.REDUCE_MAX, Op.REDUCE_MIN):
        return b.reduce(op, inputs[0], attrs.get("axes"), attrs.get("keepdim", False))
    if op is Op.EXPAND:
        return b.expand(inputs[0], attrs["shape"])
    if op is Op.FULL:
        return b.full(attrs["shape"], attrs["value"], attrs["dtype"])
    return b.node(op, list(inputs), **attrs)


def emit(b: GraphBuilder, name: str, inputs: Sequence[Any], attrs: dict[str, Any] | None = None) -> Value:
    """Build operation `name` on `inputs` (graph values or Python scalars)."""
    attrs = dict(attrs or {})
    if name in COMPOSITES:
        return COMPOSITES[name](b, *inputs, **attrs)
    op = OPS_BY_NAME.get(name)
    if op is None or (op.cls is OpClass.SOURCE and name not in _SOURCES_FOR_FRONTENDS):
        raise UnsupportedOpError(f"unknown operation '{name}'", b.where, did_you_mean(name, OP_NAMES))
    return _primitive(b, op, inputs, attrs)


OP_NAMES: tuple[str, ...] = tuple(sorted(
    set(COMPOSITES) | {n for n, op in OPS_BY_NAME.items() if op.cls is not OpClass.SOURCE} | _SOURCES_FOR_FRONTENDS
))
