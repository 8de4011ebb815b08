"""Weight-only int8 quantization: a matmul's constant weight kept as int8, one f32 scale per
output channel (symmetric, rounded to nearest, so |error| <= scale / 2 per weight).

Each such weight W becomes cast(Q, f32) * S, with S broadcast along the input axis: an
ordinary graph that every backend runs as written (the numpy reference is the oracle).
The C backend recognises the pattern and keeps Q packed as int8, a quarter of the
memory, widening one cache block at a time next to its micro-kernel. Quantized are
the weights that matmuls read as their right operand (directly or transposed; one
scale per output channel) and embedding tables read by gathers along their rows (one
scale per row: a gather then widens only the rows it reads). Biases and norm weights
stay f32.
"""
from __future__ import annotations

from collections.abc import Set

import numpy as np

from dnet.core.dtypes import DType
from dnet.core.passes import Pass
from dnet.core.shapes import numel
from dnet.graph.infer import infer
from dnet.graph.ir import Graph, Node
from dnet.graph.ops import Op
from dnet.graph.rebuild import GraphRebuilder

MIN_ELEMENTS = 4096   # smaller weights save too little to be worth a rounding error


def quantize_weights(graph: Graph, min_elements: int = MIN_ELEMENTS, keep: Set[int] = frozenset()) -> Graph:
    """`graph` with its matmul weights stored as int8 plus per-output-channel scales; the weight nodes in
    `keep` stay as they are."""
    users = graph.users()
    rebuilder = GraphRebuilder(graph)
    for node in graph.nodes:
        axis = _channel_axis(graph, users, node) if _candidate(node, min_elements) and node.id not in keep else None
        if axis is None:
            rebuilder.copy(node)
        else:
            rebuilder.value[node.id] = _dequantized(rebuilder, node, graph.weights[node.attrs["name"]], axis)
    return rebuilder.finish()


def quantize(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 q, f32 scales with `axis` kept) such that q * scales ~ w; scales are max|w| / 127."""
    reduce = tuple(a for a in range(w.ndim) if a != axis)
    top = np.max(np.abs(w), axis=reduce, keepdims=True).astype(np.float32)
    scale = np.where(top > 0, top / 127, 1).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale


def _candidate(node: Node, min_elements: int) -> bool:
    return (node.op is Op.CONST and node.dtype is DType.F32 and len(node.shape) == 2
            and isinstance(numel(node.shape), int) and numel(node.shape) >= min_elements)


def _channel_axis(graph: Graph, users, node: Node) -> int | None:
    """The axis to keep one scale along, when every reader is a matmul taking the weight (or its
    transpose) as the right operand (its output channels) or a gather of its rows; else None."""
    axes = set()
    for u in users[node.id]:
        user = graph.nodes[u]
        if user.op is Op.MATMUL and user.inputs == (user.inputs[0], node.id) and user.inputs[0] != node.id:
            axes.add(1)
        elif user.op is Op.GATHER and user.inputs[0] == node.id and user.attrs["axis"] % 2 == 0:
            axes.add(0)
        elif user.op is Op.PERMUTE and tuple(user.attrs["perm"]) == (1, 0) and users[u] and all(
                graph.nodes[m].op is Op.MATMUL and graph.nodes[m].inputs[1] == u and graph.nodes[m].inputs[0] != u
                for m in users[u]):
            axes.add(0)
        else:
            return None
    return axes.pop() if len(axes) == 1 else None


def _dequantized(rb: GraphRebuilder, node: Node, w: np.ndarray, axis: int) -> int:
    """cast(Q) * expand(S): the f32 weight the int8 one stands for."""
    name = node.attrs["name"]
    q, scale = quantize(np.asarray(w, np.float32), axis)

    def add(op: Op, inputs: list[int], weight=None, **attrs) -> int:
        out = infer(op, [rb.new.nodes[i].type for i in inputs], attrs, node.name)
        return rb.add(op, inputs, attrs, out, node.name, weight)

    qn = add(Op.CONST, [], q, name=f"{name}@int8", shape=q.shape, dtype=DType.I8)
    sn = add(Op.CONST, [], scale, name=f"{name}@scale", shape=scale.shape, dtype=DType.F32)
    return add(Op.MUL, [add(Op.CAST, [qn], dtype=DType.F32), add(Op.EXPAND, [sn], shape=tuple(node.shape))])


QUANTIZE_INT8 = Pass("quantize-int8", "graph", quantize_weights,
                     "matmul weights as int8 with one f32 scale per output channel")
