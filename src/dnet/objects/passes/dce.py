"""Dead-code elimination over the object IR.

What is kept: the entry function of the root object, every function it calls
(directly, through child objects, or through an object argument that surely holds
one object: a child passed to a callee known statically), the let-bindings a kept
function's result depends on, and the constants, parameters and child objects that
a kept function names (by a reference, a call target, or a dimension of an
argument's type). An object used any other way (bound to a let, passed where the
callee is known only to lowering) keeps all its functions: only lowering can tell
which it calls. Everything else goes: other functions of the root
and of the module, dead lets, unused members, and children none of whose functions
is kept. The root object always stays.
"""
from __future__ import annotations

from functools import partial

from dnet.core.passes import Pass
from dnet.core.shapes import Dim
from dnet.core.types import TensorType
from dnet.objects.ir import Call, Expr, Function, Object, ObjectModule, Ref, walk
from dnet.objects.passes.walk import clone_module, entry_function, object_held, resolve_call, scope_of
from dnet.objects.symbols import Symbol, SymbolKind, SymbolTable


def live_lets(fn: Function) -> list[str]:
    """Names of the lets `fn`'s result depends on (lowering evaluates lets on first use)."""
    lets = fn.locals()
    args = {a.name for a in fn.args}
    live: set[str] = set()
    stack = [fn.result] if fn.result is not None else []
    while stack:
        for node in walk(stack.pop()):
            for name in _names_read(node):
                if name in lets and name not in args and name not in live:
                    live.add(name)
                    stack.append(lets[name].value)
    return [let.name for let in fn.body if let.name in live]


def _names_read(node: Expr) -> tuple[str, ...]:
    if isinstance(node, Ref):
        return (node.name,)
    if isinstance(node, Call):
        return (node.target.split(".")[0],)
    return ()


def _type_names(t: TensorType | None) -> set[str]:
    """Symbols named by the dims of a type: lowering checks them against constants of the owner."""
    if t is None:
        return set()
    return {name for d in t.shape if isinstance(d, Dim) for name in d.free_symbols()}


Bindings = dict  # object argument -> the object it surely holds (see branches.Knowledge.objects)


class _Liveness:
    """Functions reached from the entry, and the member symbols they use."""

    def __init__(self, module: ObjectModule):
        self.module = module
        self.functions: set[int] = set()
        self.visited: set[tuple] = set()          # (function, its object bindings), by id
        self.used: set[tuple[int, str]] = set()  # (id of the symbol table, name)
        self.escaped: set[int] = set()           # objects used as plain values
        self.work: list[tuple[Object | None, Function, Bindings]] = []

    def run(self, entry: Function) -> None:
        self.reach(self.module.root, entry, {})
        while self.work:
            self._visit(*self.work.pop())

    def reach(self, owner: Object | None, fn: Function, objects: Bindings) -> None:
        key = (id(fn), frozenset((name, id(obj)) for name, obj in objects.items()))
        if key not in self.visited:
            self.visited.add(key)
            self.functions.add(id(fn))
            self.work.append((owner, fn, objects))

    def _visit(self, owner: Object | None, fn: Function, objects: Bindings) -> None:
        lets = set(live_lets(fn))
        scan = _Scan(self, owner, {a.name for a in fn.args} | lets, objects)
        for arg in fn.args:
            for name in _type_names(arg.type):
                self.use(scan.scope, name)
        for let in fn.body:
            if let.name in lets:
                scan.expr(let.value)
        if fn.result is not None:
            scan.expr(fn.result)

    def use(self, scope: SymbolTable, name: str) -> Symbol | None:
        """Mark the symbol `name` resolves to from `scope` as used (and what its type names)."""
        table: SymbolTable | None = scope
        while table is not None and name not in table:
            table = table.parent
        if table is None:
            return None  # unknown: lowering reports it
        self.used.add((id(table), name))
        sym = table.symbols[name]
        if sym.kind is SymbolKind.PARAMETER:
            for dim_name in _type_names(sym.type):
                self.use(table, dim_name)
        return sym

    def escape(self, obj: Object) -> None:
        """`obj` is used as a value: lowering may call any function of it or of its children."""
        for o in obj.walk():
            if id(o) not in self.escaped:
                self.escaped.add(id(o))
                for fn in o.functions.values():
                    self.reach(o, fn, {})

    def keeps(self, table: SymbolTable, sym: Symbol) -> bool:
        if sym.kind is SymbolKind.FUNCTION:
            return id(sym.value) in self.functions
        if sym.kind is SymbolKind.OBJECT:
            return (id(table), sym.name) in self.used or self._holds_live_code(sym.value)
        return (id(table), sym.name) in self.used

    def _holds_live_code(self, obj: Object) -> bool:
        return any(id(o) in self.escaped or any(id(f) in self.functions for f in o.functions.values())
                   for o in obj.walk())


class _Scan:
    """Walks one function's live expressions: marks what they use, reaches what they call.
    An object passed to an object argument of a known callee is followed into that callee;
    an object used any other way escapes (see `_Liveness.escape`)."""

    def __init__(self, liveness: _Liveness, owner: Object | None, bound: set[str], objects: Bindings):
        self.liveness, self.owner, self.bound, self.objects = liveness, owner, bound, objects
        self.scope = scope_of(liveness.module, owner)

    def expr(self, expr: Expr) -> None:
        if isinstance(expr, Call):
            self.call(expr)
        elif isinstance(expr, Ref):
            self.ref(expr.name)
        else:
            for child in expr.children():
                self.expr(child)

    def call(self, call: Call) -> None:
        live = self.liveness
        head = call.target.split(".")[0]
        if head not in self.bound:
            live.use(self.scope, head)
        callee = resolve_call(live.module, self.owner, self.bound, call.target, self.objects)
        params = callee.fn.args if callee is not None else []
        passed: Bindings = {}
        for i, arg in enumerate(call.args):
            is_object = i < len(params) and params[i].kind is SymbolKind.OBJECT_ARG
            obj = object_held(arg, self.scope, self.bound, self.objects) if is_object else None
            if obj is not None:
                passed[params[i].name] = obj
                if arg.name not in self.objects:
                    live.use(self.scope, arg.name)
            else:
                self.expr(arg)
        if callee is not None:
            live.reach(callee.owner, callee.fn, passed)

    def ref(self, name: str) -> None:
        live = self.liveness
        if name in self.objects:
            live.escape(self.objects[name])
        elif name not in self.bound:
            sym = live.use(self.scope, name)
            if sym is not None and sym.kind is SymbolKind.OBJECT:
                live.escape(sym.value)
            elif sym is not None and sym.kind is SymbolKind.FUNCTION:  # a function passed as a value
                is_member = self.owner is not None and name in self.owner.symbols
                live.reach(self.owner if is_member else None, sym.value, {})


def _prune(table: SymbolTable, liveness: _Liveness) -> None:
    for sym in table:
        if not liveness.keeps(table, sym):
            table.remove(sym.name)
        elif sym.kind is SymbolKind.OBJECT:
            _prune(sym.value.symbols, liveness)
        elif sym.kind is SymbolKind.FUNCTION:
            fn: Function = sym.value
            kept = set(live_lets(fn))
            fn.body = [let for let in fn.body if let.name in kept]


def eliminate(module: ObjectModule, entry: str = "forward") -> ObjectModule:
    """`module` without what calling root function `entry` does not need (see the module docstring)."""
    new = clone_module(module)
    liveness = _Liveness(new)
    liveness.run(entry_function(new, entry))
    _prune(new.symbols, liveness)
    _prune(new.root.symbols, liveness)
    return new


def eliminate_dead_code_for(entry: str = "forward") -> Pass[ObjectModule]:
    """The dead-code pass keeping what root function `entry` needs."""
    return Pass("eliminate_dead_code", "object", partial(eliminate, entry=entry),
                f"drop what '{entry}' does not need: unreached functions, dead lets, unused members")


eliminate_dead_code: Pass[ObjectModule] = eliminate_dead_code_for()
