"""Object IR: objects (instances) with member symbols, and functions over expression trees.

An `Object` is one instantiation: its constants have values, its parameters have
types (and data once loaded), its children are Objects of their own, so every
instantiation keeps its own functions. A `Function` has typed arguments, a list of
let-bindings and a captured result; expressions are small frozen trees.
An `ObjectModule` is the outermost scope: free functions and the root object.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from dnet.core.types import TensorType
from dnet.errors import Location
from dnet.objects.symbols import Symbol, SymbolFlag, SymbolKind, SymbolTable


class _Absent:
    """The value of an optional argument the caller did not give."""

    def __repr__(self) -> str:
        return "ABSENT"

    def __reduce__(self):
        return "ABSENT"


ABSENT = _Absent()


# -- expressions ------------------------------------------------------------------
@dataclass(frozen=True)
class Expr:
    def children(self) -> tuple["Expr", ...]:
        return ()


@dataclass(frozen=True)
class Ref(Expr):
    """A name: an argument, a let-bound local, or a member symbol of an enclosing scope."""
    name: str
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Lit(Expr):
    """A literal: int, float, bool, str, a dtype, a symbolic dim, ABSENT."""
    value: Any


@dataclass(frozen=True)
class TupleExpr(Expr):
    items: tuple[Expr, ...]

    def children(self) -> tuple[Expr, ...]:
        return self.items


@dataclass(frozen=True)
class GetItem(Expr):
    """Element `index` of a tuple-valued expression (a function returning several values)."""
    value: Expr
    index: int

    def children(self) -> tuple[Expr, ...]:
        return (self.value,)


@dataclass(frozen=True)
class Apply(Expr):
    """An operation by name (graph op, composite, or scalar arithmetic) with keyword attributes."""
    op: str
    args: tuple[Expr, ...]
    attrs: tuple[tuple[str, Expr], ...] = ()
    loc: Location | None = field(default=None, compare=False)

    def children(self) -> tuple[Expr, ...]:
        return self.args + tuple(v for _, v in self.attrs)


@dataclass(frozen=True)
class Call(Expr):
    """Call a function: `target` names a function, a child object (its forward) or `child.method`;
    it may also be an argument that holds an object."""
    target: str
    args: tuple[Expr, ...]
    loc: Location | None = field(default=None, compare=False)

    def children(self) -> tuple[Expr, ...]:
        return self.args


@dataclass(frozen=True)
class If(Expr):
    """Conditional. A compile-time condition is removed by branch removal; a tensor one becomes `where`."""
    cond: Expr
    then: Expr
    orelse: Expr
    loc: Location | None = field(default=None, compare=False)

    def children(self) -> tuple[Expr, ...]:
        return (self.cond, self.then, self.orelse)


@dataclass(frozen=True)
class Present(Expr):
    """True where optional argument `name` was given."""
    name: str
    loc: Location | None = field(default=None, compare=False)


def walk(expr: Expr) -> Iterator[Expr]:
    """Every node of an expression tree, pre-order."""
    yield expr
    for c in expr.children():
        yield from walk(c)


# -- functions and objects ----------------------------------------------------------
@dataclass
class Argument:
    name: str
    kind: SymbolKind = SymbolKind.TENSOR
    flags: SymbolFlag = SymbolFlag.EXTERNAL
    type: TensorType | None = None
    loc: Location | None = None

    @property
    def optional(self) -> bool:
        return SymbolFlag.OPTIONAL in self.flags


@dataclass
class Let:
    name: str
    value: Expr
    loc: Location | None = None


@dataclass
class Function:
    name: str
    args: list[Argument] = field(default_factory=list)
    body: list[Let] = field(default_factory=list)
    result: Expr | None = None
    loc: Location | None = None

    def arg(self, name: str) -> Argument | None:
        return next((a for a in self.args if a.name == name), None)

    def locals(self) -> dict[str, Let]:
        return {let.name: let for let in self.body}


@dataclass
class Object:
    """One instantiation of an object class."""
    class_name: str
    name: str = ""                    # instance path, e.g. 'encoder.layer.0.attention'
    symbols: SymbolTable = None       # type: ignore[assignment]
    loc: Location | None = None

    def __post_init__(self) -> None:
        if self.symbols is None:
            self.symbols = SymbolTable(f"object {self.class_name} '{self.name or '<root>'}'")

    # member symbols, by kind
    def add_constant(self, name: str, value: Any, loc: Location | None = None) -> Symbol:
        return self.symbols.define(Symbol(name, SymbolKind.CONSTANT, value=value, loc=loc))

    def add_parameter(self, name: str, type: TensorType, data: Any = None,
                      flags: SymbolFlag = SymbolFlag.EXTERNAL, loc: Location | None = None) -> Symbol:
        return self.symbols.define(Symbol(name, SymbolKind.PARAMETER, flags, type, data, loc))

    def add_child(self, name: str, child: "Object", loc: Location | None = None) -> Symbol:
        child.symbols.parent = self.symbols.parent  # a child sees module scope, not its parent's members
        return self.symbols.define(Symbol(name, SymbolKind.OBJECT, value=child, loc=loc))

    def add_function(self, fn: Function) -> Symbol:
        return self.symbols.define(Symbol(fn.name, SymbolKind.FUNCTION, value=fn, loc=fn.loc))

    def add_or_reuse_function(self, fn: Function, stem: str = "forward") -> str:
        """The name of an existing function identical to `fn` (same arguments, body and result);
        else `fn` is added under the first free name of stem, stem_1, stem_2, ... A traced call
        recorded again with the same shapes thus reuses one function."""
        existing = self.functions
        for name, old in existing.items():
            if (old.args, old.body, old.result) == (fn.args, fn.body, fn.result):
                return name
        k, name = 0, stem
        while name in existing:
            k += 1
            name = f"{stem}_{k}"
        fn.name = name
        self.add_function(fn)
        return name

    @property
    def constants(self) -> dict[str, Any]:
        return {s.name: s.value for s in self.symbols.of_kind(SymbolKind.CONSTANT)}

    @property
    def parameters(self) -> dict[str, Symbol]:
        return {s.name: s for s in self.symbols.of_kind(SymbolKind.PARAMETER)}

    @property
    def children(self) -> dict[str, "Object"]:
        return {s.name: s.value for s in self.symbols.of_kind(SymbolKind.OBJECT)}

    @property
    def functions(self) -> dict[str, Function]:
        return {s.name: s.value for s in self.symbols.of_kind(SymbolKind.FUNCTION)}

    def walk(self) -> Iterator["Object"]:
        """This object and all its descendants, pre-order."""
        yield self
        for child in self.children.values():
            yield from child.walk()

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Symbol]]:
        """(dotted path, symbol) for every parameter of this object and its descendants."""
        for name, sym in self.parameters.items():
            yield prefix + name, sym
        for cname, child in self.children.items():
            yield from child.named_parameters(f"{prefix}{cname}.")


@dataclass
class ObjectModule:
    """The outermost scope: free functions (a standard library, helpers) and the root object.
    `entry` names the root function that lowering starts from."""
    root: Object
    symbols: SymbolTable = field(default_factory=lambda: SymbolTable("module"))
    entry: str = "forward"

    def __post_init__(self) -> None:
        for obj in self.root.walk():
            obj.symbols.parent = self.symbols

    def add_function(self, fn: Function) -> Symbol:
        return self.symbols.define(Symbol(fn.name, SymbolKind.FUNCTION, value=fn, loc=fn.loc))
