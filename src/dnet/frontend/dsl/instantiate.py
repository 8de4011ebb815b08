"""Instantiation: an object class and its configuration -> an `Object` of the object IR.

Constants are evaluated in declaration order (configuration first taken from the
caller, else the declared default); parameter types and child configurations are
evaluated over them; every method becomes a `Function` of its own. A `children(...)`
member becomes a `Sequence` object whose children are `0`, `1`, ... and whose forward
chains them. Function bodies stay symbolic: `fold_constants` turns the constant names
they use into numbers.
"""
from __future__ import annotations

from typing import Any, Collection, Mapping

import numpy as np

from dnet.core.dtypes import DType
from dnet.core.shapes import WILDCARD, Dim, Sym, is_static
from dnet.core.types import TensorType
from dnet.errors import DnetError, DTypeError, Location, ShapeError, SymbolError, did_you_mean
from dnet.frontend.dsl.program import ChildDecl, FunctionDecl, ObjectClass, Program, TensorDecl
from dnet.objects.ir import (
    Apply, Argument, Call, Expr, Function, GetItem, If, Let, Lit, Object, ObjectModule, Ref, TupleExpr,
)
from dnet.objects.lower import SCALAR_OPS
from dnet.objects.symbols import SymbolFlag

SEQUENCE_CLASS = "Sequence"


def evaluate(expr: Expr, env: Mapping[str, Any], dims: Collection[str] = ()) -> Any:
    """The compile-time value of `expr` over constants `env` (and dimension names `dims`)."""
    if isinstance(expr, Lit):
        return expr.value
    if isinstance(expr, Ref):
        if expr.name in env:
            return env[expr.name]
        if expr.name in dims:
            return Sym(expr.name)
        raise SymbolError(f"unknown constant '{expr.name}'", expr.loc, did_you_mean(expr.name, [*env, *dims]))
    if isinstance(expr, TupleExpr):
        return tuple(evaluate(e, env, dims) for e in expr.items)
    if isinstance(expr, GetItem):
        value = evaluate(expr.value, env, dims)
        if not isinstance(value, tuple) or not -len(value) <= expr.index < len(value):
            raise SymbolError(f"cannot take item {expr.index} of {value!r}")
        return value[expr.index]
    if isinstance(expr, If):
        return evaluate(expr.then if evaluate(expr.cond, env, dims) else expr.orelse, env, dims)
    if isinstance(expr, Apply) and expr.op in SCALAR_OPS and not expr.attrs:
        args = [evaluate(a, env, dims) for a in expr.args]
        try:
            return SCALAR_OPS[expr.op](*args)
        except (ArithmeticError, TypeError, ValueError) as err:
            raise ShapeError(f"{expr.op}{tuple(args)}: {err}", expr.loc) from None
    raise SymbolError("not a compile-time value: only constants, numbers and scalar arithmetic can appear here",
                      getattr(expr, "loc", None))


class Instantiator:
    def __init__(self, program: Program):
        self.program = program

    # -- objects ---------------------------------------------------------------------------------
    def object(self, class_name: str, config: Mapping[str, Any], path: str = "",
               loc: Location | None = None) -> Object:
        cls = self.program.classes.get(class_name)
        if cls is None:
            raise SymbolError(f"unknown object class '{class_name}'", loc, did_you_mean(class_name, self.program.classes))
        env = self._constants(cls, config, path, loc)
        obj = Object(cls.name, path, loc=cls.loc)
        for name, value in env.items():
            obj.add_constant(name, value, cls.constants[name].loc)
        for decl in cls.parameters.values():
            type_ = self.tensor_type(decl.type, env, f"parameter '{decl.name}'")
            obj.add_parameter(decl.name, type_, self._fill(decl.type, type_, decl.flags, decl.name), decl.flags,
                              decl.loc)
        for child in cls.children.values():
            child_config = {k: evaluate(v, env) for k, v in child.config}
            obj.add_child(child.name, self._child(child, child_config, _join(path, child.name), env), child.loc)
        for fn in cls.methods.values():
            obj.add_function(self.function(fn, env))
        return obj

    def _constants(self, cls: ObjectClass, config: Mapping[str, Any], path: str, loc: Location | None
                   ) -> dict[str, Any]:
        unknown = [k for k in config if k not in cls.constants or not cls.constants[k].external]
        if unknown:
            configurable = [c.name for c in cls.constants.values() if c.external]
            raise SymbolError(f"object {cls.name} has no configuration constant '{unknown[0]}'", loc,
                              did_you_mean(unknown[0], configurable) or
                              ("it takes " + ", ".join(configurable) if configurable else "it takes none"))
        env: dict[str, Any] = {}
        for decl in cls.constants.values():
            if decl.external and decl.name in config:
                env[decl.name] = config[decl.name]
            elif decl.value is not None:
                env[decl.name] = evaluate(decl.value, env)
            else:
                raise SymbolError(f"object {cls.name} '{path or '<root>'}' needs constant '{decl.name}'",
                                  loc or decl.loc, f"declared at {decl.loc}")
        return env

    def _child(self, decl: ChildDecl, config: dict[str, Any], path: str, env: Mapping[str, Any]) -> Object:
        if decl.count is None:
            return self.object(decl.class_name, config, path, decl.loc)
        count = evaluate(decl.count, env)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise SymbolError(f"children '{decl.name}': count must be a non-negative integer, got {count!r}",
                              decl.loc)
        seq = Object(SEQUENCE_CLASS, path, loc=decl.loc)
        for i in range(count):
            seq.add_child(str(i), self.object(decl.class_name, config, _join(path, str(i)), decl.loc), decl.loc)
        forward = self.program.classes[decl.class_name].methods.get("forward")
        if forward is not None:
            seq.add_function(_chain(forward, count, decl.loc))
        return seq

    # -- types and data ----------------------------------------------------------------------------
    def tensor_type(self, decl: TensorDecl, env: Mapping[str, Any], what: str) -> TensorType:
        dims = tuple(self._dim(d, env, what) for d in decl.dims)
        dtype = evaluate(decl.dtype, env)
        if not isinstance(dtype, DType):
            raise DTypeError(f"{what}: {dtype!r} is not a dtype", decl.loc, "dtypes are D_F32, D_F16, ...")
        return TensorType(dims, dtype)

    def _dim(self, expr: Expr, env: Mapping[str, Any], what: str) -> Any:
        value = evaluate(expr, env, self.program.dims)
        if value is WILDCARD or isinstance(value, Dim) or (isinstance(value, int) and not isinstance(value, bool)
                                                           and value >= 0):
            return value
        raise ShapeError(f"{what}: {value!r} is not a dimension", getattr(expr, "loc", None))

    def _fill(self, decl: TensorDecl, type_: TensorType, flags: SymbolFlag, name: str) -> np.ndarray | None:
        """The init-filled tensor of a parameter (None for a required external one: weights must give it)."""
        if WILDCARD in type_.shape or not is_static(type_.shape):
            raise ShapeError(f"parameter '{name}' needs a concrete shape, got {type_}", decl.loc)
        if SymbolFlag.EXTERNAL in flags and SymbolFlag.OPTIONAL not in flags:
            return None
        return np.full(type_.shape, decl.init, type_.dtype.np)

    # -- functions ---------------------------------------------------------------------------------
    def function(self, decl: FunctionDecl, env: Mapping[str, Any]) -> Function:
        args = []
        for a in decl.args:
            type_ = self.tensor_type(a.type, env, f"argument '{a.name}'") if a.type is not None else None
            args.append(Argument(a.name, a.kind, a.flags, type_, a.loc))
        lets = [Let(let.name, let.value, let.loc) for let in decl.lets]
        return Function(decl.name, args, lets, decl.result, decl.loc)

    def module(self, class_name: str, config: Mapping[str, Any], loc: Location | None = None) -> ObjectModule:
        module = ObjectModule(self.object(class_name, config, "", loc))
        for fn in self.program.functions.values():
            module.add_function(self.function(fn, {}))
        return module


def _chain(forward: FunctionDecl, count: int, loc: Location | None) -> Function:
    """forward(x, rest...) = child n-1(... child 1(child 0(x, rest...), rest...) ..., rest...)."""
    args = [Argument(a.name, a.kind, a.flags, None, a.loc) for a in forward.args]
    if not args:
        raise SymbolError(f"children of class {forward.owner} cannot be chained: forward takes no argument", loc)
    rest = tuple(Ref(a.name) for a in args[1:])
    lets, current = [], Ref(args[0].name)
    for i in range(count):
        name = f"h{i}"
        lets.append(Let(name, Call(str(i), (current, *rest), loc), loc))
        current = Ref(name)
    return Function("forward", args, lets, current, loc)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def instantiate(program: Program, class_name: str | None = None, constants: Mapping[str, Any] | None = None
                ) -> ObjectModule:
    """The ObjectModule rooted at an instance of `class_name` (default: the program's `model(...)`)."""
    config: dict[str, Any] = {}
    loc = None
    if class_name is None or (program.model is not None and program.model.class_name == class_name):
        if program.model is None:
            raise DnetError("the program declares no model(...); name the object to build",
                            hint="classes: " + ", ".join(program.classes))
        class_name, loc = program.model.class_name, program.model.loc
        config = {k: evaluate(v, {}) for k, v in program.model.config}
    config.update(constants or {})
    return Instantiator(program).module(class_name, config, loc)
