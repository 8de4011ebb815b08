"""Generic traversals of kernel IR: the children of each node, and the symbols it uses."""
from __future__ import annotations

from typing import Iterator

from dnet.core.shapes import Dim
from dnet.kernel.ir import (Binary, Cast, Gemm, GpuLoop, InBounds, IndexLet, IndexValue, Let, LocalAlloc, Load, Loop,
                            QMatmul, Reduce, Store, Unary, Where)


def indices(node) -> Iterator:
    """Every index expression (Dim or int) in a statement or expression tree."""
    if isinstance(node, (tuple, list)):
        for n in node:
            yield from indices(n)
    elif isinstance(node, (Load, IndexValue)):
        yield node.index
    elif isinstance(node, InBounds):
        yield from (node.index, node.lo, node.hi)
    elif isinstance(node, (Unary, Cast)):
        yield from indices(node.x)
    elif isinstance(node, Binary):
        yield from indices((node.a, node.b))
    elif isinstance(node, Where):
        yield from indices((node.cond, node.a, node.b))
    elif isinstance(node, (Let, IndexLet)):
        yield from indices(node.value)
        if isinstance(node, IndexLet):
            yield node.bound
    elif isinstance(node, Store):
        yield node.index
        yield from indices(node.value)
    elif isinstance(node, (Loop, GpuLoop)):
        yield node.extent
        yield from indices(node.body)
    elif isinstance(node, LocalAlloc):
        yield from indices(node.body)
    elif isinstance(node, Reduce):
        yield from (e for _, e in node.loops)
        yield node.arg_index
        yield from indices((node.body, node.value))
    elif isinstance(node, Gemm):
        yield from (*node.batch, node.m, node.n, node.k)
        for op in (node.a, node.b):
            yield from (op.offset, *op.batch_strides, op.row_stride, op.col_stride)
        yield from indices((node.epilogue_lets, node.epilogue))
    elif isinstance(node, QMatmul):
        yield from (node.m, node.a.offset, node.a.row_stride)
        yield from indices((node.epilogue_lets, node.epilogue))


def index_symbols(node) -> set[str]:
    out: set[str] = set()
    for i in indices(node):
        if isinstance(i, Dim):
            out |= _symbols(i)
    return out


def _symbols(d: Dim) -> set[str]:
    """Free symbols, including those inside the divisor of a // or % atom."""
    out: set[str] = set()
    for m, _ in d.terms:
        for a in m:
            if isinstance(a, str):
                out.add(a)
            else:
                out |= _symbols(a[1]) if isinstance(a[1], Dim) else set()
                out |= _symbols(a[2]) if isinstance(a[2], Dim) else set()
    return out
