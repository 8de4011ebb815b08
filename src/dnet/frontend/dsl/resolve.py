"""Name resolution over a whole Program, before any instantiation.

Every name a function body uses must be one of its arguments or lets, a member of
its object class, or a module function; every `call` target must lead to a function
whose argument count fits; every `present(x)` must name an optional argument; every
child's class must exist. Errors carry the location of the offending name and the
closest visible name.
"""
from __future__ import annotations

from dnet.errors import Location, SymbolError, did_you_mean
from dnet.frontend.dsl.program import FunctionDecl, ObjectClass, Program
from dnet.objects.ir import Call, Expr, Present, Ref, walk
from dnet.objects.symbols import SymbolKind


def resolve_program(program: Program) -> None:
    for cls in program.classes.values():
        for child in cls.children.values():
            if child.class_name not in program.classes:
                raise SymbolError(f"child '{child.name}' of object {cls.name} has unknown class '{child.class_name}'",
                                  child.class_loc, did_you_mean(child.class_name, program.classes))
    for fn in program.functions.values():
        _resolve_function(program, None, fn)
    for cls in program.classes.values():
        for fn in cls.methods.values():
            _resolve_function(program, cls, fn)


def _resolve_function(program: Program, cls: ObjectClass | None, fn: FunctionDecl) -> None:
    local = {a.name for a in fn.args} | {let.name for let in fn.lets}
    visible = [*local, *(cls.members() if cls else ()), *program.functions]
    for expr in expressions(fn):
        for node in walk(expr):
            if isinstance(node, Ref) and node.name not in visible:
                raise SymbolError(f"unknown symbol '{node.name}' in function '{fn.name}'", node.loc,
                                  _unknown_hint(program, node.name, visible))
            elif isinstance(node, Present):
                _check_present(fn, node)
            elif isinstance(node, Call):
                _check_call(program, cls, fn, node, visible)


def _unknown_hint(program: Program, name: str, visible: list[str]) -> str | None:
    if name in program.dims:
        return f"'{name}' is a dimension name; use dim(x, axis) for a tensor's size"
    if name in program.classes:
        return f"'{name}' is an object class; declare child(name, {name}, ...) and use the child"
    return did_you_mean(name, visible)


def _check_present(fn: FunctionDecl, node: Present) -> None:
    arg = fn.arg(node.name)
    if arg is None or not arg.optional:
        what = "a required argument" if arg else "not an argument"
        raise SymbolError(f"present({node.name}): '{node.name}' is {what} of '{fn.name}'", node.loc,
                          "present() takes an argument declared SYM_OPTIONAL"
                          if arg else did_you_mean(node.name, [a.name for a in fn.args if a.optional]))


def _check_call(program: Program, cls: ObjectClass | None, fn: FunctionDecl, call: Call, visible: list[str]) -> None:
    head, *rest = call.target.split(".")
    arg = fn.arg(head)
    if arg is not None:
        if arg.kind is not SymbolKind.OBJECT_ARG:
            raise SymbolError(f"'{head}' is a {arg.kind.value} argument; only S_OBJECT arguments can be called",
                              call.loc)
        return  # which object it holds is known when lowering
    if head not in visible or any(let.name == head for let in fn.lets):
        raise SymbolError(f"cannot call '{call.target}': '{head}' is not a function or an object in "
                          f"'{fn.name}'", call.loc, _unknown_hint(program, head, visible))
    callee = _callee(program, cls, head, rest, call)
    if callee is not None:
        check_arity(callee, len(call.args), call.target, call.loc)


def _callee(program: Program, cls: ObjectClass | None, head: str, rest: list[str], call: Call
            ) -> FunctionDecl | None:
    """The function a call target leads to, walking children and methods as lowering will."""
    if cls is not None and head in cls.methods and not rest:
        return cls.methods[head]
    if cls is None or head not in cls.children:
        if rest or head not in program.functions:
            raise SymbolError(f"'{call.target}' is not callable", call.loc,
                              "call a function, a child object or child.method")
        return program.functions[head]
    child = cls.children[head]
    here, is_list = program.classes[child.class_name], child.count is not None
    for i, part in enumerate(rest):
        if is_list and part.isdigit():
            is_list = False
        elif not is_list and part in here.children:
            child = here.children[part]
            here, is_list = program.classes[child.class_name], child.count is not None
        elif not is_list and i == len(rest) - 1 and part in here.methods:
            return here.methods[part]
        else:
            options = [*here.children, *here.methods] if not is_list else ["0", "1", "..."]
            raise SymbolError(f"'{'.'.join([head, *rest[:i + 1]])}' names nothing in object {here.name}",
                              call.loc, did_you_mean(part, options))
    if "forward" not in here.methods:
        raise SymbolError(f"object {here.name} has no forward to call", call.loc,
                          did_you_mean("forward", here.methods) or "call child.method instead")
    return here.methods["forward"]


def check_arity(fn: FunctionDecl, given: int, target: str, loc: Location | None) -> None:
    if given > len(fn.args):
        raise SymbolError(f"'{target}' takes {len(fn.args)} argument(s), got {given}", loc,
                          "arguments are " + ", ".join(a.name for a in fn.args) if fn.args else None)
    if given < fn.required:
        missing = [a.name for a in fn.args[given:] if not a.optional]
        raise SymbolError(f"'{target}' is missing required argument(s) {', '.join(missing)}", loc)


def expressions(fn: FunctionDecl) -> list[Expr]:
    return [let.value for let in fn.lets] + ([fn.result] if fn.result is not None else [])
