"""Symbols and scoped symbol tables (module -> object -> function)."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, Flag, auto
from typing import Any, Iterator

from dnet.core.types import TensorType
from dnet.errors import Location, SymbolError, did_you_mean


class SymbolKind(Enum):
    CONSTANT = "constant"    # a compile-time value of an object (hidden_size = 384)
    PARAMETER = "parameter"  # a weight tensor of an object
    OBJECT = "object"        # a child object instance
    FUNCTION = "function"    # a function of an object or of the module
    TENSOR = "tensor"        # a function argument holding a tensor (S_TENSOR)
    SCALAR = "scalar"        # a function argument holding a number (S_SCALAR)
    OBJECT_ARG = "object_arg"  # a function argument holding an object (S_OBJECT)
    LOCAL = "local"          # a let-bound value inside a function


class SymbolFlag(Flag):
    NONE = 0
    EXTERNAL = auto()   # supplied from outside: by the caller (arguments) or a weight file (parameters)
    OPTIONAL = auto()   # may be absent; `present(x)` tells, branch removal prunes on it

    def __str__(self) -> str:
        if self is SymbolFlag.NONE:
            return "SYM_NONE"
        return " | ".join(f"SYM_{f.name}" for f in SymbolFlag if f in self and f is not SymbolFlag.NONE)


# Which flags mean something on which kinds of symbol.
VALID_FLAGS: dict[SymbolKind, SymbolFlag] = {
    SymbolKind.TENSOR: SymbolFlag.EXTERNAL | SymbolFlag.OPTIONAL,
    SymbolKind.SCALAR: SymbolFlag.EXTERNAL | SymbolFlag.OPTIONAL,
    SymbolKind.OBJECT_ARG: SymbolFlag.EXTERNAL | SymbolFlag.OPTIONAL,
    SymbolKind.PARAMETER: SymbolFlag.EXTERNAL | SymbolFlag.OPTIONAL,
    SymbolKind.CONSTANT: SymbolFlag.EXTERNAL,
    SymbolKind.OBJECT: SymbolFlag.NONE,
    SymbolKind.FUNCTION: SymbolFlag.NONE,
    SymbolKind.LOCAL: SymbolFlag.NONE,
}


@dataclass
class Symbol:
    name: str
    kind: SymbolKind
    flags: SymbolFlag = SymbolFlag.NONE
    type: TensorType | None = None
    value: Any = None          # constant value, parameter data, child Object, Function
    loc: Location | None = None

    def __post_init__(self) -> None:
        bad = self.flags & ~VALID_FLAGS[self.kind]
        if bad:
            raise SymbolError(f"flag {bad} means nothing on {self.kind.value} '{self.name}'", self.loc)


@dataclass
class SymbolTable:
    scope: str
    parent: "SymbolTable | None" = None
    symbols: dict[str, Symbol] = field(default_factory=dict)

    def define(self, symbol: Symbol) -> Symbol:
        old = self.symbols.get(symbol.name)
        if old is not None:
            first = f" (first defined at {old.loc})" if old.loc and str(old.loc) else ""
            raise SymbolError(f"duplicate definition of '{symbol.name}' in {self.scope}{first}", symbol.loc)
        self.symbols[symbol.name] = symbol
        return symbol

    def lookup(self, name: str) -> Symbol | None:
        table: SymbolTable | None = self
        while table is not None:
            if name in table.symbols:
                return table.symbols[name]
            table = table.parent
        return None

    def resolve(self, name: str, loc: Location | None = None) -> Symbol:
        sym = self.lookup(name)
        if sym is None:
            raise SymbolError(f"unknown symbol '{name}' in {self.scope}", loc, did_you_mean(name, self.visible()))
        return sym

    def visible(self) -> list[str]:
        names: list[str] = []
        table: SymbolTable | None = self
        while table is not None:
            names.extend(table.symbols)
            table = table.parent
        return names

    def of_kind(self, kind: SymbolKind) -> list[Symbol]:
        return [s for s in self.symbols.values() if s.kind is kind]

    def __iter__(self) -> Iterator[Symbol]:
        return iter(list(self.symbols.values()))

    def __contains__(self, name: str) -> bool:
        return name in self.symbols

    def remove(self, name: str) -> None:
        del self.symbols[name]
