"""Syntax tree -> Program: what each top-level and member form declares.

Top level:  import("file.dnet");  dims(batch, seq);  object(Name, { members });
            function(name, { body });  method(Class, { body });  model(Class, k = v, ...);
Members:    constant(...);  parameter(...);  child(...);  children(...);
Bodies:     fn_argument(...);  let(name, expr);  capture(fn, expr);
Every mistake raises a dnet error at the offending text, naming the closest known form.
"""
from __future__ import annotations

from typing import Callable

from dnet.errors import Location, ParseError, SymbolError, did_you_mean
from dnet.frontend.dsl.expressions import expect_args, expect_name, to_expr
from dnet.frontend.dsl.program import (
    ArgumentDecl, ChildDecl, ConstantDecl, FunctionDecl, ModelDecl, ObjectClass, ParameterDecl, Program, TensorDecl,
)
from dnet.frontend.dsl.syntax import Block, Form, Keyword, Name, Node, Number, Source, String, Union_, describe
from dnet.objects.ir import Let
from dnet.objects.symbols import VALID_FLAGS, SymbolFlag, SymbolKind

TOP_LEVEL_FORMS = ("import", "dims", "object", "function", "model")
MEMBER_FORMS = ("constant", "parameter", "child", "children")
BODY_FORMS = ("fn_argument", "let", "capture")
KINDS = {"S_TENSOR": SymbolKind.TENSOR, "S_SCALAR": SymbolKind.SCALAR, "S_OBJECT": SymbolKind.OBJECT_ARG}
FLAGS = {"SYM_NONE": SymbolFlag.NONE, "SYM_EXTERNAL": SymbolFlag.EXTERNAL, "SYM_OPTIONAL": SymbolFlag.OPTIONAL}

Importer = Callable[[str, Location], None]


class Analyzer:
    """Adds the declarations of one source file after another to a Program."""

    def __init__(self, program: Program, importer: Importer):
        self.program = program
        self.importer = importer

    # -- top level -------------------------------------------------------------------------
    def add(self, source: Source) -> None:
        self.program.files.append(source.file)
        for stmt in source.stmts:
            handler = {"import": self._import, "dims": self._dims, "object": self._object,
                       "function": self._function, "model": self._model}.get(stmt.head)
            if handler is not None:
                handler(stmt)
            elif self._is_method(stmt):
                self._method(stmt)
            else:
                raise ParseError(f"'{stmt.head}(...)' cannot stand at the top level of a file", stmt.loc,
                                 _misplaced_hint(stmt.head))

    def _is_method(self, stmt: Form) -> bool:
        """`NAME(Class, { ... })`, unless Class is unknown and NAME is a misspelt top-level form."""
        if len(stmt.positional) != 2 or not isinstance(stmt.positional[1], Block):
            return False
        owner = stmt.positional[0]
        known = isinstance(owner, Name) and owner.text in self.program.classes
        return known or did_you_mean(stmt.head, TOP_LEVEL_FORMS) is None

    def _import(self, stmt: Form) -> None:
        (path,) = expect_args(stmt, 1, 1)
        if not isinstance(path, String):
            raise ParseError(f"import needs a file name in quotes, got '{describe(path)}'", stmt.loc)
        self.importer(path.value, path.loc)

    def _dims(self, stmt: Form) -> None:
        for node in expect_args(stmt, 1, 1 << 30):
            name = expect_name(node, "a dimension name")
            if name.text in self.program.dims:
                continue  # files may each declare the dims they use
            self._declare_global(name.text, name.loc)
            self.program.dims[name.text] = name.loc

    def _object(self, stmt: Form) -> None:
        name, block = expect_args(stmt, 2, 2, " (Name, { members })")
        name = expect_name(name, "an object class name")
        block = _expect_block(block)
        self._declare_global(name.text, name.loc)
        cls = ObjectClass(name.text, name.loc)
        self.program.classes[name.text] = cls
        for member in block.stmts:
            self._member(cls, member)

    def _function(self, stmt: Form) -> None:
        name, block = expect_args(stmt, 2, 2, " (name, { body })")
        name = expect_name(name, "a function name")
        self._declare_global(name.text, name.loc)
        self.program.functions[name.text] = self._body(FunctionDecl(name.text, None, loc=name.loc), _expect_block(block))

    def _method(self, stmt: Form) -> None:
        owner, block = stmt.positional
        owner = expect_name(owner, "the object class the method belongs to")
        cls = self.program.classes.get(owner.text)
        if cls is None:
            raise SymbolError(f"method '{stmt.head}' of unknown object class '{owner.text}'", owner.loc,
                              did_you_mean(owner.text, self.program.classes) or "declare object(...) first")
        _check_new_member(cls, stmt.head, stmt.loc)
        cls.methods[stmt.head] = self._body(FunctionDecl(stmt.head, cls.name, loc=stmt.loc), block)

    def _model(self, stmt: Form) -> None:
        if self.program.model is not None:
            raise SymbolError("a second model(...) declaration", stmt.loc,
                              f"the first is at {self.program.model.loc}")
        (cls,) = expect_args(stmt, 1, 1, " (Class, k = v, ...)", keywords=True)
        cls = expect_name(cls, "an object class name")
        self.program.model = ModelDecl(cls.text, _config(stmt.keywords), cls.loc)

    def _declare_global(self, name: str, loc: Location) -> None:
        p = self.program
        for table in (p.classes, p.functions, p.dims):
            if name in table:
                first = table[name]
                where = first if isinstance(first, Location) or first is None else first.loc
                raise SymbolError(f"duplicate definition of '{name}'", loc, f"first defined at {where}")

    # -- object members ----------------------------------------------------------------------
    def _member(self, cls: ObjectClass, stmt: Form) -> None:
        handler = {"constant": self._constant, "parameter": self._parameter,
                   "child": self._child, "children": self._children}.get(stmt.head)
        if handler is None:
            raise ParseError(f"'{stmt.head}(...)' cannot declare a member of object '{cls.name}'", stmt.loc,
                             did_you_mean(stmt.head, MEMBER_FORMS) or "members are " + ", ".join(MEMBER_FORMS))
        handler(cls, stmt)

    def _constant(self, cls: ObjectClass, stmt: Form) -> None:
        args = expect_args(stmt, 2, 3, " (name, value) or (name, SYM_EXTERNAL[, default])")
        name = expect_name(args[0], "a constant name")
        _check_new_member(cls, name.text, name.loc)
        if _is_flags(args[1]):
            flags = parse_flags(args[1], SymbolKind.CONSTANT, name.text)
            if SymbolFlag.EXTERNAL not in flags:
                raise SymbolError(f"constant '{name.text}' without SYM_EXTERNAL needs a value", name.loc)
            default = to_expr(args[2]) if len(args) == 3 else None
            cls.constants[name.text] = ConstantDecl(name.text, True, default, name.loc)
        elif len(args) == 3:
            raise ParseError(f"constant '{name.text}': the second argument of three must be SYM_EXTERNAL",
                             _loc(args[1]))
        else:
            cls.constants[name.text] = ConstantDecl(name.text, False, to_expr(args[1]), name.loc)

    def _parameter(self, cls: ObjectClass, stmt: Form) -> None:
        name, flags, type_ = expect_args(stmt, 3, 3, " (name, flags, Tensor(...))")
        name = expect_name(name, "a parameter name")
        _check_new_member(cls, name.text, name.loc)
        decl = ParameterDecl(name.text, parse_flags(flags, SymbolKind.PARAMETER, name.text), parse_tensor(type_),
                             name.loc)
        cls.parameters[name.text] = decl

    def _child(self, cls: ObjectClass, stmt: Form) -> None:
        name, class_name = expect_args(stmt, 2, 2, " (name, Class, k = v, ...)", keywords=True)
        self._add_child(cls, stmt, name, class_name, None)

    def _children(self, cls: ObjectClass, stmt: Form) -> None:
        name, class_name, count = expect_args(stmt, 3, 3, " (name, Class, count, k = v, ...)", keywords=True)
        self._add_child(cls, stmt, name, class_name, to_expr(count))

    def _add_child(self, cls: ObjectClass, stmt: Form, name: Node, class_name: Node, count) -> None:
        name = expect_name(name, "a child name")
        class_name = expect_name(class_name, "an object class name")
        _check_new_member(cls, name.text, name.loc)
        cls.children[name.text] = ChildDecl(name.text, class_name.text, _config(stmt.keywords), count, name.loc,
                                            class_name.loc)

    # -- function bodies -----------------------------------------------------------------------
    def _body(self, fn: FunctionDecl, block: Block) -> FunctionDecl:
        for stmt in block.stmts:
            if stmt.head == "fn_argument":
                self._argument(fn, stmt)
            elif stmt.head == "let":
                name, value = expect_args(stmt, 2, 2, " (name, value)")
                name = expect_name(name, "a local name")
                _check_new_local(fn, name.text, name.loc)
                fn.lets.append(Let(name.text, to_expr(value), name.loc))
            elif stmt.head == "capture":
                target, value = expect_args(stmt, 2, 2, " (function, result)")
                _check_own_name(fn, target, "capture")
                if fn.result is not None:
                    raise SymbolError(f"function '{fn.name}' captures its result twice", stmt.loc)
                fn.result = to_expr(value)
            else:
                raise ParseError(f"'{stmt.head}(...)' cannot stand in the body of function '{fn.name}'", stmt.loc,
                                 did_you_mean(stmt.head, BODY_FORMS) or "statements are " + ", ".join(BODY_FORMS))
        if fn.result is None:
            raise SymbolError(f"function '{fn.name}' captures no result", fn.loc,
                              f"add capture({fn.name}, <expression>);")
        return fn

    def _argument(self, fn: FunctionDecl, stmt: Form) -> None:
        args = expect_args(stmt, 4, 5, " (function, name, kind, flags[, Tensor(...)])")
        _check_own_name(fn, args[0], "fn_argument")
        name = expect_name(args[1], "an argument name")
        kind_name = expect_name(args[2], "a symbol kind (S_TENSOR, S_SCALAR, S_OBJECT)")
        kind = KINDS.get(kind_name.text)
        if kind is None:
            raise SymbolError(f"unknown symbol kind '{kind_name.text}'", kind_name.loc,
                              did_you_mean(kind_name.text, KINDS) or "kinds are " + ", ".join(KINDS))
        flags = parse_flags(args[3], kind, name.text)
        type_ = parse_tensor(args[4]) if len(args) == 5 else None
        if type_ is not None and kind is not SymbolKind.TENSOR:
            raise SymbolError(f"a tensor type means nothing on {kind_name.text} argument '{name.text}'",
                              _loc(args[4]))
        _check_new_local(fn, name.text, name.loc)
        fn.args.append(ArgumentDecl(name.text, kind, flags, type_, name.loc))


def _misplaced_hint(head: str) -> str:
    if head in MEMBER_FORMS:
        return f"{head}(...) declares a member: it belongs in an object(Name, {{ ... }}) block"
    if head in BODY_FORMS:
        return f"{head}(...) belongs in a function body"
    return (did_you_mean(head, TOP_LEVEL_FORMS) or
            "top-level forms are " + ", ".join(TOP_LEVEL_FORMS) + ", and methods NAME(Class, { ... })")


# -- pieces ----------------------------------------------------------------------------------------
def _expect_block(node: Node) -> Block:
    if not isinstance(node, Block):
        raise ParseError(f"expected a block {{ ... }}, got '{describe(node)}'", _loc(node))
    return node


def _config(keywords: tuple[Keyword, ...]) -> tuple[tuple[str, object], ...]:
    seen: dict[str, Keyword] = {}
    for kw in keywords:
        if kw.name in seen:
            raise SymbolError(f"'{kw.name}' configured twice", kw.loc)
        seen[kw.name] = kw
    return tuple((kw.name, to_expr(kw.value)) for kw in keywords)


def _check_new_member(cls: ObjectClass, name: str, loc: Location) -> None:
    if name in cls.members():
        raise SymbolError(f"duplicate definition of '{name}' in object {cls.name}", loc,
                          f"first defined at {cls.member_loc(name)}")


def _check_new_local(fn: FunctionDecl, name: str, loc: Location) -> None:
    for decl in [*fn.args, *fn.lets]:
        if decl.name == name:
            raise SymbolError(f"duplicate definition of '{name}' in function '{fn.name}'", loc,
                              f"first defined at {decl.loc}")


def _check_own_name(fn: FunctionDecl, node: Node, form: str) -> None:
    name = expect_name(node, f"the name of the function ('{fn.name}')")
    if name.text != fn.name:
        raise SymbolError(f"{form}({name.text}, ...) inside function '{fn.name}'", name.loc,
                          f"write {form}({fn.name}, ...)")


def _loc(node) -> Location | None:
    return getattr(node, "loc", None)


def _is_flags(node: Node) -> bool:
    items = node.items if isinstance(node, Union_) else (node,)
    return all(isinstance(i, Name) and i.text.startswith("SYM_") for i in items)


def parse_flags(node: Node, kind: SymbolKind, symbol: str) -> SymbolFlag:
    """`SYM_A | SYM_B` -> flags, each known and meaningful on `kind`."""
    items = node.items if isinstance(node, Union_) else (node,)
    flags = SymbolFlag.NONE
    for item in items:
        name = expect_name(item, "a flag (SYM_EXTERNAL, SYM_OPTIONAL, SYM_NONE)")
        flag = FLAGS.get(name.text)
        if flag is None:
            raise SymbolError(f"unknown flag '{name.text}'", name.loc,
                              did_you_mean(name.text, FLAGS) or "flags are " + ", ".join(FLAGS))
        if flag & ~VALID_FLAGS[kind]:
            raise SymbolError(f"flag {name.text} means nothing on {kind.value} '{symbol}'", name.loc,
                              "allowed: " + (str(VALID_FLAGS[kind]) if VALID_FLAGS[kind] else "no flags"))
        flags |= flag
    return flags


def parse_tensor(node: Node) -> TensorDecl:
    """`Tensor(shape(d, ...), dtype[, init])`."""
    if not isinstance(node, Form) or node.head != "Tensor":
        raise ParseError(f"expected a type Tensor(shape(...), dtype, init), got '{describe(node)}'", _loc(node),
                         did_you_mean(getattr(node, "head", ""), ["Tensor"]))
    args = expect_args(node, 2, 3, " (shape(...), dtype[, init])")
    shape = args[0]
    if not isinstance(shape, Form) or shape.head != "shape":
        raise ParseError(f"expected shape(d, ...), got '{describe(shape)}'", _loc(shape),
                         did_you_mean(getattr(shape, "head", ""), ["shape"]))
    dims = tuple(to_expr(d) for d in expect_args(shape, 0, 1 << 30))
    init = 0
    if len(args) == 3:
        if not isinstance(args[2], Number) and not (isinstance(args[2], Name) and args[2].text in ("true", "false")):
            raise ParseError(f"the third field of Tensor(...) is its init value, a number; got "
                             f"'{describe(args[2])}'", _loc(args[2]))
        init = args[2].value if isinstance(args[2], Number) else args[2].text == "true"
    return TensorDecl(dims, to_expr(args[1]), init, node.loc)

