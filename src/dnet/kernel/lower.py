"""Lowering one fused group (a root node and the ops it inlines) into a kernel.

`KernelBuilder.value(node, index)` returns the scalar expression for one element of
a node. Materialized nodes are loads from their buffer; element-wise ops become
expression trees; movement ops only rewrite the index; a reduction becomes a
`Reduce` statement placed in the outermost loop where its index is defined, so a
softmax or a layer norm computes its row statistics once per row, in the same
kernel as the element-wise work around them.

Every expression carries its depth: the deepest loop it depends on. Values shared by
several uses, or invariant in inner loops, are bound once (`Let`) at that depth.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from dnet.core.dtypes import DType
from dnet.core.shapes import Dim, Sym, numel
from dnet.graph.ir import Graph, Node
from dnet.graph.ops import Op, OpClass
from dnet.kernel import index as ix
from dnet.kernel.ir import (Binary, Cast, Const, Expr, InBounds, IndexLet, IndexValue, Kernel, Let, Load, Loop,
                            Param, Reduce, Ref, Store, Unary, Where)


class Materialize(Exception):
    """Raised during lowering: this node must get its own buffer (and kernel) first."""

    def __init__(self, node: int, why: str):
        super().__init__(f"materialize %{node}: {why}")
        self.node = node


@dataclass(frozen=True)
class V:
    expr: Expr
    depth: int


@dataclass
class Scope:
    depth: int
    iterations: object            # how many times this scope runs per kernel call (int | Dim)
    stmts: list = field(default_factory=list)


_TRIVIAL = (Const, Load, Ref, IndexValue)


class KernelBuilder:
    """Builds the loop nest of one kernel. Nodes in `materialized` have buffers: they are loaded."""

    def __init__(self, graph: Graph, materialized: set[int], users: list[list[int]]):
        self.graph = graph
        self.materialized = materialized
        self.users = users
        self.scopes: list[Scope] = [Scope(0, 1)]
        self.var_depth: dict[str, int] = {}
        self.bounds: dict[str, object] = {}
        self.cache: dict[tuple, V] = {}
        self.params: dict[int, str] = {}   # node id -> parameter name, in order of first use
        self.guards: list = []             # padding or concat guards around the value being built, innermost
                                           # last: their conditions (None: none to test; see `_gather`)
        self.flat = False                  # gemm epilogues: no hoisting, no reductions
        self._names = itertools.count()

    # -- names and scopes ----------------------------------------------------------
    def fresh(self, prefix: str) -> str:
        return f"{prefix}{next(self._names)}"

    def param(self, node: int) -> str:
        if node not in self.params:
            self.params[node] = f"p{sum(1 for n in self.params.values() if n != 'out')}"
        return self.params[node]

    def open_loop(self, extent, prefix: str = "i") -> str:
        """A loop with a scope of its own, nested in the current innermost scope."""
        name = self.fresh(prefix)
        self.scopes.append(Scope(len(self.scopes), self.scopes[-1].iterations * extent))
        self.var_depth[name] = 0 if self.flat else len(self.scopes) - 1
        self.bounds[name] = extent
        return name

    def push_loops(self, extents: tuple, prefix: str) -> tuple[str, ...]:
        """One scope holding loops over `extents` (their vars share the scope's depth)."""
        names = tuple(self.fresh(prefix) for _ in extents)
        iterations = self.scopes[-1].iterations * numel(extents)
        depth = len(self.scopes)
        self.scopes.append(Scope(depth, iterations))
        for name, extent in zip(names, extents):
            self.var_depth[name] = 0 if self.flat else depth
            self.bounds[name] = extent
        return names

    def index_depth(self, index) -> int:
        if isinstance(index, int):
            return 0
        return max((self.var_depth.get(s, 0) for s in index.free_symbols()), default=0)

    def bind(self, v: V, force: bool = False) -> V:
        """Give a value a name at its own depth (hoisting it out of deeper loops)."""
        if isinstance(v.expr, _TRIVIAL) or self.guards:
            return v
        if not force and v.depth >= len(self.scopes) - 1:
            return v
        name = self.fresh("t")
        self.scopes[v.depth].stmts.append(Let(name, v.expr))
        return V(Ref(name, v.expr.dtype), v.depth)

    # -- values ----------------------------------------------------------------------
    def value(self, nid: int, idx: tuple) -> V:
        key = (nid, idx)
        if key not in self.cache:
            node = self.graph.nodes[nid]
            if nid in self.materialized:
                self.cache[key] = self.load(node, idx)
            else:
                v = self.compute(node, idx)
                # a value several nodes read is named once; a dequantized weight element is read, not shared
                shared = len(self.users[nid]) > 1 and not (node.op is Op.CAST and isinstance(v.expr, Cast)
                                                             and v.expr.x.dtype.is_block)
                self.cache[key] = self.bind(v, force=shared)
        return self.cache[key]

    def load(self, node: Node, idx: tuple) -> V:
        linear = ix.linearize(idx, ix.contiguous_strides(node.shape))
        return V(Load(self.param(node.id), linear, node.dtype), self.index_depth(linear))

    def compute(self, node: Node, idx: tuple) -> V:
        op = node.op
        if op.cls in (OpClass.UNARY, OpClass.BINARY, OpClass.TERNARY, OpClass.CAST):
            return self.elementwise(node, idx)
        if op is Op.FULL:
            value = node.attrs["value"]
            if isinstance(value, Dim):
                return V(IndexValue(value, node.dtype), 0)
            return V(Const(value, node.dtype), 0)
        if op is Op.ARANGE:
            i = node.attrs["start"] + idx[0] * node.attrs["step"]
            return V(IndexValue(i, node.dtype), self.index_depth(i))
        if op.cls is OpClass.REDUCE:
            return self.reduce(node, idx)
        if op is Op.ALL_REDUCE:    # its kernel writes the member's partial; the runner sums the group's
            return self.value(node.inputs[0], idx)
        if op is Op.MATMUL:
            return self.matmul(node, idx)
        if op is Op.CONV2D:
            return self.conv2d(node, idx)
        if op in (Op.MAXPOOL2D, Op.AVGPOOL2D):
            return self.pool2d(node, idx)
        return _MOVEMENT[op](self, node, idx)

    def elementwise(self, node: Node, idx: tuple) -> V:
        args = [self.value(i, idx) for i in node.inputs]
        depth = max(a.depth for a in args)
        e = [a.expr for a in args]
        if node.op.cls is OpClass.UNARY:
            return V(Unary(node.op, e[0], node.dtype), depth)
        if node.op.cls is OpClass.BINARY:
            return V(Binary(node.op, e[0], e[1], node.dtype), depth)
        if node.op is Op.WHERE:
            return V(Where(e[0], e[1], e[2], node.dtype), depth)
        return V(Cast(e[0], node.dtype), depth)

    # -- reductions ------------------------------------------------------------------
    def accumulate(self, node: Node, op: Op, dtype: DType, out_idx: tuple, extents: tuple,
                   body, arg_axis: int | None = None) -> V:
        """A Reduce over `extents` of `body(reduction vars) -> V`, placed where `out_idx` is defined."""
        if self.flat:
            if node.op is Op.MATMUL:
                raise Materialize(node.id, "a matmul read at another index than its epilogue's")
            raise Materialize(first_computed(self.graph, node.inputs[0], self.materialized),
                              "a reduction's input ends a matmul epilogue")
        if self.guards:
            raise Materialize(node.id, "a reduction under a padding or concat guard")
        depth = max((self.index_depth(i) for i in out_idx), default=0)
        outer = len(self.scopes)
        rvars = self.push_loops(extents, "r")
        inner = body(tuple(Sym(v) for v in rvars))
        scope = self.scopes.pop()
        assert len(self.scopes) == outer
        if self.scopes[depth].iterations != numel(node.shape) and node.id >= 0:
            raise Materialize(node.id, "inlined, this reduction would be computed more than once per element")
        acc = self.fresh("acc")
        arg_index = Sym(rvars[arg_axis]) if arg_axis is not None else 0
        stmt = Reduce(acc, op, dtype, tuple(zip(rvars, extents)), tuple(scope.stmts), inner.expr, arg_index)
        self.scopes[depth].stmts.append(stmt)
        result: Expr = Ref(acc, DType.I64 if op is Op.ARGMAX else dtype)
        if result.dtype != node.dtype:
            result = Cast(result, node.dtype)
        return V(result, depth)

    def reduce(self, node: Node, idx: tuple) -> V:
        (x,) = node.inputs
        shape = self.graph.nodes[x].shape
        axes = (node.attrs["axis"] % len(shape),) if node.op is Op.ARGMAX else node.attrs["axes"]
        keep = node.attrs["keepdim"]
        kept = iter(idx)
        out_idx = []
        for a in range(len(shape)):
            if a in axes:
                if keep:
                    next(kept)
            else:
                out_idx.append(next(kept))

        def body(rv):
            r = iter(rv)
            full, o = [], iter(out_idx)
            for a in range(len(shape)):
                full.append(next(r) if a in axes else next(o))
            return self.value(x, tuple(full))

        dtype = DType.F32 if node.dtype in (DType.F16, DType.BF16) else node.dtype
        if node.op is Op.ARGMAX:
            dtype = self.graph.nodes[x].dtype
        extents = tuple(shape[a] for a in axes)
        return self.accumulate(node, node.op, dtype, tuple(out_idx), extents, body,
                               arg_axis=0 if node.op is Op.ARGMAX else None)

    def matmul(self, node: Node, idx: tuple) -> V:
        a, b = node.inputs
        sa, sb = self.graph.nodes[a].shape, self.graph.nodes[b].shape
        batch = idx[:-2]
        i, j = idx[-2:]

        def operand(shape, last2):
            nb = len(shape) - 2
            own = batch[len(batch) - nb:] if nb else ()
            own = tuple(0 if d == 1 else v for d, v in zip(shape[:nb], own))
            return own + last2

        def body(rv):
            (k,) = rv
            x = self.value(a, operand(sa, (i, k)))
            y = self.value(b, operand(sb, (k, j)))
            dtype = _acc_dtype(node.dtype)
            return V(Binary(Op.MUL, _as(x.expr, dtype), _as(y.expr, dtype), dtype), max(x.depth, y.depth))

        return self.accumulate(node, Op.SUM, _acc_dtype(node.dtype), idx, (sa[-1],), body)

    def conv2d(self, node: Node, idx: tuple) -> V:
        x, w = node.inputs
        n, o, oh, ow = idx
        _, cg, kh, kw = self.graph.nodes[w].shape
        xs = self.graph.nodes[x].shape
        (sh, sw), (dh, dw) = node.attrs["stride"], node.attrs["dilation"]
        top, left, _, _ = node.attrs["padding"]
        groups = node.attrs["groups"]
        per_group = self.graph.nodes[w].shape[0] // groups
        dtype = _acc_dtype(node.dtype)

        def body(rv):
            c, y, z = rv
            group = ix.floordiv(o, per_group, self.bounds) if groups > 1 else 0
            h = oh * sh + y * dh - top
            wcol = ow * sw + z * dw - left
            pixel = self.guarded_load(x, (n, group * cg + c, h, wcol), ((2, h), (3, wcol)), xs, 0.0)
            weight = self.value(w, (o, c, y, z))
            prod = Binary(Op.MUL, _as(pixel.expr, dtype), _as(weight.expr, dtype), dtype)
            return V(prod, max(pixel.depth, weight.depth))

        return self.accumulate(node, Op.SUM, dtype, idx, (cg, kh, kw), body)

    def pool2d(self, node: Node, idx: tuple) -> V:
        (x,) = node.inputs
        n, c, oh, ow = idx
        xs = self.graph.nodes[x].shape
        (kh, kw), (sh, sw) = node.attrs["kernel"], node.attrs["stride"]
        top, left, _, _ = node.attrs["padding"]
        is_max = node.op is Op.MAXPOOL2D
        dtype = _acc_dtype(node.dtype)

        def window(rv):
            h, w = oh * sh + rv[0] - top, ow * sw + rv[1] - left
            return h, w

        def body(rv):
            h, w = window(rv)
            fill = float("-inf") if is_max else 0.0
            v = self.guarded_load(x, (n, c, h, w), ((2, h), (3, w)), xs, fill)
            return V(_as(v.expr, dtype), v.depth)

        total = self.accumulate(node, Op.REDUCE_MAX if is_max else Op.SUM, dtype, idx, (kh, kw), body)
        if is_max:
            return total
        if node.attrs["count_include_pad"]:
            count = V(Const(float(kh * kw), dtype), 0)
        else:
            def inside(rv):
                h, w = window(rv)
                cond = Binary(Op.AND, InBounds(h, 0, xs[2]), InBounds(w, 0, xs[3]), DType.BOOL)
                return V(Cast(cond, dtype), self.index_depth(h + w))
            count = self.accumulate(_Anon(node.shape, dtype), Op.SUM, dtype, idx, (kh, kw), inside)
        # the mean is a true division, truncated to an integer dtype afterwards (the reference's
        # semantics); an integer DIV would floor (-0.5 -> -1, where the reference gives 0)
        quotient = dtype if dtype.is_float else DType.F32
        out = Binary(Op.DIV, _as(total.expr, quotient), _as(count.expr, quotient), quotient)
        return V(_as(out, node.dtype), max(total.depth, count.depth))

    def guarded_load(self, x: int, idx: tuple, checks, shape, fill) -> V:
        """value(x, idx) where the given axes may fall outside [0, size): `fill` there."""
        cond = _all([InBounds(i, 0, shape[axis]) for axis, i in checks])
        self.guards.append(cond)
        try:
            v = self.value(x, idx)
        finally:
            self.guards.pop()
        dtype = self.graph.nodes[x].dtype
        depth = max([v.depth] + [self.index_depth(i) for _, i in checks])
        return V(Where(cond, v.expr, Const(fill, dtype), dtype), depth)


_VIEWS = (Op.RESHAPE, Op.PERMUTE, Op.EXPAND, Op.SLICE)


def first_computed(graph: Graph, x: int, materialized: set[int]) -> int:
    """Below a chain of views (reshape, permute, expand, slice) of node x, the first node that
    computes something: the one to give a buffer so that x becomes a view of it."""
    node = graph.nodes[x]
    while node.op in _VIEWS and node.inputs[0] not in materialized:
        node = graph.nodes[node.inputs[0]]
    return node.id if node.op.cls is not OpClass.MOVEMENT else x


class _Anon:
    """Stands for a node in `accumulate` for a helper reduction (no materialization check)."""
    id = -1

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype


def _acc_dtype(dtype: DType) -> DType:
    return DType.F32 if dtype in (DType.F16, DType.BF16) else dtype


def _as(e: Expr, dtype: DType) -> Expr:
    return e if e.dtype == dtype else Cast(e, dtype)


# -- movement: index rewrites --------------------------------------------------------------
def _reshape(b: KernelBuilder, node: Node, idx: tuple) -> V:
    (x,) = node.inputs
    linear = ix.linearize(idx, ix.contiguous_strides(node.shape))
    return b.value(x, ix.delinearize(linear, b.graph.nodes[x].shape, b.bounds))


def _permute(b: KernelBuilder, node: Node, idx: tuple) -> V:
    perm = node.attrs["perm"]
    src = [0] * len(perm)
    for k, p in enumerate(perm):
        src[p] = idx[k]
    return b.value(node.inputs[0], tuple(src))


def _expand(b: KernelBuilder, node: Node, idx: tuple) -> V:
    (x,) = node.inputs
    shape = b.graph.nodes[x].shape
    return b.value(x, tuple(0 if d == 1 else i for d, i in zip(shape, idx)))


def _slice(b: KernelBuilder, node: Node, idx: tuple) -> V:
    a = node.attrs
    return b.value(node.inputs[0], tuple(lo + st * i for lo, st, i in zip(a["starts"], a["steps"], idx)))


def _pad(b: KernelBuilder, node: Node, idx: tuple) -> V:
    (x,) = node.inputs
    pads = node.attrs["pads"]
    src = tuple(i - lo for i, (lo, _) in zip(idx, pads))
    checks = [(axis, i) for axis, (i, (lo, hi)) in enumerate(zip(src, pads)) if lo or hi]
    shape = b.graph.nodes[x].shape
    if not checks:
        return b.value(x, src)
    return b.guarded_load(x, src, checks, shape, node.attrs["value"])


def _concat(b: KernelBuilder, node: Node, idx: tuple) -> V:
    axis = node.attrs["axis"] % len(node.shape)
    pieces, offset = [], 0
    for x in node.inputs:
        size = b.graph.nodes[x].shape[axis]
        pieces.append((x, offset, size))
        offset = offset + size
    x, start, size = pieces[-1]
    result = _concat_piece(b, x, idx, axis, start, InBounds(idx[axis], start, start + size))
    depth = result.depth
    expr = result.expr
    for x, start, size in reversed(pieces[:-1]):
        cond = InBounds(idx[axis], start, start + size)
        piece = _concat_piece(b, x, idx, axis, start, cond)
        expr = Where(cond, piece.expr, expr, node.dtype)
        depth = max(depth, piece.depth, b.index_depth(idx[axis]))
    return V(expr, depth)


def _concat_piece(b: KernelBuilder, x: int, idx: tuple, axis: int, start, cond) -> V:
    src = idx[:axis] + (idx[axis] - start,) + idx[axis + 1:]
    b.guards.append(cond)
    try:
        return b.value(x, src)
    finally:
        b.guards.pop()


def _gather(b: KernelBuilder, node: Node, idx: tuple) -> V:
    x, indices = node.inputs
    axis = node.attrs["axis"] % len(b.graph.nodes[x].shape)
    rank = len(b.graph.nodes[indices].shape)
    size = b.graph.nodes[x].shape[axis]
    where = b.value(indices, idx[axis:axis + rank])
    name = b.fresh("g")
    index = _as(where.expr, DType.I64)
    guard = _all([c for c in b.guards if c is not None])
    if guard is not None:   # under a padding or concat guard: the index is a statement, run whether the guard
        # holds or not, so where it does not, the indices are not read (they would be read out of bounds)
        index = Where(guard, index, Const(0, DType.I64), DType.I64)
    b.scopes[where.depth].stmts.append(IndexLet(name, index, size))
    b.var_depth[name] = where.depth
    b.bounds[name] = size
    return b.value(x, idx[:axis] + (Sym(name),) + idx[axis + rank:])


def _all(conditions: list) -> Expr | None:
    """The conjunction of `conditions` (None for none)."""
    out = None
    for c in conditions:
        out = c if out is None else Binary(Op.AND, out, c, DType.BOOL)
    return out


_MOVEMENT = {Op.RESHAPE: _reshape, Op.PERMUTE: _permute, Op.EXPAND: _expand, Op.SLICE: _slice,
             Op.PAD: _pad, Op.CONCAT: _concat, Op.GATHER: _gather}


# -- whole kernels ---------------------------------------------------------------------------
def lower_elementwise(graph: Graph, root: int, materialized: set[int], users: list[list[int]]) -> Kernel:
    """The kernel computing node `root` into a contiguous buffer `out`."""
    b = KernelBuilder(graph, materialized - {root}, users)
    node = graph.nodes[root]
    b.params[root] = "out"
    shape = node.shape
    loop_vars = tuple(b.open_loop(d) for d in shape)
    idx = tuple(Sym(v) if d != 1 else 0 for v, d in zip(loop_vars, shape))
    v = b.compute(node, idx)
    linear = ix.linearize(idx, ix.contiguous_strides(shape))
    b.scopes[-1].stmts.append(Store("out", linear, v.expr))
    body = _assemble(b, loop_vars, shape)
    return _finish(b, node, body)


def lower_scatter(graph: Graph, root: int, materialized: set[int], users: list[list[int]]) -> Kernel:
    """The kernel writing SCATTER `root`'s values into its destination, whose buffer `out` it shares:
    only the written rows are touched (a KV cache grows by the new tokens, it is not copied)."""
    b = KernelBuilder(graph, materialized - {root}, users)
    node = graph.nodes[root]
    _, index, values = node.inputs
    axis = node.attrs["axis"] % len(node.shape)
    b.params[root] = "out"
    shape = graph.nodes[values].shape
    loop_vars = tuple(b.open_loop(d) for d in shape)
    idx = tuple(Sym(v) if d != 1 else 0 for v, d in zip(loop_vars, shape))
    where = b.value(index, idx[:axis + 1])
    name = b.fresh("g")
    b.scopes[where.depth].stmts.append(IndexLet(name, _as(where.expr, DType.I64), node.shape[axis]))
    b.var_depth[name], b.bounds[name] = where.depth, node.shape[axis]
    target = idx[:axis] + (Sym(name),) + idx[axis + 1:]
    v = b.value(values, idx)
    b.scopes[-1].stmts.append(Store("out", ix.linearize(target, ix.contiguous_strides(node.shape)), v.expr))
    return _finish(b, node, _assemble(b, loop_vars, shape))


def _assemble(b: KernelBuilder, loop_vars: tuple, shape: tuple) -> tuple:
    """Nest the output loops around their scopes' statements; mark parallel and vector loops."""
    n = len(loop_vars)
    body = tuple(b.scopes[n].stmts)
    for k in reversed(range(n)):
        body = tuple(b.scopes[k].stmts) + (Loop(loop_vars[k], shape[k], body, vector=(k == n - 1)),)
    return _mark_parallel(body, b.scopes, n)


def _mark_parallel(body: tuple, scopes: list[Scope], n: int) -> tuple:
    """Run the leading perfectly nested loops (no statements between them) across threads."""
    if n == 0:
        return body
    count = 1
    while count < n - 1 and not scopes[count].stmts:
        count += 1
    loop = body[-1]
    return body[:-1] + (Loop(loop.var, loop.extent, loop.body, parallel=count, vector=loop.vector),)


def _finish(b: KernelBuilder, node: Node, body: tuple) -> Kernel:
    params = sorted(b.params.items(), key=lambda kv: (kv[1] != "out", kv[1]))
    kernel_params = tuple(Param(name, _param_dtype(b.graph, nid), output=(name == "out" or nid == -2))
                          for nid, name in params)
    dims = sorted(_free_dims(body, b))
    meta = {"root": node.id, "args": [nid for nid, _ in params]}
    return Kernel("", kernel_params, tuple(dims), body, meta)


def _param_dtype(graph: Graph, nid) -> DType:
    """Graph buffers and packed weights have their node's dtype; workspaces are f32."""
    if isinstance(nid, tuple):   # ('packed' | 'scales', const node, ...)
        return graph.nodes[nid[1]].dtype
    return graph.nodes[nid].dtype if nid >= 0 else DType.F32


def _free_dims(body, b: KernelBuilder) -> set[str]:
    """Symbolic graph dims the kernel's statements use (everything that is not one of its own names)."""
    from dnet.kernel.walk import index_symbols

    return {s for s in index_symbols(body) if s not in b.bounds}
