"""torch's types in dnet's terms: dtypes, and sympy size expressions as symbolic `Dim`s.

torch.export names each dynamic dimension with a sympy symbol (`s70`); the importer
renames them (`seq`) through a `names` map and rebuilds every size expression in
dnet's canonical form, so torch's shapes and dnet's can be compared node by node.
"""
from __future__ import annotations

from typing import Any, Mapping

import sympy
import torch
from torch.utils._sympy.functions import FloorDiv, Mod, PythonMod

from dnet.core.dtypes import DType
from dnet.core.shapes import Dim, Sym
from dnet.errors import DTypeError, UnsupportedOpError

_DTYPES = {
    torch.float32: DType.F32, torch.float16: DType.F16, torch.bfloat16: DType.BF16, torch.int8: DType.I8,
    torch.int32: DType.I32, torch.int64: DType.I64, torch.bool: DType.BOOL,
}


def to_dtype(dtype: torch.dtype, what: str = "") -> DType:
    if dtype not in _DTYPES:
        raise DTypeError(f"torch dtype {dtype}{' of ' + what if what else ''} has no dnet dtype",
                         hint="dnet has " + ", ".join(d.value for d in DType))
    return _DTYPES[dtype]


def to_dim(expr: Any, names: Mapping[str, str]) -> int | Dim:
    """A sympy size expression (or a SymInt, or an int) as a dnet dimension."""
    if isinstance(expr, torch.SymInt):
        expr = expr.node.expr
    if isinstance(expr, int):
        return expr
    if isinstance(expr, sympy.Integer):
        return int(expr)
    if isinstance(expr, sympy.Symbol):
        return Sym(names.get(expr.name, expr.name))
    args = [to_dim(a, names) for a in expr.args]
    if isinstance(expr, sympy.Add):
        return sum(args[1:], args[0])
    if isinstance(expr, sympy.Mul):
        out = args[0]
        for a in args[1:]:
            out = out * a
        return out
    if isinstance(expr, sympy.Pow) and isinstance(args[1], int) and args[1] > 0:
        out = args[0]
        for _ in range(args[1] - 1):
            out = out * args[0]
        return out
    if isinstance(expr, FloorDiv):
        return args[0] // args[1]
    if isinstance(expr, (Mod, PythonMod)):
        return args[0] % args[1]
    raise UnsupportedOpError(f"symbolic size expression '{expr}' ({type(expr).__name__}) has no dnet form")


def to_shape(shape: Any, names: Mapping[str, str]) -> tuple:
    return tuple(to_dim(d, names) for d in shape)
