"""Readable text form of the object IR, for `dnet inspect` and for tests.

Module-level functions come first, then every object instance, pre-order, each with
its member symbols by kind (constants, parameters, children, functions). A function
lists its arguments (kind, flags, type), its let-bindings and its captured result;
expressions are written in the call form of the DSL:

    object Attention '<root>' {
      constant hidden_size = 384
      child q_proj: Linear 'q_proj'
      function forward {
        argument x: S_TENSOR, SYM_EXTERNAL, f16(WILDCARD, WILDCARD, hidden_size)
        argument mask: S_TENSOR, SYM_EXTERNAL | SYM_OPTIONAL
        let q = call(project_and_format, q_proj, x, num_attention_heads, cache)
        capture(mul(idiv(hidden_size, num_attention_heads), q))
      }
    }

The output depends only on the IR (symbols in definition order), never on ids or
memory addresses, so tests can compare it with text written by hand.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from dnet.core.dtypes import DType
from dnet.core.shapes import WILDCARD, Dim
from dnet.objects.ir import (
    ABSENT, Apply, Argument, Call, Expr, Function, GetItem, If, Lit, Object, ObjectModule, Present, Ref, TupleExpr,
)
from dnet.objects.symbols import Symbol, SymbolKind

INDENT = "  "

# How the DSL spells an argument's kind.
ARGUMENT_KINDS = {SymbolKind.TENSOR: "S_TENSOR", SymbolKind.SCALAR: "S_SCALAR", SymbolKind.OBJECT_ARG: "S_OBJECT"}


def format_value(value: Any) -> str:
    """A literal value: numbers as Python writes them, `true`/`false`, quoted strings, and
    `none` for an optional argument left out (ABSENT), as the DSL spells them."""
    if value is ABSENT:
        return "none"
    if isinstance(value, np.generic):  # a numpy scalar prints as the Python number it holds
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, DType):
        return f"D_{value.value.upper()}"
    if isinstance(value, float):
        return repr(float(value))
    if value is WILDCARD or isinstance(value, (int, Dim)):
        return str(value)
    if isinstance(value, (tuple, list)):
        return "tuple(" + ", ".join(format_value(v) for v in value) + ")"
    return repr(value)


def format_expr(expr: Expr) -> str:
    """An expression in call form: `mul(idiv(hidden_size, num_attention_heads), call(f, x))`."""
    if isinstance(expr, Lit):
        return format_value(expr.value)
    if isinstance(expr, Ref):
        return expr.name
    if isinstance(expr, Present):
        return f"present({expr.name})"
    if isinstance(expr, TupleExpr):
        return _form("tuple", expr.items)
    if isinstance(expr, GetItem):
        return f"item({format_expr(expr.value)}, {expr.index})"
    if isinstance(expr, If):
        return _form("if", (expr.cond, expr.then, expr.orelse))
    if isinstance(expr, Call):
        return "call(" + ", ".join([expr.target, *(format_expr(a) for a in expr.args)]) + ")"
    if isinstance(expr, Apply):
        parts = [format_expr(a) for a in expr.args] + [f"{k}={format_expr(v)}" for k, v in expr.attrs]
        return f"{expr.op}({', '.join(parts)})"
    raise TypeError(f"unknown expression node {type(expr).__name__}")


def _form(head: str, items: tuple[Expr, ...]) -> str:
    return f"{head}({', '.join(format_expr(e) for e in items)})"


def format_argument(arg: Argument) -> str:
    parts = [ARGUMENT_KINDS.get(arg.kind, arg.kind.value), str(arg.flags)]
    if arg.type is not None:
        parts.append(str(arg.type))
    return f"argument {arg.name}: {', '.join(parts)}"


def print_function(fn: Function) -> str:
    lines = [f"function {fn.name} {{"]
    lines += [INDENT + format_argument(a) for a in fn.args]
    lines += [f"{INDENT}let {let.name} = {format_expr(let.value)}" for let in fn.body]
    if fn.result is not None:
        lines.append(f"{INDENT}capture({format_expr(fn.result)})")
    lines.append("}")
    return "\n".join(lines)


def _instance(obj: Object) -> str:
    return f"{obj.class_name} '{obj.name or '<root>'}'"


def _member(sym: Symbol) -> list[str]:
    if sym.kind is SymbolKind.CONSTANT:
        return [f"constant {sym.name} = {format_value(sym.value)}"]
    if sym.kind is SymbolKind.PARAMETER:
        state = "loaded" if sym.value is not None else "not loaded"
        return [f"parameter {sym.name}: {sym.type}, {sym.flags}, {state}"]
    if sym.kind is SymbolKind.OBJECT:
        return [f"child {sym.name}: {_instance(sym.value)}"]
    if sym.kind is SymbolKind.FUNCTION:
        return print_function(sym.value).split("\n")
    return [f"{sym.kind.value} {sym.name}"]


_MEMBER_ORDER = (SymbolKind.CONSTANT, SymbolKind.PARAMETER, SymbolKind.OBJECT, SymbolKind.FUNCTION)


def print_object(obj: Object) -> str:
    """One object instance: its members by kind (children by name only; see `print_module`)."""
    lines = [f"object {_instance(obj)} {{"]
    ordered = sorted(obj.symbols, key=lambda s: _MEMBER_ORDER.index(s.kind) if s.kind in _MEMBER_ORDER else 99)
    for sym in ordered:
        lines += [INDENT + line for line in _member(sym)]
    lines.append("}")
    return "\n".join(lines)


def print_module(module: ObjectModule) -> str:
    """The whole module: module-level symbols, then every object instance, pre-order."""
    blocks = []
    for sym in module.symbols:
        blocks.append("\n".join(_member(sym)))
    blocks += [print_object(obj) for obj in module.root.walk()]
    return "\n\n".join(blocks) + "\n"
