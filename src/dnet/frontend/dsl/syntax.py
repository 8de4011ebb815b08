"""The DSL's syntax tree and its parser (lark, LALR).

The grammar knows only call-forms, names, numbers, strings, blocks, flag unions and
keyword arguments; what each form means is decided by `dnet.frontend.dsl.analyze`.
Every node carries the `Location` it was read from. Comments are kept beside the
statements they precede so the formatter can print them back.
"""
from __future__ import annotations

import contextvars
import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from typing import Union

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from dnet.errors import Location, ParseError


@dataclass(frozen=True)
class Name:
    text: str                      # may be dotted: `layer.0`, `proj.format`
    loc: Location = field(compare=False)


@dataclass(frozen=True)
class Number:
    value: int | float
    loc: Location = field(compare=False)


@dataclass(frozen=True)
class String:
    value: str
    loc: Location = field(compare=False)


@dataclass(frozen=True)
class Union_:
    """Flags combined with `|`: `SYM_EXTERNAL | SYM_OPTIONAL`."""
    items: tuple["Node", ...]
    loc: Location = field(compare=False)


@dataclass(frozen=True)
class Keyword:
    name: str
    value: "Node"
    loc: Location = field(compare=False)


@dataclass(frozen=True)
class Form:
    head: str
    args: tuple["Node | Keyword", ...]
    loc: Location = field(compare=False)
    comments: tuple[str, ...] = field(default=(), compare=False)  # comment lines just above a statement
    start: int | None = field(default=None, compare=False)         # source offset, to place comments

    @property
    def positional(self) -> tuple["Node", ...]:
        return tuple(a for a in self.args if not isinstance(a, Keyword))

    @property
    def keywords(self) -> tuple[Keyword, ...]:
        return tuple(a for a in self.args if isinstance(a, Keyword))


@dataclass(frozen=True)
class Block:
    stmts: tuple[Form, ...]
    loc: Location = field(compare=False)
    trailing: tuple[str, ...] = field(default=(), compare=False)  # comments before the closing brace
    end: int | None = field(default=None, compare=False)


Node = Union[Name, Number, String, Union_, Form, Block]


@dataclass(frozen=True)
class Source:
    """One parsed file: its top-level statements."""
    file: str
    stmts: tuple[Form, ...]
    trailing: tuple[str, ...] = ()


def describe(node: Node | Keyword) -> str:
    """A short human spelling of a node, for error messages."""
    if isinstance(node, Name):
        return node.text
    if isinstance(node, Number):
        return repr(node.value)
    if isinstance(node, String):
        return f'"{node.value}"'
    if isinstance(node, Form):
        return f"{node.head}(...)"
    if isinstance(node, Keyword):
        return f"{node.name} = {describe(node.value)}"
    if isinstance(node, Union_):
        return " | ".join(describe(i) for i in node.items)
    return "{...}"


# -- parsing ---------------------------------------------------------------------------------
MAX_DEPTH = 64  # forms within forms; real programs stay far below, every later pass recurses on them
_COMMENTS: contextvars.ContextVar[list[Token]] = contextvars.ContextVar("dnet_dsl_comments")


def _collect_comment(tok: Token) -> Token:
    _COMMENTS.get().append(tok)
    return tok


@lru_cache(maxsize=1)
def _parser() -> Lark:
    grammar = resources.files("dnet.frontend.dsl").joinpath("grammar.lark").read_text()
    return Lark(grammar, parser="lalr", propagate_positions=True, lexer_callbacks={"COMMENT": _collect_comment})


class _Builder(Transformer):
    """Lark tree -> syntax tree, with locations."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def _loc(self, item) -> Location:
        return Location(self.file, item.line, item.column)

    def name(self, children):
        (tok,) = children
        return Name(str(tok), self._loc(tok))

    def number(self, children):
        (tok,) = children
        text = str(tok)
        return Number(float(text) if any(c in text for c in ".eE") else int(text), self._loc(tok))

    def string(self, children):
        (tok,) = children
        try:
            value = json.loads(str(tok), strict=False)  # the escapes of JSON, as the formatter writes them
        except json.JSONDecodeError as err:
            raise ParseError(f"bad string {tok}: {err.msg}", self._loc(tok)) from None
        return String(value, self._loc(tok))

    @v_args(meta=True)
    def union(self, meta, children):
        return Union_(tuple(children), self._loc(meta))

    def keyword(self, children):
        tok, value = children
        return Keyword(str(tok), value, self._loc(tok))

    def form(self, children):
        head, *args = children
        return Form(str(head), tuple(a for a in args if a is not None), self._loc(head), start=head.start_pos)

    def stmt(self, children):
        return children[0]

    @v_args(meta=True)
    def block(self, meta, children):
        return Block(tuple(children), self._loc(meta), end=meta.end_pos)

    def start(self, children):
        return tuple(children)


def _claim(comments: list[Token], before) -> tuple[str, ...]:
    """Remove and return the comments that come before source offset `before`."""
    taken = [c for c in comments if before is None or c.start_pos < before]
    for c in taken:
        comments.remove(c)
    return tuple(str(c).rstrip() for c in taken)


def _attach(stmts: tuple[Form, ...], comments: list[Token], end: int | None) -> tuple[tuple[Form, ...], tuple[str, ...]]:
    """Give each statement the comments between the previous statement and itself;
    what is left before `end` trails the block."""
    out = []
    for stmt in stmts:
        above = _claim(comments, stmt.start)
        args = tuple(_attach_block(a, comments) if isinstance(a, Block) else a for a in stmt.args)
        out.append(replace(stmt, args=args, comments=above))
    return tuple(out), _claim(comments, end)


def _attach_block(block: Block, comments: list[Token]) -> Block:
    stmts, trailing = _attach(block.stmts, comments, block.end)
    return replace(block, stmts=stmts, trailing=trailing)


def parse_source(text: str, file: str = "<string>") -> Source:
    """Parse DSL text into a syntax tree; a malformed program raises ParseError with its location."""
    comments: list[Token] = []
    token = _COMMENTS.set(comments)
    try:
        tree = _parser().parse(text)
        _check_depth(tree, file)
        stmts = _Builder(file).transform(tree)
    except UnexpectedInput as err:
        raise _syntax_error(err, text, file) from None
    except VisitError as err:  # a literal the builder could not read
        if isinstance(err.orig_exc, ParseError):
            raise err.orig_exc from None
        raise ParseError(f"cannot read {err.orig_exc}", Location(file)) from None
    finally:
        _COMMENTS.reset(token)
    stmts, trailing = _attach(stmts, comments, None)
    return Source(file, stmts, trailing)


def _check_depth(tree: Tree, file: str) -> None:
    """Refuse forms nested deeper than MAX_DEPTH, before anything recursive walks them."""
    stack: list[tuple[Tree, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if node.data in ("form", "block"):
            depth += 1
            if depth > MAX_DEPTH:
                raise ParseError(f"forms nested more than {MAX_DEPTH} deep", Location(file, node.meta.line,
                                 node.meta.column), "bind inner results to names with let(...)")
        stack.extend((c, depth) for c in node.children if isinstance(c, Tree))


# -- syntax errors ---------------------------------------------------------------------------
_TOKEN_NAMES = {
    "LPAR": "'('", "RPAR": "')'", "COMMA": "','", "SEMICOLON": "';'", "LBRACE": "'{'", "RBRACE": "'}'",
    "VBAR": "'|'", "EQUAL": "'='", "NAME": "a name", "NUMBER": "a number", "STRING": "a string",
    "$END": "the end of the file",
}


def _expected(names) -> str:
    spelled = sorted({_TOKEN_NAMES.get(n, n) for n in names})
    return ", ".join(spelled)


def _syntax_error(err: UnexpectedInput, text: str, file: str) -> ParseError:
    line, column = getattr(err, "line", None), getattr(err, "column", None)
    if isinstance(err, UnexpectedCharacters):
        char = text[err.pos_in_stream] if err.pos_in_stream < len(text) else ""
        return ParseError(f"unexpected character {char!r}", Location(file, line, column),
                          _hint_for_char(char))
    if isinstance(err, UnexpectedEOF) or (isinstance(err, UnexpectedToken) and err.token.type == "$END"):
        expected = getattr(err, "expected", None) or getattr(err, "accepts", None) or ()
        last = text.rstrip().count("\n") + 1
        return ParseError("unexpected end of file", Location(file, last, len(text.rstrip().split("\n")[-1]) + 1),
                          f"expected {_expected(expected)}" if expected else None)
    if isinstance(err, UnexpectedToken):
        tok = err.token
        expected = err.accepts or err.expected
        hint = f"expected {_expected(expected)}"
        if "SEMICOLON" in expected:
            hint = "missing ';' after the previous statement?"
        return ParseError(f"unexpected '{tok}'", Location(file, line, column), hint)
    return ParseError(str(err).splitlines()[0], Location(file, line, column))


def _hint_for_char(char: str) -> str | None:
    if not char:
        return None
    if char in "[]":
        return "lists are written tuple(a, b, ...)"
    if char in "+-*/":
        return "arithmetic is written add(a, b), sub(a, b), mul(a, b), div(a, b)"
    if char == "'":
        return 'strings use double quotes: "text"'
    return None
