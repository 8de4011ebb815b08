"""`dnet fmt`: the canonical text of a DSL file.

Canonical means: two-space indentation, one statement per line, `, ` between
arguments, ` = ` in keywords, ` | ` between flags, numbers as Python writes them,
a blank line between top-level definitions, and a form that does not fit in
`WIDTH` columns broken with its arguments aligned under the first, as many to a
line as fit.
Comments stay above the statement they preceded. Formatting is idempotent and
parsing the output gives the same program.
"""
from __future__ import annotations

import json

from dnet.frontend.dsl.syntax import Block, Form, Keyword, Name, Node, Number, Source, String, Union_, parse_source

WIDTH = 100
INDENT = "  "
# Top-level forms that sit together without blank lines between them.
_HEADER_FORMS = ("import", "dims")


def format_source(text: str, file: str = "<string>") -> str:
    """The canonical form of DSL `text` (raises ParseError where it does not parse)."""
    return format_tree(parse_source(text, file))


def format_tree(source: Source) -> str:
    printer = _Printer()
    lines: list[str] = []
    previous: str | None = None
    for stmt in source.stmts:
        if previous is not None and not (previous in _HEADER_FORMS and stmt.head in _HEADER_FORMS):
            lines.append("")
        lines.extend(printer.statement(stmt, ""))
        previous = stmt.head
    if source.trailing:
        if lines:
            lines.append("")
        lines.extend(source.trailing)
    return "\n".join(lines) + "\n" if lines else ""


class _Printer:
    """Lays out one file. The one-line text of each node is computed once, so layout is linear."""

    def __init__(self) -> None:
        self._flat: dict[int, str] = {}

    def statement(self, form: Form, indent: str) -> list[str]:
        return [indent + c for c in form.comments] + (indent + self.node(form, indent) + ";").split("\n")

    def flat(self, node: Node | Keyword) -> str:
        """`node` on one line (a block, which never fits on one, gets a newline)."""
        key = id(node)
        if key not in self._flat:
            self._flat[key] = self._flat_text(node)
        return self._flat[key]

    def _flat_text(self, node: Node | Keyword) -> str:
        if isinstance(node, Name):
            return node.text
        if isinstance(node, Number):
            return repr(node.value)
        if isinstance(node, String):
            return json.dumps(node.value)
        if isinstance(node, Union_):
            return " | ".join(self.flat(i) for i in node.items)
        if isinstance(node, Keyword):
            return f"{node.name} = {self.flat(node.value)}"
        if isinstance(node, Block):
            return "{\n}"
        return f"{node.head}(" + ", ".join(self.flat(a) for a in node.args) + ")"

    def node(self, node: Node | Keyword, indent: str) -> str:
        """`node` laid out from column len(indent) (later lines carry their own indentation)."""
        if isinstance(node, Block):
            return self.block(node, indent)
        if isinstance(node, Keyword):
            return f"{node.name} = {self.node(node.value, indent)}"
        if isinstance(node, Form):
            return self.form(node, indent)
        return self.flat(node)

    def block(self, block: Block, indent: str) -> str:
        inner = indent + INDENT
        lines = ["{"]
        for stmt in block.stmts:
            lines.extend(self.statement(stmt, inner))
        lines.extend(inner + c for c in block.trailing)
        lines.append(indent + "}")
        return "\n".join(lines)

    def form(self, form: Form, indent: str) -> str:
        if any(isinstance(a, Block) for a in form.args):
            # `head(a, b, {` ... `})`: the block's statements indent one level from the form.
            return f"{form.head}(" + ", ".join(self.node(a, indent) for a in form.args) + ")"
        flat = self.flat(form)
        if len(indent) + len(flat) <= WIDTH:
            return flat
        # Too wide: arguments aligned under the first, packed while a line has room.
        column = indent + " " * (len(form.head) + 1)
        lines = [f"{indent}{form.head}("]
        for i, arg in enumerate(form.args):
            text = self.node(arg, column) + ("," if i < len(form.args) - 1 else ")")
            fits = len(lines[-1]) + 1 + len(text) <= WIDTH and "\n" not in text
            if i == 0:
                lines[-1] += text
            elif fits and "\n" not in lines[-1]:
                lines[-1] += " " + text
            else:
                lines.append(column + text)
        return "\n".join(lines)[len(indent):]
