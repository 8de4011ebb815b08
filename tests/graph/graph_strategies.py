"""Graphs for the graph-level tests: random ones (hypothesis) and one that uses every op and dtype.

Every graph is built with GraphBuilder, so it is valid by construction, and comes with
feeds for the numpy reference backend. Random graphs deliberately contain what the
passes look for: repeated subexpressions, identical weights under two names, dead
nodes, identity movements and casts, and `x * 1` / `x + 0` fills.
"""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from dnet.core.dtypes import DType
from dnet.core.quant import BLOCK_DTYPES, random_blocks
from dnet.core.shapes import Sym, evaluate_shape, numel
from dnet.core.types import TensorType
from dnet.errors import ShapeError
from dnet.graph.builder import GraphBuilder, Value
from dnet.graph.ir import Graph
from dnet.graph.ops import Op

f32 = DType.F32
UNARY = [Op.NEG, Op.ABS, Op.TANH, Op.SIN, Op.EXP, Op.SQRT]
BINARY = [Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.MAX]
SIZES = {"n": 2}  # the value fed for the symbolic dim


def _unary(draw, b, pool):
    return b.unary(draw(st.sampled_from(UNARY)), draw(st.sampled_from(pool)))


def _binary(draw, b, pool):
    x, y = draw(st.sampled_from(pool)), draw(st.sampled_from(pool))
    try:
        return b.elementwise(draw(st.sampled_from(BINARY)), x, y)
    except ShapeError:  # shapes that do not broadcast: nothing built
        return None


def _with_scalar(draw, b, pool):
    x, s = draw(st.sampled_from(pool)), draw(st.sampled_from([0.0, 1.0, -0.0, 2.0]))
    op = draw(st.sampled_from([Op.ADD, Op.MUL, Op.SUB, Op.DIV]))
    return b.elementwise(op, *((x, s) if draw(st.booleans()) else (s, x)))


def _reshape(draw, b, pool):
    x = draw(st.sampled_from(pool))
    shape = b.shape(x)
    choices = [shape, (numel(shape),)]
    if len(shape) >= 2:
        choices.append(shape[:-2] + (shape[-2] * shape[-1],))
    return b.node(Op.RESHAPE, [x], shape=draw(st.sampled_from(choices)))  # identity reshapes included


def _permute(draw, b, pool):
    x = draw(st.sampled_from(pool))
    return b.node(Op.PERMUTE, [x], perm=tuple(draw(st.permutations(range(len(b.shape(x)))))))


def _expand(draw, b, pool):
    x = draw(st.sampled_from(pool))
    if draw(st.booleans()):
        return b.node(Op.EXPAND, [x], shape=b.shape(x))  # the identity
    return b.expand(x, (2,) + b.shape(x))


def _reduce(draw, b, pool):
    x = draw(st.sampled_from(pool))
    rank = len(b.shape(x))
    op = draw(st.sampled_from([Op.SUM, Op.REDUCE_MAX]))
    return b.reduce(op, x, draw(st.integers(0, rank - 1)), keepdim=draw(st.booleans()))


def _matmul(draw, b, pool):
    x = draw(st.sampled_from(pool))
    k = b.shape(x)[-1]
    if not isinstance(k, int):
        return None
    seed = draw(st.integers(0, 1))  # two seeds only: identical weights under different names
    w = np.random.default_rng(seed).standard_normal((k, 3)).astype(np.float32)
    return b.matmul(x, b.const(f"w{len(b.graph.nodes)}", w))


def _slice(draw, b, pool):
    x = draw(st.sampled_from(pool))
    shape = b.shape(x)
    axis = draw(st.integers(0, len(shape) - 1))
    if draw(st.booleans()) or not isinstance(shape[axis], int):
        zeros = (0,) * len(shape)
        return b.node(Op.SLICE, [x], starts=zeros, stops=shape, steps=(1,) * len(shape))  # the whole
    return b.slice(x, axis, 0, shape[axis], 2)


def _concat(draw, b, pool):
    x = draw(st.sampled_from(pool))
    return b.node(Op.CONCAT, [x, x], axis=draw(st.integers(0, len(b.shape(x)) - 1)))


def _cast(draw, b, pool):
    x = draw(st.sampled_from(pool))
    if draw(st.booleans()):
        return b.node(Op.CAST, [x], dtype=f32)  # the identity
    return b.cast(b.cast(x, DType.F16), f32)


def _where(draw, b, pool):
    x, y = draw(st.sampled_from(pool)), draw(st.sampled_from(pool))
    try:
        return b.elementwise(Op.WHERE, b.elementwise(Op.LT, x, 0.0), x, y)
    except ShapeError:
        return None


def _repeat(draw, b, pool):
    """The same computation again: work for CSE."""
    node = b.graph.nodes[draw(st.sampled_from(pool))]
    if node.op is Op.INPUT:
        return None
    return b.node(node.op, [Value(i) for i in node.inputs], **node.attrs)


ACTIONS = [_unary, _binary, _with_scalar, _reshape, _permute, _expand, _reduce, _matmul, _slice, _concat,
           _cast, _where, _repeat]


@st.composite
def random_graphs(draw, symbolic: bool | None = None, max_ops: int = 14) -> tuple[Graph, dict[str, np.ndarray]]:
    """A random valid f32 graph with 1-3 outputs, and feeds for it."""
    if symbolic is None:
        symbolic = draw(st.booleans())
    b = GraphBuilder()
    shape = (Sym("n") if symbolic else 2, 3, draw(st.sampled_from([1, 4])))
    pool = [b.input(f"x{i}", TensorType(shape, f32)) for i in range(draw(st.integers(1, 2)))]
    for _ in range(draw(st.integers(1, max_ops))):
        built = draw(st.sampled_from(ACTIONS))(draw, b, pool)
        if built is not None and _fits(b.shape(built)):
            pool.append(built)
    outputs = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
    for i, v in enumerate(outputs):
        b.output(f"y{i}", v)
    graph = b.finish()
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    env = SIZES if symbolic else {}
    feeds = {graph.nodes[i].attrs["name"]: rng.standard_normal(evaluate_shape(graph.nodes[i].shape, env))
             .astype(np.float32) for i in graph.inputs}
    return graph, feeds


def _fits(shape) -> bool:
    """Rank 1 to 4 and small, so that hypothesis stays fast (expands and concats double sizes)."""
    total = numel(shape)
    return 1 <= len(shape) <= 4 and (not isinstance(total, int) or 0 < total <= 512)


def every_op_graph() -> tuple[Graph, dict[str, np.ndarray]]:
    """One graph using every op and every dtype, with a symbolic batch dim and awkward floats."""
    b, batch = GraphBuilder(), Sym("batch")
    rng = np.random.default_rng(7)
    x = b.input("x", TensorType((batch, 3, 6, 6), f32))
    ids = b.input("ids", TensorType((batch, 2), DType.I64))
    conv = b.node(Op.CONV2D, [x, b.const("conv.w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32))],
                  stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1)
    pooled = b.node(Op.MAXPOOL2D, [conv], kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0))
    avg = b.node(Op.AVGPOOL2D, [conv], kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1), count_include_pad=False)
    h = b.node(Op.RESHAPE, [b.elementwise(Op.ADD, pooled, avg)], shape=(batch, 36))
    h = b.matmul(h, b.const("fc.w", rng.standard_normal((36, 5)).astype(np.float32)))
    for op in (Op.NEG, Op.TANH, Op.ERF, Op.SIN, Op.COS, Op.ABS, Op.FLOOR):
        h = b.elementwise(Op.ADD, h, b.unary(op, h))
    pos = b.elementwise(Op.ADD, b.unary(Op.ABS, h), 1.0)
    h = b.elementwise(Op.MUL, b.unary(Op.LOG, pos), b.unary(Op.RECIP, b.unary(Op.SQRT, pos)))
    h = b.elementwise(Op.ADD, h, b.elementwise(Op.POW, pos, b.unary(Op.EXP, b.unary(Op.NEG, pos))))
    for op in (Op.SUB, Op.DIV, Op.MAX, Op.MIN, Op.MOD):
        h = b.elementwise(op, h, pos)
    flags = b.elementwise(Op.OR, b.elementwise(Op.EQ, h, 0.0), b.elementwise(Op.NE, h, h))
    flags = b.elementwise(Op.AND, b.unary(Op.NOT, flags), b.elementwise(Op.LE, h, pos))
    flags = b.elementwise(Op.AND, flags, b.elementwise(Op.LT, h, 0.5))
    h = b.elementwise(Op.WHERE, flags, h, b.expand(b.reduce(Op.SUM, h, 1, keepdim=True), (batch, 5)))
    table = b.const("emb", rng.standard_normal((10, 5)).astype(np.float32))
    emb = b.node(Op.GATHER, [table, ids], axis=0)                                 # (batch, 2, 5)
    both = b.node(Op.CONCAT, [emb, b.expand(b.reshape(h, (batch, 1, 5)), (batch, 1, 5))], axis=1)
    both = b.node(Op.PAD, [b.permute(both, (0, 2, 1))], pads=((0, 0), (1, 0), (0, 2)), value=-0.0)
    sliced = b.node(Op.SLICE, [both], starts=(0, 1, 0), stops=(batch, 6, 5), steps=(1, 2, 2))
    b.output("sum", b.reduce(Op.SUM, sliced, (1, 2)))
    b.output("max", b.reduce(Op.REDUCE_MAX, both, 2, keepdim=True))
    b.output("min", b.reduce(Op.REDUCE_MIN, both, (0, 1)))
    b.output("argmax", b.node(Op.ARGMAX, [both], axis=1, keepdim=False))
    fills = [b.full((1,), v, f32) for v in (math.nan, -0.0, math.inf, -math.inf, 1e-45, 3.4e38)]
    b.output("fills", b.node(Op.CONCAT, fills, axis=0))
    b.output("range", b.arange(batch, dtype=DType.I32))
    b.output("alone", b.node(Op.ALL_REDUCE, [h], group="tp", size=1))   # a group of one: the value itself
    for dtype in (d for d in DType if not d.is_block):
        w = b.const(f"w.{dtype}", (rng.standard_normal((2, 3)) * 3).astype(dtype.np))
        doubled = b.elementwise(Op.ADD, b.cast(w, f32), b.cast(w, f32))
        b.output(f"as.{dtype}", b.cast(doubled, dtype))
    for dtype in BLOCK_DTYPES:
        q = b.block_const(f"q.{dtype}", random_blocks(dtype, (2, 256), rng), dtype, (2, 256))
        b.output(f"dq.{dtype}", b.cast(q, f32))
    cache = b.state("cache", TensorType((batch, 4, 5), f32))             # written in place by the scatter
    where = b.input("where", TensorType((batch, 2), DType.I64))
    written = b.scatter(cache, where, b.slice(both, 1, 0, 2), axis=1)
    b.output("written", b.reduce(Op.SUM, written, 2))
    graph = b.finish()
    feeds = {"x": rng.standard_normal((2, 3, 6, 6)).astype(np.float32),
             "ids": np.array([[1, 9], [0, 3]], dtype=np.int64), "cache": np.zeros((2, 4, 5), np.float32),
             "where": np.array([[3, 0], [1, 2]], dtype=np.int64)}
    return graph, feeds
