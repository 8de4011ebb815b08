"""Constant propagation and folding over the object IR.

Within each function: a name that lowering would resolve to a constant member
becomes its literal; a let bound to a literal or to another name is propagated into
its uses; scalar arithmetic (`SCALAR_OPS`) on literals, tuples of literals and
items of known tuples fold to literals. Every rule computes exactly what lowering
would, so the lowered graph computes the same outputs; an operation that would fail
(a division by zero) is left for lowering to report where it stands.
"""
from __future__ import annotations

from typing import Callable

from dnet.core.passes import Pass
from dnet.objects.ir import Apply, Expr, Function, GetItem, Let, Lit, ObjectModule, Ref, TupleExpr
from dnet.objects.lower import SCALAR_OPS, _is_scalar  # fold exactly what lowering folds
from dnet.objects.passes.rewrite import Rule, rewrite
from dnet.objects.passes.walk import clone_module, module_functions, scope_of
from dnet.objects.symbols import SymbolKind, SymbolTable


# -- rules on literals ------------------------------------------------------------------
def fold_scalar_op(expr: Expr) -> Expr | None:
    """add(2, 3) -> 5: an op of SCALAR_OPS on scalar literals, as lowering computes it."""
    if not (isinstance(expr, Apply) and expr.op in SCALAR_OPS and not expr.attrs):
        return None
    if not all(isinstance(a, Lit) and _is_scalar(a.value) for a in expr.args):
        return None
    try:
        return Lit(SCALAR_OPS[expr.op](*(a.value for a in expr.args)))
    except (ArithmeticError, TypeError, ValueError):
        return None


def fold_tuple(expr: Expr) -> Expr | None:
    """tuple(1, 2) -> the literal (1, 2)."""
    if isinstance(expr, TupleExpr) and all(isinstance(e, Lit) for e in expr.items):
        return Lit(tuple(e.value for e in expr.items))
    return None


def fold_getitem(expr: Expr) -> Expr | None:
    """item(tuple(a, b), 1) -> b, for a tuple expression or a tuple literal."""
    if not isinstance(expr, GetItem):
        return None
    value, i = expr.value, expr.index
    if isinstance(value, TupleExpr) and -len(value.items) <= i < len(value.items):
        return value.items[i]
    if isinstance(value, Lit) and isinstance(value.value, tuple) and -len(value.value) <= i < len(value.value):
        return Lit(value.value[i])
    return None


LITERAL_RULES: tuple[Rule, ...] = (fold_scalar_op, fold_tuple, fold_getitem)


# -- names ---------------------------------------------------------------------------------
def substitute_names(lookup: Callable[[str], Expr | None]) -> Rule:
    """The rule replacing `Ref(name)` by `lookup(name)` where that is not None."""
    def rule(expr: Expr) -> Expr | None:
        return lookup(expr.name) if isinstance(expr, Ref) else None
    return rule


class _Names:
    """What each free name of one function folds to, in lowering's lookup order:
    argument (never replaced), let-binding (its folded value, if a literal or a name),
    member symbol (a constant's literal)."""

    def __init__(self, fn: Function, scope: SymbolTable):
        self.args = {a.name for a in fn.args}
        self.lets = fn.locals()
        self.scope = scope
        self.folded: dict[str, Expr] = {}
        self.active: set[str] = set()
        self.rules = (substitute_names(self.lookup), self.item_of_let, *LITERAL_RULES)

    def lookup(self, name: str) -> Expr | None:
        if name in self.args:
            return None
        if name in self.lets:
            value = self.let_value(name)
            return value if isinstance(value, (Lit, Ref)) and value != Ref(name) else None
        sym = self.scope.lookup(name)
        return Lit(sym.value) if sym is not None and sym.kind is SymbolKind.CONSTANT else None

    def item_of_let(self, expr: Expr) -> Expr | None:
        """item(p, i) -> the item, where let p = tuple(...) and the item is a literal or a name."""
        if not (isinstance(expr, GetItem) and isinstance(expr.value, Ref)):
            return None
        name = expr.value.name
        if name in self.args or name not in self.lets:
            return None
        value = self.let_value(name)
        item = fold_getitem(GetItem(value, expr.index)) if value is not None else None
        return item if isinstance(item, (Lit, Ref)) else None

    def let_value(self, name: str) -> Expr | None:
        if name not in self.folded:
            if name in self.active:  # defined in terms of itself: lowering reports it
                return None
            self.active.add(name)
            self.folded[name] = rewrite(self.lets[name].value, self.rules)
            self.active.discard(name)
        return self.folded[name]


def fold_function(fn: Function, scope: SymbolTable) -> None:
    """Fold `fn` in place; `scope` is its owner's symbol table."""
    names = _Names(fn, scope)
    body = []
    for let in fn.body:
        value = names.let_value(let.name) if names.lets[let.name] is let else None
        body.append(Let(let.name, value if value is not None else rewrite(let.value, names.rules), let.loc))
    fn.body = body
    if fn.result is not None:
        fn.result = rewrite(fn.result, names.rules)


def _fold_constants(module: ObjectModule) -> ObjectModule:
    new = clone_module(module)
    for owner, fn in module_functions(new):
        fold_function(fn, scope_of(new, owner))
    return new


fold_constants: Pass[ObjectModule] = Pass(
    "fold_constants", "object", _fold_constants,
    "constant members to literals, lets bound to literals or names propagated, scalar arithmetic folded")

