"""Branch removal: specialise functions on which optional arguments are present.

What is known about an optional argument of one function instance is whether it is
present: the entry function learns it from the caller (`present`: the optional
arguments the caller gives; every other one is absent), every other function from its
call sites, where an argument is `absent` (a `Lit(ABSENT)`, an argument left off the
end, a name known to hold nothing) or surely present (a literal, a parameter, the
result of an operation, ...).

A call site that knows something about an optional argument of its callee calls a
specialised copy instead, defined beside the original and named for what it assumes,
arguments in declaration order:

    forward[cache=absent,mask=absent]      project_and_format[cache=present]

In a specialised copy (and in the entry, which keeps its name) `present(x)` is a
literal, an absent argument is dropped from the signature (its uses become
`Lit(ABSENT)`, the call sites stop passing it) and a present one becomes required.
Then every `if` whose condition is a literal keeps only the branch taken, in all
functions. Originals nobody calls any more are left for dead-code elimination.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Collection

from dnet.core.passes import Pass
from dnet.errors import SymbolError, did_you_mean
from dnet.objects.ir import (
    ABSENT, Apply, Argument, Call, Expr, Function, If, Lit, Object, ObjectModule, Present, Ref, TupleExpr,
)
from dnet.objects.passes.fold import LITERAL_RULES
from dnet.objects.passes.rewrite import Rule, rewrite_function
from dnet.objects.passes.walk import (
    Callee, clone_function, clone_module, entry_function, module_functions, resolve_call, scope_of,
)
from dnet.objects.symbols import Symbol, SymbolFlag, SymbolKind, SymbolTable


def specialization_name(fn: Function, known: dict[str, bool]) -> str:
    """`forward[cache=absent,mask=present]`: `fn`'s name and what is known, in argument order."""
    parts = [f"{a.name}={'present' if known[a.name] else 'absent'}" for a in fn.args if a.name in known]
    return f"{fn.name}[{','.join(parts)}]"


def select_branch(expr: Expr) -> Expr | None:
    """if(true, a, b) -> a: a condition lowering would accept as a compile-time boolean."""
    if isinstance(expr, If) and isinstance(expr.cond, Lit) and isinstance(expr.cond.value, (bool, int)):
        return expr.then if expr.cond.value else expr.orelse
    return None


@dataclass
class _Instance:
    """One function as it is being specialised: its original form and what is known."""
    owner: Object | None
    scope: SymbolTable
    original: Function
    known: dict[str, bool]  # optional argument -> present?
    callee: Callable[["_Instance", str], "_Instance | None"]  # what a call target names, where that is static

    def __post_init__(self) -> None:
        self.args = {a.name: a for a in self.original.args}
        self.lets = self.original.locals()
        self.bound = set(self.args) | set(self.lets)

    def presence(self, expr: Expr, seen: frozenset = frozenset()) -> bool | None:
        """Whether `expr` surely holds a value (True), surely is ABSENT (False), or None.
        `seen`: the lets and functions being looked through, so a cycle answers None."""
        if isinstance(expr, Lit):
            return expr.value is not ABSENT
        if isinstance(expr, (Apply, TupleExpr, Present)):
            return True  # lowering never gives ABSENT for these
        if isinstance(expr, If):
            then, orelse = self.presence(expr.then, seen), self.presence(expr.orelse, seen)
            return then if then == orelse else None
        if isinstance(expr, Ref):
            return self._name_presence(expr.name, seen)
        if isinstance(expr, Call):
            callee = self.callee(self, expr.target)
            if callee is None or id(callee.original) in seen or callee.original.result is None:
                return None
            return callee.presence(callee.original.result, seen | {id(callee.original)})
        return None  # an item of a tuple may be an absent argument

    def _name_presence(self, name: str, seen: frozenset) -> bool | None:
        if name in self.args:
            return self.known.get(name) if self.args[name].optional else True
        if name in self.lets:
            key = (id(self.original), name)
            return None if key in seen else self.presence(self.lets[name].value, seen | {key})
        return True if self.scope.lookup(name) is not None else None  # members hold values

    def argument_rule(self, expr: Expr) -> Expr | None:
        """present(x) and uses of an absent x, where what x holds is known."""
        if isinstance(expr, Present) and expr.name in self.known:
            return Lit(self.known[expr.name])
        if isinstance(expr, Ref) and self.known.get(expr.name) is False:
            return Lit(ABSENT)
        return None


class _Specializer:
    def __init__(self, source: ObjectModule, module: ObjectModule):
        self.module = module
        # Every function of `module` (by id) -> itself, its form in `source` and what that form was
        # specialised for. Holding the function keeps it alive, so no id is reused while this runs.
        self.origin: dict[int, tuple[Function, Function, dict[str, bool]]] = {
            id(copy): (copy, original, {})
            for (_, copy), (_, original) in zip(module_functions(module), module_functions(source))
        }
        self.specialized: set[int] = set()

    def run(self, entry: str, present: Collection[str]) -> None:
        _, original, _ = self.origin[id(entry_function(self.module, entry))]
        self._instantiate(self.module.root, original, self._entry_knowledge(original, present), entry)
        for owner, fn in module_functions(self.module):
            if id(fn) not in self.specialized:  # nothing known about its arguments: constant conditions only
                self._rewrite(fn, self._instance(owner, fn, {}))

    def _entry_knowledge(self, entry: Function, present: Collection[str]) -> dict[str, bool]:
        optional = [a.name for a in entry.args if a.optional]
        for name in present:
            if name not in optional:
                raise SymbolError(f"'{name}' is not an optional argument of '{entry.name}'", entry.loc,
                                  did_you_mean(name, optional))
        return {name: name in present for name in optional}

    def _instantiate(self, owner: Object | None, original: Function, known: dict[str, bool], name: str) -> Function:
        """Define (or replace) `name` in the owner's table as `original` specialised for `known`."""
        fn = clone_function(original)
        fn.name = name
        fn.args = [_assume(a, known) for a in fn.args if known.get(a.name) is not False]
        table = scope_of(self.module, owner)
        if name in table:
            table.symbols[name].value = fn
        else:
            table.define(Symbol(name, SymbolKind.FUNCTION, value=fn, loc=fn.loc))
        self.origin[id(fn)] = (fn, original, known)  # before rewriting: a recursive call finds it
        self.specialized.add(id(fn))
        self._rewrite(fn, self._instance(owner, original, known))
        return fn

    def _instance(self, owner: Object | None, original: Function, known: dict[str, bool]) -> _Instance:
        return _Instance(owner, scope_of(self.module, owner), original, known, self._callee)

    def _callee(self, caller: _Instance, target: str) -> _Instance | None:
        callee = resolve_call(self.module, caller.owner, caller.bound, target)
        if callee is None or id(callee.fn) not in self.origin:
            return None
        _, original, known = self.origin[id(callee.fn)]
        return self._instance(callee.owner, original, known)

    def _rewrite(self, fn: Function, instance: _Instance) -> None:
        rules: tuple[Rule, ...] = (instance.argument_rule, select_branch, partial(self._specialize_call, instance),
                                   *LITERAL_RULES)
        rewrite_function(fn, rules)

    def _specialize_call(self, caller: _Instance, expr: Expr) -> Expr | None:
        """A call that knows about an optional argument of its callee calls a specialised copy."""
        if not isinstance(expr, Call):
            return None
        callee = resolve_call(self.module, caller.owner, caller.bound, expr.target)
        if callee is None or len(expr.args) > len(callee.fn.args) or id(callee.fn) not in self.origin:
            return None  # only lowering can tell, or lowering will report the mistake
        learned = {}
        for i, param in enumerate(callee.fn.args):
            if param.optional:
                state = caller.presence(expr.args[i]) if i < len(expr.args) else False
                if state is not None:
                    learned[param.name] = state
        if not learned:
            return None
        spec = self._specialization(callee, learned)
        args = tuple(a for a, p in zip(expr.args, callee.fn.args) if learned.get(p.name) is not False)
        return replace(expr, target=callee.target(spec.name), args=args)

    def _specialization(self, callee: Callee, learned: dict[str, bool]) -> Function:
        _, original, assumed = self.origin[id(callee.fn)]
        known = {**assumed, **learned}
        name = specialization_name(original, known)
        table = scope_of(self.module, callee.owner)
        if name in table:
            return table.symbols[name].value  # made earlier, for another call site (or another run)
        return self._instantiate(callee.owner, original, known, name)


def _assume(arg: Argument, known: dict[str, bool]) -> Argument:
    """A copy of `arg`; an optional argument known to be present becomes required."""
    if known.get(arg.name):
        return replace(arg, flags=arg.flags & ~SymbolFlag.OPTIONAL)
    return replace(arg)


def specialize(module: ObjectModule, entry: str = "forward", present: Collection[str] | None = None) -> ObjectModule:
    """`module` with branches removed for calling `entry` with the optional arguments `present`
    (None: the caller gives no optional argument)."""
    new = clone_module(module)
    _Specializer(module, new).run(entry, frozenset(present or ()))
    return new


def remove_branches_for(entry: str = "forward", present: Collection[str] | None = None) -> Pass[ObjectModule]:
    """The branch-removal pass for calling root function `entry` with optional arguments `present`."""
    return Pass("remove_branches", "object", partial(specialize, entry=entry, present=present),
                f"specialise '{entry}' and its callees on the optional arguments given "
                f"({', '.join(sorted(present or ())) or 'none'}), drop constant conditions")


remove_branches: Pass[ObjectModule] = remove_branches_for()
