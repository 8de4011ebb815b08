"""dnet's exception types. Every error a user can cause is one of these, with its location."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Location:
    """Where something came from: a source file position, a symbol path, or both."""

    file: str | None = None
    line: int | None = None
    column: int | None = None
    symbol: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.file:
            pos = self.file
            if self.line is not None:
                pos += f":{self.line}"
                if self.column is not None:
                    pos += f":{self.column}"
            parts.append(pos)
        if self.symbol:
            parts.append(f"in '{self.symbol}'")
        return " ".join(parts)


class DnetError(Exception):
    """Base of all dnet errors. `where` says where the problem is."""

    def __init__(self, message: str, where: Location | str | None = None, hint: str | None = None):
        self.message = message
        self.where = Location(symbol=where) if isinstance(where, str) else where
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        text = self.message
        if self.where and str(self.where):
            text = f"{self.where}: {text}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class ShapeError(DnetError):
    """Shapes that do not fit an op: names both shapes, the op and the symbol."""


class DTypeError(DnetError):
    """Dtypes that do not fit an op."""


class SymbolError(DnetError):
    """Unknown, duplicate or misused symbols in the object IR."""


class GraphError(DnetError):
    """A graph that breaks an invariant of the IR (order, arity, attributes, types)."""


class WeightError(DnetError):
    """A missing, unexpected or mismatched weight (name, shape, dtype)."""


class UnsupportedOpError(DnetError):
    """An operation the importer or a backend does not handle."""


class SerializationError(DnetError):
    """A graph or weight blob that cannot be read back."""


class ParseError(DnetError):
    """Malformed source text (the DSL, topology files)."""


class ModelFileError(DnetError):
    """A model file or folder that cannot be read: unknown architecture or tensor type, truncated, missing parts."""


class TokenizerError(DnetError):
    """A tokenizer or chat template that is missing or cannot be built or rendered."""


class GenerationError(DnetError):
    """Bad generation input: a prompt longer than the context, an unknown or out-of-range sampling option."""


class BackendError(DnetError):
    """A backend failed to compile or run a program."""


class MissingOpError(BackendError):
    """A backend's renderer has no code for an op (at a dtype): the op and the backend are named."""

    def __init__(self, op: object, backend: str, dtype: object = None, hint: str | None = None):
        self.op, self.backend, self.dtype = op, backend, dtype
        at = f" on {dtype}" if dtype is not None else ""
        super().__init__(f"backend '{backend}' has no code for op {op}{at}",
                         hint=hint or "run it on another target (e.g. numpy), or add the op to the backend's table")


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to `name`, for 'did you mean' hints."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    match = closest(name, candidates)
    return f"did you mean '{match}'?" if match else None
