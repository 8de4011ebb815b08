"""Values a reduction computed, kept in the output for the loop that would compute them again.

A softmax is a max, a sum of exp(x - max), then exp(x - max) / sum: lowered as it reads,
the exp runs twice per element. When a kernel's loop recomputes (with its own loop
variable) a costly expression that a reduction just before it accumulated, the
reduction also stores each value into the kernel's output, at the element the loop
will write, and the loop loads it back (from L1: the row was just written). Only when
the output has the expression's dtype, so nothing is rounded differently.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from dnet.core.dtypes import DType
from dnet.core.shapes import Dim, Sym, substitute
from dnet.graph.ops import Op
from dnet.kernel.ir import (Binary, Cast, Expr, InBounds, IndexValue, Kernel, Let, Load, Loop, Reduce, Ref, Store,
                            Unary, Where)

COSTLY = {Op.EXP, Op.LOG, Op.TANH, Op.ERF, Op.SIN, Op.COS, Op.SQRT, Op.POW}


def reuse_reduced_values(kernel: Kernel) -> Kernel:
    """The kernel with each costly value a reduction and a later loop share computed once."""
    out = next((p for p in kernel.params if p.output and p.name == "out"), None)
    if out is None:
        return kernel
    return replace(kernel, body=_block(kernel.body, out.dtype))


def _block(stmts: tuple, dtype: DType) -> tuple:
    stmts = [replace(s, body=_block(s.body, dtype)) if isinstance(s, Loop) else s for s in stmts]
    for k, s in enumerate(stmts):
        if isinstance(s, Loop) and not s.parallel:
            for j in reversed(range(k)):
                if isinstance(stmts[j], Reduce):
                    pair = _share(stmts[j], s, dtype)
                    if pair is not None:
                        stmts[j], stmts[k] = pair
                        break
    return tuple(stmts)


def _share(red: Reduce, loop: Loop, dtype: DType) -> tuple[Reduce, Loop] | None:
    """(reduction storing its values, loop loading them), or None when they share nothing costly."""
    if len(red.loops) != 1 or red.loops[0][1] != loop.extent or not all(isinstance(s, (Let, Store)) for s in loop.body):
        return None
    stores = [s for s in loop.body if isinstance(s, Store) and s.buffer == "out"]
    if len(stores) != 1:
        return None
    rvar, index = red.loops[0][0], stores[0].index
    if not (isinstance(index, Dim) and loop.var in index.free_symbols()):
        return None   # each iteration must write its own element, or one would overwrite a value another reads
    lets = {s.name: s.value for s in red.body if isinstance(s, Let)}
    candidates = [(s.name, s.value) for s in red.body if isinstance(s, Let)] + [(None, red.value)]
    for name, value in candidates:
        full = _expand(value, lets)
        if full.dtype is not dtype or not _costly(full):
            continue
        wanted = _rename(full, rvar, loop.var)
        load = Load("out", index, dtype)
        body, found = _replace_in(loop.body, wanted, load)
        if not found:
            continue
        stored = Store("out", _subst(index, loop.var, Sym(rvar)), Ref(name or f"{red.acc}_v", dtype))
        if name is None:
            new_body = red.body + (Let(f"{red.acc}_v", red.value), stored)
            return replace(red, body=new_body, value=Ref(f"{red.acc}_v", dtype)), replace(loop, body=body)
        return replace(red, body=red.body + (stored,)), replace(loop, body=body)
    return None


def _replace_in(body: tuple, wanted: Expr, load: Load) -> tuple[tuple, bool]:
    """`body` with every occurrence of `wanted` (Lets seen through) replaced by `load`."""
    lets: dict[str, Expr] = {}
    found = False
    out = []

    def swap(e: Expr) -> Expr | None:   # a Ref stays: the Let it names is where the match was replaced
        return load if not isinstance(e, Ref) and _expand(e, lets) == wanted else None

    for s in body:
        value = _map(s.value, swap)
        found = found or value != s.value
        if isinstance(s, Let):
            lets[s.name] = s.value
        out.append(replace(s, value=value))
    return tuple(out), found


def _costly(e: Expr) -> bool:
    hit = []
    _map(e, lambda x: hit.append(x) if isinstance(x, Unary) and x.op in COSTLY else None)
    return bool(hit)


def _expand(e: Expr, lets: dict[str, Expr]) -> Expr:
    return _map(e, lambda x: _expand(lets[x.name], lets) if isinstance(x, Ref) and x.name in lets else None)


def _rename(e: Expr, old: str, new: str) -> Expr:
    def index(x):
        if isinstance(x, (Load, IndexValue)):
            return replace(x, index=_subst(x.index, old, Sym(new)))
        if isinstance(x, InBounds):
            return replace(x, index=_subst(x.index, old, Sym(new)), lo=_subst(x.lo, old, Sym(new)),
                           hi=_subst(x.hi, old, Sym(new)))
        return None
    return _map(e, index)


def _subst(i, old: str, new: Dim):
    return substitute(i, {old: new}) if isinstance(i, Dim) else i


def _map(e: Expr, fn: Callable[[Expr], Expr | None]) -> Expr:
    """`e` rebuilt top-down: where `fn` returns an expression, that replaces the whole subtree."""
    got = fn(e)
    if got is not None:
        return got
    if isinstance(e, (Unary, Cast)):
        return replace(e, x=_map(e.x, fn))
    if isinstance(e, Binary):
        return replace(e, a=_map(e.a, fn), b=_map(e.b, fn))
    if isinstance(e, Where):
        return replace(e, cond=_map(e.cond, fn), a=_map(e.a, fn), b=_map(e.b, fn))
    return e
