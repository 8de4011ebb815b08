"""`dnet check` and `dnet inspect` for DSL files: type and shape checking without running,
and the object IR before and after the object-level passes.

Checking lowers every function of the root object whose arguments are all typed, with
zero-cost stand-ins for parameters that have no data yet, so every shape and dtype
rule of the graph IR runs and nothing is computed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping

import numpy as np

from dnet.core.types import TensorType
from dnet.frontend.dsl.instantiate import instantiate
from dnet.frontend.dsl.loader import load_program
from dnet.objects.ir import Function, ObjectModule
from dnet.objects.lower import lower
from dnet.objects.symbols import SymbolKind


@dataclass
class CheckReport:
    file: str
    classes: int
    functions: int
    root: str | None = None
    # function name -> output types, for each function of the root object that could be lowered
    outputs: dict[str, list[TensorType]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # function name -> why it was not lowered

    def __str__(self) -> str:
        lines = [f"{self.file}: ok, {self.classes} object class(es), {self.functions} function(s)"]
        if self.root is None:
            lines.append("  no model(...) to instantiate: names checked, shapes not (name an object to check them)")
        for name, types in self.outputs.items():
            lines.append(f"  {self.root}.{name} -> " + ", ".join(str(t) for t in types))
        for name, why in self.skipped.items():
            lines.append(f"  {self.root}.{name}: not lowered ({why})")
        return "\n".join(lines)


def stand_in_parameters(module: ObjectModule) -> None:
    """Give each parameter without data a zero-stride array of its type (no memory, right shape and dtype)."""
    for _, sym in module.root.named_parameters():
        if sym.value is None:
            sym.value = np.broadcast_to(np.zeros((), sym.type.dtype.np), sym.type.shape)


def _untyped(fn: Function) -> list[str]:
    return [a.name for a in fn.args if not a.optional and (a.kind is not SymbolKind.TENSOR or a.type is None)]


def check_dsl(path: str | Path, object: str | None = None,  # noqa: A002 - the CLI's word
              constants: Mapping[str, Any] | None = None) -> CheckReport:
    """Parse, resolve and (where a root object can be built) lower every typed function of the root."""
    program = load_program(path)
    report = CheckReport(str(path), len(program.classes),
                         len(program.functions) + sum(len(c.methods) for c in program.classes.values()))
    if object is None and program.model is None:
        return report
    module = instantiate(program, object, constants)
    stand_in_parameters(module)
    report.root = module.root.class_name
    for name, fn in module.root.functions.items():
        untyped = _untyped(fn)
        if untyped:
            report.skipped[name] = "argument(s) without a tensor type: " + ", ".join(untyped)
            continue
        graph = lower(module, name)
        report.outputs[name] = [graph.nodes[o].type for o in graph.outputs]
    return report


def inspect_dsl(path: str | Path, object: str | None = None, passes: bool = True,  # noqa: A002
                constants: Mapping[str, Any] | None = None, entry: str = "forward",
                present: Collection[str] | None = None) -> str:
    """The object IR of `object` instantiated from the file, and with `passes` after each object-level
    pass, for calling `entry` with the optional arguments `present` (default: none)."""
    from dnet.objects.passes import run_with_trace
    from dnet.objects.printer import print_module

    module = instantiate(load_program(path), object, constants)
    sections = [("object IR, as written", module)]
    if passes:
        sections += [(f"after {name}", after) for name, after in run_with_trace(module, entry, present)]
    return "".join(f"== {title} ==\n{print_module(m)}\n" for title, m in sections)
