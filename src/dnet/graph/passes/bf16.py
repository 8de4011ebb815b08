"""bf16 matmuls for f32 models (`precision="bf16"`): each matmul against a constant weight reads the
weight stored as bf16 and its left operand rounded to bf16 (to nearest, ties to even), and sums the
products in f32:

    x @ W   ->   f32(bf16(x)) @ f32(W_bf16)

an ordinary graph that every backend runs as written (the numpy reference is the oracle). A product of
two bf16 values is exact in f32, so the C backend computes the same sums with `vdpbf16ps` where the CPU
has AVX512-BF16 (`backends/c/igemm.py`), and in f32 elsewhere. Everything else (norms, softmax,
attention's products of two activations, biases) stays f32. Weights are half the bytes.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from dnet.core.dtypes import DType
from dnet.core.passes import Pass
from dnet.core.shapes import numel
from dnet.graph.infer import infer
from dnet.graph.ir import Graph, Node
from dnet.graph.ops import Op
from dnet.graph.passes.quantize import MIN_ELEMENTS
from dnet.graph.rebuild import GraphRebuilder


def bf16_matmuls(graph: Graph, min_elements: int = MIN_ELEMENTS,
                 select: Callable[[Graph, Node], bool] | None = None) -> Graph:
    """`graph` with its matmul weights stored as bf16 and the matmuls' left operands rounded to bf16; with
    `select`, only the matmuls it accepts (a weight only when it accepts every matmul reading it)."""
    users = graph.users()
    chosen = None if select is None else {n.id for n in graph.nodes if n.op is Op.MATMUL and select(graph, n)}
    weights = {n.id for n in graph.nodes if _candidate(n, min_elements)
               and _matmul_weight(graph, users, n.id, chosen)}
    rb = GraphRebuilder(graph)
    rounded: dict[int, int] = {}   # new id of an activation -> f32(bf16(it))
    for node in graph.nodes:
        if node.id in weights:
            rb.value[node.id] = _bf16_weight(rb, node, graph.weights[node.attrs["name"]])
        elif node.op is Op.MATMUL and _reads_weight(graph, node.inputs[1], weights) \
                and graph.nodes[node.inputs[0]].dtype is DType.F32:
            x = rb.value[node.inputs[0]]
            if x not in rounded:
                rounded[x] = _cast(rb, _cast(rb, x, DType.BF16, node.name), DType.F32, node.name)
            rb.value[node.id] = rb.add(Op.MATMUL, [rounded[x], rb.value[node.inputs[1]]], node.attrs, node.type,
                                       node.name)
        else:
            rb.copy(node)
    return rb.finish()


def _candidate(node: Node, min_elements: int) -> bool:
    return (node.op is Op.CONST and node.dtype is DType.F32 and len(node.shape) == 2
            and isinstance(numel(node.shape), int) and numel(node.shape) >= min_elements)


def _matmul_weight(graph: Graph, users, nid: int, chosen: set[int] | None = None) -> bool:
    """Every reader takes `nid` (or its transpose) as a matmul's right operand and not as its left (and is
    one of the `chosen` matmuls, when given)."""
    def right_only(x: int, readers) -> bool:
        return bool(readers) and all(graph.nodes[u].op is Op.MATMUL and graph.nodes[u].inputs[1] == x
                                     and graph.nodes[u].inputs[0] != x and (chosen is None or u in chosen)
                                     for u in readers)

    direct = [u for u in users[nid] if graph.nodes[u].op is not Op.PERMUTE]
    permuted = [u for u in users[nid] if graph.nodes[u].op is Op.PERMUTE]
    if direct and not right_only(nid, direct):
        return False
    return all(tuple(graph.nodes[p].attrs["perm"]) == (1, 0) and right_only(p, users[p]) for p in permuted)


def _reads_weight(graph: Graph, nid: int, weights: set[int]) -> bool:
    node = graph.nodes[nid]
    return nid in weights or node.op is Op.PERMUTE and node.inputs[0] in weights


def _cast(rb: GraphRebuilder, x: int, dtype: DType, name: str) -> int:
    attrs = {"dtype": dtype}
    return rb.add(Op.CAST, [x], attrs, infer(Op.CAST, [rb.new.nodes[x].type], attrs, name), name)


def _bf16_weight(rb: GraphRebuilder, node: Node, w: np.ndarray) -> int:
    """f32(W_bf16): the weight stored as bf16, widened where it is read."""
    name = node.attrs["name"]
    stored = np.asarray(w, np.float32).astype(DType.BF16.np)
    attrs = {"name": f"{name}@bf16", "shape": tuple(stored.shape), "dtype": DType.BF16}
    const = rb.add(Op.CONST, [], attrs, infer(Op.CONST, [], attrs, node.name), node.name, stored)
    return _cast(rb, const, DType.F32, node.name)


PRECISION_BF16 = Pass("precision-bf16", "graph", bf16_matmuls,
                      "matmul weights as bf16, their activations rounded to bf16, sums in f32")
