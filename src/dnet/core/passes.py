"""Passes as named objects, and pipelines as plain lists of them (TVM style).

A pass is a function from IR to IR with a name and the IR level it works on; a
pipeline runs its passes in order and can record the IR after each, so that
`dnet inspect --passes` shows what every step did.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

IR = TypeVar("IR")


@dataclass(frozen=True)
class Pass(Generic[IR]):
    name: str
    level: str                      # "object", "graph", "kernel", ...
    run: Callable[[IR], IR]
    doc: str = ""

    def __call__(self, ir: IR) -> IR:
        return self.run(ir)


@dataclass
class Pipeline(Generic[IR]):
    passes: list[Pass[IR]] = field(default_factory=list)

    def __call__(self, ir: IR, trace: list[tuple[str, Any]] | None = None) -> IR:
        """Run every pass in order; with `trace`, append (pass name, IR after it)."""
        for p in self.passes:
            ir = p(ir)
            if trace is not None:
                trace.append((p.name, ir))
        return ir

    def names(self) -> list[str]:
        return [p.name for p in self.passes]
