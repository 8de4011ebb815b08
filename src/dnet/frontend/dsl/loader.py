"""Reading DSL files: imports, the standard library, and the checks over the whole program.

`import("x.dnet")` is looked up beside the importing file, then in the package
folder that holds the standard library, so `import("std/nn.dnet")` always finds
the library shipped with dnet. A file imported twice (or in a cycle) is read once.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from dnet.errors import Location, ParseError
from dnet.frontend.dsl.analyze import Analyzer
from dnet.frontend.dsl.program import Program
from dnet.frontend.dsl.resolve import resolve_program
from dnet.frontend.dsl.syntax import Source, parse_source


def library_root() -> Path:
    """The folder holding `std/`, the standard library."""
    return Path(str(resources.files("dnet.frontend.dsl")))


@lru_cache(maxsize=64)
def _parse_file(path: Path, mtime_ns: int) -> Source:
    """A file's syntax tree (immutable, so shared), read again when the file changes."""
    return parse_source(path.read_text(), str(path))


class _Loader:
    def __init__(self) -> None:
        self.program = Program()
        self.seen: set[Path] = set()
        self.stack: list[Path] = []

    def add_text(self, text: str, file: str, folder: Path) -> None:
        self.stack.append(folder / "<text>")
        try:
            Analyzer(self.program, self._import).add(parse_source(text, file))
        finally:
            self.stack.pop()

    def add_file(self, path: Path, loc: Location | None = None) -> None:
        path = path.resolve()
        if path in self.seen:
            return
        self.seen.add(path)
        try:
            source = _parse_file(path, path.stat().st_mtime_ns)
        except OSError as err:
            raise ParseError(f"cannot read '{path}': {err.strerror}", loc) from None
        self.stack.append(path)
        try:
            Analyzer(self.program, self._import).add(source)
        finally:
            self.stack.pop()

    def _import(self, name: str, loc: Location) -> None:
        here = self.stack[-1].parent
        for folder in (here, library_root()):
            candidate = folder / name
            if candidate.is_file():
                self.add_file(candidate, loc)
                return
        raise ParseError(f"cannot find import '{name}'", loc,
                         f"looked in {here} and the standard library ({library_root() / 'std'})")


def load_program(path: str | Path) -> Program:
    """Parse, analyse and resolve a DSL file with everything it imports."""
    loader = _Loader()
    loader.add_file(Path(path))
    resolve_program(loader.program)
    return loader.program


def parse_program(text: str, file: str = "<string>", folder: str | Path = ".") -> Program:
    """The same from text; imports are looked up in `folder`."""
    loader = _Loader()
    loader.add_text(text, file, Path(folder).resolve())
    resolve_program(loader.program)
    return loader.program
