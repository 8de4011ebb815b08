"""The graph IR's op set: small and closed. Every layer below the frontends speaks it.

Each op has a class (what kind of loop it becomes, and what the cost model charges
it as) and a fixed list of attributes. Composites (softmax, layer norm, GELU, ...)
are not ops: `dnet.graph.composites` expands them into these primitives.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class OpClass(Enum):
    SOURCE = "source"        # no inputs: graph inputs, weights, constant fills, ranges
    UNARY = "unary"          # element-wise, one input
    BINARY = "binary"        # element-wise, two inputs of one shape
    TERNARY = "ternary"      # where(cond, a, b)
    CAST = "cast"
    REDUCE = "reduce"        # over a set of axes
    MATMUL = "matmul"
    CONV = "conv"
    POOL = "pool"
    MOVEMENT = "movement"    # views and copies: no arithmetic
    SCATTER = "scatter"      # writes rows of a tensor at data-dependent positions
    COLLECTIVE = "collective"  # values exchanged with the other members of a tensor-parallel group


@dataclass(frozen=True)
class OpSpec:
    cls: OpClass
    arity: int               # -1: variadic
    attrs: tuple[str, ...]   # the attributes a node of this op must carry
    doc: str


class Op(Enum):
    # sources
    INPUT = OpSpec(OpClass.SOURCE, 0, ("name", "shape", "dtype"), "a graph input")
    STATE = OpSpec(OpClass.SOURCE, 0, ("name", "shape", "dtype"),
                   "a graph input the caller keeps across calls (a KV cache); SCATTER writes it in place")
    CONST = OpSpec(OpClass.SOURCE, 0, ("name", "shape", "dtype"), "a weight, held in Graph.weights under `name`")
    FULL = OpSpec(OpClass.SOURCE, 0, ("shape", "value", "dtype"), "a tensor filled with one value")
    ARANGE = OpSpec(OpClass.SOURCE, 0, ("start", "stop", "step", "dtype"), "start, start+step, ... < stop")
    # element-wise unary
    NEG = OpSpec(OpClass.UNARY, 1, (), "-x")
    EXP = OpSpec(OpClass.UNARY, 1, (), "e**x")
    LOG = OpSpec(OpClass.UNARY, 1, (), "natural logarithm")
    SQRT = OpSpec(OpClass.UNARY, 1, (), "square root")
    RECIP = OpSpec(OpClass.UNARY, 1, (), "1/x")
    TANH = OpSpec(OpClass.UNARY, 1, (), "hyperbolic tangent")
    ERF = OpSpec(OpClass.UNARY, 1, (), "error function")
    SIN = OpSpec(OpClass.UNARY, 1, (), "sine")
    COS = OpSpec(OpClass.UNARY, 1, (), "cosine")
    ABS = OpSpec(OpClass.UNARY, 1, (), "absolute value")
    FLOOR = OpSpec(OpClass.UNARY, 1, (), "round towards -inf")
    NOT = OpSpec(OpClass.UNARY, 1, (), "logical not (bool)")
    # element-wise binary: both inputs have the output's shape (broadcasts are explicit EXPANDs)
    ADD = OpSpec(OpClass.BINARY, 2, (), "a + b")
    SUB = OpSpec(OpClass.BINARY, 2, (), "a - b")
    MUL = OpSpec(OpClass.BINARY, 2, (), "a * b")
    DIV = OpSpec(OpClass.BINARY, 2, (), "a / b (true division for floats, floor for ints)")
    POW = OpSpec(OpClass.BINARY, 2, (), "a ** b")
    MAX = OpSpec(OpClass.BINARY, 2, (), "element-wise maximum")
    MIN = OpSpec(OpClass.BINARY, 2, (), "element-wise minimum")
    MOD = OpSpec(OpClass.BINARY, 2, (), "a mod b, sign of b (Python/floor semantics)")
    EQ = OpSpec(OpClass.BINARY, 2, (), "a == b -> bool")
    NE = OpSpec(OpClass.BINARY, 2, (), "a != b -> bool")
    LT = OpSpec(OpClass.BINARY, 2, (), "a < b -> bool")
    LE = OpSpec(OpClass.BINARY, 2, (), "a <= b -> bool")
    AND = OpSpec(OpClass.BINARY, 2, (), "logical and (bool)")
    OR = OpSpec(OpClass.BINARY, 2, (), "logical or (bool)")
    WHERE = OpSpec(OpClass.TERNARY, 3, (), "cond ? a : b, all of the output's shape")
    CAST = OpSpec(OpClass.CAST, 1, ("dtype",), "convert element type")
    # reductions
    SUM = OpSpec(OpClass.REDUCE, 1, ("axes", "keepdim"), "sum over axes")
    REDUCE_MAX = OpSpec(OpClass.REDUCE, 1, ("axes", "keepdim"), "maximum over axes")
    REDUCE_MIN = OpSpec(OpClass.REDUCE, 1, ("axes", "keepdim"), "minimum over axes")
    ARGMAX = OpSpec(OpClass.REDUCE, 1, ("axis", "keepdim"), "index of the maximum along one axis (i64)")
    # contractions and windows
    MATMUL = OpSpec(OpClass.MATMUL, 2, (), "(..., m, k) @ (..., k, n), batch dims broadcast")
    CONV2D = OpSpec(OpClass.CONV, 2, ("stride", "padding", "dilation", "groups"),
                    "NCHW input, OIHW weight; padding is (top, left, bottom, right)")
    MAXPOOL2D = OpSpec(OpClass.POOL, 1, ("kernel", "stride", "padding"), "NCHW max pooling")
    AVGPOOL2D = OpSpec(OpClass.POOL, 1, ("kernel", "stride", "padding", "count_include_pad"),
                       "NCHW average pooling")
    # movement
    RESHAPE = OpSpec(OpClass.MOVEMENT, 1, ("shape",), "same elements, row-major, new shape")
    PERMUTE = OpSpec(OpClass.MOVEMENT, 1, ("perm",), "reorder axes")
    EXPAND = OpSpec(OpClass.MOVEMENT, 1, ("shape",), "broadcast size-1 axes (same rank)")
    SLICE = OpSpec(OpClass.MOVEMENT, 1, ("starts", "stops", "steps"), "strided window, one entry per axis")
    CONCAT = OpSpec(OpClass.MOVEMENT, -1, ("axis",), "join along an axis")
    GATHER = OpSpec(OpClass.MOVEMENT, 2, ("axis",), "x.take(indices, axis): rows of an embedding table")
    PAD = OpSpec(OpClass.MOVEMENT, 1, ("pads", "value"), "constant padding, (lo, hi) per axis")
    # writes
    SCATTER = OpSpec(OpClass.SCATTER, 3, ("axis",),
                     "(dest, index, values): dest with dest[i.., index[i.., j], ...] = values[i.., j, ...]; "
                     "index has values' shape up to `axis`; done in place when dest is a STATE")
    # exchanges
    ALL_REDUCE = OpSpec(OpClass.COLLECTIVE, 1, ("group", "size"),
                        "the sum of x over the `size` members of a tensor-parallel group (each holds a partial "
                        "sum); the runtime that runs the graph is given the group's links")

    @property
    def cls(self) -> OpClass:
        return self.value.cls

    @property
    def arity(self) -> int:
        return self.value.arity

    @property
    def attr_names(self) -> tuple[str, ...]:
        return self.value.attrs

    def __repr__(self) -> str:
        return self.name.lower()

    __str__ = __repr__


OPS_BY_NAME: dict[str, Op] = {op.name.lower(): op for op in Op}

INPUTS = (Op.INPUT, Op.STATE)   # what the caller binds by name: graph.inputs
ELEMENTWISE = (OpClass.UNARY, OpClass.BINARY, OpClass.TERNARY, OpClass.CAST)
COMPARISONS = (Op.EQ, Op.NE, Op.LT, Op.LE)
LOGICAL = (Op.AND, Op.OR, Op.NOT)
