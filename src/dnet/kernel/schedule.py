"""Scheduling: which graph values get a buffer, and which ops fuse into which kernel.

The rules, in order:
1. Graph inputs and weights are buffers; graph outputs, matmuls, convolutions and
   pools are computed by kernels of their own (the kernel's *root*).
2. Movement ops never get a buffer of their own: they are index arithmetic in
   whichever kernel reads them. A matmul operand that is not a strided view of a
   buffer gets one (so does a convolution's input; its weight must be contiguous).
3. Every other op is inlined into each kernel that reads it, unless two kernels read
   it (it would be computed twice): then it gets a buffer and a kernel of its own.
   Readers are counted once rule 2 has placed every Gemm operand's buffers.
4. A reduction inlined into a kernel runs once per output row, before the element-wise
   loop that uses it: softmax and layer norm become one kernel each. Where inlining
   would recompute a reduction, lowering says so and it gets a buffer (and we retry).
5. A matmul or an f32 convolution (a Gemm over its im2col matrix per group; grouped ones with
   fewer output channels a group than the target's `conv_group_rows` stay loop nests) read
   by one element-wise kernel and nothing else becomes that kernel: the element-wise ops
   run as its epilogue (bias + GELU, residual adds, bias + ReLU).
6. An ALL_REDUCE has a buffer of its own, which its kernel fills with the member's partial
   sum (a copy, or the matmul that computes it) and the runner then sums over the group.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from dnet.core import progress
from dnet.core.dtypes import DType
from dnet.graph.ir import Graph
from dnet.graph.ops import Op, OpClass
from dnet.hardware import Host
from dnet.kernel import gemm as gm
from dnet.kernel import lowp_gemm as lowp
from dnet.kernel.ir import Kernel
from dnet.kernel import qgemm
from dnet.kernel.lower import Materialize, first_computed, lower_elementwise, lower_scatter
from dnet.kernel.pool import pool_geometry
from dnet.kernel.reuse import reuse_reduced_values
from dnet.kernel.target import AnyTarget, as_target
from dnet.kernel.verify import checked

_ALWAYS = (OpClass.MATMUL, OpClass.CONV, OpClass.POOL, OpClass.SCATTER)
_BOUND = (Op.INPUT, Op.STATE, Op.CONST)   # buffers the caller or the weights provide
_INLINE = (OpClass.MOVEMENT,)
_FREE = (Op.FULL, Op.ARANGE)
_ELEMENTWISE = (OpClass.UNARY, OpClass.BINARY, OpClass.TERNARY, OpClass.CAST)


@dataclass(frozen=True)
class Step:
    """One kernel launch: the kernel's name and the buffers bound to its parameters."""
    kernel: str
    root: int                    # the node whose buffer the kernel writes
    args: tuple                  # per parameter: a node id, ('packed', const id, nr), or gm.SCRATCH


@dataclass
class Schedule:
    graph: Graph
    materialized: set[int]
    steps: list[Step] = field(default_factory=list)
    kernels: dict[str, Kernel] = field(default_factory=dict)


def schedule(graph: Graph, target: AnyTarget | Host | None = None) -> Schedule:
    """Kernels and launches for `graph` on `target` (a `kernel.target` Target, or a Host: its CPU)."""
    target = as_target(target)
    users = graph.users()
    materialized = _initial(graph, users)
    tile = target.gemm_tile()   # the target's hook: a CPU's register and cache tiles
    rows = getattr(target, "conv_group_rows", gm.MIN_GROUP_ROWS)   # which grouped convolutions are Gemms
    winograd = getattr(target, "conv_winograd", "off")   # which 3x3 convolutions are Winograd Gemms
    unfused: set[int] = set()
    for attempt in range(2 * len(graph.nodes) + 1):
        _settle(graph, users, materialized, rows)
        sched, wanted = _lower_all(graph, users, materialized, unfused, tile, attempt, rows, winograd)
        if not wanted:
            return sched
        for node in wanted:
            if node in materialized:
                unfused.add(node)   # a matmul whose epilogue could not be fused
            materialized.add(node)
    raise AssertionError("scheduling did not converge")  # each retry adds a buffer: unreachable


def _initial(graph: Graph, users) -> set[int]:
    mat = {n.id for n in graph.nodes if n.op in _BOUND or n.op.cls in _ALWAYS or n.op is Op.ALL_REDUCE}
    mat |= set(graph.outputs)
    # a pool reads each input element once per window that covers it: an element-wise op feeding it
    # (a convolution's bias and ReLU) gets a buffer, computed once, rather than inlined into every window
    mat |= {n.inputs[0] for n in graph.nodes if n.op.cls is OpClass.POOL
            and graph.nodes[n.inputs[0]].op.cls in _ELEMENTWISE}
    return mat


def _settle(graph: Graph, users, mat: set[int], rows: int = gm.MIN_GROUP_ROWS) -> None:
    """Rules 2 and 3 to a fixed point."""
    low_precision = lowp.low_precision_nodes(graph, users)   # read in place by every Gemm reading them
    changed = True
    while changed:
        changed = False
        for n in graph.nodes:
            if gm.is_fast_matmul(graph, n.id):
                for right, x in enumerate(n.inputs):
                    if x not in mat and not gm.readable(graph, x, bool(right), mat, users):
                        mat.add(lowp.operand_buffer(graph, x, bool(right), mat))
                        changed = True
            elif gm.is_fast_conv(graph, n.id, rows):
                x, w = n.inputs
                if x not in mat and gm.operand_view(graph, x, mat, users) is None:
                    mat.add(first_computed(graph, x, mat))
                    changed = True
                if w not in mat and not gm.conv_weight_ok(graph, w, mat, users):
                    mat.add(w)   # a buffer of its own is contiguous
                    changed = True
        if changed:
            # the operands' buffers first (one per Gemm per sweep): counted before they are all there, the
            # nodes under them look shared by the Gemm and the operand's kernel, and each would get a buffer
            # (int8-dynamic's row parameters: a dozen one-op kernels per quantized activation)
            continue
        owners = _owners(graph, mat)
        for n in graph.nodes:
            if (n.id in mat or n.op.cls in _INLINE or n.op in _FREE or qgemm.is_dequant(graph, n.id)
                    or n.id in low_precision):
                continue
            if len(owners.get(n.id, ())) > 1:
                mat.add(n.id)
                changed = True


def _owners(graph: Graph, mat: set[int]) -> dict[int, set[int]]:
    """For every inlined node, the kernels (roots) that read it."""
    owners: dict[int, set[int]] = {}
    for root in sorted(mat):
        if graph.nodes[root].op in _BOUND:
            continue
        stack = list(graph.nodes[root].inputs)
        seen: set[int] = set()
        while stack:
            x = stack.pop()
            if x in seen or x in mat:
                continue
            seen.add(x)
            owners.setdefault(x, set()).add(root)
            stack.extend(graph.nodes[x].inputs)
    return owners


def _fusable_epilogue(graph: Graph, users, mat: set[int], owners: dict, mm: int,
                      rows: int = gm.MIN_GROUP_ROWS) -> int | None:
    """The root whose kernel could run matmul `mm` with its ops as an epilogue."""
    if not gm.is_gemm(graph, mm, rows) or mm in graph.outputs or len(users[mm]) != 1:
        return None
    user = users[mm][0]
    roots = {user} if user in mat else owners.get(user, set())
    if len(roots) != 1:
        return None
    (root,) = roots
    same = graph.nodes[root].shape == graph.nodes[mm].shape and graph.nodes[root].dtype is DType.F32
    pointwise = graph.nodes[root].op.cls in _ELEMENTWISE or graph.nodes[root].op is Op.ALL_REDUCE
    return root if same and pointwise else None


def _lower_all(graph: Graph, users, mat: set[int], unfused: set[int], tile,
               attempt: int = 0, rows: int = gm.MIN_GROUP_ROWS,
               winograd: str = "off") -> tuple[Schedule, set[int]]:
    """Lower every root; also returns the nodes lowering asked to materialize (then we retry: `attempt`)."""
    sched = Schedule(graph, set(mat))
    owners = _owners(graph, mat)
    epilogues = {}
    for mm in sorted(mat - unfused):
        root = _fusable_epilogue(graph, users, mat, owners, mm, rows)
        if root is not None:
            epilogues[root] = mm
    computed = {n.id for n in graph.nodes if n.op not in _BOUND}
    by_source: dict = {}
    wanted: set[int] = set()
    roots = [root for root in sorted(mat & computed) if root not in epilogues.values()]
    # a pass that asks for more buffers is followed by another: each is a task of its own, counted in full
    name = "lower kernels" if attempt == 0 else f"lower kernels, pass {attempt + 1}"
    with progress.task(name, total=len(roots), unit="kernels") as task:
        for root in roots:
            try:
                kernel = _lower_one(graph, users, mat, root, epilogues, tile, rows, winograd)
            except Materialize as m:
                wanted.add(m.node)
                continue
            finally:
                task.advance()
            _add(sched, by_source, kernel, root)
    sched.materialized = mat - set(epilogues.values())
    return sched, wanted


def _lower_one(graph: Graph, users, mat: set[int], root: int, epilogues: dict, tile,
               rows: int = gm.MIN_GROUP_ROWS, winograd: str = "off") -> Kernel:
    """One root's kernel; each kernel pass's result goes through `verify.checked` (free unless tests verify)."""
    mm = epilogues.get(root)
    if mm is not None:
        return _lower_matmul(graph, users, mat - {mm}, root, mm, tile, winograd)
    if gm.is_gemm(graph, root, rows):
        return _lower_matmul(graph, users, mat, root, root, tile, winograd)
    if graph.nodes[root].op is Op.SCATTER:
        return checked("lower_scatter", lower_scatter(graph, root, mat, users))
    kernel = checked("lower_elementwise", lower_elementwise(graph, root, mat, users))
    if graph.nodes[root].op.cls is OpClass.POOL:   # for backends that vectorise pools (kernel/pool.py)
        geometry = pool_geometry(graph, root, kernel, mat, users)
        if geometry is not None:
            kernel.meta["pool"] = geometry
    return checked("reuse_reduced_values", reuse_reduced_values(kernel))


def _lower_matmul(graph: Graph, users, mat: set[int], root: int, mm: int, tile, winograd: str = "off") -> Kernel:
    node = graph.nodes[mm]
    weight = qgemm.quant_weight(graph, node.inputs[1], mat, users) if node.op is Op.MATMUL else None
    if weight is not None:
        return checked("lower_qmatmul", qgemm.lower_qmatmul(graph, root, mm, weight, mat, users))
    return checked("lower_gemm", gm.lower_gemm(graph, root, mm, mat, users, tile, winograd))


def _add(sched: Schedule, by_source: dict, kernel: Kernel, root: int) -> None:
    """Identical kernels (the same layer repeated) are compiled once."""
    key = (kernel.params, kernel.dims, kernel.body)
    name = by_source.get(key)
    if name is None:
        name = f"k{len(by_source)}"
        by_source[key] = name
        sched.kernels[name] = Kernel(name, kernel.params, kernel.dims, kernel.body, kernel.meta)
    sched.steps.append(Step(name, root, tuple(kernel.meta["args"])))
