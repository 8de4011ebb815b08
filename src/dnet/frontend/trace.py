"""Tracing: running a Module's Python `forward` on symbolic tensors records object IR.

While a trace runs, every operation on a `Tensor` appends a let-binding to the
function being recorded, and is also built, at once, in a shadow graph. The shadow
gives every traced value its real symbolic type, so user code can read `x.shape`,
and so a shape error points at the line of user code that caused it.
"""
from __future__ import annotations

import contextvars
import os
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from dnet.core.dtypes import DType
from dnet.core.shapes import Dim
from dnet.core.types import TensorType
from dnet.errors import DnetError, Location, ShapeError
from dnet.graph.builder import GraphBuilder, Value
from dnet.graph.opset import emit
from dnet.objects.lower import SCALAR_OPS
from dnet.objects.ir import ABSENT, Apply, Expr, Function, GetItem, Let, Lit, Ref, TupleExpr


@dataclass
class Recording:
    """The function being recorded: its let-bindings, and a counter for fresh names."""
    fn: Function
    owner_path: str = ""  # symbol path of the object whose function this is
    counter: int = 0

    def fresh(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}{self.counter}"


@dataclass
class TraceState:
    shadow: GraphBuilder = field(default_factory=GraphBuilder)
    stack: list[Recording] = field(default_factory=list)

    @property
    def current(self) -> Recording:
        return self.stack[-1]


_STATE: contextvars.ContextVar[TraceState | None] = contextvars.ContextVar("dnet_trace", default=None)


def state() -> TraceState:
    st = _STATE.get()
    if st is None:
        raise DnetError("dnet tensors only exist while a Module is traced; call dnet.compile(module, ...) "
                        "or module.trace(...)")
    return st


def tracing() -> bool:
    return _STATE.get() is not None


@contextmanager
def new_trace() -> Iterator[TraceState]:
    token = _STATE.set(TraceState())
    try:
        yield _STATE.get()
    finally:
        _STATE.reset(token)


@contextmanager
def recording(fn: Function, owner_path: str = "") -> Iterator[Recording]:
    st = state()
    rec = Recording(fn, owner_path)
    st.stack.append(rec)
    try:
        yield rec
    finally:
        st.stack.pop()


# The parts of dnet a user's call passes through on its way to an error (models are user code).
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_INTERNAL = tuple(os.path.join(_PACKAGE, part) for part in ("frontend" + os.sep, "graph" + os.sep,
                                                            "objects" + os.sep, "api.py"))


def user_location() -> Location:
    """The innermost frame of user code (outside dnet's frontend, IR layers and API), for error messages."""
    for frame in reversed(traceback.extract_stack()):
        if not os.path.abspath(frame.filename).startswith(_INTERNAL):
            return Location(frame.filename, frame.lineno)
    return Location()


class SymInt:
    """A symbolic size read from a traced tensor: an expression for the IR and a Dim for Python."""

    def __init__(self, expr: Expr, value: Dim):
        self.expr, self.value = expr, value

    def _op(self, op: str, other: Any, reverse: bool = False) -> "SymInt | int":
        ov = other.value if isinstance(other, SymInt) else other
        a, b = (ov, self.value) if reverse else (self.value, ov)
        try:
            value = SCALAR_OPS[op](a, b)
        except (ArithmeticError, TypeError) as err:  # e.g. seq // heads, which no Dim can express
            raise ShapeError(f"{op}({a}, {b}): {err}", user_location()) from None
        exprs = (to_expr(other), self.expr) if reverse else (self.expr, to_expr(other))
        return SymInt(Apply(op, exprs), value) if isinstance(value, Dim) else value

    def __add__(self, o): return self._op("add", o)
    def __radd__(self, o): return self._op("add", o, True)
    def __sub__(self, o): return self._op("sub", o)
    def __rsub__(self, o): return self._op("sub", o, True)
    def __mul__(self, o): return self._op("mul", o)
    def __rmul__(self, o): return self._op("mul", o, True)
    def __floordiv__(self, o): return self._op("idiv", o)

    def __eq__(self, other: Any) -> bool:  # structural: equal only when provably equal
        return self.value == (other.value if isinstance(other, SymInt) else other)

    def __hash__(self) -> int:
        return hash(self.value)

    def __bool__(self) -> bool:
        return True

    def __index__(self) -> int:
        raise DnetError(f"size {self.value} is symbolic; Python code cannot use it as a number",
                        user_location(), "pass it to dnet ops instead")

    def __repr__(self) -> str:
        return f"SymInt({self.value})"


def to_expr(value: Any) -> Expr:
    """The IR expression of a traced value or a Python constant."""
    if isinstance(value, (Tensor, SymInt)):
        return value.expr
    if isinstance(value, (list, tuple)):
        return TupleExpr(tuple(to_expr(v) for v in value))
    if value is None:
        return Lit(ABSENT)
    return Lit(value)


def to_shadow(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.value
    if isinstance(value, SymInt):
        return value.value
    if isinstance(value, (list, tuple)):
        return type(value)(to_shadow(v) for v in value)
    return value


class Tensor:
    """A traced tensor. Operators and methods mirror PyTorch's; see dnet.frontend.tensor_methods."""

    __array_priority__ = 1000  # numpy scalars on the left defer to our operators

    def __init__(self, expr: Expr, value: Value):
        self.expr, self.value = expr, value

    @property
    def type(self) -> TensorType:
        return state().shadow.type(self.value)

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    @property
    def shape(self) -> tuple:
        out = []
        for i, d in enumerate(self.type.shape):
            out.append(SymInt(Apply("dim", (self.expr, Lit(i))), d) if isinstance(d, Dim) else d)
        return tuple(out)

    @property
    def ndim(self) -> int:
        return len(self.type.shape)

    def size(self, axis: int | None = None):
        return self.shape if axis is None else self.shape[axis]

    def dim(self) -> int:
        return self.ndim

    def __repr__(self) -> str:
        return f"Tensor({self.type}, {self.expr})"

    def __bool__(self) -> bool:
        raise DnetError("a traced tensor has no truth value: data-dependent Python control flow cannot be "
                        "compiled", user_location(), "use dnet.functional.where")

    def _no_data(self, *_: Any) -> Any:
        raise DnetError("a traced tensor has no data while the model compiles: its values exist only when "
                        "the compiled model runs", user_location(), "keep the computation in dnet ops")

    item = numpy = tolist = __float__ = __int__ = _no_data


def record(op: str, args: Sequence[Any], attrs: dict[str, Any] | None = None, hint: str = "t") -> Any:
    """Record `op` on traced values: a let-binding in the current function and a node in the shadow."""
    st = state()
    attrs = {k: v for k, v in (attrs or {}).items()}
    try:
        value = emit(st.shadow, op, [to_shadow(a) for a in args], {k: to_shadow(v) for k, v in attrs.items()})
    except DnetError as err:
        loc = user_location()
        err.where = Location(loc.file, loc.line, symbol=st.shadow.where or None)
        err.args = (err._render(),)
        raise err.with_traceback(None) from None
    return bind(Apply(op, tuple(to_expr(a) for a in args), tuple((k, to_expr(v)) for k, v in attrs.items())),
                value, hint)


def bind(expr: Expr, value: Any, hint: str = "t") -> Any:
    """Bind `expr` to a fresh local of the current function; wrap its shadow value."""
    rec = state().current
    if isinstance(value, tuple):
        name = rec.fresh(hint)
        rec.fn.body.append(Let(name, expr))
        return tuple(Tensor(GetItem(Ref(name), i), v) for i, v in enumerate(value))
    if not isinstance(value, Value):
        return value
    name = rec.fresh(hint)
    rec.fn.body.append(Let(name, expr))
    return Tensor(Ref(name), value)

