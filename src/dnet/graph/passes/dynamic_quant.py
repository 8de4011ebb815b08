"""Dynamic int8 quantization (`quantize="int8-dynamic"`): int8 weights per output channel, as
`graph.passes.quantize` stores them, and the activations each such matmul reads quantized per row
(per token, asymmetric: the row's range in 256 steps) when the graph runs:

    s = max(max x - min x, 2^-15 max |x|, tiny) / 255   the row's step
    z = floor(min x / s + 1/2) + 128                    its zero offset (an integer below 2^23: exact in f32)
    q = int8(min(floor(x / s + 1/2) - z, 127))          in [-128, 127]
    x ~ (f32(q) + z) * s

s and z lie side by side in one (..., 2) tensor, the row's parameters. The matmul becomes
`((f32(q) + z) * s) @ (f32(Q) * S)`: an ordinary graph, which every backend runs as written (the
numpy reference computes it in f32 and is the oracle). Its products are integers times scales, so the
C backend computes sum_k q * Q in int32 (`vpdpbusd` where the CPU has VNNI), adds z * sum_k Q (the
weight's column sums, kept with it) and multiplies by s * S once per element (`backends/c/igemm.py`).

Asymmetric rows, measured on MiniLM against sentence-transformers (8 sentences, worst cosine): 0.9958,
where symmetric ones (max |x| / 127) gave 0.9908; the rest of the error is the weights' (weight-only
int8 alone: 0.9989). Outlier channels set most of the rest (one LayerNorm output channel reaching 28 where
the median is 1.5 sets every token's step), so two rewrites run first (benchmarks/README.md, "Where
int8-dynamic's error comes from"):

- normalised inputs (LayerNorm, RMSNorm outputs: attention's q, k, v, an FFN's first matmul) are smoothed,
  their channels divided by s and the weights' rows multiplied by s, with ranges bounded from the norm's
  own gain and bias, no data (`graph.passes.smooth`);
- a matmul reading an activation function's output (an FFN's second matmul, after GELU or SiLU), whose
  channels have no such bound, runs in bf16 instead (`graph.passes.bf16`: bf16 weights and activations,
  f32 sums), on the CPU's bf16 units where it has them (AMX, AVX512-BF16); where it has none, in f32
  (`dnet.compile` asks the host: `dnet.hardware.Host.has_bf16`).

On MiniLM's 8 test sentences (numpy reference, against dnet's f32) the worst cosine goes from 0.99556 to
0.99889 (smoothing alone: 0.99765; bf16 alone: 0.99706), and on the C backend against sentence-transformers
from 0.99580 to 0.99892 (issue 15's target: 0.998).

A row is divided by its step rather than multiplied by the inverse: a division cannot fuse with the + 1/2
into a multiply-add, so every backend rounds the same value. The activation of one input is quantized once
however many matmuls read it (without smoothing: attention's q, k and v; smoothed, each reads its own x / s).
"""
from __future__ import annotations

from dnet.core.dtypes import DType
from dnet.core.passes import Pass
from dnet.errors import DnetError
from dnet.graph.infer import infer
from dnet.graph.ir import Graph, Node
from dnet.graph.ops import Op, OpClass
from dnet.graph.passes.bf16 import bf16_matmuls
from dnet.graph.passes.quantize import MIN_ELEMENTS, quantize_weights
from dnet.graph.passes.smooth import smooth_matmul_inputs
from dnet.graph.rebuild import GraphRebuilder

TINY = 1e-30   # a row of zeros gets this as its maximum: its steps are then tiny, its values 0


AFTER_ACTIVATIONS = ("bf16", "f32", "int8")


def quantize_dynamic(graph: Graph, min_elements: int = MIN_ELEMENTS, smooth: bool = True,
                     after_activations: str = "bf16") -> Graph:
    """`graph` with int8 weights and each matmul against one reading its left operand quantized per row;
    normalised inputs smoothed first (`smooth`). A matmul reading an activation function's output runs in
    `after_activations`: "bf16" (where the CPU has bf16 units), "f32" (where it has none: the portable bf16
    loop would cost more than the f32 Gemm) or "int8" like the others (the plain per-token scheme)."""
    if after_activations not in AFTER_ACTIVATIONS:
        raise DnetError(f"after_activations must be one of {AFTER_ACTIVATIONS}, got {after_activations!r}")
    if smooth:
        graph = smooth_matmul_inputs(graph)
    keep: set[int] = set()
    if after_activations == "bf16":
        graph = bf16_matmuls(graph, min_elements, select=reads_activation_function)
    elif after_activations == "f32":
        keep = {_weight_of(graph, n) for n in graph.nodes if n.op is Op.MATMUL and reads_activation_function(graph, n)}
    weighted = quantize_weights(graph, min_elements, keep=keep)
    rb = GraphRebuilder(weighted)
    quantized: dict[int, int] = {}   # new id of an activation -> its quantized form
    for node in weighted.nodes:
        a = node.inputs[0] if node.op is Op.MATMUL else None
        if a is None or not _int8_weight(weighted, node.inputs[1]) or weighted.nodes[a].dtype is not DType.F32:
            rb.copy(node)
            continue
        x = rb.value[a]
        if x not in quantized:
            quantized[x] = _rows_quantized(rb, x, weighted.nodes[a].name)
        rb.value[node.id] = rb.add(Op.MATMUL, [quantized[x], rb.value[node.inputs[1]]], node.attrs, node.type,
                                   node.name)
    return rb.finish()


def _weight_of(graph: Graph, matmul: Node) -> int:
    """The node a matmul's right operand is read from: the weight itself, or what its transpose reads."""
    right = graph.nodes[matmul.inputs[1]]
    return right.inputs[0] if right.op is Op.PERMUTE else right.id


NONLINEAR = {Op.MAX, Op.MIN, Op.POW, Op.WHERE}   # besides the unary ops other than NEG


def reads_activation_function(graph: Graph, matmul: Node) -> bool:
    """Whether `matmul`'s left operand is an element-wise, non-linear function of another matmul's output
    (GELU, SiLU, ReLU, a gated product of them), traced back through element-wise ops only: a norm's
    output (scaled by a broadcast per-row factor) or attention's (reshaped) is not one."""
    stack, seen, found, nonlinear = [matmul.inputs[0]], set(), False, False
    while stack:
        node = graph.nodes[stack.pop()]
        if node.id in seen:
            continue
        seen.add(node.id)
        if node.op is Op.MATMUL:
            found = True
        elif node.op.cls in (OpClass.UNARY, OpClass.BINARY, OpClass.TERNARY):
            nonlinear |= (node.op.cls is OpClass.UNARY and node.op is not Op.NEG) or node.op in NONLINEAR
            stack.extend(node.inputs)
        # anything else (a broadcast, a reshape, a reduction, a source) ends the trace
    return found and nonlinear


def _int8_weight(graph: Graph, nid: int) -> bool:
    """Whether node `nid` is f32(Q) * expand(S) of constants (or its transpose): a quantized weight."""
    node = graph.nodes[nid]
    if node.op is Op.PERMUTE:
        node = graph.nodes[node.inputs[0]]
    if node.op is not Op.MUL:
        return False
    cast, scale = (graph.nodes[i] for i in node.inputs)
    return (cast.op is Op.CAST and graph.nodes[cast.inputs[0]].op is Op.CONST
            and graph.nodes[cast.inputs[0]].dtype is DType.I8
            and scale.op is Op.EXPAND and graph.nodes[scale.inputs[0]].op is Op.CONST)


def _rows_quantized(rb: GraphRebuilder, x: int, name: str) -> int:
    """(f32(q) + z) * s: activation `x` (new id) quantized per row along its last axis."""
    shape = tuple(rb.new.nodes[x].shape)
    if not shape:
        return x
    last = len(shape) - 1

    def add(op: Op, inputs: list[int], **attrs) -> int:
        out = infer(op, [rb.new.nodes[i].type for i in inputs], attrs, name)
        return rb.add(op, inputs, attrs, out, name)

    def full(value: float, like: int) -> int:
        return add(Op.FULL, [], shape=tuple(rb.new.nodes[like].shape), value=value, dtype=DType.F32)

    def rounded(a: int, b: int) -> int:   # floor(a / b + 1/2)
        return add(Op.FLOOR, [add(Op.ADD, [add(Op.DIV, [a, b]), full(0.5, a)])])

    def param(which: int) -> int:         # the row's step (0) or zero offset (1), broadcast along the row
        part = add(Op.SLICE, [params], starts=(0,) * last + (which,), stops=shape[:-1] + (which + 1,),
                   steps=(1,) * len(shape))
        return add(Op.EXPAND, [part], shape=shape)

    top = add(Op.REDUCE_MAX, [x], axes=(last,), keepdim=True)
    bottom = add(Op.REDUCE_MIN, [x], axes=(last,), keepdim=True)
    # a range below 2^-15 of the row's magnitude is widened to it, so |z| < 2^23 stays an exact integer
    magnitude = add(Op.MUL, [add(Op.MAX, [add(Op.ABS, [top]), add(Op.ABS, [bottom])]), full(2.0 ** -15, top)])
    spread = add(Op.MAX, [add(Op.MAX, [add(Op.SUB, [top, bottom]), magnitude]), full(TINY, top)])
    step = add(Op.DIV, [spread, full(255.0, top)])
    zero = add(Op.ADD, [rounded(bottom, step), full(128.0, top)])
    # (step, zero) side by side as one element-wise select over (..., 2), not a concat: the kernel computing
    # it then runs the row's two reductions once per row and everything after them in one loop (with a
    # concat each reduction was a kernel of its own: MiniLM 207 launches a run against 148)
    pair = shape[:-1] + (2,)
    index = add(Op.ARANGE, [], start=0, stop=2, step=1, dtype=DType.I32)          # 0 for the step, 1 for the zero
    index = add(Op.EXPAND, [add(Op.RESHAPE, [index], shape=(1,) * last + (2,))], shape=pair)
    first = add(Op.EQ, [index, add(Op.FULL, [], shape=pair, value=0, dtype=DType.I32)])
    params = add(Op.WHERE, [first, add(Op.EXPAND, [step], shape=pair), add(Op.EXPAND, [zero], shape=pair)])
    q = add(Op.CAST, [add(Op.MIN, [add(Op.SUB, [rounded(x, param(0)), param(1)]), full(127.0, x)])], dtype=DType.I8)
    return add(Op.MUL, [add(Op.ADD, [add(Op.CAST, [q], dtype=DType.F32), param(1)]), param(0)])


QUANTIZE_INT8_DYNAMIC = Pass("quantize-int8-dynamic", "graph", quantize_dynamic,
                             "int8 weights per output channel, matmul activations quantized per row at run time")
