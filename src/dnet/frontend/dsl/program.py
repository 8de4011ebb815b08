"""What a DSL program declares, before any object is instantiated.

An `ObjectClass` is a template: its constants may be configuration (`SYM_EXTERNAL`),
its parameter types and child configurations are expressions over those constants,
and its methods are function templates. `dnet.frontend.dsl.instantiate` turns a class
and a configuration into an `Object` of the object IR, one per instantiation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from dnet.errors import Location
from dnet.objects.ir import Expr, Let
from dnet.objects.symbols import SymbolFlag, SymbolKind


@dataclass(frozen=True)
class TensorDecl:
    """`Tensor(shape(d, ...), dtype, init)`: dims and dtype are expressions over constants.

    `init` is the value every element holds while no data is bound to the symbol: a
    parameter without `SYM_EXTERNAL` is that constant tensor, an optional external
    parameter missing from the weights falls back to it. A shape written as the lone
    `shape(WILDCARD)` is any shape, of any rank.
    """
    dims: tuple[Expr, ...]
    dtype: Expr
    init: int | float | bool
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ConstantDecl:
    name: str
    external: bool              # configuration, given at instantiation
    value: Expr | None          # the value, or the default of a configuration constant
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ParameterDecl:
    name: str
    flags: SymbolFlag
    type: TensorDecl
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ChildDecl:
    """`child(name, Class, k = v, ...)`, or with `count`, `children(name, Class, count, k = v, ...)`."""
    name: str
    class_name: str
    config: tuple[tuple[str, Expr], ...]
    count: Expr | None = None
    loc: Location | None = field(default=None, compare=False)
    class_loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ArgumentDecl:
    name: str
    kind: SymbolKind
    flags: SymbolFlag
    type: TensorDecl | None
    loc: Location | None = field(default=None, compare=False)

    @property
    def optional(self) -> bool:
        return SymbolFlag.OPTIONAL in self.flags


@dataclass
class FunctionDecl:
    name: str
    owner: str | None           # the object class of a method; None for a module function
    args: list[ArgumentDecl] = field(default_factory=list)
    lets: list[Let] = field(default_factory=list)
    result: Expr | None = None
    loc: Location | None = field(default=None, compare=False)

    def arg(self, name: str) -> ArgumentDecl | None:
        return next((a for a in self.args if a.name == name), None)

    @property
    def required(self) -> int:
        return sum(1 for a in self.args if not a.optional)


@dataclass
class ObjectClass:
    name: str
    loc: Location | None = field(default=None, compare=False)
    constants: dict[str, ConstantDecl] = field(default_factory=dict)
    parameters: dict[str, ParameterDecl] = field(default_factory=dict)
    children: dict[str, ChildDecl] = field(default_factory=dict)
    methods: dict[str, FunctionDecl] = field(default_factory=dict)

    def member_loc(self, name: str) -> Location | None:
        for table in (self.constants, self.parameters, self.children, self.methods):
            if name in table:
                return table[name].loc
        return None

    def members(self) -> list[str]:
        return [*self.constants, *self.parameters, *self.children, *self.methods]


@dataclass(frozen=True)
class ModelDecl:
    """`model(Class, k = v, ...)`: the object a file builds when none is named."""
    class_name: str
    config: tuple[tuple[str, Expr], ...]
    loc: Location | None = field(default=None, compare=False)


@dataclass
class Program:
    classes: dict[str, ObjectClass] = field(default_factory=dict)
    functions: dict[str, FunctionDecl] = field(default_factory=dict)
    dims: dict[str, Location | None] = field(default_factory=dict)
    model: ModelDecl | None = None
    files: list[str] = field(default_factory=list)
