"""Module-level helpers the passes share: copying a module, listing its functions,
and resolving a call target the way lowering will.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

from dnet.errors import SymbolError, did_you_mean
from dnet.objects.ir import Expr, Function, Object, ObjectModule, Ref
from dnet.objects.symbols import SymbolKind, SymbolTable


def clone_function(fn: Function) -> Function:
    """A copy whose argument and let lists can change freely (expressions are frozen, so shared)."""
    return Function(fn.name, [replace(a) for a in fn.args], [replace(let) for let in fn.body], fn.result, fn.loc)


def _clone_table(table: SymbolTable, into: SymbolTable) -> SymbolTable:
    for sym in table:
        value = sym.value
        if sym.kind is SymbolKind.OBJECT:
            value = _clone_object(value)
        elif sym.kind is SymbolKind.FUNCTION:
            value = clone_function(value)
        into.define(replace(sym, value=value))  # constant values and parameter data are shared
    return into


def _clone_object(obj: Object) -> Object:
    new = Object(obj.class_name, obj.name, loc=obj.loc)
    _clone_table(obj.symbols, new.symbols)
    return new


def clone_module(module: ObjectModule) -> ObjectModule:
    """A copy a pass may change without touching `module`; weights are shared, not copied."""
    symbols = _clone_table(module.symbols, SymbolTable(module.symbols.scope))
    new = ObjectModule(_clone_object(module.root), symbols)
    for key, value in vars(module).items():  # what a frontend attached (trace_module's entry, shadow)
        if key not in ("root", "symbols"):
            setattr(new, key, value)
    return new


def module_functions(module: ObjectModule) -> list[tuple[Object | None, Function]]:
    """(owner, function) for every function: module-level ones (owner None), then each object's, pre-order."""
    found: list[tuple[Object | None, Function]] = [(None, fn) for fn in _functions(module.symbols)]
    for obj in module.root.walk():
        found.extend((obj, fn) for fn in _functions(obj.symbols))
    return found


def _functions(table: SymbolTable) -> list[Function]:
    return [s.value for s in table.of_kind(SymbolKind.FUNCTION)]


def entry_function(module: ObjectModule, entry: str) -> Function:
    """Root function `entry`, or a SymbolError naming the closest one."""
    functions = module.root.functions
    if entry not in functions:
        raise SymbolError(f"object {module.root.class_name} has no function '{entry}'", module.root.loc,
                          did_you_mean(entry, functions))
    return functions[entry]


def scope_of(module: ObjectModule, owner: Object | None) -> SymbolTable:
    """The table a function's free names are looked up in (it chains to module scope)."""
    return owner.symbols if owner is not None else module.symbols


def object_held(expr: Expr, scope: SymbolTable, bound: set[str], objects: Mapping[str, Object]) -> Object | None:
    """The object `expr` surely holds in a function whose arguments and lets are `bound` and whose
    object arguments `objects` are known: a child named directly, or such an argument."""
    if not isinstance(expr, Ref):
        return None
    if expr.name in objects:
        return objects[expr.name]
    sym = None if expr.name in bound else scope.lookup(expr.name)
    return sym.value if sym is not None and sym.kind is SymbolKind.OBJECT else None


@dataclass(frozen=True)
class Callee:
    """What a call target names: a function, its owner (None at module scope), and the
    object path written in the target before the function name ('' when there is none)."""
    owner: Object | None
    fn: Function
    prefix: str

    def target(self, name: str) -> str:
        """The call target that names function `name` of the same owner."""
        return f"{self.prefix}.{name}" if self.prefix else name


def resolve_call(module: ObjectModule, owner: Object | None, bound: set[str], target: str,
                 objects: Mapping[str, Object] | None = None) -> Callee | None:
    """The function `target` calls from a function of `owner` whose arguments and lets are `bound`,
    following the rules of `Lowering._resolve_callee`; `objects` are the object arguments known to
    hold one object. None where only lowering can tell (the target starts at another argument or a
    local holding an object) or where lowering would fail."""
    head, *rest = target.split(".")
    if objects and head in objects:
        return _method(objects[head], head, rest)
    if head in bound:
        return None
    sym = scope_of(module, owner).lookup(head)
    if sym is None:
        return None
    if sym.kind is SymbolKind.FUNCTION:
        is_member = owner is not None and head in owner.symbols
        return None if rest else Callee(owner if is_member else None, sym.value, "")
    return _method(sym.value, head, rest) if sym.kind is SymbolKind.OBJECT else None


def _method(obj: Object, head: str, rest: list[str]) -> Callee | None:
    """`head.rest...`, starting at object `obj`: child objects, then a function (`forward` if none is named)."""
    for i, part in enumerate(rest):
        if part in obj.children:
            obj = obj.children[part]
        elif i == len(rest) - 1:
            fn = obj.functions.get(part)
            return Callee(obj, fn, ".".join([head, *rest[:-1]])) if fn else None
        else:
            return None
    fn = obj.functions.get("forward")
    return Callee(obj, fn, ".".join([head, *rest])) if fn else None
