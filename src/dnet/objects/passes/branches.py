"""Branch removal: specialise functions on what their arguments hold.

What a function instance knows about an argument: whether an optional one is
present, and which object an object argument (S_OBJECT) holds. The entry function
learns it from the caller (`present`: the optional arguments the caller gives; every
other one is absent), every other function from its call sites, where an argument is
absent (a `Lit(ABSENT)`, an argument left off the end, a name known to hold nothing,
a call known to return nothing), surely present (a literal, a parameter, the result
of an operation or of a function that returns one), or a child object named directly.

A call site that knows something its callee does not calls a specialised copy,
defined beside the original and named for what it assumes, in argument order (an
object by its instance path, '/' for '.', since a call target splits on '.'):

    forward[cache=absent,mask=absent]     project_and_format[proj=q_proj,cache=present]

In a specialised copy (and in the entry, which keeps its name) `present(x)` is a
literal, an absent argument is dropped from the signature (its uses become
`Lit(ABSENT)`, the call sites stop passing it), a present one becomes required, and a
call through an object argument (`proj.position`) is resolved, so it specialises in
turn. Every `if` whose condition is a literal keeps only the branch taken, in all
functions. Originals nobody calls any more are left for dead-code elimination.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
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
    Callee, clone_function, clone_module, entry_function, module_functions, object_held, resolve_call, scope_of,
)
from dnet.objects.symbols import Symbol, SymbolFlag, SymbolKind, SymbolTable


@dataclass
class Knowledge:
    """What a function instance knows about its arguments."""
    present: dict[str, bool] = field(default_factory=dict)    # optional argument -> given?
    objects: dict[str, Object] = field(default_factory=dict)  # object argument -> the object it holds

    def __bool__(self) -> bool:
        return bool(self.present or self.objects)

    def merged(self, more: "Knowledge") -> "Knowledge":
        return Knowledge({**self.present, **more.present}, {**self.objects, **more.objects})

    def name(self, fn: Function) -> str:
        """`fn`'s name and what is known, in argument order (see the module docstring)."""
        parts = []
        for a in fn.args:
            if a.name in self.objects:
                parts.append(f"{a.name}={object_label(self.objects[a.name])}")
            elif a.name in self.present:
                parts.append(f"{a.name}={'present' if self.present[a.name] else 'absent'}")
        return f"{fn.name}[{','.join(parts)}]"

    def signature(self, fn: Function) -> list[Argument]:
        """`fn`'s arguments without the absent ones; those known present become required."""
        args = []
        for a in fn.args:
            given = self.present.get(a.name)
            if given is not False:
                args.append(replace(a, flags=a.flags & ~SymbolFlag.OPTIONAL) if given else replace(a))
        return args


def object_label(obj: Object) -> str:
    """An object's instance path as one word of a function name (a call target splits on '.')."""
    return obj.name.replace(".", "/") or "<root>"


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
    known: Knowledge
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
            return self.known.present.get(name) if self.args[name].optional else True
        if name in self.lets:
            key = (id(self.original), name)
            return None if key in seen else self.presence(self.lets[name].value, seen | {key})
        return True if self.scope.lookup(name) is not None else None  # members hold values

    def object_value(self, expr: Expr) -> Object | None:
        return object_held(expr, self.scope, self.bound, self.known.objects)

    def argument_rule(self, expr: Expr) -> Expr | None:
        """present(x) and uses of an absent x, where what x holds is known."""
        if isinstance(expr, Present) and expr.name in self.known.present:
            return Lit(self.known.present[expr.name])
        if isinstance(expr, Ref) and self.known.present.get(expr.name) is False:
            return Lit(ABSENT)
        return None


class _Specializer:
    def __init__(self, source: ObjectModule, module: ObjectModule):
        self.module = module
        # Every function of `module` (by id) -> itself, its form in `source` and what that form was
        # specialised for. Holding the function keeps it alive, so no id is reused while this runs.
        self.origin: dict[int, tuple[Function, Function, Knowledge]] = {
            id(copy): (copy, original, Knowledge())
            for (_, copy), (_, original) in zip(module_functions(module), module_functions(source))
        }
        self.specialized: set[int] = set()

    def run(self, entry: str, present: Collection[str]) -> None:
        _, original, _ = self.origin[id(entry_function(self.module, entry))]
        self._instantiate(self.module.root, original, self._entry_knowledge(original, present), entry)
        for owner, fn in module_functions(self.module):
            if id(fn) not in self.specialized:  # nothing known about its arguments: constant conditions only
                self._rewrite(fn, self._instance(owner, fn, Knowledge()))

    def _entry_knowledge(self, entry: Function, present: Collection[str]) -> Knowledge:
        optional = [a.name for a in entry.args if a.optional]
        for name in present:
            if name not in optional:
                raise SymbolError(f"'{name}' is not an optional argument of '{entry.name}'", entry.loc,
                                  did_you_mean(name, optional))
        return Knowledge({name: name in present for name in optional})

    def _instantiate(self, owner: Object | None, original: Function, known: Knowledge, name: str) -> Function:
        """Define (or replace) `name` in the owner's table as `original` specialised for `known`."""
        fn = clone_function(original)
        fn.name, fn.args = name, known.signature(original)
        table = scope_of(self.module, owner)
        if name in table:
            table.symbols[name].value = fn
        else:
            table.define(Symbol(name, SymbolKind.FUNCTION, value=fn, loc=fn.loc))
        self.origin[id(fn)] = (fn, original, known)  # before rewriting: a recursive call finds it
        self.specialized.add(id(fn))
        self._rewrite(fn, self._instance(owner, original, known))
        return fn

    def _instance(self, owner: Object | None, original: Function, known: Knowledge) -> _Instance:
        return _Instance(owner, scope_of(self.module, owner), original, known, self._callee)

    def _resolve(self, caller: _Instance, target: str) -> Callee | None:
        callee = resolve_call(self.module, caller.owner, caller.bound, target, caller.known.objects)
        return callee if callee is not None and id(callee.fn) in self.origin else None

    def _callee(self, caller: _Instance, target: str) -> _Instance | None:
        callee = self._resolve(caller, target)
        if callee is None:
            return None
        _, original, known = self.origin[id(callee.fn)]
        return self._instance(callee.owner, original, known)

    def _rewrite(self, fn: Function, instance: _Instance) -> None:
        rules: tuple[Rule, ...] = (instance.argument_rule, select_branch, partial(self._specialize_call, instance),
                                   *LITERAL_RULES)
        rewrite_function(fn, rules)

    def _specialize_call(self, caller: _Instance, expr: Expr) -> Expr | None:
        """A call that knows about an optional or object argument of its callee calls a specialised copy."""
        if not isinstance(expr, Call):
            return None
        callee = self._resolve(caller, expr.target)
        if callee is None or len(expr.args) > len(callee.fn.args):
            return None  # only lowering can tell, or lowering will report the mistake
        _, original, assumed = self.origin[id(callee.fn)]
        learned = _learn(caller, callee.fn.args, expr.args, assumed)
        if not learned:
            return None
        known = assumed.merged(learned)
        name = known.name(original)
        table = scope_of(self.module, callee.owner)
        if name not in table:  # else made earlier, for another call site (or by an earlier run)
            self._instantiate(callee.owner, original, known, name)
        args = tuple(a for a, p in zip(expr.args, callee.fn.args) if learned.present.get(p.name) is not False)
        return replace(expr, target=callee.target(name), args=args)


def _learn(caller: _Instance, params: list[Argument], args: tuple[Expr, ...], assumed: Knowledge) -> Knowledge:
    """What a call's arguments tell about the callee's optional and object arguments, beyond what
    the callee already assumes."""
    learned = Knowledge()
    for i, param in enumerate(params):
        arg = args[i] if i < len(args) else Lit(ABSENT)
        if param.kind is SymbolKind.OBJECT_ARG and param.name not in assumed.objects:
            obj = caller.object_value(arg)
            if obj is not None:
                learned.objects[param.name] = obj
        if param.optional:  # (an argument assumed present or absent is not optional any more)
            state = caller.presence(arg)
            if state is not None:
                learned.present[param.name] = state
    return learned


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
