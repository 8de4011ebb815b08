"""Lowering: inline every object of an ObjectModule into one flat graph-IR DAG.

The lowering evaluates a function's expression tree with a GraphBuilder. Constants
are Python values, so scalar arithmetic on them folds as it goes; a call to a child
object or a function is inlined under the callee's symbol path; a compile-time `if`
evaluates only the branch taken; let-bindings are evaluated on first use, so what no
output needs is never built.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dnet.core.dtypes import DType
from dnet.core.shapes import WILDCARD, Dim, Sym, shape_str, substitute
from dnet.core.types import TensorType
from dnet.errors import DnetError, DTypeError, Location, ShapeError, SymbolError, WeightError, did_you_mean
from dnet.graph.builder import GraphBuilder, Value
from dnet.graph.ir import Graph
from dnet.graph.composites import COMPOSITES
from dnet.graph.opset import emit
from dnet.objects.ir import (
    ABSENT, Apply, Argument, Call, Expr, Function, GetItem, If, Let, Lit, Object, ObjectModule, Present, Ref,
    TupleExpr,
)
from dnet.objects.symbols import SymbolKind, SymbolTable

Scalar = int | float | bool | Dim

# Arithmetic that folds when every operand is a compile-time scalar.
SCALAR_OPS: dict[str, Callable[..., Any]] = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
    "idiv": operator.floordiv, "mod": operator.mod, "neg": operator.neg, "pow": operator.pow,
    "max": max, "min": min, "eq": operator.eq, "ne": operator.ne, "lt": operator.lt,
    "le": operator.le, "gt": operator.gt, "ge": operator.ge, "and": lambda a, b: bool(a and b),
    "or": lambda a, b: bool(a or b), "not": operator.not_, "sqrt": math.sqrt, "abs": abs,
}
# Tensor forms of the scalar ops the graph op set spells differently.
_TENSOR_ALIASES = {"idiv": "div", "gt": "lt", "ge": "le"}


@dataclass(frozen=True)
class ObjectRef:
    obj: Object
    path: str


@dataclass(frozen=True)
class FunctionRef:
    fn: Function
    owner: ObjectRef | None  # None for a module-level function


@dataclass
class _Frame:
    fn: Function
    owner: ObjectRef | None
    scope: SymbolTable
    env: dict[str, Any]
    lets: dict[str, Let] = field(default_factory=dict)
    evaluating: set[str] = field(default_factory=set)


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (int, float, bool, Dim)) and not isinstance(v, Value)


class Lowering:
    def __init__(self, module: ObjectModule):
        self.module = module
        self.b = GraphBuilder()
        self._fresh = 0

    # -- entry --------------------------------------------------------------------
    def lower(self, function: str = "forward", inputs: Mapping[str, TensorType | Any] | None = None,
              output_names: Sequence[str] | None = None) -> Graph:
        root = ObjectRef(self.module.root, "")
        fn = self._method(root, function, None)
        inputs = dict(inputs or {})
        unknown = set(inputs) - {a.name for a in fn.args}
        if unknown:
            raise SymbolError(f"'{function}' has no argument(s) {sorted(unknown)}", fn.loc,
                              "arguments are " + ", ".join(a.name for a in fn.args))
        args = [self._root_argument(a, inputs.get(a.name, ABSENT)) for a in fn.args]
        result = self._call(FunctionRef(fn, root), args, fn.loc)
        results = result if isinstance(result, tuple) else (result,)
        names = list(output_names or (["output"] if len(results) == 1 else [f"output{i}" for i in range(len(results))]))
        for name, value in zip(names, results):
            if not isinstance(value, Value):
                raise ShapeError(f"output '{name}' of '{function}' is not a tensor (got {value!r})", fn.loc)
            self.b.output(name, value)
        return self.b.finish()

    def _root_argument(self, arg: Argument, given: Any) -> Any:
        if given is ABSENT:
            if arg.optional:
                return ABSENT
            if arg.kind is SymbolKind.TENSOR and arg.type is not None:
                given = arg.type
            else:
                raise SymbolError(f"no value for required argument '{arg.name}'", arg.loc)
        if isinstance(given, TensorType):
            shape = tuple(self._fresh_dim(arg.name, i) if d is WILDCARD else d for i, d in enumerate(given.shape))
            return self.b.input(arg.name, TensorType(shape, given.dtype))
        return given  # a scalar or object given at compile time

    def _fresh_dim(self, name: str, axis: int) -> Dim:
        return Sym(f"{name}_{axis}")

    # -- calls ----------------------------------------------------------------------
    def _method(self, target: ObjectRef, name: str, loc: Location | None) -> Function:
        fns = target.obj.functions
        if name not in fns:
            raise SymbolError(f"object {target.obj.class_name} '{target.path or '<root>'}' has no function '{name}'",
                              loc, did_you_mean(name, fns))
        return fns[name]

    def _resolve_callee(self, target: str, frame: _Frame, loc: Location | None) -> FunctionRef:
        """`f`, `child`, `child.method`, `a.b.c.method`: walk child objects, end at a function."""
        head, *rest = target.split(".")
        value = self._lookup(head, frame, loc)
        for i, part in enumerate(rest):
            if not isinstance(value, ObjectRef):
                break
            children = value.obj.children
            if part in children:
                value = ObjectRef(children[part], f"{value.path}.{part}" if value.path else part)
            elif i == len(rest) - 1:
                return FunctionRef(self._method(value, part, loc), value)
            else:
                raise SymbolError(f"object '{value.path}' has no child '{part}'", loc, did_you_mean(part, children))
        if isinstance(value, FunctionRef) and not rest:
            return value
        if isinstance(value, ObjectRef):
            return FunctionRef(self._method(value, "forward", loc), value)
        raise SymbolError(f"'{target}' is not callable", loc)

    def _call(self, callee: FunctionRef, args: Sequence[Any], loc: Location | None) -> Any:
        fn = callee.fn
        if len(args) > len(fn.args):
            raise SymbolError(f"'{fn.name}' takes {len(fn.args)} argument(s), got {len(args)}", loc)
        env: dict[str, Any] = {}
        for i, param in enumerate(fn.args):
            value = args[i] if i < len(args) else ABSENT
            if value is ABSENT and not param.optional:
                raise SymbolError(f"'{fn.name}' is missing required argument '{param.name}'", loc)
            if value is not ABSENT:
                self._check_argument(fn, param, value, callee, loc)
            env[param.name] = value
        owner_scope = callee.owner.obj.symbols if callee.owner else self.module.symbols
        frame = _Frame(fn, callee.owner, owner_scope, env, fn.locals())
        # Nodes are named by the object path and function (`bert.layers.3.attention.forward`); a free
        # function's nodes keep the caller's path (`...attention.forward/softmax_attention`).
        if callee.owner is None:
            scope = f"{self.b.where}/{fn.name}" if self.b.where else fn.name
        else:
            scope = f"{callee.owner.path}.{fn.name}" if callee.owner.path else fn.name
        with self.b.at(scope):
            if fn.result is None:
                raise SymbolError(f"function '{fn.name}' captures no result", fn.loc)
            return self.eval(fn.result, frame)

    def _check_argument(self, fn: Function, param: Argument, value: Any, callee: FunctionRef, loc) -> None:
        where = loc or param.loc
        if param.kind is SymbolKind.TENSOR:
            if not isinstance(value, Value):
                raise DTypeError(f"argument '{param.name}' of '{fn.name}' must be a tensor, got {value!r}", where)
            if param.type is None:
                return
            actual = self.b.type(value)
            self._check_shape(fn, param, actual, callee, where)
        elif param.kind is SymbolKind.SCALAR and not _is_scalar(value):
            raise DTypeError(f"argument '{param.name}' of '{fn.name}' must be a scalar, got {value!r}", where)
        elif param.kind is SymbolKind.OBJECT_ARG and not isinstance(value, ObjectRef):
            raise DTypeError(f"argument '{param.name}' of '{fn.name}' must be an object, got {value!r}", where)

    def _check_shape(self, fn: Function, param: Argument, actual: TensorType, callee: FunctionRef,
                     where: Location | None) -> None:
        declared = param.type
        scope = callee.owner.obj.symbols if callee.owner else self.module.symbols
        if declared.dtype is not None and declared.dtype != actual.dtype:
            raise DTypeError(f"argument '{param.name}' of '{fn.name}' has dtype {actual.dtype}, declared "
                             f"{declared.dtype}", where)
        if declared.shape == (WILDCARD,):  # the lone WILDCARD: any shape, of any rank
            return
        if len(declared.shape) != len(actual.shape) or not all(
                _dim_fits(want, got, scope) for want, got in zip(declared.shape, actual.shape)):
            raise ShapeError(f"argument '{param.name}' of '{fn.name}' has shape {shape_str(actual.shape)}, "
                             f"declared {shape_str(declared.shape)}", where)

    # -- names ------------------------------------------------------------------------
    def _lookup(self, name: str, frame: _Frame, loc: Location | None) -> Any:
        if name in frame.env:
            return frame.env[name]
        if name in frame.lets:
            # What this let needs unconditionally is evaluated first, oldest first, so a long chain of
            # lets costs no Python recursion; lets used only inside an untaken branch are never built.
            for dep in self._needed_lets(name, frame):
                self._force(dep, frame, loc)
            return self._force(name, frame, loc)
        sym = frame.scope.lookup(name)
        if sym is None:
            visible = list(frame.env) + list(frame.lets) + frame.scope.visible()
            raise SymbolError(f"unknown symbol '{name}' in function '{frame.fn.name}'", loc, did_you_mean(name, visible))
        owner_path = frame.owner.path if frame.owner else ""
        if sym.kind is SymbolKind.CONSTANT:
            return sym.value
        if sym.kind is SymbolKind.PARAMETER:
            return self._parameter(sym, f"{owner_path}.{name}" if owner_path else name, loc)
        if sym.kind is SymbolKind.OBJECT:
            return ObjectRef(sym.value, f"{owner_path}.{name}" if owner_path else name)
        if sym.kind is SymbolKind.FUNCTION:
            is_member = frame.owner is not None and name in frame.owner.obj.symbols
            return FunctionRef(sym.value, frame.owner if is_member else None)
        raise SymbolError(f"'{name}' ({sym.kind.value}) cannot be used as a value here", loc)

    def _force(self, name: str, frame: _Frame, loc: Location | None) -> Any:
        if name in frame.env:
            return frame.env[name]
        let = frame.lets[name]
        if name in frame.evaluating:
            raise SymbolError(f"'{name}' is defined in terms of itself", loc or let.loc)
        frame.evaluating.add(name)
        value = self.eval(let.value, frame)
        frame.evaluating.discard(name)
        frame.env[name] = value
        return value

    @staticmethod
    def _needed_lets(name: str, frame: _Frame) -> list[str]:
        """The unevaluated lets that `name` needs whatever branches are taken, in body order."""
        order = {let: i for i, let in enumerate(frame.lets)}
        needed: set[str] = set()
        stack = [frame.lets[name].value]
        while stack:
            expr = stack.pop()
            if isinstance(expr, Ref):
                if expr.name in frame.lets and expr.name not in frame.env and expr.name not in needed \
                        and expr.name != name:
                    needed.add(expr.name)
                    stack.append(frame.lets[expr.name].value)
            elif isinstance(expr, If):
                stack.append(expr.cond)  # branches stay lazy
            else:
                stack.extend(expr.children())
        return sorted(needed, key=order.__getitem__)

    def _parameter(self, sym, path: str, loc) -> Value:
        data = sym.value
        if data is None:
            raise WeightError(f"parameter '{path}' has no data (declared {sym.type})", loc,
                              "load weights before compiling (dnet.load_dsl(..., weights=); "
                              "from the CLI: --weights FILE or --init seeded)")
        data = np.asarray(data)
        if sym.type is not None:
            want_shape = tuple(sym.type.shape)
            if tuple(data.shape) != want_shape:
                raise WeightError(f"parameter '{path}' has shape {tuple(data.shape)}, declared "
                                  f"{shape_str(want_shape)}", loc)
            if sym.type.dtype is not None and DType.from_numpy(data.dtype) != sym.type.dtype:
                raise WeightError(f"parameter '{path}' has dtype {DType.from_numpy(data.dtype)}, declared "
                                  f"{sym.type.dtype}", loc)
        return self.b.const(path, data)

    # -- expressions --------------------------------------------------------------------
    def eval(self, expr: Expr, frame: _Frame) -> Any:
        if isinstance(expr, Lit):
            return expr.value
        if isinstance(expr, Ref):
            return self._lookup(expr.name, frame, expr.loc)
        if isinstance(expr, TupleExpr):
            return tuple(self.eval(e, frame) for e in expr.items)
        if isinstance(expr, GetItem):
            value = self.eval(expr.value, frame)
            if not isinstance(value, tuple) or not -len(value) <= expr.index < len(value):
                raise SymbolError(f"cannot take item {expr.index} of {value!r}")
            return value[expr.index]
        if isinstance(expr, Present):
            return self._present(expr, frame)
        if isinstance(expr, If):
            return self._if(expr, frame)
        if isinstance(expr, Call):
            callee = self._resolve_callee(expr.target, frame, expr.loc)
            return self._call(callee, [self.eval(a, frame) for a in expr.args], expr.loc)
        if isinstance(expr, Apply):
            return self._apply(expr, frame)
        raise DnetError(f"cannot lower expression {expr!r}")

    def _present(self, expr: Present, frame: _Frame) -> bool:
        arg = frame.fn.arg(expr.name)
        if arg is None or not arg.optional:
            raise SymbolError(f"present({expr.name}): '{expr.name}' is not an optional argument of "
                              f"'{frame.fn.name}'", expr.loc)
        return frame.env[expr.name] is not ABSENT

    def _if(self, expr: If, frame: _Frame) -> Any:
        cond = self.eval(expr.cond, frame)
        if isinstance(cond, Value):
            return emit(self.b, "where", [cond, self.eval(expr.then, frame), self.eval(expr.orelse, frame)])
        if cond is ABSENT or not isinstance(cond, (bool, int)):
            raise SymbolError(f"condition is not a compile-time boolean or a tensor: {cond!r}", expr.loc)
        return self.eval(expr.then if cond else expr.orelse, frame)

    def _apply(self, expr: Apply, frame: _Frame) -> Any:
        args = [self.eval(a, frame) for a in expr.args]
        attrs = {k: self.eval(v, frame) for k, v in expr.attrs}
        attrs = {k: None if v is ABSENT else v for k, v in attrs.items()}  # an attribute left out is None
        for i, a in enumerate(args):
            if a is ABSENT and expr.op not in COMPOSITES:  # composites take None for what is left out
                raise SymbolError(f"{expr.op}: argument {i + 1} is an absent optional value", expr.loc,
                                  "guard it with if(present(...), ...)")
        args = [None if a is ABSENT else a for a in args]
        try:
            return self._apply_values(expr.op, args, attrs)
        except DnetError as err:
            if err.where is None or not str(err.where):
                err.where = expr.loc or Location(symbol=self.b.where)
                err.args = (err._render(),)
            elif expr.loc is not None and expr.loc.file and not err.where.file:  # point into the source text
                err.where = Location(expr.loc.file, expr.loc.line, expr.loc.column, err.where.symbol)
                err.args = (err._render(),)
            raise
        except (TypeError, ValueError, ZeroDivisionError) as err:
            raise ShapeError(f"{expr.op}: {err}", expr.loc or self.b.where) from None

    def _apply_values(self, op: str, args: list, attrs: dict) -> Any:
        if op == "dim":
            x, axis = args
            return self.b.shape(x)[axis]
        if op == "shape":
            return tuple(self.b.shape(args[0]))
        if op == "rank":
            return len(self.b.shape(args[0]))
        if op in SCALAR_OPS and all(_is_scalar(a) for a in args) and not attrs:
            return SCALAR_OPS[op](*args)
        if op in ("gt", "ge"):
            args = args[::-1]
        if op == "idiv" and any(isinstance(a, Value) and self.b.dtype(a).is_float for a in args):
            return emit(self.b, "floor", [emit(self.b, "div", args)])
        return emit(self.b, _TENSOR_ALIASES.get(op, op), args, attrs)


def _dim_fits(want: Any, got: Any, scope: SymbolTable) -> bool:
    """WILDCARD and a free dim name fit any size; a dim over one constant of `scope` fits its value."""
    if want is WILDCARD:
        return True
    if isinstance(want, Dim) and len(want.free_symbols()) == 1:
        name = next(iter(want.free_symbols()))
        sym = scope.lookup(name)
        if sym is None or sym.kind is not SymbolKind.CONSTANT:
            return True
        want = substitute(want, {name: sym.value})
    return want == got


def lower(module: ObjectModule | Object, function: str = "forward",
          inputs: Mapping[str, TensorType | Any] | None = None, output_names: Sequence[str] | None = None) -> Graph:
    """Inline `module`'s root object into one graph, with `inputs` typing the root function's arguments."""
    if isinstance(module, Object):
        module = ObjectModule(module)
    return Lowering(module).lower(function, inputs, output_names)
