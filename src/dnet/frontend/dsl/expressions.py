"""DSL expressions -> object-IR expressions.

A form is a special form (`call`, `if`, `present`, `tuple`, `item`), an operation of
the graph op set or of scalar arithmetic (`Apply`), or an error that names the
closest known form. Names of literals (`true`, `false`, `none`, `WILDCARD`, `D_F32`,
...) become `Lit`s; every other name is a `Ref`, resolved later against its scope.
"""
from __future__ import annotations

import inspect
from functools import lru_cache

from dnet.core.dtypes import DType
from dnet.core.shapes import WILDCARD
from dnet.errors import ParseError, SymbolError, did_you_mean
from dnet.frontend.dsl.syntax import Block, Form, Keyword, Name, Node, Number, String, Union_, describe
from dnet.graph.composites import COMPOSITES
from dnet.graph.opset import OP_NAMES
from dnet.graph.ops import OPS_BY_NAME
from dnet.objects.ir import ABSENT, Apply, Call, Expr, GetItem, If, Lit, Present, Ref, TupleExpr
from dnet.objects.lower import SCALAR_OPS

SPECIAL_FORMS = ("call", "if", "present", "tuple", "item")
# Operations lowering evaluates itself, beside the op set and scalar arithmetic.
SHAPE_QUERIES = {"dim": (2, 2), "shape": (1, 1), "rank": (1, 1)}
LITERAL_NAMES = {"true": True, "false": False, "none": ABSENT, "WILDCARD": WILDCARD}
DTYPE_NAMES = {f"D_{d.name}": d for d in DType}


@lru_cache(maxsize=None)
def op_signature(op: str) -> tuple[int, int, frozenset[str] | None] | None:
    """(min positional args, max positional args, attribute names or None for any) of an operation;
    None where `op` names no operation."""
    if op in SHAPE_QUERIES:
        lo, hi = SHAPE_QUERIES[op]
        return lo, hi, frozenset()
    if op in COMPOSITES:
        params = list(inspect.signature(COMPOSITES[op]).parameters.values())[1:]  # after the builder
        lo = sum(1 for p in params if p.default is inspect.Parameter.empty)
        return lo, len(params), frozenset(p.name for p in params)
    if op in OPS_BY_NAME:
        spec = OPS_BY_NAME[op]
        n = spec.arity
        return (1, 1 << 30, frozenset(spec.attr_names)) if n < 0 else (n, n, frozenset(spec.attr_names))
    if op in SCALAR_OPS:  # idiv, gt, ge: binary
        return 2, 2, frozenset()
    return None


def operation_names() -> tuple[str, ...]:
    return tuple(sorted(set(OP_NAMES) | set(SCALAR_OPS) | set(SHAPE_QUERIES)))


def is_operation(name: str) -> bool:
    return op_signature(name) is not None


def literal(name: Name) -> Lit | None:
    if name.text in LITERAL_NAMES:
        return Lit(LITERAL_NAMES[name.text])
    if name.text in DTYPE_NAMES:
        return Lit(DTYPE_NAMES[name.text])
    if name.text.startswith("D_"):
        raise SymbolError(f"unknown dtype '{name.text}'", name.loc, did_you_mean(name.text, DTYPE_NAMES)
                          or "dtypes are " + ", ".join(DTYPE_NAMES))
    return None


def to_expr(node: Node | Keyword) -> Expr:
    """The object-IR expression a DSL expression denotes."""
    if isinstance(node, Number):
        return Lit(node.value)
    if isinstance(node, String):
        return Lit(node.value)
    if isinstance(node, Name):
        lit = literal(node)
        if lit is not None:
            return lit
        if "." in node.text:
            raise ParseError(f"'{node.text}': a dotted name can only be the target of call(...)", node.loc)
        return Ref(node.text, node.loc)
    if isinstance(node, Form):
        return _form(node)
    if isinstance(node, Keyword):
        raise ParseError(f"keyword argument '{node.name} = ...' is not allowed here", node.loc)
    if isinstance(node, Union_):
        raise ParseError(f"'{describe(node)}': flags combine with '|' only in declarations", node.loc)
    if isinstance(node, Block):
        raise ParseError("a block { ... } is not an expression", node.loc)
    raise ParseError(f"unexpected {describe(node)}", getattr(node, "loc", None))


def _form(form: Form) -> Expr:
    special = _SPECIAL.get(form.head)
    if special is not None:
        return special(form)
    if is_operation(form.head):
        return _apply(form)
    raise SymbolError(f"unknown operation '{form.head}'", form.loc,
                      did_you_mean(form.head, operation_names() + SPECIAL_FORMS))


def expect_args(form: Form, lo: int, hi: int, what: str = "", keywords: bool = False) -> tuple[Node, ...]:
    """The positional arguments of `form`, when their count is within [lo, hi]; keyword
    arguments (`k = v`) are an error unless `keywords` says the caller reads them itself."""
    if form.keywords and not keywords:
        kw = form.keywords[0]
        raise ParseError(f"{form.head}(...) takes no keyword arguments, got '{kw.name}'", kw.loc)
    args = form.positional
    if not lo <= len(args) <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}"
        noun = "positional argument(s)" if keywords else "argument(s)"
        raise ParseError(f"{form.head}(...) takes {want} {noun}{what}, got {len(args)}", form.loc)
    return args


def expect_name(node: Node, what: str) -> Name:
    if not isinstance(node, Name):
        raise ParseError(f"expected {what}, got '{describe(node)}'", getattr(node, "loc", None))
    return node


def _call(form: Form) -> Expr:
    if not form.positional:
        raise ParseError("call(...) needs a target: call(function, args...)", form.loc)
    target, *args = expect_args(form, 1, 1 << 30)
    target = expect_name(target, "the name of a function or object to call")
    return Call(target.text, tuple(to_expr(a) for a in args), target.loc)


def _if(form: Form) -> Expr:
    cond, then, orelse = expect_args(form, 3, 3, " (condition, then, else)")
    return If(to_expr(cond), to_expr(then), to_expr(orelse), form.loc)


def _present(form: Form) -> Expr:
    (arg,) = expect_args(form, 1, 1)
    name = expect_name(arg, "the name of an optional argument")
    return Present(name.text, name.loc)


def _tuple(form: Form) -> Expr:
    return TupleExpr(tuple(to_expr(a) for a in expect_args(form, 0, 1 << 30)))


def _item(form: Form) -> Expr:
    value, index = expect_args(form, 2, 2, " (tuple, index)")
    if not isinstance(index, Number) or not isinstance(index.value, int):
        raise ParseError(f"item(...) needs an integer index, got '{describe(index)}'", getattr(index, "loc", None))
    return GetItem(to_expr(value), index.value)


_SPECIAL = {"call": _call, "if": _if, "present": _present, "tuple": _tuple, "item": _item}


def _apply(form: Form) -> Expr:
    lo, hi, attrs = op_signature(form.head)  # type: ignore[misc]  # _form checked is_operation
    args = form.positional
    if not lo <= len(args) <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}" if hi < 1 << 30 else f"at least {lo}"
        raise ParseError(f"{form.head}(...) takes {want} argument(s), got {len(args)}", form.loc)
    seen: set[str] = set()
    for kw in form.keywords:
        if attrs is not None and kw.name not in attrs:
            hint = did_you_mean(kw.name, attrs) or (f"its attributes are {', '.join(sorted(attrs))}" if attrs
                                                    else f"{form.head} takes no attributes")
            raise ParseError(f"{form.head}(...) has no attribute '{kw.name}'", kw.loc, hint)
        if kw.name in seen:
            raise ParseError(f"attribute '{kw.name}' given twice", kw.loc)
        seen.add(kw.name)
    return Apply(form.head, tuple(to_expr(a) for a in args),
                 tuple((kw.name, to_expr(kw.value)) for kw in form.keywords), form.loc)
