"""Smoothing of normalised matmul inputs before int8 quantization (SmoothQuant's rescaling, without data).

A per-token int8 row has one step for all its channels, so one outlier channel (a LayerNorm output whose
channel reaches 28 where the median is 1.5) coarsens every other. For a matmul x @ W the channels can be
traded against W's rows: (x / s) @ (s W) is the same product, and with

    s_j = r_j^a / max_k |W_jk|^(1 - a)     r_j: a bound on |x_j|

x's channels shrink where they are large and W's rows grow where they are small, so both quantize better.
SmoothQuant takes r from calibration data; here it comes from constants, so `dnet.compile` stays one call:
x is a normalised row (LayerNorm or RMSNorm: unit variance or unit mean square along the row) times a
per-channel gain g plus a bias b, and r_j = SPREAD |g_j| + |b_j| (SPREAD standard deviations). s goes into
W's rows (a new constant) and the matmul reads x * (1 / s), a product the C backend computes inside the
kernels that quantize x (`kernel/lowp_gemm.py`), so the f32 function is unchanged up to rounding and no
kernel is added. 1 / s is not folded into g and b: in a post-norm model (BERT) the residual path reads x
too, so a folded copy would compute the norm twice. Each weight has its own s (attention's q, k and v each
read their own x / s): one s over the three kept less of the gain (worst cosine 0.99718 against 0.99762).

Measured on all-MiniLM-L6-v2's 8 test sentences (benchmarks/int8_sensitivity.py, worst cosine against
f32, with the FFN's second matmul in bf16): a = 0.5 0.99894, 0.6 0.99886, 0.7 0.99884, 0.8 0.99834,
0.9 0.99755; SPREAD 2 / 3 / 4 / 6 at a = 0.5: 0.99886 / 0.99883 / 0.99894 / 0.99862.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dnet.core.dtypes import DType
from dnet.core.passes import Pass
from dnet.core.shapes import numel
from dnet.graph.infer import infer
from dnet.graph.ir import Graph, Node
from dnet.graph.ops import Op, OpClass
from dnet.graph.rebuild import GraphRebuilder

ALPHA = 0.5    # how much of the range moves into the weights (SmoothQuant's a)
SPREAD = 4.0   # standard deviations of a normalised channel taken as its range
LIMIT = 1e4    # s stays within [1 / LIMIT, LIMIT], so x / s and s W stay far from f32's range limits


@dataclass
class _Smoothing:
    x: int                 # the normalised activation
    scale: np.ndarray      # s, one per channel of x
    matmuls: list[int]     # the matmuls that read x / s against this weight
    transposed: bool       # whether they read the weight through a (1, 0) permute


def smooth_matmul_inputs(graph: Graph, alpha: float = ALPHA, spread: float = SPREAD) -> Graph:
    """`graph` with each normalised activation that matmuls read against constant weights divided by s per
    channel (the matmuls read x * expand(1 / s)), and those weights' rows multiplied by s."""
    plans = _plans(graph, alpha, spread)
    if not plans:
        return graph
    reads_smoothed = {m: w for w, plan in plans.items() for m in plan.matmuls}
    rb = GraphRebuilder(graph)
    smoothed: dict[int, int] = {}   # old id of a weight -> new id of the x / s its matmuls read
    for node in graph.nodes:
        if node.id in plans:
            rb.value[node.id] = _scaled_weight(rb, graph, node, plans[node.id])
        elif node.id in reads_smoothed:
            w = reads_smoothed[node.id]
            if w not in smoothed:
                smoothed[w] = _divided(rb, graph, plans[w])
            rb.value[node.id] = rb.add(Op.MATMUL, [smoothed[w], rb.value[node.inputs[1]]], node.attrs, node.type,
                                       node.name)
        else:
            rb.copy(node)
    return rb.finish()


def _plans(graph: Graph, alpha: float, spread: float) -> dict[int, _Smoothing]:
    """For each constant weight that matmuls read beside one normalised activation: its smoothing. Each
    weight gets its own s (attention's q, k and v: three), which keeps more of the gain than one s for all
    (measured on MiniLM, smoothing alone: worst cosine 0.99762 against 0.99718 with one s shared)."""
    users = graph.users()
    readers: dict[int, list[int]] = {}
    for node in graph.nodes:
        const = _own_weight(graph, users, node) if node.op is Op.MATMUL else None
        if const is not None:
            readers.setdefault(const, []).append(node.id)
    plans = {}
    for const, matmuls in readers.items():
        x, right = graph.nodes[matmuls[0]].inputs
        affine = _affine(graph, x)
        if affine is None:
            continue
        gain, bias = (np.zeros(1, np.float32) if c is None else
                      np.asarray(graph.weights[c.attrs["name"]], np.float32).reshape(-1) for c in affine)
        reach = spread * np.abs(gain) + np.abs(bias)
        scale = smoothing_scale(reach, _row_magnitudes(graph, right), alpha)
        plans[const] = _Smoothing(x, scale, matmuls, _transposed(graph, right))
    return plans


def smoothing_scale(reach: np.ndarray, rows: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """s_j = reach_j^a / rows_j^(1 - a) (f32), 1 where either is zero, within [1 / LIMIT, LIMIT]."""
    reach, rows = np.asarray(reach, np.float64), np.asarray(rows, np.float64)
    ok = (reach > 0) & (rows > 0)
    s = np.where(ok, np.power(np.where(ok, reach, 1), alpha) / np.power(np.where(ok, rows, 1), 1 - alpha), 1)
    return np.clip(s, 1 / LIMIT, LIMIT).astype(np.float32)


def _own_weight(graph: Graph, users, node: Node) -> int | None:
    """The constant (k, n) weight (or (n, k), transposed) that matmul `node` reads as its right operand, when
    every reader of it is a matmul reading it the same way (direct or transposed) beside the same left
    operand: its rows can then be scaled for that operand alone."""
    const = _weight_const(graph, node.inputs[1])
    if const is None or graph.nodes[const].dtype is not DType.F32 or node.inputs[0] == node.inputs[1]:
        return None
    transposed = _transposed(graph, node.inputs[1])
    for u in users[const]:
        if (graph.nodes[u].op is Op.PERMUTE) != transposed:
            return None
        readers, operand = (users[u], u) if transposed else ([u], const)
        if not readers or any(graph.nodes[r].op is not Op.MATMUL
                              or graph.nodes[r].inputs != (node.inputs[0], operand) for r in readers):
            return None
    return const


def _weight_const(graph: Graph, nid: int) -> int | None:
    """The 2-d CONST behind a matmul's right operand: itself, or its (1, 0) transpose; else None."""
    node = graph.nodes[nid]
    if node.op is Op.PERMUTE and tuple(node.attrs["perm"]) == (1, 0):
        node = graph.nodes[node.inputs[0]]
    return node.id if node.op is Op.CONST and len(node.shape) == 2 else None


def _transposed(graph: Graph, right: int) -> bool:
    return graph.nodes[right].op is Op.PERMUTE


def _row_magnitudes(graph: Graph, right: int) -> np.ndarray:
    """max |W_jk| over k for each input channel j of the matmul's (k, n) right operand."""
    w = np.abs(np.asarray(graph.weights[graph.nodes[_weight_const(graph, right)].attrs["name"]], np.float32))
    return w.max(axis=0) if _transposed(graph, right) else w.max(axis=1)


def _affine(graph: Graph, x: int) -> tuple[Node, Node | None] | None:
    """(g, b) when x = y * expand(g) [+ expand(b)], y a normalised row and g, b constants of one value per
    channel; else None."""
    node = graph.nodes[x]
    if node.dtype is not DType.F32 or not node.shape or not isinstance(node.shape[-1], int):
        return None
    bias = None
    if node.op is Op.ADD:
        for scaled, shift in (node.inputs, node.inputs[::-1]):
            bias = _channel_const(graph, shift, node.shape)
            if bias is not None and graph.nodes[scaled].op is Op.MUL:
                node = graph.nodes[scaled]
                break
        else:
            return None
    if node.op is not Op.MUL:
        return None
    for y, view in (node.inputs, node.inputs[::-1]):
        gain = _channel_const(graph, view, node.shape)
        if gain is not None and _normalised(graph, y):
            return gain, bias
    return None


def _channel_const(graph: Graph, nid: int, shape: tuple) -> Node | None:
    """The CONST of one value per channel (the last axis of `shape`) that `nid` broadcasts, else None."""
    node = graph.nodes[nid]
    if node.op is not Op.EXPAND:
        return None
    seen = graph.nodes[node.inputs[0]]
    while seen.op is Op.RESHAPE:
        if any(d != 1 for d in seen.shape[:-1]):
            return None
        seen = graph.nodes[seen.inputs[0]]
    if seen.op is not Op.CONST or seen.dtype is not DType.F32 or numel(seen.shape) != shape[-1]:
        return None
    return seen if all(d == 1 for d in seen.shape[:-1]) else None


def _normalised(graph: Graph, y: int) -> bool:
    """Whether y = d * expand(f(sum of d * d over the last axis)): a row divided by its root mean square
    (LayerNorm's d is the row less its mean, RMSNorm's the row itself)."""
    node = graph.nodes[y]
    if node.op is not Op.MUL:
        return False
    last = len(node.shape) - 1
    for d, factor in (node.inputs, node.inputs[::-1]):
        factor = graph.nodes[factor]
        if factor.op is not Op.EXPAND or graph.nodes[factor.inputs[0]].shape[-1] != 1:
            continue
        stack, seen = [factor.inputs[0]], set()
        while stack:   # the per-row factor: element-wise steps back to the reduction
            n = graph.nodes[stack.pop()]
            if n.id in seen:
                continue
            seen.add(n.id)
            if n.op is Op.SUM and tuple(a % (last + 1) for a in n.attrs["axes"]) == (last,):
                square = graph.nodes[n.inputs[0]]
                if square.op is Op.MUL and square.inputs == (d, d):
                    return True
            elif n.op.cls in (OpClass.UNARY, OpClass.BINARY) or n.op in (Op.EXPAND, Op.RESHAPE):
                stack.extend(n.inputs)
    return False


def _scaled_weight(rb: GraphRebuilder, graph: Graph, node: Node, plan: _Smoothing) -> int:
    """The weight with row j of the (k, n) operand (input channel j) multiplied by s_j, under a new name."""
    w, s = np.asarray(graph.weights[node.attrs["name"]], np.float32), plan.scale
    scaled = (w * s[None, :] if plan.transposed else w * s[:, None]).astype(np.float32)
    attrs = dict(node.attrs, name=f"{node.attrs['name']}@smooth")
    return rb.add(Op.CONST, [], attrs, node.type, node.name, scaled)


def _divided(rb: GraphRebuilder, graph: Graph, plan: _Smoothing) -> int:
    """x * expand(1 / s), beside x (which other readers keep)."""
    node = graph.nodes[plan.x]

    def add(op: Op, inputs: list[int], weight=None, **attrs) -> int:
        out = infer(op, [rb.new.nodes[i].type for i in inputs], attrs, node.name)
        return rb.add(op, inputs, attrs, out, node.name, weight)

    inverse = (1 / plan.scale).astype(np.float32)
    name = f"{graph.nodes[plan.matmuls[0]].name or 'matmul'}@smooth{plan.matmuls[0]}"
    c = add(Op.CONST, [], inverse, name=name, shape=inverse.shape, dtype=DType.F32)
    view = add(Op.RESHAPE, [c], shape=(1,) * (len(node.shape) - 1) + inverse.shape)
    return add(Op.MUL, [rb.value[plan.x], add(Op.EXPAND, [view], shape=tuple(node.shape))])


SMOOTH_MATMUL_INPUTS = Pass("smooth-matmul-inputs", "graph", smooth_matmul_inputs,
                            "normalised matmul inputs divided per channel by s, the weights' rows times s")
