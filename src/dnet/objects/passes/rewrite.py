"""Expression rewriting: rules as data, applied bottom-up to a fixed point.

A rule looks at one expression node (whose children are already rewritten) and
returns a replacement, or None where it does not apply. A pass is a list of rules.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

from dnet.objects.ir import Apply, Call, Expr, Function, GetItem, If, Let, TupleExpr

Rule = Callable[[Expr], "Expr | None"]


def map_children(expr: Expr, f: Callable[[Expr], Expr]) -> Expr:
    """`expr` with `f` applied to each direct child; the same node where no child changed."""
    old = expr.children()
    new = tuple(f(e) for e in old)
    if all(a is b for a, b in zip(old, new)):
        return expr
    if isinstance(expr, TupleExpr):
        return replace(expr, items=new)
    if isinstance(expr, GetItem):
        return replace(expr, value=new[0])
    if isinstance(expr, Apply):
        n = len(expr.args)
        return replace(expr, args=new[:n], attrs=tuple((k, v) for (k, _), v in zip(expr.attrs, new[n:])))
    if isinstance(expr, Call):
        return replace(expr, args=new)
    if isinstance(expr, If):
        return replace(expr, cond=new[0], then=new[1], orelse=new[2])
    raise TypeError(f"unknown expression node {type(expr).__name__}")


def rewrite(expr: Expr, rules: Sequence[Rule]) -> Expr:
    """Rewrite children first, then apply the first matching rule until none matches.

    A rule returns None where it does not apply; what it returns must be simpler than
    what it got (so this ends) and have children already rewritten (a literal, a child
    of the node it was given, the node with fewer children), so this stays linear.
    """
    if isinstance(expr, If):
        expr = _rewrite_if(expr, rules)
        if not isinstance(expr, If):
            return expr
    else:
        expr = map_children(expr, lambda e: rewrite(e, rules))
    while True:
        for rule in rules:
            new = rule(expr)
            if new is not None:
                expr = new
                break
        else:
            return expr


def _rewrite_if(expr: If, rules: Sequence[Rule]) -> Expr:
    """Condition first: where a rule then picks a branch, only that branch is rewritten
    (rewriting the other could do work, such as specialising calls, for nothing)."""
    probe = replace(expr, cond=rewrite(expr.cond, rules))
    for rule in rules:
        picked = rule(probe)
        if picked is not None and (picked is expr.then or picked is expr.orelse):
            return rewrite(picked, rules)
    return replace(probe, then=rewrite(expr.then, rules), orelse=rewrite(expr.orelse, rules))


def rewrite_function(fn: Function, rules: Sequence[Rule]) -> None:
    """Rewrite every let-binding and the result of `fn` in place."""
    fn.body = [Let(let.name, rewrite(let.value, rules), let.loc) for let in fn.body]
    if fn.result is not None:
        fn.result = rewrite(fn.result, rules)

