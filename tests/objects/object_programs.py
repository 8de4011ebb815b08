"""Random small object programs for property tests of the object-level passes.

A program is a root object with constants, a weight, two `Leaf` children, a second
function `helper` and module-level functions `mix` and `route` (which calls the child
object it is given); every function takes a tensor `x` and an optional tensor, and
its body is a list of random lets (some dead) over:
element-wise arithmetic, matmul with a weight, scalar arithmetic on constants, lets
and literals, `if` on constant conditions and on `present(...)`, and calls to the
children and the functions that pass the optional argument on, pass `absent`, leave
it off or pass a tensor.
All tensors are f32 (2, 3), so any two combine.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from hypothesis import strategies as st

from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.objects import (
    ABSENT, Apply, Argument, Call, Expr, Function, If, Let, Lit, Object, ObjectModule, Present, Ref, SymbolFlag,
    SymbolKind,
)

SHAPE = (2, 3)
TYPE = TensorType(SHAPE, DType.F32)
OPTIONAL = SymbolFlag.EXTERNAL | SymbolFlag.OPTIONAL


@dataclass(frozen=True)
class Scope:
    """The names a function body may use."""
    optional: str                       # its optional tensor argument
    scalars: tuple[str, ...] = ()       # integer constants (and scalar lets) visible to it
    flags: tuple[str, ...] = ()         # boolean constants visible to it
    weight: str | None = None           # a (3, 3) parameter
    callees: tuple[str, ...] = ()       # call targets taking (tensor, optional tensor)


def _names(names: tuple[str, ...]) -> list[st.SearchStrategy[Expr]]:
    return [st.sampled_from(names).map(Ref)] if names else []


@lru_cache(maxsize=None)  # building a recursive strategy costs far more than drawing from it
def scalar_exprs(scope: Scope) -> st.SearchStrategy[Expr]:
    leaves = st.one_of(st.integers(-3, 4).map(Lit), *_names(scope.scalars))
    return st.recursive(leaves, lambda inner: st.one_of(
        st.builds(lambda op, a, b: Apply(op, (a, b)), st.sampled_from(["add", "sub", "mul", "max", "min"]),
                  inner, inner),
        st.builds(lambda a, k: Apply("idiv", (a, Lit(k))), inner, st.integers(1, 3)),
    ), max_leaves=4)


@lru_cache(maxsize=None)
def condition_exprs(scope: Scope) -> st.SearchStrategy[Expr]:
    scalar = scalar_exprs(scope)
    leaves = st.one_of(
        st.booleans().map(Lit), *_names(scope.flags), st.just(Present(scope.optional)),
        st.builds(lambda op, a, b: Apply(op, (a, b)), st.sampled_from(["lt", "eq", "ge"]), scalar, scalar),
    )
    return st.recursive(leaves, lambda inner: st.one_of(
        inner.map(lambda c: Apply("not", (c,))),
        st.builds(lambda op, a, b: Apply(op, (a, b)), st.sampled_from(["and", "or"]), inner, inner),
    ), max_leaves=3)


CHILDREN = ("a", "b")


def _call(target: str, x: Expr, rest: tuple[Expr, ...], child: str) -> Call:
    """A call of `target` on (x, rest...); `route` also takes the child object to call through."""
    return Call(target, (Ref(child), x, *rest) if target == "route" else (x, *rest))


@lru_cache(maxsize=None)
def _passed(scope: Scope, names: tuple[str, ...]) -> st.SearchStrategy[tuple[Expr, ...]]:
    """What a call gives for its callee's optional argument: ours, `absent`, nothing, or a tensor."""
    return st.one_of(st.just((Ref(scope.optional),)), st.just((Lit(ABSENT),)), st.just(()),
                     st.sampled_from(names).map(lambda n: (Ref(n),)))


@lru_cache(maxsize=None)
def tensor_exprs(scope: Scope, names: tuple[str, ...]) -> st.SearchStrategy[Expr]:
    """Tensor-valued expressions over the tensors `names` (the argument and earlier lets)."""
    opt = Ref(scope.optional)

    def extend(inner: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
        options = [
            st.builds(lambda op, a, b: Apply(op, (a, b)), st.sampled_from(["add", "sub", "mul"]), inner, inner),
            st.builds(lambda a, s: Apply("mul", (a, s)), inner, scalar_exprs(scope)),
            inner.map(lambda a: Apply("tanh", (a,))),
            st.builds(If, condition_exprs(scope), inner, inner),
            st.builds(lambda a, b: If(Present(scope.optional), Apply("add", (a, opt)), b), inner, inner),
        ]
        if scope.weight:
            options.append(inner.map(lambda a: Apply("matmul", (a, Ref(scope.weight)))))
        if scope.callees:
            options.append(st.builds(_call, st.sampled_from(scope.callees), inner, _passed(scope, names),
                                     st.sampled_from(CHILDREN)))
        return st.one_of(options)

    return st.recursive(st.sampled_from(names).map(Ref), extend, max_leaves=5)


@st.composite
def function_bodies(draw, scope: Scope, name: str, objects: tuple[str, ...] = ()) -> Function:
    """A function of (objects..., x, optional) whose body is random lets and a result."""
    names: tuple[str, ...] = ("x",)
    body = []
    for i in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["scalar", "tensor", "call"] if scope.callees else ["scalar", "tensor"]))
        if kind == "scalar":
            body.append(Let(f"s{i}", draw(scalar_exprs(scope))))
            scope = replace(scope, scalars=scope.scalars + (f"s{i}",))
            continue
        value = draw(tensor_exprs(scope, names))
        if kind == "call":  # calls get a let of their own: nested in expressions they would be rare
            value = _call(draw(st.sampled_from(scope.callees)), value, draw(_passed(scope, names)),
                          draw(st.sampled_from(CHILDREN)))
        body.append(Let(f"t{i}", value))
        names += (f"t{i}",)
    result = draw(tensor_exprs(scope, names))
    if len(names) > 1 and draw(st.booleans()):  # else most lets would be dead
        result = Apply("add", (result, Ref(names[-1])))
    args = [*(Argument(o, SymbolKind.OBJECT_ARG) for o in objects),
            Argument("x", SymbolKind.TENSOR, SymbolFlag.EXTERNAL, TYPE),
            Argument(scope.optional, SymbolKind.TENSOR, OPTIONAL, TYPE)]
    return Function(name, args, body, result)


def _weight(rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal((3, 3)) / 3).astype(np.float32)


@st.composite
def programs(draw) -> ObjectModule:
    """Root(c0, c1, flag, k, on, w) with children a, b: Leaf(k, on, w); root functions forward and
    helper; module-level functions mix and route(p: object, ...). Call graph: forward -> helper, mix,
    route, a, b; helper -> a, b; route -> p (a or b, as forward passes)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    root = Object("Root")
    for name in ("c0", "c1", "k"):
        root.add_constant(name, draw(st.integers(1, 4)))
    root.add_constant("flag", draw(st.booleans()))
    root.add_constant("on", draw(st.booleans()))
    root.add_parameter("w", TensorType((3, 3), DType.F32), _weight(rng))
    for child in ("a", "b"):
        leaf = Object("Leaf", child)
        leaf.add_constant("k", draw(st.integers(0, 3)))
        leaf.add_constant("on", draw(st.booleans()))
        leaf.add_parameter("w", TensorType((3, 3), DType.F32), _weight(rng))
        leaf.add_function(draw(function_bodies(Scope("m", ("k",), ("on",), "w"), "forward")))
        root.add_child(child, leaf)
    root_scope = Scope("m", ("c0", "c1"), ("flag",), "w", ("a", "b.forward", "helper", "mix", "route"))
    root.add_function(draw(function_bodies(root_scope, "forward")))
    root.add_function(draw(function_bodies(Scope("y", ("k",), ("on",), "w", ("a", "b.forward")), "helper")))
    module = ObjectModule(root)
    module.add_function(draw(function_bodies(Scope("y"), "mix")))
    module.add_function(draw(function_bodies(Scope("y", callees=("p", "p.forward")), "route", ("p",))))
    return module
